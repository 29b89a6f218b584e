"""What exceptions do to findings, worked out when read, so expiry needs no job.

An exception accepts a finding at a time T when it is in force at T (approved at or before
T, ending after T, not revoked by T), the finding's state at T is among the exception's
states, and, when pinned, the finding's image digest at T is the pinned one. Which
findings a scope covers is stored once (ExceptionMatch): when the exception is requested
(the open findings) and when a scan opens a finding (the live exceptions); both sides'
keys never change, so a stored pair stays true.
"""

from __future__ import annotations

import datetime as dt
import fnmatch
from collections import defaultdict
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from django.db.models import (
    CharField,
    Count,
    Exists,
    F,
    Min,
    OuterRef,
    Q,
    QuerySet,
    Subquery,
    Value,
)
from django.db.models.functions import Cast, Coalesce, Concat
from django.utils import timezone

from compliance.identity import access
from compliance.identity.access import Scope
from compliance.models import (
    Cluster,
    ExceptionEvent,
    ExceptionMatch,
    Finding,
    FindingEvent,
    RiskException,
)
from compliance.rules import gate
from compliance.vocabulary import APPROVED, REQUESTED


def in_force_q(at: dt.datetime, prefix: str = "") -> Q:
    """Exceptions in force at `at`: approved at or before it, ending after it, not revoked
    by it. (Rejected ones were never approved; revoked ones stop at their revocation.)"""
    return Q(**{f"{prefix}approved_at__lte": at, f"{prefix}ends_at__gt": at}) & (
        Q(**{f"{prefix}revoked_at__isnull": True}) | Q(**{f"{prefix}revoked_at__gt": at})
    )


def _state_in_exception(state_field: str) -> Q:
    """The finding's state is one the exception accepts (`states` is ",root,blocked,")."""
    return Q(exception__states__contains=Concat(Value(","), F(state_field), Value(",")))


def _accepting(at: dt.datetime) -> QuerySet[ExceptionMatch]:
    """Matches whose exception accepts its open finding: in force at `at`, for the finding's
    current state and digest (copied on the match). For the live pages and scans; reports
    at a past time use acceptance_at()."""
    return ExceptionMatch.objects.filter(
        in_force_q(at, "exception__"),
        _state_in_exception("state"),
        Q(exception__image_digest="") | Q(exception__image_digest=F("digest")),
        open=True,
    )


def accepting_now() -> QuerySet[ExceptionMatch]:
    """Matches accepting their open finding now (to filter findings by standing)."""
    return _accepting(timezone.now())


@dataclass(frozen=True)
class Acceptance:
    """The exception that accepts a finding (the lowest id when several do)."""

    exception_id: int
    approved_by: str
    ends_at: dt.datetime


def accepting(finding_ids: Iterable[int], at: dt.datetime | None = None) -> dict[int, Acceptance]:
    """finding id -> the exception accepting it at `at` (default now), for open findings
    as they are now (a page of rows: one query)."""
    at = at or timezone.now()
    out: dict[int, Acceptance] = {}
    for fid, eid, who, ends in (
        _accepting(at)
        .filter(finding_id__in=list(finding_ids))
        .order_by("finding_id", "exception_id")
        .values_list(
            "finding_id", "exception_id", "exception__decided_by__username", "exception__ends_at"
        )
    ):
        out.setdefault(fid, Acceptance(eid, who or "", ends))
    return out


def acceptance_at(at: dt.datetime) -> Subquery:
    """For a finding queryset (OuterRef pk): the exception accepting it at `at`, packed as
    "id|approver|ends_at", or NULL. The finding's state and digest at `at` come from its
    last event at or before `at`; only findings with a stored match pay for them."""

    def last(field: str) -> Subquery:
        return Subquery(
            FindingEvent.objects.filter(finding=OuterRef("finding_id"), at__lte=at)
            .order_by("-at", "-pk")
            .values(field)[:1]
        )

    return Subquery(
        ExceptionMatch.objects.filter(in_force_q(at, "exception__"), finding=OuterRef("pk"))
        .filter(exception__states__contains=Concat(Value(","), last("to_state"), Value(",")))
        .filter(Q(exception__image_digest="") | Q(exception__image_digest=last("digest")))
        .order_by("exception_id")
        .annotate(
            packed=Concat(
                Cast("exception_id", CharField()),
                Value("|"),
                Coalesce("exception__decided_by__username", Value("")),
                Value("|"),
                Cast("exception__ends_at", CharField()),
                output_field=CharField(),
            )
        )
        .values("packed")[:1],
        output_field=CharField(),
    )


