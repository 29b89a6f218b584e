"""welkin-dash: the compliance app."""

__version__ = "0.1.0"
