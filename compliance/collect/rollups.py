"""The daily rollups a complete scan writes, which every count and chart reads: per
(cluster, namespace, state) and per (cluster, state), the day's activity (findings opened and
resolved, and how long they were open), and each cluster's stored namespace ranking for
the fleet page. Written in the scan's transaction, only where a count differs, so a
rescan that changes nothing writes nothing. PostgreSQL-specific SQL where the ORM is too
slow; the ranking query is shared with the page that ranks live (web/dashboards.py).
"""

from __future__ import annotations

import datetime as dt
from collections import defaultdict
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from django.db import connection
from django.db.models import Max, Q
from django.utils import timezone

from compliance.models import (
    Cluster,
    ClusterRollup,
    DailyActivity,
    DailyRollup,
    NamespaceRanking,
    State,
)
from compliance.risk import acceptance
from compliance.rules.workloads import GroupKey, WorkloadGroup
from compliance.vocabulary import NONCOMPLIANT


@dataclass
class Activity:
    """One namespace's day: findings opened, resolved, and the seconds they were open."""

    opened: int = 0
    resolved: int = 0
    remediation_seconds: int = 0


@dataclass
class _Count:
    containers: int = 0
    pods: int = 0
    accepted: int = 0


def write_rollup(
    cluster: Cluster,
    at: datetime,
    groups: Mapping[GroupKey, WorkloadGroup],
    activity: Mapping[str, Activity] | None = None,
) -> int:
    """Upsert the day's counts per (namespace, state) and per state for the cluster, add
    the day's activity, and rank the cluster's namespaces again when a count changed; rows
    whose counts are unchanged are not written, so an unchanged rescan writes nothing."""
    _add_activity(cluster, at, activity or {})
    day = timezone.localdate(at)
    accepted = acceptance.accepted_keys(cluster, at)
    counts: dict[tuple[str, str], _Count] = {}
    for key, g in groups.items():
        c = counts.setdefault((key[0], g.state), _Count())
        c.containers += 1
        c.pods += g.pods
        c.accepted += key in accepted
    # Namespace/state pairs that had rows today but are gone now drop to zero.
    for ns, state in (
        DailyRollup.objects.filter(cluster=cluster, day=day)
        .exclude(containers=0, pods=0)
        .values_list("namespace", "state")
    ):
        counts.setdefault((ns, state), _Count())
    totals: dict[str, _Count] = {s: _Count() for s in State.values}
    for (_, state), c in counts.items():
        totals[state].containers += c.containers
        totals[state].pods += c.pods
        totals[state].accepted += c.accepted
    written = _upsert_counts(
        DailyRollup._meta.db_table,
        "namespace, state",
        [
            (cluster.pk, day, ns, state, c.containers, c.pods, c.accepted)
            for (ns, state), c in counts.items()
        ],
    )
    written += _upsert_counts(
        ClusterRollup._meta.db_table,
        "state",
        [(cluster.pk, day, state, c.containers, c.pods, c.accepted) for state, c in totals.items()],
    )
    if written:  # the fleet page's ranking of its namespaces follows its rollups
        rank_cluster(cluster.pk, day)
    return written


def _add_activity(cluster: Cluster, at: datetime, activity: Mapping[str, Activity]) -> None:
    """Add the day's opened/resolved counts; nothing is written when nothing changed."""
    if not activity:
        return
    table = DailyActivity._meta.db_table
    day = timezone.localdate(at)
    rows = [
        (cluster.pk, day, ns, a.opened, a.resolved, a.remediation_seconds)
        for ns, a in activity.items()
    ]
    with connection.cursor() as cur:
        for i in range(0, len(rows), 1000):
            chunk = rows[i : i + 1000]
            cur.execute(
                f"INSERT INTO {table} (cluster_id, day, namespace, opened, resolved, "
                f"remediation_seconds) VALUES {','.join(['(%s,%s,%s,%s,%s,%s)'] * len(chunk))} "
                "ON CONFLICT (cluster_id, namespace, day) DO UPDATE SET "
                f"opened = {table}.opened + excluded.opened, "
                f"resolved = {table}.resolved + excluded.resolved, "
                f"remediation_seconds = {table}.remediation_seconds "
                "+ excluded.remediation_seconds",
                [v for row in chunk for v in row],
            )


