"""The scan service: collect -> evaluate -> group -> reconcile -> rollup.

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
import os
import socket
import time
from collections import Counter
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from django.conf import settings
from django.db import IntegrityError, connection, transaction
from django.utils import timezone

from compliance import gate, images, kube
from compliance.manifests import ManifestError, parse_documents
from compliance.models import (
    Cluster,
    ClusterRollup,
    DailyActivity,
    DailyRollup,
    Finding,
    FindingEvent,
    ScanRun,
    ScanStatus,
    Source,
    State,
)
from compliance.workloads import Group, OwnerIndex, OwnerSink, PodAggregator

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


def _worker_id() -> str:
    return f"{socket.gethostname()}:{os.getpid()}"


def _holder_dead(cluster_id: int) -> bool:
    """Is the running scan's worker a process on this host that no longer exists?"""
    worker = (ScanRun.objects.filter(cluster_id=cluster_id, status=ScanStatus.RUNNING)
              .values_list("worker", flat=True).first())
    host, _, pid = (worker or "").rpartition(":")
    if host != socket.gethostname() or not pid.isdigit() or int(pid) == os.getpid():
        return False
    return _process_gone(int(pid))


def _process_gone(pid: int) -> bool:
    """No such process, or a zombie (killed, not yet reaped: a pool process whose parent
    died too waits for an init that may reap late)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    except PermissionError:
        return False
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            return f.read().rsplit(b")", 1)[1].split()[0] == b"Z"
    except (OSError, IndexError):
        return False


def _unlock(cluster_id: int) -> None:
    if _uses_advisory_locks():
        with connection.cursor() as cur:
            cur.execute("SELECT pg_advisory_unlock(%s, %s)", [LOCK_NAMESPACE, cluster_id])


def _begin(cluster: Cluster, trigger: str, task_id: str | None,
           observed_at: datetime | None = None) -> ScanRun:
    """A running ScanRun, or a skipped one when another scan of the cluster runs."""
    now = timezone.now()
    stale = now - timedelta(seconds=settings.WELKIN_SCAN_STALE_SECONDS)
    with transaction.atomic():
        running = (ScanRun.objects.select_for_update()
                   .filter(cluster=cluster, status=ScanStatus.RUNNING).first())
        # Holding the advisory lock means no one else runs this cluster: a running row
        # is left by a worker that died. Without advisory locks (SQLite), only a stale
        # heartbeat says so.
        if running is not None and (_uses_advisory_locks() or running.heartbeat_at < stale):
            running.status = ScanStatus.FAILED
            running.reason = ("interrupted: the worker running this scan stopped "
                              f"(last progress {running.heartbeat_at:%Y-%m-%d %H:%M:%S} UTC)")
            running.finished_at = now
            running.save(update_fields=["status", "reason", "finished_at"])
        elif running is not None:
            return _skipped(cluster, trigger, task_id, running)
        try:
            with transaction.atomic():
                return ScanRun.objects.create(cluster=cluster, trigger=trigger,
                                              task_id=task_id or "", started_at=now,
                                              worker=_worker_id(),
                                              heartbeat_at=now,
                                              observed_at=observed_at or now)
        except IntegrityError:
            running = ScanRun.objects.filter(cluster=cluster,
                                             status=ScanStatus.RUNNING).first()
            return _skipped(cluster, trigger, task_id, running)


def _skipped(cluster: Cluster, trigger: str, task_id: str | None,
             running: ScanRun | None) -> ScanRun:
    now = timezone.now()
    reason = "another scan of this cluster is running" + (
        f" (scan {running.pk}, started {running.started_at:%H:%M:%S} UTC)" if running else "")
    return ScanRun.objects.create(cluster=cluster, trigger=trigger, task_id=task_id or "",
                                  status=ScanStatus.SKIPPED, reason=reason, started_at=now,
                                  finished_at=now, heartbeat_at=now, observed_at=now)


def _fail(scan: ScanRun, reason: str) -> None:
    scan.status = ScanStatus.FAILED
    scan.reason = reason[:4000]
    scan.finished_at = timezone.now()
    scan.save(update_fields=["status", "reason", "finished_at", "pages", "pods",
                             "containers", "timings"])
    Cluster.objects.filter(pk=scan.cluster_id).update(last_scan=scan)


class _Progress:
    """Throttled progress writes: one UPDATE every few seconds, not one per page."""

    def __init__(self, scan: ScanRun, agg: PodAggregator, client: kube.ClusterClient,
                 every: float = 2.0):
        self.scan, self.agg, self.client, self.every = scan, agg, client, every
        self._last = time.monotonic()

    def tick(self) -> None:
        if time.monotonic() - self._last < self.every:
            return
        self._last = time.monotonic()
        ScanRun.objects.filter(pk=self.scan.pk).update(
            pages=self.client.pages, pods=self.agg.pods, heartbeat_at=timezone.now())


class _ProgressSink:
    def __init__(self, inner: Any, progress: _Progress):
        self.inner, self.progress = inner, progress

    def reset(self) -> None:
        self.inner.reset()

    def add(self, items: list[dict]) -> None:
        self.inner.add(items)
        self.progress.tick()


def _aggregator(owners: OwnerIndex, resolver: images.ImageResolver) -> PodAggregator:
    return PodAggregator(owners, resolver.users, resolver.sources, resolver.notes,
                         prepare=resolver.prepare, users_for=resolver.users_for)


def _resolver() -> images.ImageResolver:
    return images.ImageResolver(use_registry=settings.WELKIN_REGISTRY_LOOKUPS)


def _image_timings(resolver: images.ImageResolver) -> dict[str, float]:
    return {"images_looked_up": resolver.lookups, "image_cache_hits": resolver.cache_hits,
            "registry_requests": resolver.client.requests,
            "images_s": round(resolver.seconds, 3)}


def scan_cluster(cluster_id: int, *, trigger: str = "schedule", task_id: str | None = None,
                 policy: kube.Policy | None = None) -> ScanResult:
    """Scan one cluster end to end and reconcile its findings (the task's and command's
    service)."""
    cluster = Cluster.objects.get(pk=cluster_id)
    if task_id:
        done = ScanRun.objects.filter(task_id=task_id, status=ScanStatus.SUCCEEDED).first()
        if done is not None:  # a redelivered task: the work is done
            return _result(done)
    if cluster.source == Source.SNAPSHOT:
        return ScanResult(None, cluster.name, ScanStatus.SKIPPED,
                          "snapshot clusters are updated by import_snapshot, not scanned")
    if not _try_lock(cluster.pk):
        return _result(_skipped(cluster, trigger, task_id, ScanRun.objects.filter(
            cluster=cluster, status=ScanStatus.RUNNING).first()))
    try:
        scan = _begin(cluster, trigger, task_id)
        if scan.status == ScanStatus.SKIPPED:
            return _result(scan)
        return _run(cluster, scan, policy or _policy())
    finally:
        _unlock(cluster.pk)


def _policy() -> kube.Policy:
    return kube.Policy(page_limit=settings.WELKIN_PAGE_LIMIT,
                       read_timeout=settings.WELKIN_KUBE_TIMEOUT,
                       page_max_bytes=settings.WELKIN_PAGE_MAX_BYTES,
                       request_deadline=settings.WELKIN_KUBE_REQUEST_DEADLINE,
                       scan_deadline=settings.WELKIN_SCAN_DEADLINE,
                       max_pods=settings.WELKIN_SCAN_MAX_PODS)


def _run(cluster: Cluster, scan: ScanRun, policy: kube.Policy) -> ScanResult:
    started = time.monotonic()
    try:
        creds = (kube.in_cluster_credentials() if cluster.source == Source.IN_CLUSTER
                 else cluster.credentials)
        if creds is None:
            raise kube.ScanError("no credentials stored for this cluster")
        owners = OwnerIndex()
        owner_sinks = [OwnerSink(owners, "ReplicaSet"), OwnerSink(owners, "Job")]
        resolver = _resolver()
        agg = _aggregator(owners, resolver)
        with kube.ClusterClient(creds, policy) as client, contextlib.closing(resolver):
            progress = _Progress(scan, agg, client)
            t0 = time.monotonic()
            client.list_all("replicasets", _ProgressSink(owner_sinks[0], progress))
            client.list_all("jobs", _ProgressSink(owner_sinks[1], progress))
            t1 = time.monotonic()
            client.list_all("pods", _ProgressSink(agg, progress))
            t2 = time.monotonic()
            scan.pages = client.pages
        scan.timings = {"owners_s": round(t1 - t0, 3), "pods_s": round(t2 - t1, 3),
                        **_image_timings(resolver)}
        _complete(cluster, scan, agg, owner_sinks, started)
    except kube.ScanError as e:
        scan.timings["total_s"] = round(time.monotonic() - started, 3)
        _fail(scan, e.reason)
        return _result(scan, transient=e.transient)
    except Exception as e:  # a bug or an unexpected answer: recorded, never half-applied
        log.exception("scan of %s failed", cluster.name)
        _fail(scan, f"internal error: {type(e).__name__}: {e}")
        raise
    return _result(scan)


def _complete(cluster: Cluster, scan: ScanRun, agg: PodAggregator,
              owner_sinks: list[OwnerSink], started: float) -> None:
    """Reconcile and mark the scan succeeded, in one transaction (rolled back whole if
    anything in it fails)."""
    t = time.monotonic()
    scan.pods, scan.containers = agg.pods, agg.containers
    rejections = gate.Rejections()
    for part in (*(sink.rejections for sink in owner_sinks), agg.rejections):
        rejections.merge(part)
    scan.rejected, scan.rejections = rejections.count, rejections.as_dict()
    with transaction.atomic():
        opened, changed, resolved = reconcile(cluster, scan, agg.groups, agg.kept)
        write_rollup(cluster, scan.observed_at, agg.groups)
        scan.findings_opened, scan.findings_changed, scan.findings_resolved = \
            opened, changed, resolved
        scan.status = ScanStatus.SUCCEEDED
        scan.finished_at = timezone.now()
        scan.timings["reconcile_s"] = round(time.monotonic() - t, 3)
        scan.timings["total_s"] = round(time.monotonic() - started, 3)
        scan.save()
        Cluster.objects.filter(pk=cluster.pk).update(last_scan=scan, last_complete_scan=scan)


def _result(scan: ScanRun, transient: bool = False) -> ScanResult:
    return ScanResult(
        scan.pk, scan.cluster.name, scan.status, scan.reason, transient, scan.pods,
        scan.findings_opened, scan.findings_changed, scan.findings_resolved,
        (scan.timings or {}).get("total_s", 0.0), scan.rejected,
        rejection_summary(scan.rejections))


def rejection_summary(rejections: dict | None) -> str:
    """One line for a scan's rejected objects (the scans page, the command, reports)."""
    r = rejections or {}
    if not r.get("count"):
        return ""
    part = gate.Rejections()
    part.count, part.by_reason = r["count"], Counter(r.get("by_reason") or {})
    return part.summary()


