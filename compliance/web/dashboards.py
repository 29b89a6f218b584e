"""Queries for the dashboard, one function per screen, each filtered through access.py.

Counts and trends read the daily rollups (never COUNT over findings); lists use keyset
pagination; each screen's query count is pinned by a test. The fleet overview is cached
per completed scan: a new scan anywhere changes the key.

Exceptions are applied when read (compliance/risk/acceptance.py): the rollups count every
non-compliant container and, of them, those accepted when the scan ran; "open" is the count
less the accepted. A cluster where an exception changed or ended since its last scan is
counted live instead (acceptance.freshness). A cached overview also keys on the
exceptions' version and is used only until the next end date of an exception in force, so
it is right to the second without any job.
"""

from __future__ import annotations

import base64
import datetime as dt
import pickle
from collections import defaultdict
from dataclasses import dataclass
from typing import Any

import orjson
from django.core.cache import cache
from django.db import connection
from django.db.models import Max, Q, Sum
from django.utils import timezone

from compliance import params
from compliance.collect.rollups import before_filter, clusters_by, namespace_changes_sql
from compliance.identity import access
from compliance.identity.access import Scope
from compliance.models import (
    Cluster,
    ClusterRollup,
    DailyActivity,
    DailyRollup,
    ExceptionEvent,
    Finding,
    FindingEvent,
    RiskException,
    ScanRun,
    ScanStatus,
)
from compliance.risk import acceptance
from compliance.rules import controls
from compliance.vocabulary import (
    FINDING_KINDS,
    NONCOMPLIANT,
    REQUESTED,
    STATE,
    STATES_BY_SEVERITY,
)

STATES = STATES_BY_SEVERITY  # display order: worst first
PAGE_SIZE = 50


def stale_after(cluster: Cluster) -> dt.timedelta:
    """A cluster whose last complete scan is older than this stands out."""
    return max(cluster.schedule * 3, dt.timedelta(hours=1))


def _latest_days(clusters: list[Cluster]) -> dict[int, dt.date]:
    return {
        c.pk: timezone.localdate(c.last_complete_scan.observed_at)
        for c in clusters
        if c.last_complete_scan_id
    }


def _day_filter(days: dict[int, dt.date]) -> Q:
    """Rows of each cluster's own day: one condition per distinct day (usually one for the
    whole fleet), not per cluster (building a filter of 50 costs more than the query)."""
    q = Q(pk__in=[])
    for day, ids in clusters_by(days).items():
        q |= Q(cluster_id__in=ids, day=day)
    return q


def _counts(scope: Scope, cluster: Cluster | None = None, namespace: str | None = None):
    """Rollup rows for a view: per cluster (few rows) when the scope is the whole fleet and
    no namespace is asked for; per namespace, filtered by the scope, otherwise."""
    if scope.fleet and namespace is None:
        qs = ClusterRollup.objects.all()
    else:
        qs = DailyRollup.objects.filter(scope.q())
        if namespace is not None:
            qs = qs.filter(namespace=namespace)
    return qs.filter(cluster=cluster) if cluster is not None else qs


@dataclass(frozen=True)
class Markers:
    """What the cached fleet overview depends on, read in one query on every request: the
    last completed scan, the exceptions' version, and requests waiting for an officer."""

    scan: int
    exceptions: int
    pending: int


def _markers() -> Markers:
    cluster, event, exc = (m._meta.db_table for m in (Cluster, ExceptionEvent, RiskException))
    with connection.cursor() as cur:
        cur.execute(
            f"SELECT (SELECT MAX(last_complete_scan_id) FROM {cluster}), "
            f"(SELECT MAX(id) FROM {event}), "
            f"(SELECT COUNT(*) FROM {exc} WHERE decision = %s AND ends_at > %s)",
            [REQUESTED, connection.ops.adapt_datetimefield_value(timezone.now())],
        )
        scan, version, pending = cur.fetchone()
    return Markers(scan or 0, version or 0, pending or 0)


# --- fleet ------------------------------------------------------------------------------

# The cached overview is pickled (the shared Redis cache of every web process): a new
# shape, or a class of it that moves, gets a new number, so processes running the code
# before and after an upgrade never read each other's entries.
FLEET_CACHE_SHAPE = 2