def _upsert_counts(table: str, key: str, rows: list[tuple]) -> int:
    """INSERT ... ON CONFLICT DO UPDATE, only where containers, pods or accepted differ."""
    written = 0
    with connection.cursor() as cur:
        for i in range(0, len(rows), 1000):
            chunk = rows[i : i + 1000]
            one = "(" + ", ".join(["%s"] * len(chunk[0])) + ")"
            cur.execute(
                f"INSERT INTO {table} (cluster_id, day, {key}, containers, pods, accepted) "
                f"VALUES {', '.join([one] * len(chunk))} "
                f"ON CONFLICT (cluster_id, {key}, day) DO UPDATE "
                "SET containers = excluded.containers, pods = excluded.pods, "
                "accepted = excluded.accepted "
                f"WHERE {table}.containers <> excluded.containers "
                f"OR {table}.pods <> excluded.pods OR {table}.accepted <> excluded.accepted",
                [v for row in chunk for v in row],
            )
            written += max(cur.rowcount, 0)
    return written


def rank_cluster(cluster_id: int, day: dt.date) -> None:
    """Store the cluster's namespaces that can be in the fleet page's lists as of `day`
    (with the accepted counts its rollups hold), replacing what was stored for it. Called
    when its rollups are written (PostgreSQL; elsewhere the page ranks them itself)."""
    if connection.vendor != "postgresql":
        return
    before = (
        ClusterRollup.objects.filter(before_filter({cluster_id: day}))
        .aggregate(d=Max("day"))
        .get("d")
    )
    rows = namespace_changes_sql(
        {cluster_id: ""}, {cluster_id: day}, {cluster_id: before} if before else {}, {}, set()
    )
    # Only what changed is written (a rescan changes a few namespaces' counts, if any).
    stored = {
        (k.day, k.namespace): k for k in NamespaceRanking.objects.filter(cluster_id=cluster_id)
    }
    ranked = {(day, r["namespace"]): r for r in rows}
    gone = [k.pk for key, k in stored.items() if key not in ranked]
    if gone:
        NamespaceRanking.objects.filter(pk__in=gone).delete()
    changed = []
    for key, r in ranked.items():
        k = stored.get(key)
        if k is not None and (k.now, k.before) != (r["now"], r["before"]):
            k.now, k.before = r["now"], r["before"]
            changed.append(k)
    if changed:
        NamespaceRanking.objects.bulk_update(changed, ["now", "before"])
    NamespaceRanking.objects.bulk_create(
        NamespaceRanking(
            cluster_id=cluster_id, day=day, namespace=ns, now=r["now"], before=r["before"]
        )
        for (_, ns), r in ranked.items()
        if (day, ns) not in stored
    )


