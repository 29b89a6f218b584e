"""Function views grouped by audience; every object lookup goes through
compliance/identity/access.py. Part of web/: may import every package before it."""
