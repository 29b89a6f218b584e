"""Every Celery task, under the name it is queued by (`compliance.tasks.<name>`). Each task
lives beside the service it runs, with that name pinned, so routes, beat entries and
messages already queued keep working wherever the code moves. Celery's autodiscovery
imports this module, which registers them all.

Tasks are thin: they take ids and call one service. Queue with compliance.workers.send,
which leaves the worker's own time limits in force."""

from compliance.audit.heads import sign_audit_head
from compliance.collect.scanning import enqueue_due_scans
from compliance.collect.scanning import scan_cluster_task as scan_cluster
from compliance.evidence.jobs import export, sweep_exports
from compliance.evidence.pending import timestamp_pending_task as timestamp_pending
from compliance.evidence.retention import prune_task as prune
from compliance.identity.signin import expire_sso_access
from compliance.notify.delivery import deliver, deliver_due
from compliance.notify.outbox import notify_stale_clusters_task as notify_stale_clusters
from compliance.notify.outbox import weekly_digest_task as weekly_digest
from compliance.risk.exceptions import notify_exceptions_ending

__all__ = [
    "deliver",
    "deliver_due",
    "enqueue_due_scans",
    "expire_sso_access",
    "export",
    "notify_exceptions_ending",
    "notify_stale_clusters",
    "prune",
    "scan_cluster",
    "sign_audit_head",
    "sweep_exports",
    "timestamp_pending",
    "weekly_digest",
]