# --- reconcile ----------------------------------------------------------------------------

# Finding fields that, when they differ, are written (without an event unless `state`).
TRACKED = ("state", "pods", "mixed", "image", "container_type", "runs_as_root", "evidence",
           "image_user", "image_user_source", "uid", "run_as_user", "run_as_non_root")


def _values(g: Group) -> dict[str, Any]:
    c = g.worst
    assert c is not None
    return {
        "state": c.state, "pods": g.pods, "mixed": len(g.states) > 1, "image": c.image[:1000],
        "container_type": c.type, "runs_as_root": c.runs_as_root, "evidence": c.evidence,
        "image_user": c.image_user[:255] if c.image_user is not None else None,
        "image_user_source": c.image_user_source, "uid": c.uid, "run_as_user": c.run_as_user,
        "run_as_non_root": c.run_as_non_root, "kubelet_error": c.kubelet_error or "",
        "detail": {"pod": g.worst_pod, "psa_violations": g.psa, "states": dict(g.states),
                   "windows": c.windows, "run_as_user_name": c.run_as_user_name,
                   "run_as_user_from": c.run_as_user_from,
                   "run_as_non_root_from": c.run_as_non_root_from, "image_note": g.note},
    }


def reconcile(cluster: Cluster, scan: ScanRun, groups: Mapping[tuple, Group],
              kept: set[tuple[str, str, str]] = frozenset()) -> tuple[int, int, int]:
    """Apply a complete scan's groups to the cluster's open findings.

    new -> open; state changed -> event; other tracked facts changed -> row updated;
    gone or compliant -> resolved with an event; unchanged -> nothing written. Findings
    of workloads in `kept` (a pod of theirs was rejected by the gate) stay as they are.
    """
    at = scan.observed_at
    existing = {
        (ns, kind, name, container): (pk, vals, first_seen)
        for pk, ns, kind, name, container, first_seen, *vals in Finding.objects.filter(
            cluster=cluster, resolved_at__isnull=True).values_list(
            "pk", "namespace", "workload_kind", "workload_name", "container", "first_seen",
            *TRACKED).iterator(chunk_size=5000)
    }
    new: list[Finding] = []
    changed: list[Finding] = []
    touched: list[Finding] = []
    events: list[FindingEvent] = []
    for key, g in groups.items():
        if g.state == State.COMPLIANT:
            continue
        values = _values(g)
        found = existing.pop(key, None)
        if found is None:
            new.append(Finding(cluster=cluster, namespace=key[0], workload_kind=key[1],
                               workload_name=key[2][:253], container=key[3], first_seen=at,
                               last_changed=at, **values))
            continue
        pk, old, _ = found
        old_state = old[0]
        if tuple(values[f] for f in TRACKED) == tuple(old):
            continue
        if old_state != values["state"]:
            changed.append(Finding(pk=pk, last_changed=at, **values))
            events.append(FindingEvent(finding_id=pk, scan=scan, kind="changed",
                                       from_state=old_state, to_state=values["state"], at=at))
        else:  # same state, other facts (pod count, image...): no event
            touched.append(Finding(pk=pk, **values))
    created = Finding.objects.bulk_create(new, batch_size=2000)
    events.extend(FindingEvent(finding_id=f.pk, scan=scan, kind="opened",
                               to_state=f.state, at=at) for f in created)
    fields = [*TRACKED, "kubelet_error", "detail"]
    _update_findings(touched, fields)
    _update_findings(changed, [*fields, "last_changed"])
    for key in [k for k in existing if k[:3] in kept]:
        del existing[key]
    gone = [(pk, old[0]) for pk, old, _ in existing.values()]
    for i in range(0, len(gone), 5000):
        Finding.objects.filter(pk__in=[pk for pk, _ in gone[i:i + 5000]]).update(
            resolved_at=at, last_changed=at)
    events.extend(FindingEvent(finding_id=pk, scan=scan, kind="resolved", from_state=state,
                               at=at) for pk, state in gone)
    FindingEvent.objects.bulk_create(events, batch_size=5000)
    activity: dict[str, list[int]] = {}
    for f in created:
        activity.setdefault(f.namespace, [0, 0, 0])[0] += 1
    for key, (_, _, first_seen) in existing.items():
        a = activity.setdefault(key[0], [0, 0, 0])
        a[1] += 1
        a[2] += max(0, int((at - first_seen).total_seconds()))
    _add_activity(cluster, at, activity)
    return len(created), len(changed), len(gone)