def _cached(key: str) -> dict[str, Any] | None:
    """The cached overview, or None when there is none or it cannot be read back (written
    by code whose classes have since moved): then it is built again, never a 500."""
    try:
        return cache.get(key)
    except (ImportError, AttributeError, pickle.UnpicklingError, EOFError):
        return None


def fleet_overview(scope: Scope) -> dict[str, Any]:
    """The fleet page: per control, per cluster, what got worse, top namespaces, trends."""
    markers = _markers()
    key = f"fleet:v{FLEET_CACHE_SHAPE}:{scope.key}:{markers.scan}:{markers.exceptions}"
    data = _cached(key)
    now = timezone.now()
    if data is None or not data["accepted"].fresh(now):
        data = _fleet_overview(scope, markers.exceptions)
        cache.set(key, data, 3600)
    data["pending"] = markers.pending
    # Ages move on while the data is cached: they are worked out for each request.
    for row in data["clusters"]:
        last = row["last_complete"]
        row["age"] = now - last.observed_at if last else None
        row["stale"] = row["age"] is None or row["age"] > stale_after(row["cluster"])
    return data


def _fleet_overview(scope: Scope, version: int) -> dict[str, Any]:
    now = timezone.now()
    clusters = list(
        access.clusters(scope)
        .select_related("last_complete_scan", "last_scan")
        .annotate(**acceptance.freshness_annotations(now))
    )
    fresh = acceptance.freshness(clusters, now)
    # Live counts only where the rollups' (as of the scan) may be out of date.
    live = (
        acceptance.accepted_counts(scope, at=now, cluster_ids=fresh.dirty)
        if fresh.dirty
        else acceptance.Accepted({}, None, 0)
    )
    accepted_counts: dict[tuple[int, str, str], int] = defaultdict(int, live.counts)
    today = _latest_days(clusters)
    # Each cluster's last rollup day at least a week before its latest.
    # (From the per-cluster rollups when the scope allows: a few rows per cluster and day.)
    week_ago = _week_ago(_counts(scope), today)
    rollups = DailyRollup.objects.filter(scope.q())
    by_cluster: dict[int, dict[str, int]] = defaultdict(lambda: dict.fromkeys(STATES, 0))
    pods_by_state: dict[str, int] = dict.fromkeys(STATES, 0)

    def count(cluster_id: int, ns: str, state: str, n: int, pods: int, a: int) -> None:
        by_cluster[cluster_id][state] += n
        pods_by_state[state] += pods
        if cluster_id not in fresh.dirty:
            accepted_counts[cluster_id, ns, state] += a

    if scope.fleet and connection.vendor == "postgresql" and today:
        # Per-cluster rollups for the counts; namespaces ranked in PostgreSQL.
        for cluster_id, state, n, pods, a in (
            _counts(scope)
            .filter(_day_filter(today))
            .values("cluster_id", "state")
            .annotate(n=Sum("containers"), p=Sum("pods"), a=Sum("accepted"))
            .values_list("cluster_id", "state", "n", "p", "a")
        ):
            count(cluster_id, "*", state, n, pods, a)
        ns_rows = namespace_changes_sql(
            {c.pk: c.name for c in clusters},
            today,
            week_ago,
            _by_namespace(live),
            fresh.dirty,
            stored=True,
        )
    else:
        # One query for both: each namespace's rows on its cluster's latest day and on
        # the day a week before.
        detail = list(
            rollups.filter(_day_filter(today) | _day_filter(week_ago))
            .values("cluster_id", "namespace", "day", "state")
            .annotate(n=Sum("containers"), p=Sum("pods"), a=Sum("accepted"))
            .order_by()
            .values_list("cluster_id", "namespace", "day", "state", "n", "p", "a")
        )
        for cluster_id, ns, day, state, n, pods, a in detail:
            if day == today.get(cluster_id):
                count(cluster_id, ns, state, n, pods, a)
        ns_rows = _namespace_changes(clusters, today, week_ago, detail, live, fresh.dirty)
    accepted = acceptance.Accepted(dict(accepted_counts), fresh.valid_until, version)
    # Open: not accepted by an exception in force now (counted apart).
    for cluster_id, states in accepted.by_cluster_state().items():
        for state, n in states.items():
            if cluster_id in by_cluster:
                by_cluster[cluster_id][state] -= n
    totals = {s: sum(c[s] for c in by_cluster.values()) for s in STATES}
    accepted_totals = {s: accepted.total(s) for s in STATES}

    worse_rows = sorted(
        (r for r in ns_rows if r["now"] > r["before"]),
        key=lambda r: (r["before"] - r["now"], r["namespace"], r["cluster__name"]),
    )[:10]
    # Ties broken by namespace, then cluster: the same order whichever way the rows came
    # (stored rankings or live), so the page and the API never reorder equal rows.
    top = sorted(
        (r for r in ns_rows if r["now"]),
        key=lambda r: (-r["now"], r["namespace"], r["cluster__name"]),
    )[:10]

    trend = _state_series(_counts(scope).filter(day__gte=now.date() - dt.timedelta(days=30)))
    per_control = []
    for control in controls.CONTROLS.values():
        states = [s for s in NONCOMPLIANT if control.id in controls.MAPPING[s]]
        per_control.append(
            {
                "control": control,
                "states": states,
                "containers": sum(totals[s] for s in states),
                "accepted": sum(accepted_totals[s] for s in states),
                "pods": sum(pods_by_state[s] for s in states),
                "series": [
                    sum(trend["series"][s][i] for s in states) for i in range(len(trend["days"]))
                ],
            }
        )
    # Ages (from when the scan listed the cluster) are added per request by fleet_overview.
    cluster_rows = [
        {
            "cluster": c,
            "counts": by_cluster.get(c.pk, dict.fromkeys(STATES, 0)),
            "accepted": accepted.total(cluster_id=c.pk),
            "last_complete": c.last_complete_scan,
            "failing": c.last_scan is not None and c.last_scan.status == ScanStatus.FAILED,
        }
        for c in clusters
    ]
    return {
        "controls": per_control,
        "clusters": cluster_rows,
        "totals": totals,
        "accepted": accepted,
        "accepted_total": accepted.total(),
        "open_total": sum(totals[s] for s in NONCOMPLIANT),
        "worse": worse_rows,
        "top_namespaces": top,
        "trend_days": trend["days"],
        "generated": now,
    }


