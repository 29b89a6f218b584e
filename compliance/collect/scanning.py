"""The scan service, top to bottom: pages from the client (kube.py) -> the gate
(rules/gate.py) -> image users (images.py) -> evaluate (rules/runas.py) -> group
(rules/workloads.py); then, in one transaction with marking the scan succeeded (_complete):
reconcile (reconcile.py) -> exception matching (risk/acceptance.py) -> rollups (rollups.py)
-> the outbox (notify/outbox.py).

`scan_cluster` serves the Celery task and `manage.py scan`; `import_snapshot` serves
`manage.py import_snapshot`. Invariants (DESIGN.md):
- at most one scan per cluster at a time: a PostgreSQL advisory lock held for the scan
  (released by the server if the worker dies) and a partial unique index on running scans;
- findings change only after a complete scan, in the transaction that marks it succeeded;
  a failed or partial scan resolves nothing;
- a rescan that finds nothing new writes O(1) rows: unchanged findings are not touched and
  rollup rows are only written when their counts differ.
"""

from __future__ import annotations

import contextlib
import logging
import time
from collections import Counter
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

from celery import shared_task
from django.conf import settings
from django.db import IntegrityError, connection, transaction
from django.utils import timezone

from compliance import workers
from compliance.collect import images, kube
from compliance.collect.reconcile import reconcile
from compliance.collect.rollups import write_rollup
from compliance.models import (
    Cluster,
    ScanRun,
    ScanStatus,
    Source,
    Trigger,
)
from compliance.notify import outbox
from compliance.risk import acceptance
from compliance.rules import gate, podjson, runas
from compliance.rules.manifests import ManifestError, parse_documents
from compliance.rules.workloads import Grouping, OwnerIndex

log = logging.getLogger(__name__)

LOCK_NAMESPACE = 0x57454C4B  # "WELK": the first key of pg_try_advisory_lock(int, int)


# --- scan lifecycle ---------------------------------------------------------------------


@dataclass
class ScanResult:
    """What `manage.py scan` prints and the task returns."""

    scan_id: int | None
    cluster: str
    status: str
    reason: str = ""
    transient: bool = False
    pods: int = 0
    opened: int = 0
    changed: int = 0
    resolved: int = 0
    seconds: float = 0.0
    rejected: int = 0
    rejected_summary: str = ""

    def as_dict(self) -> dict[str, Any]:
        return self.__dict__.copy()


def _uses_advisory_locks() -> bool:
    return connection.vendor == "postgresql"


def _try_lock(cluster_id: int) -> bool:
    """Take the cluster's advisory lock. When it is held by a scan whose worker process
    is known to be dead (on this host), wait for its session to end, within
    WELKIN_SCAN_LOCK_WAIT seconds: PostgreSQL ends a killed worker's session only once
    it notices the closed socket, and the scan after a dead worker must run."""
    if not _uses_advisory_locks():
        return True
    deadline = time.monotonic() + settings.WELKIN_SCAN_LOCK_WAIT
    with connection.cursor() as cur:
        while True:
            cur.execute("SELECT pg_try_advisory_lock(%s, %s)", [LOCK_NAMESPACE, cluster_id])
            if cur.fetchone()[0]:
                return True
            if time.monotonic() >= deadline or not _holder_dead(cluster_id):
                return False
            time.sleep(0.05)


def _holder_dead(cluster_id: int) -> bool:
    """Is the running scan's worker a process on this host that no longer exists?"""
    worker = (
        ScanRun.objects.filter(cluster_id=cluster_id, status=ScanStatus.RUNNING)
        .values_list("worker", flat=True)
        .first()
    )
    return workers.gone(worker)


def _unlock(cluster_id: int) -> None:
    if _uses_advisory_locks():
        with connection.cursor() as cur:
            cur.execute("SELECT pg_advisory_unlock(%s, %s)", [LOCK_NAMESPACE, cluster_id])