def _add_activity(cluster: Cluster, at: datetime, activity: dict[str, list[int]]) -> None:
    """Add the day's opened/resolved counts; nothing is written when nothing changed."""
    if not activity:
        return
    table = DailyActivity._meta.db_table
    day = timezone.localdate(at)
    rows = [(cluster.pk, day, ns, o, r, secs) for ns, (o, r, secs) in activity.items()]
    with connection.cursor() as cur:
        for i in range(0, len(rows), 1000):
            chunk = rows[i:i + 1000]
            cur.execute(
                f"INSERT INTO {table} (cluster_id, day, namespace, opened, resolved, "
                f"remediation_seconds) VALUES {','.join(['(%s,%s,%s,%s,%s,%s)'] * len(chunk))} "
                "ON CONFLICT (cluster_id, namespace, day) DO UPDATE SET "
                f"opened = {table}.opened + excluded.opened, "
                f"resolved = {table}.resolved + excluded.resolved, "
                f"remediation_seconds = {table}.remediation_seconds "
                "+ excluded.remediation_seconds",
                [v for row in chunk for v in row])


def _update_findings(objs: list[Finding], fields: list[str]) -> None:
    """Update many findings, each with its own values.

    On PostgreSQL one UPDATE ... FROM (VALUES ...) per 1000 rows: Django's bulk_update
    builds a CASE per field and row, which took 18 s for 10,000 findings changing state
    (say, when registry lookups first decide a fleet's unverified images).
    """
    if not objs:
        return
    if connection.vendor != "postgresql":
        Finding.objects.bulk_update(objs, fields, batch_size=500)
        return
    from psycopg2.extras import execute_values

    cols = [Finding._meta.get_field(f) for f in fields]
    sets = ", ".join(f'"{c.column}" = v."{c.column}"::{c.db_type(connection)}' for c in cols)
    names = ", ".join(f'"{c.column}"' for c in cols)
    sql = (f'UPDATE "{Finding._meta.db_table}" AS f SET {sets} '
           f'FROM (VALUES %s) AS v(id, {names}) WHERE f.id = v.id')
    rows = [(o.pk, *(c.get_db_prep_save(getattr(o, c.attname), connection) for c in cols))
            for o in objs]
    with connection.cursor() as cur:
        execute_values(cur.cursor, sql, rows, page_size=1000)