@dataclass
class Accepted:
    """Accepted containers per (cluster id, namespace, state) at a time, and until when
    that holds: the first end date of an exception in force (after which counts change
    without any write). Approvals and revocations change `version`."""

    counts: dict[tuple[int, str, str], int]
    valid_until: dt.datetime | None
    version: int

    def total(self, state: str | None = None, cluster_id: int | None = None) -> int:
        return sum(
            n
            for (c, _, s), n in self.counts.items()
            if (state is None or s == state) and (cluster_id is None or c == cluster_id)
        )

    def by_cluster_state(self) -> dict[int, dict[str, int]]:
        out: dict[int, dict[str, int]] = defaultdict(dict)
        for (c, _, s), n in self.counts.items():
            out[c][s] = out[c].get(s, 0) + n
        return out

    def by_namespace_state(self, cluster_id: int) -> dict[str, dict[str, int]]:
        out: dict[str, dict[str, int]] = defaultdict(dict)
        for (c, ns, s), n in self.counts.items():
            if c == cluster_id:
                out[ns][s] = out[ns].get(s, 0) + n
        return out

    def fresh(self, now: dt.datetime) -> bool:
        return self.valid_until is None or now < self.valid_until


@dataclass
class Freshness:
    """Which clusters' rollups (whose `accepted` is as of their last complete scan) no
    longer tell the accepted count now, and until when the others do."""

    dirty: set[int]
    valid_until: dt.datetime | None


def freshness_annotations(now: dt.datetime) -> dict[str, Any]:
    """Annotations for a Cluster queryset: `acceptance_dirty`, whether since its last
    complete scan an exception that can cover it was requested, decided or revoked, or one
    in force ended (then its rollups' `accepted` is out of date); `acceptance_next_end`,
    when the next exception in force ends (until then the others' rollups hold)."""
    scanned = OuterRef("last_complete_scan__observed_at")
    here = Q(cluster_id=OuterRef("pk")) | Q(cluster__isnull=True)
    changed = ExceptionEvent.objects.filter(here, at__gt=scanned)
    ended = RiskException.objects.filter(
        here, approved_at__isnull=False, ends_at__gt=scanned, ends_at__lte=now
    ).filter(Q(revoked_at__isnull=True) | Q(revoked_at__gt=scanned))
    return {
        "acceptance_dirty": Exists(changed) | Exists(ended),
        "acceptance_next_end": Subquery(
            RiskException.objects.filter(in_force_q(now)).order_by("ends_at").values("ends_at")[:1]
        ),
    }


def freshness(clusters: list[Cluster], now: dt.datetime) -> Freshness:
    """From clusters annotated with freshness_annotations (or, when they are not, one
    query that annotates them)."""
    if clusters and not hasattr(clusters[0], "acceptance_dirty"):
        clusters = list(
            Cluster.objects.filter(pk__in=[c.pk for c in clusters]).annotate(
                **freshness_annotations(now)
            )
        )
    if not clusters:
        return Freshness(set(), None)
    dirty = {c.pk for c in clusters if c.acceptance_dirty and c.last_complete_scan_id}
    return Freshness(dirty, clusters[0].acceptance_next_end)


