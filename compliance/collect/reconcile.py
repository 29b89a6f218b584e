"""Reconcile: a complete scan's workload groups applied to the stored findings, and the
daily rollups the charts read. Runs inside the transaction that marks the scan succeeded.

- new -> a finding is opened (an `opened` event);
- state changed -> the row is updated and a `changed` event appended;
- same state, another image digest -> the row is updated and an `image` event appended
  (an exception pinned to the old digest no longer covers it); an unknown digest keeps
  the last one seen;
- other facts changed (pod count, image, ...) -> the row is updated, no event;
- gone or compliant -> resolved (a `resolved` event), unless a pod of its workload was
  rejected by the gate (then it could not be seen, and stays as it is);
- unchanged -> nothing is written: a rescan that finds nothing new writes O(1) rows.
Rollup rows (per namespace and state, and per cluster and state) are written only when
their counts differ. PostgreSQL-specific SQL is used where Django's ORM is too slow.
"""

from __future__ import annotations

from collections.abc import Mapping, Set
from dataclasses import dataclass
from datetime import datetime
from typing import Any, NamedTuple

from django.db import connection
from django.utils import timezone

from compliance.collect import registry
from compliance.models import (
    Cluster,
    ClusterRollup,
    DailyActivity,
    DailyRollup,
    Finding,
    FindingEvent,
    ScanRun,
    State,
)
from compliance.notify import outbox
from compliance.risk import acceptance
from compliance.rules.workloads import GroupKey, WorkloadGroup


class Changes(NamedTuple):
    """How many findings a reconcile opened, changed state and resolved."""

    opened: int
    changed: int
    resolved: int


class _Open(NamedTuple):
    """A finding open before the scan: its id, tracked values and when it was opened."""

    pk: int
    values: tuple
    first_seen: datetime


@dataclass
class _Activity:
    """One namespace's day: findings opened, resolved, and the seconds they were open."""

    opened: int = 0
    resolved: int = 0
    remediation_seconds: int = 0


@dataclass
class _Count:
    containers: int = 0
    pods: int = 0
    accepted: int = 0


# Finding fields that, when they differ, are written (without an event unless `state`).
TRACKED = (
    "state",
    "pods",
    "mixed",
    "image",
    "image_digest",
    "container_type",
    "runs_as_root",
    "evidence",
    "image_user",
    "image_user_source",
    "uid",
    "run_as_user",
    "run_as_non_root",
)
_STATE = TRACKED.index("state")
_DIGEST = TRACKED.index("image_digest")
_IMAGE = TRACKED.index("image")


def image_digest(image: str, image_id: str | None) -> str:
    """The digest a container runs: its status imageID's, else its spec's `@digest`."""
    return (registry.digest_from_image_id(image_id) or registry.digest_from_image_id(image) or "")[
        :200
    ]


def _values(g: WorkloadGroup) -> dict[str, Any]:
    c = g.worst
    assert c is not None
    return {
        "state": c.state,
        "pods": g.pods,
        "mixed": len(g.states) > 1,
        "image": c.image[:1000],
        "image_digest": image_digest(c.image, c.image_id),
        "container_type": c.type,
        "runs_as_root": c.runs_as_root,
        "evidence": c.evidence,
        "image_user": c.image_user[:255] if c.image_user is not None else None,
        "image_user_source": c.image_user_source,
        "uid": c.uid,
        "run_as_user": c.run_as_user,
        "run_as_non_root": c.run_as_non_root,
        "kubelet_error": c.kubelet_error or "",
        "detail": {
            "pod": g.worst_pod,
            "psa_violations": g.psa,
            "states": dict(g.states),
            "windows": c.windows,
            "run_as_user_name": c.run_as_user_name,
            "run_as_user_from": c.run_as_user_from,
            "run_as_non_root_from": c.run_as_non_root_from,
            "needs_root": c.needs_root,
            "image_note": g.note,
        },
    }


