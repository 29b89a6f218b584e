"""Celery tasks: thin wrappers that take ids and call one service."""

from __future__ import annotations

from celery import shared_task
from django.conf import settings

from compliance import scanning
from compliance.models import Trigger


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
        scan_cluster.apply_async((cluster_id,), expires=schedule_seconds)
    return len(claimed)