def _begin(
    cluster: Cluster, trigger: str, task_id: str | None, observed_at: datetime | None = None
) -> ScanRun:
    """A running ScanRun, or a skipped one when another scan of the cluster runs."""
    now = timezone.now()
    stale = now - timedelta(seconds=settings.WELKIN_SCAN_STALE_SECONDS)
    with transaction.atomic():
        running = (
            ScanRun.objects.select_for_update()
            .filter(cluster=cluster, status=ScanStatus.RUNNING)
            .first()
        )
        # Holding the advisory lock means no one else runs this cluster: a running row
        # is left by a worker that died. Without advisory locks (SQLite), only a stale
        # heartbeat says so.
        if running is not None and (_uses_advisory_locks() or running.heartbeat_at < stale):
            running.status = ScanStatus.FAILED
            running.reason = (
                "interrupted: the worker running this scan stopped "
                f"(last progress {running.heartbeat_at:%Y-%m-%d %H:%M:%S} UTC)"
            )
            running.finished_at = now
            running.save(update_fields=["status", "reason", "finished_at"])
        elif running is not None:
            return _skipped(cluster, trigger, task_id, running)
        try:
            with transaction.atomic():
                return ScanRun.objects.create(
                    cluster=cluster,
                    trigger=trigger,
                    task_id=task_id or "",
                    started_at=now,
                    worker=workers.worker_id(),
                    heartbeat_at=now,
                    observed_at=observed_at or now,
                )
        except IntegrityError:
            running = ScanRun.objects.filter(cluster=cluster, status=ScanStatus.RUNNING).first()
            return _skipped(cluster, trigger, task_id, running)


def _skipped(
    cluster: Cluster, trigger: str, task_id: str | None, running: ScanRun | None
) -> ScanRun:
    now = timezone.now()
    reason = "another scan of this cluster is running" + (
        f" (scan {running.pk}, started {running.started_at:%H:%M:%S} UTC)" if running else ""
    )
    return ScanRun.objects.create(
        cluster=cluster,
        trigger=trigger,
        task_id=task_id or "",
        status=ScanStatus.SKIPPED,
        reason=reason,
        started_at=now,
        finished_at=now,
        heartbeat_at=now,
        observed_at=now,
    )


def _fail(scan: ScanRun, reason: str) -> None:
    scan.status = ScanStatus.FAILED
    scan.reason = reason[:4000]
    scan.finished_at = timezone.now()
    scan.save(
        update_fields=["status", "reason", "finished_at", "pages", "pods", "containers", "timings"]
    )
    Cluster.objects.filter(pk=scan.cluster_id).update(last_scan=scan)


class _Progress:
    """Throttled progress writes: one UPDATE every few seconds, not one per page."""

    def __init__(self, scan: ScanRun, client: kube.ClusterClient, every: float = 2.0):
        self.scan, self.client, self.every = scan, client, every
        self._last = time.monotonic()

    def tick(self, pods: int) -> None:
        if time.monotonic() - self._last < self.every:
            return
        self._last = time.monotonic()
        ScanRun.objects.filter(pk=self.scan.pk).update(
            pages=self.client.pages, pods=pods, heartbeat_at=timezone.now()
        )


# --- the pipeline: pages -> gate -> image users -> evaluate -> group -----------------------

Pages = Iterable[list[dict] | kube.Restart]


@dataclass
class Collected:
    """What one listing (or snapshot) gave: pods grouped by workload container, the
    objects the gate rejected, and the workloads of rejected pods (kept as they are)."""

    grouping: Grouping = field(default_factory=Grouping)
    rejections: gate.Rejections = field(default_factory=gate.Rejections)
    kept: set[tuple[str, str, str]] = field(default_factory=set)


