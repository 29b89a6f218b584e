"""Retention: raw scan data is kept WELKIN_RETENTION_DAYS (three years by default, a
certification cycle), daily rollups WELKIN_ROLLUP_RETENTION_DAYS (ten years); the audit
log, exceptions and their history, exports and samples are never pruned here.

What is deleted before the cut-off, in one transaction (all or nothing), audited:
- findings resolved before it, with their events, unless an exception matched them;
- events of other findings before it, except each finding's last one before it (it says
  what the finding's state was at the cut-off, so reports after it stay exact);
- scan runs observed before it that no kept event or cluster refers to, except each
  cluster's last complete scan before it (coverage at the cut-off reads it);
- notifications created before it; rollups and activity older than the rollup retention.
The cut-off never passes the report time of a kept export or sample, so what they show can
be rebuilt. Reports for a time before the latest cut-off are refused (reports.py): the
data behind them is gone.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import asdict, dataclass

from celery import shared_task
from django.conf import settings
from django.db import transaction
from django.db.models import Exists, Max, Min, OuterRef, Q
from django.utils import timezone

from compliance.audit import log
from compliance.models import (
    AuditEvent,
    Cluster,
    ClusterRollup,
    DailyActivity,
    DailyRollup,
    ExceptionMatch,
    Export,
    Finding,
    FindingEvent,
    Sample,
    ScanRun,
    ScanStatus,
)
from compliance.models.notify import OutboxEvent


@dataclass
class Pruned:
    cutoff: str
    rollup_cutoff: str
    held_back_by: str
    findings: int = 0
    events: int = 0
    scans: int = 0
    notifications: int = 0
    rollups: int = 0

    def as_dict(self) -> dict:
        return asdict(self)


def cutoffs(now: dt.datetime | None = None) -> tuple[dt.datetime, dt.date, str]:
    """The raw-data cut-off (held back to the oldest kept export's or sample's report time),
    the rollup cut-off, and what held the first back ('' when nothing did)."""
    now = now or timezone.now()
    cutoff = now - dt.timedelta(days=settings.WELKIN_RETENTION_DAYS)
    held = ""
    # An export or sample of a time before any data refers to nothing: it holds nothing
    # back (else one export "as of 2000" would stop retention for good).
    first = ScanRun.objects.aggregate(m=Min("observed_at"))["m"]
    for model, what in ((Export, "export"), (Sample, "sample")):
        oldest = model.objects.filter(at__gte=first or now).aggregate(m=Min("at"))["m"]
        if oldest is not None and oldest < cutoff:
            cutoff, held = oldest, f"the oldest kept {what} is of {oldest.isoformat()}"
    rollups = (now - dt.timedelta(days=settings.WELKIN_ROLLUP_RETENTION_DAYS)).date()
    return cutoff, rollups, held


def horizon() -> dt.datetime | None:
    """The latest cut-off pruned to: no report can be rebuilt for an earlier time."""
    scope = (
        AuditEvent.objects.filter(action=AuditEvent.Action.PRUNE)
        .order_by("-at", "-seq")  # the (action, -at) index: read on every report
        .values_list("scope", flat=True)
        .first()
    )
    return dt.datetime.fromisoformat(scope["cutoff"]) if scope else None


def _n(deleted: tuple[int, dict[str, int]], model) -> int:
    """Rows of one model in a delete's counts (the total includes cascades)."""
    return deleted[1].get(model._meta.label, 0)


def prune(now: dt.datetime | None = None) -> Pruned:

    cutoff, rollup_cutoff, held = cutoffs(now)
    done = Pruned(cutoff.isoformat(), rollup_cutoff.isoformat(), held)
    with transaction.atomic():
        matched = ExceptionMatch.objects.values("finding_id")
        gone = Finding.objects.filter(resolved_at__lt=cutoff).exclude(pk__in=matched)
        done.events += FindingEvent.objects.filter(finding__in=gone).delete()[0]
        done.findings = _n(gone.delete(), Finding)
        later = FindingEvent.objects.filter(finding=OuterRef("finding"), at__lt=cutoff).filter(
            Q(at__gt=OuterRef("at")) | Q(at=OuterRef("at"), pk__gt=OuterRef("pk"))
        )
        done.events += (
            FindingEvent.objects.filter(at__lt=cutoff)
            .filter(Exists(later))
            .exclude(finding__in=matched)
            .delete()[0]
        )
        keep = set(
            Cluster.objects.exclude(last_scan=None).values_list("last_scan", flat=True)
        ) | set(
            Cluster.objects.exclude(last_complete_scan=None).values_list(
                "last_complete_scan", flat=True
            )
        )
        keep |= {
            pk
            for pk in ScanRun.objects.filter(status=ScanStatus.SUCCEEDED, observed_at__lt=cutoff)
            .values("cluster")
            .annotate(last=Max("pk"))
            .values_list("last", flat=True)
        }
        done.notifications = _n(
            OutboxEvent.objects.filter(created_at__lt=cutoff).delete(), OutboxEvent
        )
        done.scans = _n(
            ScanRun.objects.filter(observed_at__lt=cutoff)
            .exclude(pk__in=keep)
            .exclude(Exists(FindingEvent.objects.filter(scan=OuterRef("pk"))))
            .delete(),
            ScanRun,
        )
        for model in (DailyRollup, ClusterRollup, DailyActivity):
            done.rollups += model.objects.filter(day__lt=rollup_cutoff).delete()[0]
        log.record(None, AuditEvent.Action.PRUNE, "retention", done.as_dict())
    return done


# --- tasks (names pinned: routes, beat entries and messages already queued use them) -----


@shared_task(name="compliance.tasks.prune")
def prune_task() -> dict:
    """Beat, daily: delete raw scan data older than the retention (audited)."""
    return prune().as_dict()
