"""Pure rules: no Django, no network; the standard library and the parsers welkin-evaluate
installs (PyYAML, orjson, msgspec). Imports the pure leaves (vocabulary, bounded, workers)."""