def reconcile(
    cluster: Cluster,
    scan: ScanRun,
    groups: Mapping[GroupKey, WorkloadGroup],
    kept: Set[tuple[str, str, str]] = frozenset(),
) -> Changes:
    """Apply a complete scan's groups to the cluster's open findings.

    new -> open; state changed -> event; other tracked facts changed -> row updated;
    gone or compliant -> resolved with an event; unchanged -> nothing written. Findings
    of workloads in `kept` (a pod of theirs was rejected by the gate) stay as they are.
    """
    at = scan.observed_at
    existing = {
        (ns, kind, name, container): _Open(pk, tuple(vals), first_seen)
        for pk, ns, kind, name, container, first_seen, *vals in Finding.objects.filter(
            cluster=cluster, resolved_at__isnull=True
        )
        .values_list(
            "pk", "namespace", "workload_kind", "workload_name", "container", "first_seen", *TRACKED
        )
        .iterator(chunk_size=5000)
    }
    new: list[Finding] = []
    changed: list[Finding] = []
    touched: list[Finding] = []
    events: list[FindingEvent] = []
    states_changed: list[tuple[GroupKey, int, str, str]] = []  # for notify
    for key, g in groups.items():
        if g.state == State.COMPLIANT:
            continue
        values = _values(g)
        found = existing.pop(key, None)
        if found is None:
            new.append(
                Finding(
                    cluster=cluster,
                    namespace=key[0],
                    workload_kind=key[1],
                    workload_name=key[2][:253],
                    container=key[3],
                    first_seen=at,
                    last_changed=at,
                    **values,
                )
            )
            continue
        pk, old = found.pk, found.values
        old_state = old[_STATE]
        if not values["image_digest"] and values["image"] == old[_IMAGE]:
            # Unknown this time for the same image (say the worst pod is still pulling):
            # the digest last seen stands, so it does not flap between known and unknown.
            values["image_digest"] = old[_DIGEST]
        if tuple(values[f] for f in TRACKED) == old:
            continue
        digest = values["image_digest"]
        if old_state != values["state"]:
            changed.append(Finding(pk=pk, last_changed=at, **values))
            events.append(
                FindingEvent(
                    finding_id=pk,
                    scan=scan,
                    kind="changed",
                    from_state=old_state,
                    to_state=values["state"],
                    digest=digest,
                    at=at,
                )
            )
            states_changed.append((key, pk, old_state, values["state"]))
        else:  # same state, other facts (pod count, image...): no event
            touched.append(Finding(pk=pk, **values))
            if digest != old[_DIGEST]:
                # Another build runs (or the digest is first known): an exception pinned to
                # another digest stops here; reports read the digest at T from the events.
                events.append(
                    FindingEvent(
                        finding_id=pk,
                        scan=scan,
                        kind="image",
                        from_state=old_state,
                        to_state=old_state,
                        digest=digest,
                        at=at,
                    )
                )
    created = Finding.objects.bulk_create(new, batch_size=2000)
    events.extend(
        FindingEvent(
            finding_id=f.pk,
            scan=scan,
            kind="opened",
            to_state=f.state,
            digest=f.image_digest,
            at=at,
        )
        for f in created
    )
    acceptance.match_findings(cluster, created, at)
    fields = [*TRACKED, "kubelet_error", "detail"]
    _update_findings(touched, fields)
    _update_findings(changed, [*fields, "last_changed"])
    for key in [k for k in existing if k[:3] in kept]:
        del existing[key]
    gone = [(f.pk, f.values[_STATE]) for f in existing.values()]
    for i in range(0, len(gone), 5000):
        Finding.objects.filter(pk__in=[pk for pk, _ in gone[i : i + 5000]]).update(
            resolved_at=at, last_changed=at
        )
    events.extend(
        FindingEvent(finding_id=pk, scan=scan, kind="resolved", from_state=state, at=at)
        for pk, state in gone
    )
    FindingEvent.objects.bulk_create(events, batch_size=5000)
    # The matches' copies of what changed (state, digest, open), for the live counts.
    acceptance.sync([f.pk for f in touched] + [f.pk for f in changed] + [pk for pk, _ in gone])
    activity: dict[str, _Activity] = {}
    for f in created:
        activity.setdefault(f.namespace, _Activity()).opened += 1
    for key, f in existing.items():
        a = activity.setdefault(key[0], _Activity())
        a.resolved += 1
        a.remediation_seconds += max(0, int((at - f.first_seen).total_seconds()))
    _add_activity(cluster, at, activity)
    outbox.record_scan(cluster, scan, created, states_changed)  # the outbox, same transaction
    return Changes(len(created), len(changed), len(gone))


def _add_activity(cluster: Cluster, at: datetime, activity: dict[str, _Activity]) -> None:
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
    sql = (
        f'UPDATE "{Finding._meta.db_table}" AS f SET {sets} '
        f"FROM (VALUES %s) AS v(id, {names}) WHERE f.id = v.id"
    )
    rows = [
        (o.pk, *(c.get_db_prep_save(getattr(o, c.attname), connection) for c in cols)) for o in objs
    ]
    with connection.cursor() as cur:
        execute_values(cur.cursor, sql, rows, page_size=1000)


def write_rollup(cluster: Cluster, at: datetime, groups: Mapping[GroupKey, WorkloadGroup]) -> int:
    """Upsert the day's counts per (namespace, state) and per state for the cluster; rows
    whose counts are unchanged are not written, so an unchanged rescan writes nothing."""
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
        from compliance.web.dashboards import rank_cluster

        rank_cluster(cluster.pk, day)
    return written


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
