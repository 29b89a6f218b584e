"""The only code that talks to clusters and registries: scans, reconcile, rollups, cluster
registration. Imports the leaves, rules, models, audit, identity, notify and risk only."""
