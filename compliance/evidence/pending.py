"""Evidence made while the timestamp authority was down gets its token later."""

from __future__ import annotations

from celery import shared_task

from compliance.audit import heads, log, tsa
from compliance.evidence import store
from compliance.models import AuditEvent, AuditHead, Export


def timestamp_pending(limit: int = 500) -> int:
    """Ask the TSA for the exports and audit heads that have no token but an error (it was
    down when they were made); each token gained is audited. Returns how many."""
    if not tsa.configured():
        return 0
    done = 0
    for e in Export.objects.filter(timestamp__isnull=True).exclude(timestamp_error="")[:limit]:
        path = store.file_path(e)
        if not store.manifest_path(path).exists():
            continue  # deleted from the exports folder: nothing left to timestamp
        e.timestamp, e.timestamp_error = store.add_timestamp(path)
        e.save(update_fields=["timestamp", "timestamp_error"])
        if e.timestamp is not None:
            done += 1
            log.record(
                None,
                AuditEvent.Action.TIMESTAMP,
                f"export {e.id}",
                {"export": str(e.id)},
                content_hash=e.manifest.get("sha256", ""),
            )
    for h in AuditHead.objects.filter(timestamp__isnull=True).exclude(timestamp_error="")[:limit]:
        if heads.add_timestamp(h):
            done += 1
            log.record(None, AuditEvent.Action.TIMESTAMP, f"head {h.seq}", {"head": h.seq}, h.hash)
    return done


# --- tasks (names pinned: routes, beat entries and messages already queued use them) -----


@shared_task(name="compliance.tasks.timestamp_pending")
def timestamp_pending_task() -> int:
    """Beat, every 10 minutes: ask the TSA again for the exports and heads it could not
    timestamp when they were made (it was down). Returns how many got a token."""
    return timestamp_pending()