def write_rollup(cluster: Cluster, at: datetime, groups: Mapping[tuple, Group]) -> int:
    """Upsert the day's counts per (namespace, state) and per state for the cluster; rows
    whose counts are unchanged are not written, so an unchanged rescan writes nothing."""
    day = timezone.localdate(at)
    counts: dict[tuple[str, str], list[int]] = {}
    for (ns, _, _, _), g in groups.items():
        c = counts.setdefault((ns, g.state), [0, 0])
        c[0] += 1
        c[1] += g.pods
    # Namespace/state pairs that had rows today but are gone now drop to zero.
    for ns, state in DailyRollup.objects.filter(cluster=cluster, day=day).exclude(
            containers=0, pods=0).values_list("namespace", "state"):
        counts.setdefault((ns, state), [0, 0])
    totals: dict[str, list[int]] = {s: [0, 0] for s in State.values}
    for (_, state), (c, p) in counts.items():
        totals[state][0] += c
        totals[state][1] += p
    written = _upsert_counts(DailyRollup._meta.db_table, "namespace, state",
                             [(cluster.pk, day, ns, state, c, p)
                              for (ns, state), (c, p) in counts.items()])
    return written + _upsert_counts(ClusterRollup._meta.db_table, "state",
                                    [(cluster.pk, day, state, c, p)
                                     for state, (c, p) in totals.items()])


