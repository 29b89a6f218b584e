"""Who may see what (access, the single filter) and how people sign in. Imports the leaves,
rules, models and audit only.

The authentication backends keep the dotted paths they had before this package existed
(`compliance.identity.SingleSignOn`): Django stores a login's backend path in its session
and drops the session when the path is no longer in AUTHENTICATION_BACKENDS."""

_BACKENDS = ("LoginThrottle", "LocalPasswords", "SingleSignOn")


def __getattr__(name: str):
    # Lazy: importing compliance.identity.access must not load the sign-in module.
    if name in _BACKENDS:
        from compliance.identity import signin  # noqa: PLC0415 - see above

        return getattr(signin, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