def index_owners(pages: Pages, kind: str, owners: OwnerIndex) -> gate.Rejections:
    """ReplicaSets or Jobs into the owner index; what the gate rejects is counted."""
    rejections = gate.Rejections()
    for page in pages:
        if page is kube.RESTART:  # the list starts over; index entries may stay
            rejections = gate.Rejections()
            continue
        for obj in page:
            try:
                gate.check_owner(obj)
            except gate.Rejected as e:
                rejections.add(kind, obj, e)
                continue
            owners.add(kind, obj)
    return rejections


class NoLookups:
    """Image users for a pipeline without registries (benchmarks): none are known."""

    notes: dict[str, str] = {}

    def prepare(self, pods: list[dict]) -> None:
        pass

    def accounts_for(self, pod: dict) -> dict[str, dict]:
        return {}

    def users_for(self, pod: dict) -> tuple[dict[str, str], dict[str, str]]:
        return {}, {}


def collect_pods(
    pages: Pages,
    owners: OwnerIndex,
    resolver: images.ImageResolver | NoLookups,
    progress: Callable[[int], None] = lambda pods: None,
) -> Collected:
    """Each page of pods: through the gate, image users looked up for the page, each pod
    evaluated, then grouped under its workload."""
    out = Collected()
    for page in pages:
        if page is kube.RESTART:  # the list starts over: so does what it gave
            out = Collected()
            continue
        pods = []
        for pod in page:
            try:
                gate.check_pod(pod)
                pods.append(pod)
            except gate.Rejected as e:
                _reject(out, owners, pod, e)
        resolver.prepare(pods)
        for pod in pods:
            try:
                verdict = runas.evaluate_pod(pod, *resolver.users_for(pod))
            except ValueError as e:  # the evaluator's own checks of securityContext etc.
                _reject(out, owners, pod, e)
                continue
            kind, name = owners.workload_of(pod)
            out.grouping.add(kind, name, verdict, resolver.notes, resolver.accounts_for(pod))
        progress(out.grouping.pods)
    return out


def _reject(out: Collected, owners: OwnerIndex, pod: Any, error: ValueError) -> None:
    out.rejections.add("Pod", pod, error)
    try:
        gate.check_metadata(pod.get("metadata"), listed=True)
    except (gate.Rejected, AttributeError):
        return  # no name we could have stored a finding under
    kind, name = owners.workload_of(pod)
    out.kept.add((pod["metadata"]["namespace"], kind, name))


def _resolver() -> images.ImageResolver:
    return images.ImageResolver(use_registry=settings.WELKIN_REGISTRY_LOOKUPS)


def _image_timings(resolver: images.ImageResolver) -> dict[str, float]:
    return {
        "images_looked_up": resolver.lookups,
        "registry_failures": resolver.failures,
        "image_cache_hits": resolver.cache_hits,
        "registry_requests": resolver.client.requests,
        "passwd_lookups": resolver.passwd_lookups,
        "layers_read": resolver.layers_read,
        "layer_bytes": resolver.layer_bytes,
        "images_s": round(resolver.seconds, 3),
    }


def scan_cluster(
    cluster_id: int,
    *,
    trigger: str = Trigger.SCHEDULE,
    task_id: str | None = None,
    policy: kube.Policy | None = None,
) -> ScanResult:
    """Scan one cluster end to end and reconcile its findings (the task's and command's
    service)."""
    cluster = Cluster.objects.get(pk=cluster_id)
    if task_id:
        done = ScanRun.objects.filter(task_id=task_id, status=ScanStatus.SUCCEEDED).first()
        if done is not None:  # a redelivered task: the work is done
            return _result(done)
    if cluster.source == Source.SNAPSHOT:
        return ScanResult(
            None,
            cluster.name,
            ScanStatus.SKIPPED,
            "snapshot clusters are updated by import_snapshot, not scanned",
        )
    if not _try_lock(cluster.pk):
        return _result(
            _skipped(
                cluster,
                trigger,
                task_id,
                ScanRun.objects.filter(cluster=cluster, status=ScanStatus.RUNNING).first(),
            )
        )
    try:
        scan = _begin(cluster, trigger, task_id)
        if scan.status == ScanStatus.SKIPPED:
            return _result(scan)
        return _run(cluster, scan, policy or _policy())
    finally:
        _unlock(cluster.pk)