def _by_namespace(accepted: acceptance.Accepted) -> dict[tuple[int, str], int]:
    """Accepted non-compliant containers per (cluster, namespace), now."""
    out: dict[tuple[int, str], int] = defaultdict(int)
    for (cluster_id, ns, state), n in accepted.counts.items():
        if state in NONCOMPLIANT:
            out[cluster_id, ns] += n
    return out


def _namespace_changes(
    clusters: list[Cluster],
    today: dict,
    week_ago: dict,
    detail: list[tuple],
    live: acceptance.Accepted,
    dirty: set[int],
) -> list[dict[str, Any]]:
    """Open (non-compliant, not accepted) containers per namespace on each cluster's latest
    day ("now": accepted as the scan saw it, or live where that changed since) and a week
    before ("before": as that day's scans saw it): the rows that can be in the top lists."""
    names = {c.pk: c.name for c in clusters}
    now_accepted = _by_namespace(live)
    per_ns: dict[tuple[int, str], dict[str, Any]] = {}
    for cluster_id, ns, day, state, n, _, a in detail:
        if state not in NONCOMPLIANT:
            continue
        row = per_ns.setdefault(
            (cluster_id, ns),
            {"cluster__name": names[cluster_id], "namespace": ns, "now": 0, "before": 0},
        )
        if day == today.get(cluster_id):
            row["now"] += n - (0 if cluster_id in dirty else a)
        if day == week_ago.get(cluster_id):
            row["before"] += n - a
    for (cluster_id, ns), row in per_ns.items():
        row["now"] -= now_accepted.get((cluster_id, ns), 0)
    return list(per_ns.values())


def _week_ago(rollups, today: dict[int, dt.date]) -> dict[int, dt.date]:
    """Each cluster's last rollup day at least a week before its day. Looked for in the
    week before that first (scanned daily, every cluster has one there: a week of rows
    read, not months), then, only for clusters with none there (new, or not scanned for
    a week), in all the days before (one more query)."""

    def last(q: Q) -> dict[int, dt.date]:
        return dict(
            rollups.filter(q)
            .values("cluster_id")
            .annotate(d=Max("day"))
            .values_list("cluster_id", "d")
        )

    week = dt.timedelta(days=7)
    recent = Q(pk__in=[])
    for day, ids in clusters_by(today).items():
        limit = max(day, dt.date.min + 2 * week) - week
        recent |= Q(cluster_id__in=ids, day__lte=limit, day__gt=limit - week)
    found = last(recent)
    rest = {c: d for c, d in today.items() if c not in found}
    if rest:
        found.update(last(before_filter(rest)))
    return found