def accepted_counts(
    scope: Scope,
    cluster: Cluster | None = None,
    namespace: str | None = None,
    at: dt.datetime | None = None,
    version_: int | None = None,
    cluster_ids: set[int] | None = None,
) -> Accepted:
    """Accepted open findings per (cluster, namespace, state) at `at` (default now), in the
    scope, and until when that holds (the first end date among the accepting exceptions):
    one query. `version_` is the exceptions' version the caller caches it under."""
    at = at or timezone.now()
    qs = _accepting(at).filter(scope.q())
    if cluster is not None:
        qs = qs.filter(cluster_id=cluster.pk)
    if cluster_ids is not None:
        qs = qs.filter(cluster_id__in=cluster_ids)
    if namespace is not None:
        qs = qs.filter(namespace=namespace)
    counts: dict[tuple[int, str, str], int] = {}
    until = None  # the counts hold until the first accepting exception ends
    for c, ns, s, n, ends in (
        qs.values("cluster_id", "namespace", "state")
        .annotate(n=Count("finding_id", distinct=True), ends=Min("exception__ends_at"))
        .values_list("cluster_id", "namespace", "state", "n", "ends")
        .order_by()
    ):
        counts[c, ns, s] = n
        until = ends if until is None else min(until, ends)
    return Accepted(counts, until, version_ or 0)


def accepted_keys(cluster: Cluster, at: dt.datetime) -> set[tuple[str, str, str, str]]:
    """(namespace, kind, workload, container) of the cluster's open findings accepted at
    `at`: what a scan's rollup counts as accepted."""
    return set(
        _accepting(at)
        .filter(cluster=cluster)
        .values_list(
            "finding__namespace",
            "finding__workload_kind",
            "finding__workload_name",
            "finding__container",
        )
        .distinct()
    )


def scope_q(e: RiskException, prefix: str = "") -> Q:
    """Findings inside the exception's scope (not its states, time or digest)."""
    glob = e.namespace
    q = (
        Q(**{f"{prefix}namespace": glob})
        if not gate.is_glob(glob)
        else Q(**{f"{prefix}namespace__regex": access.glob_regex(glob)})
    )
    if e.cluster_id is not None:
        q &= Q(**{f"{prefix}cluster_id": e.cluster_id})
    if e.workload_kind:
        q &= Q(
            **{f"{prefix}workload_kind": e.workload_kind, f"{prefix}workload_name": e.workload_name}
        )
    if e.container:
        q &= Q(**{f"{prefix}container": e.container})
    return q


def sync(finding_ids: list[int]) -> None:
    """Copy the findings' current state, digest and openness onto their matches (reconcile
    calls it, in the scan's transaction, for the findings it changed or resolved)."""
    f = Finding.objects.filter(pk=OuterRef("finding_id"))
    for i in range(0, len(finding_ids), 5000):
        ExceptionMatch.objects.filter(finding_id__in=finding_ids[i : i + 5000]).update(
            state=Subquery(f.values("state")[:1]),
            digest=Subquery(f.values("image_digest")[:1]),
            open=Exists(f.filter(resolved_at__isnull=True)),
        )


def _covers(e: RiskException, f: Finding) -> bool:
    return (
        (e.cluster_id is None or e.cluster_id == f.cluster_id)
        and fnmatch.fnmatchcase(f.namespace, e.namespace)
        and (
            not e.workload_kind
            or (e.workload_kind, e.workload_name) == (f.workload_kind, f.workload_name)
        )
        and (not e.container or e.container == f.container)
    )


def _match(exception_id: int, fid: int, cluster_id: int, ns: str, state: str, digest: str):
    return ExceptionMatch(
        exception_id=exception_id,
        finding_id=fid,
        cluster_id=cluster_id,
        namespace=ns,
        state=state,
        digest=digest,
        open=True,
    )


def match_exception(e: RiskException, missing_only: bool = False) -> int:
    """Store the open findings the exception's scope covers (at its request; again at its
    approval, `missing_only`: those a concurrent scan opened, an anti-join)."""
    found = Finding.objects.filter(scope_q(e), resolved_at__isnull=True)
    if missing_only:
        found = found.exclude(
            Exists(ExceptionMatch.objects.filter(exception=e, finding=OuterRef("pk")))
        )
    rows = found.values_list("pk", "cluster_id", "namespace", "state", "image_digest")
    n = 0
    batch: list[ExceptionMatch] = []
    for row in rows.iterator(chunk_size=5000):
        batch.append(_match(e.pk, *row))
        if len(batch) == 5000:
            n += len(ExceptionMatch.objects.bulk_create(batch, ignore_conflicts=True))
            batch = []
    n += len(ExceptionMatch.objects.bulk_create(batch, ignore_conflicts=True))
    return n