def _policy() -> kube.Policy:
    return kube.Policy(
        page_limit=settings.WELKIN_PAGE_LIMIT,
        read_timeout=settings.WELKIN_KUBE_TIMEOUT,
        page_max_bytes=settings.WELKIN_PAGE_MAX_BYTES,
        request_deadline=settings.WELKIN_KUBE_REQUEST_DEADLINE,
        scan_deadline=settings.WELKIN_SCAN_DEADLINE,
        max_pods=settings.WELKIN_SCAN_MAX_PODS,
    )


def _run(cluster: Cluster, scan: ScanRun, policy: kube.Policy) -> ScanResult:
    started = time.monotonic()
    try:
        creds = (
            kube.in_cluster_credentials()
            if cluster.source == Source.IN_CLUSTER
            else cluster.credentials
        )
        if creds is None:
            raise kube.ScanError("no credentials stored for this cluster")
        owners = OwnerIndex()
        with (
            kube.ClusterClient(creds, policy) as client,
            contextlib.closing(_resolver()) as resolver,
        ):
            progress = _Progress(scan, client)
            t0 = time.monotonic()
            owner_rejections = [
                index_owners(client.list_pages("replicasets"), "ReplicaSet", owners),
                index_owners(client.list_pages("jobs"), "Job", owners),
            ]
            t1 = time.monotonic()
            collected = collect_pods(client.list_pages("pods"), owners, resolver, progress.tick)
            t2 = time.monotonic()
            scan.pages = client.pages
        for part in owner_rejections:
            collected.rejections.merge(part)
        scan.timings = {
            "owners_s": round(t1 - t0, 3),
            "pods_s": round(t2 - t1, 3),
            **_image_timings(resolver),
        }
        _complete(cluster, scan, collected, started)
    except kube.ScanError as e:
        scan.timings["total_s"] = round(time.monotonic() - started, 3)
        _fail(scan, e.reason)
        return _result(scan, transient=e.transient)
    except Exception as e:  # a bug or an unexpected answer: recorded, never half-applied
        log.exception("scan of %s failed", cluster.name)
        _fail(scan, f"internal error: {type(e).__name__}: {e}")
        raise
    return _result(scan)


def _complete(cluster: Cluster, scan: ScanRun, collected: Collected, started: float) -> None:
    """Reconcile and mark the scan succeeded, in one transaction (rolled back whole if
    anything in it fails)."""
    t = time.monotonic()
    grouping = collected.grouping
    scan.pods, scan.containers = grouping.pods, grouping.containers
    scan.rejected = collected.rejections.count
    scan.rejections = collected.rejections.as_dict()
    at = scan.observed_at
    with transaction.atomic():  # DESIGN.md's order, all or nothing
        done = reconcile(cluster, scan, grouping.groups, collected.kept)  # findings, events
        acceptance.match_findings(cluster, done.opened, at)  # exceptions cover new findings
        acceptance.sync(done.followed)  # and follow the changed ones (the live counts)
        write_rollup(cluster, at, grouping.groups, done.activity)  # counts, activity, ranking
        outbox.record_scan(cluster, scan, done.opened, done.states_changed)  # owners hear
        scan.findings_opened, scan.findings_changed, scan.findings_resolved = done.changes
        scan.status = ScanStatus.SUCCEEDED
        scan.finished_at = timezone.now()
        scan.timings["reconcile_s"] = round(time.monotonic() - t, 3)
        scan.timings["total_s"] = round(time.monotonic() - started, 3)
        scan.save()
        Cluster.objects.filter(pk=cluster.pk).update(last_scan=scan, last_complete_scan=scan)


