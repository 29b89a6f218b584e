"""The Django admin: registered from fleet.py (clusters, scans, findings, registries, grants)
and reach.py (sign-in mapping, contacts, the outbox). On top: may import every package."""

from compliance.admin import fleet, reach  # noqa: F401 - importing them registers the ModelAdmins