def match_findings(cluster: Cluster, findings: list[Finding], at: dt.datetime) -> int:
    """Store which live exceptions (requested or approved, not ended) cover newly opened
    findings: called by reconcile, in the scan's transaction."""
    if not findings:
        return 0
    live = list(
        RiskException.objects.filter(
            Q(cluster__isnull=True) | Q(cluster=cluster),
            decision__in=(REQUESTED, APPROVED),
            ends_at__gt=at,
        ).only("pk", "cluster_id", "namespace", "workload_kind", "workload_name", "container")
    )
    if not live:
        return 0
    exact: dict[str, list[RiskException]] = defaultdict(list)
    globs: list[RiskException] = []
    for e in live:
        (globs if gate.is_glob(e.namespace) else exact[e.namespace]).append(e)
    by_ns: dict[str, list[RiskException]] = {}
    rows = []
    for f in findings:
        candidates = by_ns.get(f.namespace)
        if candidates is None:  # once per namespace: globs are the costly part
            candidates = by_ns[f.namespace] = exact.get(f.namespace, []) + [
                e for e in globs if fnmatch.fnmatchcase(f.namespace, e.namespace)
            ]
        rows.extend(
            _match(e.pk, f.pk, f.cluster_id, f.namespace, f.state, f.image_digest)
            for e in candidates
            if _covers(e, f)
        )
    return len(ExceptionMatch.objects.bulk_create(rows, batch_size=5000, ignore_conflicts=True))


@dataclass
class Entry:
    """One line of a finding's history: a scan event, or an exception starting or ending."""

    at: dt.datetime
    what: str
    from_state: str = ""
    to_state: str = ""
    note: str = ""
    exception_id: int | None = None


def timeline(
    events: list,
    covering: list[RiskException],
    now: dt.datetime,
    first_seen: dt.datetime | None = None,
) -> list[Entry]:
    """A finding's events with its exceptions' approvals, ends and revocations, newest
    first: so its history says why it was accepted, and why it is open again. Only the
    exceptions that could accept it (one of its states, its digest if pinned, in force
    while it was seen): a scope alone accepts nothing."""
    states = {ev.to_state for ev in events if ev.to_state}
    digests = {ev.digest for ev in events if ev.digest}
    covering = [
        e
        for e in covering
        if set(e.state_list) & states
        and (not e.image_digest or e.image_digest in digests)
        and (first_seen is None or min(e.ends_at, e.revoked_at or e.ends_at) > first_seen)
    ]
    out = [
        Entry(
            ev.at,
            ev.get_kind_display(),
            ev.from_state if ev.kind != "image" else "",
            ev.to_state if ev.kind != "image" else "",
            _image_note(ev, covering) if ev.kind == "image" else "",
        )
        for ev in events
    ]
    for e in covering:
        if e.approved_at is None:
            continue
        who = e.decided_by.username if e.decided_by_id else ""
        out.append(
            Entry(
                max(e.approved_at, first_seen) if first_seen else e.approved_at,
                "Accepted",
                note=f"exception #{e.pk} approved by {who}, until {e.ends_at:%Y-%m-%d %H:%M} UTC",
                exception_id=e.pk,
            )
        )
        if e.revoked_at is not None and e.revoked_at < e.ends_at:
            out.append(
                Entry(
                    e.revoked_at,
                    "Open again",
                    note=f"exception #{e.pk} revoked by {e.revoked_by.username}: "
                    f"{e.revoke_comment}",
                    exception_id=e.pk,
                )
            )
        elif e.ends_at <= now:
            out.append(
                Entry(e.ends_at, "Open again", note=f"exception #{e.pk} ended", exception_id=e.pk)
            )
    return sorted(out, key=lambda x: x.at, reverse=True)


def _image_note(ev, covering: list[RiskException]) -> str:
    pinned = [e for e in covering if e.image_digest and e.image_digest != ev.digest]
    note = f"now runs {ev.digest}"
    if pinned:
        note += "; " + ", ".join(
            f"exception #{e.pk} was pinned to {e.image_digest[:19]}… and no longer covers it"
            for e in pinned
        )
    return note