def _result(scan: ScanRun, transient: bool = False) -> ScanResult:
    return ScanResult(
        scan.pk,
        scan.cluster.name,
        scan.status,
        scan.reason,
        transient,
        scan.pods,
        scan.findings_opened,
        scan.findings_changed,
        scan.findings_resolved,
        (scan.timings or {}).get("total_s", 0.0),
        scan.rejected,
        rejection_summary(scan.rejections),
    )


def rejection_summary(rejections: dict | None) -> str:
    """One line for a scan's rejected objects (the scans page, the command, reports)."""
    r = rejections or {}
    if not r.get("count"):
        return ""
    part = gate.Rejections()
    part.count, part.by_reason = r["count"], Counter(r.get("by_reason") or {})
    return part.summary()


# --- offline snapshots --------------------------------------------------------------------


SNAPSHOT_EARLIEST = datetime(2014, 6, 1, tzinfo=UTC)  # before Kubernetes, no snapshot


class SnapshotError(ValueError):
    """A snapshot file that cannot be imported; nothing was stored."""


def import_snapshot(
    cluster_name: str, data: bytes, filename: str, at: datetime | None = None
) -> ScanResult:
    """Record `kubectl get pods,replicasets,jobs -A -o json` output as a complete scan of
    an air-gapped cluster (created as a snapshot cluster when new).

    The file is read, checked and evaluated before anything is written; the writes (a
    new cluster, the scan, the findings) happen in one transaction, so a failure leaves
    nothing behind: no cluster created by a failed first import, no scan left running.
    """
    if len(data) > settings.WELKIN_SNAPSHOT_MAX_BYTES:
        raise SnapshotError(
            f"{filename}: larger than {settings.WELKIN_SNAPSHOT_MAX_BYTES:,} "
            "bytes (WELKIN_SNAPSHOT_MAX_BYTES)"
        )
    if not data.strip():
        raise SnapshotError(
            f"{filename}: the file is empty, expected the output of `kubectl get "
            "pods,replicasets,jobs -A -o json`"
        )
    slim = podjson.decode_snapshot(data) if data.lstrip()[:1] == b"{" else None
    try:
        docs = [slim] if slim is not None else parse_documents(data, filename)
    except ManifestError as e:
        raise SnapshotError(str(e)) from None
    if (
        len(docs) != 1
        or not isinstance(docs[0], dict)
        or docs[0].get("kind") != "List"
        or not isinstance(docs[0].get("items"), list)
    ):
        raise SnapshotError(
            f"{filename}: expected one List, the output of `kubectl get "
            "pods,replicasets,jobs -A -o json`"
        )
    items = docs[0]["items"]
    by_kind: dict[str, list[dict]] = {"Pod": [], "ReplicaSet": [], "Job": []}
    for i, item in enumerate(items):
        kind = item.get("kind") if isinstance(item, dict) else None
        if kind not in by_kind:
            raise SnapshotError(
                f"{filename}: items[{i}]: kind {gate.show(kind)}; a snapshot "
                "holds Pods, ReplicaSets and Jobs"
            )
        by_kind[kind].append(item)
    at = at or timezone.now()
    if timezone.is_naive(at):
        raise SnapshotError("--at needs a time zone (e.g. 2026-11-28T10:00:00Z)")
    if not SNAPSHOT_EARLIEST <= at <= timezone.now() + timedelta(days=1):
        raise SnapshotError(
            f"--at {at.isoformat()}: a snapshot is from between "
            f"{SNAPSHOT_EARLIEST:%Y-%m-%d} and now"
        )
    existing = (
        Cluster.objects.filter(name=cluster_name).select_related("last_complete_scan").first()
    )
    last = existing.last_complete_scan if existing else None
    if last is not None and last.observed_at > at:
        raise SnapshotError(
            f"--at {at.isoformat()} is before the cluster's last complete "
            f"scan ({last.observed_at.isoformat()}); import snapshots in "
            "time order"
        )

    started = time.monotonic()
    owners = OwnerIndex()
    owner_rejections = [
        index_owners([by_kind[kind]], kind, owners) for kind in ("ReplicaSet", "Job")
    ]
    with contextlib.closing(_resolver()) as resolver:
        collected = collect_pods([by_kind["Pod"]], owners, resolver)
        timings = _image_timings(resolver)
    for part in owner_rejections:
        collected.rejections.merge(part)

    with transaction.atomic():
        cluster, _ = Cluster.objects.get_or_create(
            name=cluster_name, defaults={"source": Source.SNAPSHOT}
        )
        if not _try_lock(cluster.pk):
            return _result(_skipped(cluster, Trigger.SNAPSHOT, None, None))
        try:
            scan = _begin(cluster, Trigger.SNAPSHOT, None, observed_at=at)
            if scan.status == ScanStatus.SKIPPED:
                return _result(scan)
            scan.timings, scan.pages = timings, 1
            _complete(cluster, scan, collected, started)
        finally:
            _unlock(cluster.pk)
    return _result(scan)