def _state_series(rollups) -> dict[str, Any]:
    """Daily open containers per state, and accepted ones (an exception in force when that
    day's scans ran), from rollups (one query)."""
    rows = (
        rollups.values("day", "state")
        .annotate(n=Sum("containers"), a=Sum("accepted"))
        .order_by("day")
    )
    days: list[dt.date] = []
    series: dict[str, list[int]] = {s: [] for s in STATES}
    accepted: list[int] = []
    for r in rows:
        if not days or days[-1] != r["day"]:
            days.append(r["day"])
            accepted.append(0)
            for s in STATES:
                series[s].append(0)
        series[r["state"]][-1] = r["n"] - r["a"]
        accepted[-1] += r["a"]
    return {"days": days, "series": series, "accepted": accepted}


# --- cluster ----------------------------------------------------------------------------


def cluster_overview(scope: Scope, cluster: Cluster) -> dict[str, Any]:
    """The cluster page: namespaces with counts by state, scan history, trend."""
    day = _latest_days([cluster]).get(cluster.pk)
    dirty = cluster.pk in acceptance.freshness([cluster], timezone.now()).dirty
    live = (
        acceptance.accepted_counts(scope, cluster).by_namespace_state(cluster.pk) if dirty else {}
    )
    accepted: dict[str, dict[str, int]] = defaultdict(dict, live)
    namespaces: dict[str, dict[str, int]] = defaultdict(lambda: dict.fromkeys(STATES, 0))
    if day:
        for ns, state, n, a in DailyRollup.objects.filter(
            scope.q(), cluster=cluster, day=day
        ).values_list("namespace", "state", "containers", "accepted"):
            if not dirty and a:
                accepted[ns][state] = a
            namespaces[ns][state] = n - accepted.get(ns, {}).get(state, 0)
    rows = sorted(
        ((ns, counts, sum(accepted.get(ns, {}).values())) for ns, counts in namespaces.items()),
        key=lambda row: (-sum(row[1][s] for s in NONCOMPLIANT), row[0]),
    )
    scans = list(cluster.scans.order_by("-started_at")[:20]) if scope.fleet else []
    return {"namespaces": rows, "scans": scans, "day": day}


# --- namespace --------------------------------------------------------------------------


@dataclass
class FindingFilter:
    state: str = ""
    kind: str = ""
    text: str = ""

    @classmethod
    def from_query(cls, query) -> FindingFilter:
        return cls(
            params.choice(query, "state", NONCOMPLIANT),
            params.choice(query, "kind", FINDING_KINDS),
            params.text(query, "q").strip(),
        )


def encode_cursor(values: tuple) -> str:
    return base64.urlsafe_b64encode(orjson.dumps(list(values))).decode()


def decode_cursor(cursor: str | None, name: str = "after") -> tuple | None:
    """A keyset cursor from encode_cursor; anything else answers 400."""
    if not cursor:
        return None
    try:
        kind, workload, container, pk = orjson.loads(
            base64.urlsafe_b64decode(params.clean_text(cursor, name, 2000).encode())
        )
        for value in (kind, workload, container):
            params.clean_text(value, name, 300)
        if not isinstance(pk, int) or isinstance(pk, bool) or not 0 < pk < 2**63:
            raise TypeError
        return kind, workload, container, pk
    except (ValueError, TypeError, orjson.JSONDecodeError):
        raise params.BadParameter(name, "not a cursor from this page") from None


