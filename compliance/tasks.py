"""Celery tasks: thin wrappers that take ids and call one service."""

from __future__ import annotations

from celery import shared_task
from django.conf import settings

from compliance.collect import scanning
from compliance.models import Trigger


def send(task, *args, **options):
    """Queue a task with no time limits in its message, so the worker's own apply (the
    WELKIN_*_TIME_LIMIT of the process that runs it). `delay` would write in the limits
    of the web or beat process that queued it, and the worker would take those."""
    return task.apply_async(args, time_limit=None, soft_time_limit=None, **options)


@shared_task(
    bind=True,
    acks_late=True,
    max_retries=2,
    time_limit=settings.WELKIN_SCAN_TIME_LIMIT,
    soft_time_limit=settings.WELKIN_SCAN_TIME_LIMIT - 5,
)
def scan_cluster(self, cluster_id: int, trigger: str = Trigger.SCHEDULE) -> dict:
    """Scan one cluster. Safe to deliver twice: a succeeded task id is not run again, and a
    concurrent one is recorded as skipped. Transient failures (5xx, timeouts, throttling)
    are retried with backoff."""
    result = scanning.scan_cluster(cluster_id, trigger=trigger, task_id=self.request.id)
    # In-process (eager) runs record the failure and stop: a retry would raise into the
    # request that asked for the scan.
    if result.transient and not self.request.is_eager and self.request.retries < self.max_retries:
        raise self.retry(countdown=30 * 2**self.request.retries)
    return result.as_dict()


@shared_task
def enqueue_due_scans() -> int:
    """Beat's fan-out: one scan task per due cluster, expiring with its schedule."""
    claimed = scanning.claim_due_clusters()
    for cluster_id, schedule_seconds in claimed:
        send(scan_cluster, cluster_id, expires=schedule_seconds)
    return len(claimed)


# --- notifications (compliance/notify/outbox.py, compliance/notify/delivery.py)


@shared_task(acks_late=True)
def deliver(delivery_id: int) -> str:
    """Send one delivery. Safe to run twice: a sent or claimed delivery is left alone. A
    failure to retry is queued again at its backoff (beat's deliver_due also finds it)."""
    from compliance.models.notify import PENDING, Delivery
    from compliance.notify import delivery as delivery

    outcome = delivery.deliver_one(delivery_id)
    if outcome == PENDING and not deliver.request.is_eager:
        at = Delivery.objects.filter(pk=delivery_id).values_list("next_attempt_at", flat=True)[0]
        deliver.apply_async((delivery_id,), eta=at)
    return outcome


@shared_task
def deliver_due() -> int:
    """One delivery task per delivery due now (new, retry due, or left by a dead worker)."""
    from compliance.notify import delivery as delivery

    ids = delivery.due()
    for pk in ids:
        deliver.delay(pk)
    return len(ids)


@shared_task
def notify_stale_clusters() -> int:
    """Beat: officers hear about clusters without a recent complete scan (once each)."""
    from compliance.notify import outbox

    return outbox.notify_stale_clusters()


@shared_task
def weekly_digest() -> bool:
    """Beat, weekly: each owner's digest (once per ISO week)."""
    from compliance.notify import outbox

    return outbox.weekly_digest() is not None


@shared_task
def notify_exceptions_ending() -> int:
    """Exceptions ending within 14 days, or ended: told once to their namespaces' owners."""
    from compliance.risk import exceptions

    return exceptions.notify_ending()


@shared_task
def sign_audit_head() -> int | None:
    """Beat, daily: sign (and timestamp, with a TSA) the audit chain's last event."""
    from compliance.audit import heads

    head = heads.sign_head()
    return head.seq if head else None


@shared_task
def timestamp_pending() -> int:
    """Beat, every 10 minutes: ask the TSA again for the exports and heads it could not
    timestamp when they were made (it was down). Returns how many got a token."""
    from compliance.evidence import pending

    return pending.timestamp_pending()


@shared_task(
    acks_late=True,
    time_limit=settings.WELKIN_EXPORT_TIME_LIMIT,
    soft_time_limit=settings.WELKIN_EXPORT_TIME_LIMIT - 5,
)
def export(export_id: str) -> str:
    """Write one export (compliance/evidence/jobs.py). Safe to deliver twice: a done, failed
    or live-running export is left alone; one whose worker died is taken over."""
    from compliance.evidence import jobs

    return jobs.run(export_id)


@shared_task
def sweep_exports() -> dict:
    """Beat, every 5 minutes: fail exports whose worker is gone, send again those whose
    message was lost, delete the expired ones."""
    from compliance.evidence import jobs

    return jobs.sweep()


@shared_task
def prune() -> dict:
    """Beat, daily: delete raw scan data older than the retention (audited)."""
    from compliance.evidence import retention

    return retention.prune().as_dict()