# --- scheduling ---------------------------------------------------------------------------


def claim_due_clusters(now: datetime | None = None) -> list[tuple[int, int]]:
    """(cluster id, schedule seconds) of enabled clusters whose scan is due, each claimed by
    moving its next_scan_at forward so that a second fan-out does not enqueue it again."""
    now = now or timezone.now()
    claimed = []
    due = (
        Cluster.objects.filter(enabled=True, next_scan_at__lte=now)
        .exclude(source=Source.SNAPSHOT)
        .values_list("pk", "next_scan_at", "schedule_minutes")
    )
    for pk, next_at, minutes in due:
        if Cluster.objects.filter(pk=pk, next_scan_at=next_at).update(
            next_scan_at=now + timedelta(minutes=minutes)
        ):
            claimed.append((pk, minutes * 60))
    return claimed


def summarize(results: Iterable[ScanResult]) -> list[str]:
    lines = []
    for r in results:
        if r.status == ScanStatus.SUCCEEDED:
            lines.append(
                f"{r.cluster}: {r.pods} pods, {r.opened} opened, {r.changed} changed,"
                f" {r.resolved} resolved in {r.seconds:.1f} s"
            )
        else:
            lines.append(f"{r.cluster}: {r.status}: {r.reason}")
        if r.rejected:
            lines.append(
                f"{r.cluster}: {r.rejected_summary}; see the scans page or "
                f"/api/v1/scans/{r.scan_id}/ for examples"
            )
    return lines


# --- tasks (names pinned: routes, beat entries and messages already queued use them) -----


@shared_task(
    name="compliance.tasks.scan_cluster",
    bind=True,
    acks_late=True,
    max_retries=2,
    time_limit=settings.WELKIN_SCAN_TIME_LIMIT,
    soft_time_limit=settings.WELKIN_SCAN_TIME_LIMIT - 5,
)
def scan_cluster_task(self, cluster_id: int, trigger: str = Trigger.SCHEDULE) -> dict:
    """Scan one cluster. Safe to deliver twice: a succeeded task id is not run again, and a
    concurrent one is recorded as skipped. Transient failures (5xx, timeouts, throttling)
    are retried with backoff."""
    result = scan_cluster(cluster_id, trigger=trigger, task_id=self.request.id)
    # In-process (eager) runs record the failure and stop: a retry would raise into the
    # request that asked for the scan.
    if result.transient and not self.request.is_eager and self.request.retries < self.max_retries:
        raise self.retry(countdown=30 * 2**self.request.retries)
    return result.as_dict()


@shared_task(name="compliance.tasks.enqueue_due_scans")
def enqueue_due_scans() -> int:
    """Beat's fan-out: one scan task per due cluster, expiring with its schedule."""
    claimed = claim_due_clusters()
    for cluster_id, schedule_seconds in claimed:
        workers.send(scan_cluster_task, cluster_id, expires=schedule_seconds)
    return len(claimed)