def _upsert_counts(table: str, key: str, rows: list[tuple]) -> int:
    """INSERT ... ON CONFLICT DO UPDATE, only where containers or pods differ."""
    written = 0
    with connection.cursor() as cur:
        for i in range(0, len(rows), 1000):
            chunk = rows[i:i + 1000]
            one = "(" + ", ".join(["%s"] * len(chunk[0])) + ")"
            cur.execute(
                f"INSERT INTO {table} (cluster_id, day, {key}, containers, pods) "
                f"VALUES {', '.join([one] * len(chunk))} "
                f"ON CONFLICT (cluster_id, {key}, day) DO UPDATE "
                "SET containers = excluded.containers, pods = excluded.pods "
                f"WHERE {table}.containers <> excluded.containers "
                f"OR {table}.pods <> excluded.pods",
                [v for row in chunk for v in row])
            written += max(cur.rowcount, 0)
    return written


# --- offline snapshots --------------------------------------------------------------------

class SnapshotError(ValueError):
    """A snapshot file that cannot be imported; nothing was stored."""


def import_snapshot(cluster_name: str, data: bytes, filename: str,
                    at: datetime | None = None) -> ScanResult:
    """Record `kubectl get pods,replicasets,jobs -A -o json` output as a complete scan of
    an air-gapped cluster (created as a snapshot cluster when new).

    The file is read, checked and evaluated before anything is written; the writes (a
    new cluster, the scan, the findings) happen in one transaction, so a failure leaves
    nothing behind: no cluster created by a failed first import, no scan left running.
    """
    try:
        docs = parse_documents(data, filename)
    except ManifestError as e:
        raise SnapshotError(str(e)) from None
    if len(docs) != 1 or not isinstance(docs[0], dict) or docs[0].get("kind") != "List" \
            or not isinstance(docs[0].get("items"), list):
        raise SnapshotError(f"{filename}: expected one List, the output of `kubectl get "
                            "pods,replicasets,jobs -A -o json`")
    items = docs[0]["items"]
    by_kind: dict[str, list[dict]] = {"Pod": [], "ReplicaSet": [], "Job": []}
    for i, item in enumerate(items):
        kind = item.get("kind") if isinstance(item, dict) else None
        if kind not in by_kind:
            raise SnapshotError(f"{filename}: items[{i}]: kind {gate.show(kind)}; a snapshot "
                                "holds Pods, ReplicaSets and Jobs")
        by_kind[kind].append(item)
    at = at or timezone.now()
    if timezone.is_naive(at):
        raise SnapshotError("--at needs a time zone (e.g. 2026-11-28T10:00:00Z)")
    existing = Cluster.objects.filter(name=cluster_name).select_related(
        "last_complete_scan").first()
    last = existing.last_complete_scan if existing else None
    if last is not None and last.observed_at > at:
        raise SnapshotError(f"--at {at.isoformat()} is before the cluster's last complete "
                            f"scan ({last.observed_at.isoformat()}); import snapshots in "
                            "time order")

    started = time.monotonic()
    owners = OwnerIndex()
    owner_sinks = [OwnerSink(owners, "ReplicaSet"), OwnerSink(owners, "Job")]
    for sink, kind in zip(owner_sinks, ("ReplicaSet", "Job"), strict=True):
        sink.add(by_kind[kind])
    with contextlib.closing(_resolver()) as resolver:
        agg = _aggregator(owners, resolver)
        agg.add(by_kind["Pod"])
        timings = _image_timings(resolver)

    with transaction.atomic():
        cluster, _ = Cluster.objects.get_or_create(name=cluster_name,
                                                   defaults={"source": Source.SNAPSHOT})
        if not _try_lock(cluster.pk):
            return _result(_skipped(cluster, "snapshot", None, None))
        try:
            scan = _begin(cluster, "snapshot", None, observed_at=at)
            if scan.status == ScanStatus.SKIPPED:
                return _result(scan)
            scan.timings, scan.pages = timings, 1
            _complete(cluster, scan, agg, owner_sinks, started)
        finally:
            _unlock(cluster.pk)
    return _result(scan)