def namespace_findings(
    scope: Scope, cluster: Cluster, namespace: str, filt: FindingFilter, cursor: str | None
) -> dict[str, Any]:
    """Open findings of a namespace, keyset-paginated by (kind, workload, container, id)."""
    qs = access.findings(scope).filter(
        cluster=cluster, namespace=namespace, resolved_at__isnull=True
    )
    if filt.state:
        qs = qs.filter(state=filt.state)
    if filt.kind:
        qs = qs.filter(workload_kind=filt.kind)
    if filt.text:
        qs = qs.filter(
            Q(workload_name__icontains=filt.text)
            | Q(container__icontains=filt.text)
            | Q(image__icontains=filt.text)
        )
    after = decode_cursor(cursor)
    if after:
        kind, name, container, pk = after
        qs = qs.filter(
            Q(workload_kind__gt=kind)
            | Q(workload_kind=kind, workload_name__gt=name)
            | Q(workload_kind=kind, workload_name=name, container__gt=container)
            | Q(workload_kind=kind, workload_name=name, container=container, pk__gt=pk)
        )
    rows = list(
        qs.order_by("workload_kind", "workload_name", "container", "pk").only(
            "pk",
            "workload_kind",
            "workload_name",
            "container",
            "container_type",
            "image",
            "state",
            "pods",
            "mixed",
            "first_seen",
            "kubelet_error",
            "image_user",
            "image_user_source",
        )[: PAGE_SIZE + 1]
    )
    next_cursor = None
    if len(rows) > PAGE_SIZE:
        rows = rows[:PAGE_SIZE]
        last = rows[-1]
        next_cursor = encode_cursor(
            (last.workload_kind, last.workload_name, last.container, last.pk)
        )
    accepting = acceptance.accepting([f.pk for f in rows])
    for f in rows:
        f.acceptance = accepting.get(f.pk)
    day = _latest_days([cluster]).get(cluster.pk)
    counts = dict.fromkeys(STATES, 0)
    accepted = acceptance.accepted_counts(scope, cluster, namespace).by_namespace_state(cluster.pk)
    accepted_here = accepted.get(namespace, {})
    if day:
        for state, n in DailyRollup.objects.filter(
            cluster=cluster, namespace=namespace, day=day
        ).values_list("state", "containers"):
            counts[state] = n - accepted_here.get(state, 0)
    return {
        "rows": rows,
        "next_cursor": next_cursor,
        "counts": counts,
        "accepted": sum(accepted_here.values()),
    }


# --- finding ------------------------------------------------------------------------------


def finding_history(finding: Finding) -> list[FindingEvent]:
    return list(finding.events.order_by("-at", "-pk")[:100])


# --- trends -------------------------------------------------------------------------------


def trend_data(
    scope: Scope, cluster: Cluster | None = None, namespace: str | None = None, days: int = 90
) -> dict[str, Any]:
    """Chart data: containers per state per day; opened vs resolved per week; mean time to
    remediate per week. Reads rollups and daily activity only."""
    since = timezone.localdate() - dt.timedelta(days=days)
    rollups = _counts(scope, cluster, namespace).filter(day__gte=since)
    activity = DailyActivity.objects.filter(scope.q(), day__gte=since)
    if cluster is not None:
        activity = activity.filter(cluster=cluster)
    if namespace is not None:
        activity = activity.filter(namespace=namespace)
    states = _state_series(rollups)
    weeks: dict[dt.date, list[int]] = {}
    for day, opened, resolved, secs in (
        activity.values("day")
        .annotate(o=Sum("opened"), r=Sum("resolved"), s=Sum("remediation_seconds"))
        .values_list("day", "o", "r", "s")
        .order_by("day")
    ):
        week = day - dt.timedelta(days=day.weekday())
        w = weeks.setdefault(week, [0, 0, 0])
        w[0] += opened
        w[1] += resolved
        w[2] += secs
    week_days = sorted(weeks)
    return {
        "days": [d.isoformat() for d in states["days"]],
        "states": {s: states["series"][s] for s in STATES},
        "labels": {s: STATE.label(s) for s in STATES},
        "accepted": states["accepted"],
        "weeks": [w.isoformat() for w in week_days],
        "opened": [weeks[w][0] for w in week_days],
        "resolved": [weeks[w][1] for w in week_days],
        "mttr_days": [
            round(weeks[w][2] / weeks[w][1] / 86400, 1) if weeks[w][1] else None for w in week_days
        ],
    }


# --- scans ----------------------------------------------------------------------------------


def scans_overview() -> list[dict[str, Any]]:
    """The scans page (security officers): every cluster, its last and running scan."""
    clusters = list(Cluster.objects.select_related("last_scan", "last_complete_scan"))
    running = {s.cluster_id: s for s in ScanRun.objects.filter(status=ScanStatus.RUNNING)}
    return [{"cluster": c, "running": running.get(c.pk)} for c in clusters]
