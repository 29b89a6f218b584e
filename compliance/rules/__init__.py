"""Pure rules: standard library and the leaves only (never Django, never I/O)."""