# --- scheduling ---------------------------------------------------------------------------

def claim_due_clusters(now: datetime | None = None) -> list[tuple[int, int]]:
    """(cluster id, schedule seconds) of enabled clusters whose scan is due, each claimed by
    moving its next_scan_at forward so that a second fan-out does not enqueue it again."""
    now = now or timezone.now()
    claimed = []
    due = Cluster.objects.filter(enabled=True, next_scan_at__lte=now).exclude(
        source=Source.SNAPSHOT).values_list("pk", "next_scan_at", "schedule_minutes")
    for pk, next_at, minutes in due:
        if Cluster.objects.filter(pk=pk, next_scan_at=next_at).update(
                next_scan_at=now + timedelta(minutes=minutes)):
            claimed.append((pk, minutes * 60))
    return claimed


def summarize(results: Iterable[ScanResult]) -> list[str]:
    lines = []
    for r in results:
        if r.status == ScanStatus.SUCCEEDED:
            lines.append(f"{r.cluster}: {r.pods} pods, {r.opened} opened, {r.changed} changed,"
                         f" {r.resolved} resolved in {r.seconds:.1f} s")
        else:
            lines.append(f"{r.cluster}: {r.status}: {r.reason}")
        if r.rejected:
            lines.append(f"{r.cluster}: {r.rejected_summary}; see the scans page or "
                         f"/api/v1/scans/{r.scan_id}/ for examples")
    return lines