def namespace_changes_sql(
    names: dict[int, str],
    today: dict,
    week_ago: dict,
    now_accepted: dict[tuple[int, str], int],
    dirty: set[int],
    stored: bool = False,
) -> list[dict[str, Any]]:
    """The whole fleet: aggregated and ranked in PostgreSQL, 20 rows back instead of one
    per namespace (tens of thousands at fleet scale).

    stored=True: a cluster whose ranking was stored for its latest day (NamespaceRanking,
    written with its rollups) and whose accepted counts are still the scan's (not dirty)
    is read from there; only the others are ranked here. In one query either way."""
    days = [
        (cid, today[cid], week_ago.get(cid, today[cid] - dt.timedelta(days=3650))) for cid in today
    ]
    values = ", ".join(["(%s, %s::date, %s::date)"] * len(days))
    # Accepted now, per namespace: the rollups' own, or (clusters where an exception
    # changed since their scan) counted live; subtracted from today's before ranking.
    accepted_rows = [(c, ns, n) for (c, ns), n in now_accepted.items()] or [(0, "", 0)]
    accepted_values = ", ".join(["(%s::int, %s::text, %s::int)"] * len(accepted_rows))
    table = DailyRollup._meta.db_table
    ranking = NamespaceRanking._meta.db_table
    clusters = Cluster._meta.db_table  # ties broken by cluster name, as the page sorts
    ranked = (
        f"""NOT EXISTS (SELECT 1 FROM {ranking} k
                        WHERE k.cluster_id = d0.cluster_id AND k.day = d0.today)
            OR d0.cluster_id = ANY(%s::int[])"""
        if stored
        else "true"
    )
    sql = f"""
        WITH d0(cluster_id, today, before) AS (VALUES {values}),
        d AS (SELECT * FROM d0 WHERE {ranked}),
        a(cluster_id, namespace, n) AS (VALUES {accepted_values}),
        g0 AS (
            SELECT r.cluster_id, r.namespace,
                   COALESCE(SUM(r.containers) FILTER (WHERE r.day = d.today), 0) AS now,
                   COALESCE(SUM(r.accepted) FILTER (WHERE r.day = d.today), 0) AS accepted,
                   COALESCE(SUM(r.containers - r.accepted) FILTER (WHERE r.day = d.before), 0)
                     AS before
            FROM {table} r JOIN d ON d.cluster_id = r.cluster_id
                               AND r.day IN (d.today, d.before)
            WHERE r.state IN %s AND r.day = ANY(%s::date[])
              AND r.cluster_id = ANY(ARRAY(SELECT cluster_id FROM d))
            GROUP BY r.cluster_id, r.namespace),
        g AS (
            SELECT g0.cluster_id, g0.namespace,
                   g0.now - CASE WHEN g0.cluster_id = ANY(%s::int[]) THEN COALESCE(a.n, 0)
                                 ELSE g0.accepted END AS now, g0.before
            FROM g0 LEFT JOIN a ON a.cluster_id = g0.cluster_id AND a.namespace = g0.namespace)
        (SELECT g.* FROM g JOIN {clusters} c ON c.id = g.cluster_id WHERE now > before
         ORDER BY now - before DESC, namespace, c.name LIMIT 10)
        UNION
        (SELECT g.* FROM g JOIN {clusters} c ON c.id = g.cluster_id WHERE now > 0
         ORDER BY now DESC, namespace, c.name LIMIT 10)"""
    if stored:
        sql += f"""
        UNION ALL
        SELECT k.cluster_id, k.namespace, k.now, k.before
        FROM {ranking} k JOIN d0 ON d0.cluster_id = k.cluster_id AND d0.today = k.day
        WHERE NOT (k.cluster_id = ANY(%s::int[]))"""
    # The distinct days (usually two) let the (day, cluster) index pick the rows.
    distinct_days = sorted({d for _, a, b in days for d in (a, b)})
    params = (
        [v for row in days for v in row]
        + ([sorted(dirty)] if stored else [])
        + [v for row in accepted_rows for v in row]
        + [tuple(NONCOMPLIANT), distinct_days, sorted(dirty)]
        + ([sorted(dirty)] if stored else [])
    )
    with connection.cursor() as cur:
        cur.execute(sql, params)
        return [
            {"cluster__name": names[cid], "namespace": ns, "now": now, "before": before}
            for cid, ns, now, before in cur.fetchall()
        ]


def before_filter(days: dict[int, dt.date]) -> Q:
    """Rows of each cluster at least a week before its day (one condition per distinct
    day, as _day_filter)."""
    q = Q(pk__in=[])
    week = dt.timedelta(days=7)
    for day, ids in clusters_by(days).items():
        q |= Q(cluster_id__in=ids, day__lte=max(day, dt.date.min + week) - week)
    return q


def clusters_by(values: dict[int, Any]) -> dict[Any, list[int]]:
    out: dict[Any, list[int]] = defaultdict(list)
    for cluster_id, value in values.items():
        out[value].append(cluster_id)
    return out
