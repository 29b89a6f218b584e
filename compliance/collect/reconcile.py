"""Reconcile: a complete scan's workload groups applied to the stored findings. Runs
inside the transaction that marks the scan succeeded (compliance/collect/scanning.py),
which then matches exceptions, writes the rollups (rollups.py) and the outbox.

- new -> a finding is opened (an `opened` event);
- state changed -> the row is updated and a `changed` event appended;
- same state, another image digest -> the row is updated and an `image` event appended
  (an exception pinned to the old digest no longer covers it); an unknown digest keeps
  the last one seen;
- other facts changed (pod count, image, ...) -> the row is updated, no event;
- gone or compliant -> resolved (a `resolved` event), unless a pod of its workload was
  rejected by the gate (then it could not be seen, and stays as it is);
- unchanged -> nothing is written: a rescan that finds nothing new writes O(1) rows.
PostgreSQL-specific SQL is used where Django's ORM is too slow.
"""

from __future__ import annotations

from collections.abc import Mapping, Set
from dataclasses import dataclass
from datetime import datetime
from typing import Any, NamedTuple

from django.db import connection

from compliance.collect import registry
from compliance.collect.rollups import Activity
from compliance.models import (
    Cluster,
    Finding,
    FindingEvent,
    ScanRun,
    State,
)
from compliance.rules import fix
from compliance.rules.workloads import GroupKey, WorkloadGroup


class Changes(NamedTuple):
    """How many findings a reconcile opened, changed state and resolved."""

    opened: int
    changed: int
    resolved: int


@dataclass
class Reconciled:
    """What a reconcile wrote, for the steps after it in the scan's transaction
    (compliance/collect/scanning.py: exception matching, rollups, the outbox)."""

    opened: list[Finding]  # new findings, with their ids
    followed: list[int]  # ids whose stored facts changed (state or not) or were resolved
    states_changed: list[tuple[GroupKey, int, str, str]]  # (key, id, from, to): owners hear
    activity: dict[str, Activity]  # per namespace: opened, resolved, seconds open
    changes: Changes


class _Open(NamedTuple):
    """A finding open before the scan: its id, tracked values and when it was opened."""

    pk: int
    values: tuple
    first_seen: datetime


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
    "fix",
)
_STATE = TRACKED.index("state")
_DIGEST = TRACKED.index("image_digest")
_IMAGE = TRACKED.index("image")


def image_digest(image: str, image_id: str | None) -> str:
    """The digest a container runs: its status imageID's, else its spec's `@digest`."""
    return (registry.digest_from_image_id(image_id) or registry.digest_from_image_id(image) or "")[
        :200
    ]


MAX_DIGESTS = 20  # listed on a finding whose pods run several builds


def _digests(g: WorkloadGroup, image: str) -> list[str]:
    """The builds the workload's pods run, as far as their statuses say (a pod still
    pulling, or refused, says nothing)."""
    return sorted({image_digest(image, i or None) for i in g.image_ids} - {""})


def _values(g: WorkloadGroup) -> dict[str, Any]:
    c = g.worst
    assert c is not None
    digests = _digests(g, c.image)
    # One build for all: its digest. Several (a rollout under way, a stray pod): none, so
    # an exception pinned to one of them accepts the finding only once all run it.
    digest = digests[0] if len(digests) == 1 else ""
    return {
        "state": c.state,
        "pods": g.pods,
        "mixed": len(g.states) > 1,
        "image": c.image[:1000],
        "image_digest": digest,
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
            "digests": digests[:MAX_DIGESTS] if len(digests) > 1 else [],
            "pod_run_as_user": c.pod_run_as_user,
            "pod_run_as_non_root": c.pod_run_as_non_root,
            "passwd": g.account,
        },
        "fix": fix.one_line(fix.remediation(c, fix.Account.of(g.account))),
    }


def reconcile(
    cluster: Cluster,
    scan: ScanRun,
    groups: Mapping[GroupKey, WorkloadGroup],
    kept: Set[tuple[str, str, str]] = frozenset(),
) -> Reconciled:
    """Apply a complete scan's groups to the cluster's open findings: the findings and
    their events, nothing else (what follows from them is the scan's next steps).

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
    states_changed: list[tuple[GroupKey, int, str, str]] = []
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
        if (
            not values["image_digest"]
            and values["image"] == old[_IMAGE]
            and values["state"] != State.BLOCKED
            and not values["detail"]["digests"]
        ):
            # Unknown this time for the same image (say the worst pod is still pulling):
            # the digest last seen stands, so it does not flap between known and unknown.
            # Not for a refused container (it runs nothing, and the build it would run
            # may not be the one an exception was pinned to), nor for pods on several.
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
    activity: dict[str, Activity] = {}
    for f in created:
        activity.setdefault(f.namespace, Activity()).opened += 1
    for key, f in existing.items():
        a = activity.setdefault(key[0], Activity())
        a.resolved += 1
        a.remediation_seconds += max(0, int((at - f.first_seen).total_seconds()))
    return Reconciled(
        opened=created,
        followed=[f.pk for f in touched] + [f.pk for f in changed] + [pk for pk, _ in gone],
        states_changed=states_changed,
        activity=activity,
        changes=Changes(len(created), len(changed), len(gone)),
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
