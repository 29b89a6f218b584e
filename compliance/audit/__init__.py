"""Evidence that cannot be edited unseen: the hash-chained audit log, its signed heads, RFC 3161
timestamps. Imports the leaves, rules and models only."""
