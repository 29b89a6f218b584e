"""Report rows: open findings now, and point-in-time reports rebuilt from the events.

A point-in-time report for a time T and a scope (fleet, cluster, namespace) says what was
open at T: for each finding first seen by T, its last event at or before T decides (opened,
changed or image: open in that state, running that digest; resolved: not open). A finding
an exception in force at T accepted (compliance/risk/acceptance.py) is marked accepted, with
the exception, its approver and end date, and counted apart in the summary. Coverage
lists each cluster's last complete scan before T and calls out clusters without a recent
one. Rows are streamed (server-side cursor); evidence/writers.py writes them as CSV, JSON or PDF.
"""

from __future__ import annotations

import datetime as dt
import itertools
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

from django.db.models import CharField, Count, OuterRef, Q, Subquery, Value
from django.db.models.functions import Cast, Concat
from django.http import Http404
from django.utils import timezone

from compliance import params
from compliance.evidence import retention
from compliance.identity import access
from compliance.models import Cluster, Finding, FindingEvent, ScanRun, ScanStatus
from compliance.risk import acceptance
from compliance.rules import controls, gate
from compliance.rules.inert import FORMULA_STARTS

REPORT_COLUMNS = [
    "cluster",
    "namespace",
    "workload_kind",
    "workload_name",
    "container",
    "container_type",
    "image",
    "state",
    "controls_2022",
    "controls_2013",
    "first_seen",
    "state_since",
    "standing",
    "exception",
    "exception_approved_by",
    "exception_ends_at",
    "fix",
]


class ReportError(ValueError):
    pass


def open_findings(
    cluster: str | None = None, namespace: str | None = None, state: str | None = None
) -> Iterator[dict[str, Any]]:
    """Open findings as plain rows, ordered by cluster, namespace, workload, container.
    Checks its arguments at once (not when iterated)."""
    qs = Finding.objects.filter(resolved_at__isnull=True)
    if cluster:
        if not Cluster.objects.filter(name=cluster).exists():
            raise ReportError(f"no such cluster: {cluster}")
        qs = qs.filter(cluster__name=cluster)
    if namespace:
        qs = qs.filter(namespace=namespace)
    if state:
        qs = qs.filter(state=state)
    qs = qs.order_by("cluster__name", "namespace", "workload_kind", "workload_name", "container")
    return _rows(qs)


def _rows(qs) -> Iterator[dict[str, Any]]:
    for f in qs.values(
        "cluster__name",
        "namespace",
        "workload_kind",
        "workload_name",
        "container",
        "container_type",
        "image",
        "state",
        "runs_as_root",
        "kubelet_error",
        "evidence",
        "image_user",
        "image_user_source",
        "uid",
        "pods",
        "mixed",
        "first_seen",
        "last_changed",
    ).iterator(2000):
        yield {
            "cluster": f.pop("cluster__name"),
            **f,
            "kubelet_error": f["kubelet_error"] or None,
            "controls_2022": list(controls.ids_2022(f["state"])),
            "controls_2013": list(controls.controls_for(f["state"])),
            "first_seen": f["first_seen"].isoformat(),
            "last_changed": f["last_changed"].isoformat(),
        }


# --- point in time ----------------------------------------------------------------------


@dataclass
class Report:
    """A point-in-time report: what it covers, its summary, and a way to stream rows."""

    at: dt.datetime
    cluster: str | None
    namespace: str | None
    generated_at: dt.datetime
    generated_by: str
    coverage: list[dict[str, Any]] = field(default_factory=list)
    _summary: dict[str, dict[str, int]] | None = None
    _summarize: Any = None  # computes the summary when it is first read
    _queryset: Any = None
    _base: Any = None  # the annotated findings, not yet filtered (copy_sql filters them)
    _scope: Any = None  # whose report (access.Scope): pgcopy.py balances its ranges by it

    @property
    def summary(self) -> dict[str, dict[str, int]]:
        """state -> {"containers", "workloads", "accepted"} (accepted: containers an
        exception in force at `at` covered; counted within containers, shown apart).
        Aggregated in the database when first read: a CSV export never needs it."""
        if self._summary is None:
            self._summary = self._summarize() if self._summarize else {}
        return self._summary

    @property
    def scope_label(self) -> str:
        if self.namespace:
            return f"namespace {self.cluster}/{self.namespace}"
        return f"cluster {self.cluster}" if self.cluster else "the whole fleet"

    @property
    def scope(self) -> dict[str, str | None]:
        return {"cluster": self.cluster, "namespace": self.namespace}

    def control_summary(self) -> list[dict[str, Any]]:
        """Per control (2022 number first, 2013 beside it), the workloads and containers
        per state."""
        out = []
        for c in controls.CONTROLS.values():
            states = {
                s: self.summary[s]
                for s in controls.MAPPING
                if c.id in controls.MAPPING[s] and s in self.summary
            }
            out.append(
                {
                    "control_2022": c.id_2022,
                    "control_2013": c.id,
                    "title": c.title_2022,
                    "states": states,
                    "containers": sum(v["containers"] for v in states.values()),
                    "workloads": sum(v["workloads"] for v in states.values()),
                    "accepted": sum(v.get("accepted", 0) for v in states.values()),
                    "open": sum(v["containers"] - v.get("accepted", 0) for v in states.values()),
                }
            )
        return out

    def completeness(self) -> dict[str, Any]:
        """The population the report covers and whether it is complete, with the reasons
        it is not (signed into every manifest): each cluster in scope needs a recent
        complete scan before the report time, and every object it listed evaluated."""
        reasons = []
        for c in self.coverage:
            if c["last_complete_scan"] is None:
                reasons.append(f"cluster {c['cluster']}: no complete scan before the report time")
            elif not c["recent"]:
                reasons.append(
                    f"cluster {c['cluster']}: the last complete scan before the report time "
                    f"({c['last_complete_scan']}) is not recent"
                )
            if c["rejected"]:
                why = ", ".join(f"{n} {rule}" for rule, n in c["rejected_by_reason"].items())
                reasons.append(
                    f"cluster {c['cluster']}: {c['rejected']} objects rejected, not evaluated"
                    + (f" ({why})" if why else "")
                )
        if not self.coverage:
            reasons.append("no cluster in scope")
        return {
            "complete": not reasons,
            "reasons": reasons,
            "clusters": len(self.coverage),
            "clusters_scanned": sum(1 for c in self.coverage if c["last_complete_scan"]),
            "pods": sum(c["pods"] for c in self.coverage),
            "containers": sum(c["containers"] for c in self.coverage),
            "rejected": sum(c["rejected"] for c in self.coverage),
            "per_cluster": self.coverage,
        }

    def first_rows(self, n: int) -> list[dict[str, Any]]:
        """The first n rows (a preview: the page shows 100, the API 1,000)."""
        return list(itertools.islice(self.rows(), n))

    def rows(self) -> Iterator[dict[str, Any]]:
        for (
            cluster,
            ns,
            kind,
            name,
            container,
            ctype,
            image,
            first_seen,
            event,
            accepted_by,
            current_state,
            current_fix,
        ) in self._queryset.iterator(chunk_size=5000):
            _, state, _, since = event.split("|", 3)
            exception, approver, ends = (
                accepted_by.split("|", 2) if accepted_by else (None, None, None)
            )
            yield {
                "cluster": cluster,
                "namespace": ns,
                "workload_kind": kind,
                "workload_name": name,
                "container": container,
                "container_type": ctype,
                "image": image,
                "state": state,
                "controls_2022": " ".join(controls.ids_2022(state)),
                "controls_2013": " ".join(controls.controls_for(state)),
                "first_seen": first_seen.isoformat(),
                "state_since": since,
                "standing": "accepted" if exception else "open",
                "exception": int(exception) if exception else None,
                "exception_approved_by": approver,
                "exception_ends_at": ends,
                # The finding's fix is its latest scan's: shown only while the state at T
                # is the state it was written for.
                "fix": current_fix if state == current_state else "",
            }


# The point-in-time selection's columns (rows() unpacks them in this order).
_SELECTED = (
    "cluster__name",
    "namespace",
    "workload_kind",
    "workload_name",
    "container",
    "container_type",
    "image",
    "first_seen",
    "event",
    "acceptance",
    "state",
    "fix",
)
_TEXT = ("cluster", "namespace", "workload_kind", "workload_name", "container")
_TEXT += ("container_type", "image")
# A finding is open at T when its last event at or before T is one of these.
OPEN_EVENT = r"^(opened|changed|image)\|"
_ORDER = "t.cluster, t.namespace, t.workload_kind, t.workload_name, t.container, t.pk"


def copy_sql(
    report: Report, fmt: str, part: tuple[str, list[Any]] | None = None
) -> tuple[str, list[Any]]:
    """The report's rows as one SELECT for PostgreSQL's COPY, formatted by the database as
    rows() and writers.py formats them (tests/evidence/test_export_jobs.py checks the two
    byte for byte): "csv" gives REPORT_COLUMNS (cells made inert; empty text as NULL,
    which COPY writes as an empty field, as Python's csv module does), "json" one
    row_to_json object a row. The selection is the report's own queryset, unchanged;
    "bare" gives it as selected (the benchmark's floor). `part`: a condition on the
    selected columns (t.cluster, t.namespace) and its parameters, to write one range of
    the rows (pgcopy.py writes ranges in parallel)."""
    inner, params = report._base.order_by().values_list(*_SELECTED, "pk").query.sql_with_params()
    params = list(params)
    where = f"t.event ~ '{OPEN_EVENT}'"
    if part is not None:
        where += f" AND ({part[0]})"
        params += part[1]
    # OFFSET 0 keeps the inner query whole: its last-event subquery is then evaluated once
    # a finding (in the SELECT) instead of again for the outer WHERE, and the planner
    # estimates its rows from the findings, not from a regular expression on a subquery.
    columns = f"{', '.join(_TEXT)}, first_seen, event, acceptance, cur_state, fix, pk"
    # The open rows, sorted while narrow; formatted (wider) after the sort, in its order.
    source = (
        f"(SELECT * FROM ({inner} OFFSET 0) AS t({columns}) "
        f"WHERE {where} ORDER BY {_ORDER} OFFSET 0) AS t"
    )
    if fmt == "bare":
        return f"SELECT t.* FROM {source}", params
    if fmt not in ("csv", "json"):
        raise ValueError(f"no COPY form for {fmt!r}")
    select = ", ".join(f"{expr} AS {name}" for name, expr in _cells(csv=fmt == "csv"))
    rows = f"SELECT {select} FROM {source}"
    if fmt == "json":
        rows = f"SELECT row_to_json(j) FROM ({rows}) AS j"
    return rows, params


def _sql_text(value: str) -> str:
    """A constant of ours (vocabulary, control ids) as an SQL string literal."""
    return (
        "E'"
        + value.replace("\\", "\\\\").replace("'", "\\'").replace("\t", "\\t").replace("\r", "\\r")
        + "'"
    )


def _cells(csv: bool) -> list[tuple[str, str]]:

    starts = ", ".join(_sql_text(c) for c in FORMULA_STARTS)

    def text(column: str) -> str:
        if not csv:
            return column
        # rules/inert.csv_cell in SQL: a leading formula character (after spaces) gets "'".
        return (
            f"NULLIF(CASE WHEN left(ltrim({column}, ' '), 1) IN ({starts}) "
            f"THEN '''' || {column} ELSE {column} END, '')"
        )

    def plain(expr: str) -> str:
        return f"NULLIF({expr}, '')" if csv else expr

    state = "split_part(t.event, '|', 2)"

    def by_state(ids) -> str:
        cases = " ".join(
            f"WHEN {_sql_text(s)} THEN {_sql_text(' '.join(ids(s)))}" for s in controls.MAPPING
        )
        return plain(f"(CASE {state} {cases} ELSE '' END)")

    utc = "(t.first_seen AT TIME ZONE 'UTC')"
    return [
        *[(c, text(f"t.{c}")) for c in _TEXT],
        ("state", plain(state)),
        ("controls_2022", by_state(controls.ids_2022)),
        ("controls_2013", by_state(controls.controls_for)),
        # As datetime.isoformat(): microseconds only when there are some.
        (
            "first_seen",
            f"to_char({utc}, 'YYYY-MM-DD\"T\"HH24:MI:SS') || CASE WHEN "
            f"extract(microseconds FROM {utc})::bigint %% 1000000 = 0 THEN '' "
            f"ELSE to_char({utc}, '.US') END || '+00:00'",
        ),
        ("state_since", plain("split_part(t.event, '|', 4)")),
        ("standing", "CASE WHEN t.acceptance IS NULL THEN 'open' ELSE 'accepted' END"),
        ("exception", "NULLIF(split_part(t.acceptance, '|', 1), '')::bigint"),
        ("exception_approved_by", text("split_part(t.acceptance, '|', 2)")),
        ("exception_ends_at", plain(r"substring(t.acceptance FROM '^[^|]*\|[^|]*\|(.*)$')")),
        ("fix", text(f"(CASE WHEN {state} = t.cur_state THEN t.fix ELSE '' END)")),
    ]


def from_query(
    scope: access.Scope,
    query,
    generated_by: str,
    naive_as_utc: bool = True,
    summarize: bool = True,
) -> Report:
    """A point-in-time report asked for by request parameters (`at`, `cluster`,
    `namespace`), for the page and the API alike: params.BadParameter names a malformed
    one, ReportError a report that cannot be made. naive_as_utc=False: a time needs its
    zone (the API); the page's form sends UTC without one."""
    return point_in_time(
        scope,
        params.moment(query, "at", naive_as_utc),
        params.text(query, "cluster", 63) or None,
        params.text(query, "namespace", 63) or None,
        generated_by=generated_by,
        summarize=summarize,
    )


def point_in_time(
    scope: access.Scope,
    at: dt.datetime | None = None,
    cluster: str | None = None,
    namespace: str | None = None,
    generated_by: str = "",
    summarize: bool = True,
) -> Report:
    """The report of what was open at `at` (default now) in the scope. summarize=False
    only checks the parameters and builds the selection (an export's request: its job
    summarises)."""
    at = at or timezone.now()
    if timezone.is_naive(at):
        raise ReportError("the report time needs a time zone (e.g. 2026-11-28T10:00:00Z)")
    if namespace and not cluster:
        raise ReportError("a namespace report needs its cluster")
    if at > timezone.now() + dt.timedelta(minutes=1):
        raise ReportError(
            f"the report time {at.isoformat()} is in the future: a report says what was, "
            "not what will be"
        )

    pruned = retention.horizon()
    if pruned is not None and at < pruned:
        raise ReportError(
            f"the data before {pruned:%Y-%m-%d %H:%M:%S %Z} was deleted under the retention "
            "policy (WELKIN_RETENTION_DAYS): a report for an earlier time cannot be rebuilt"
        )
    qs = access.findings(scope).filter(first_seen__lte=at)
    clusters = access.clusters(scope)
    if cluster:
        try:
            c = access.cluster_or_404(scope, cluster)
            if namespace:
                access.namespace_or_404(scope, c, namespace)
        except Http404:  # access.Denied: outside the scope, or missing
            raise ReportError(
                f"no such {'namespace' if namespace else 'cluster'} in your "
                f"scope: {cluster}{'/' + namespace if namespace else ''}"
            )
        qs, clusters = qs.filter(cluster=c), clusters.filter(pk=c.pk)
        if namespace:
            qs = qs.filter(namespace=namespace)
    # One index lookup per finding: its last event at or before `at`, as kind|state|time.
    last = (
        FindingEvent.objects.filter(finding=OuterRef("pk"), at__lte=at)
        .order_by("-at", "-pk")
        .annotate(
            packed=Concat(
                "kind",
                Value("|"),
                "to_state",
                Value("|"),
                "digest",
                Value("|"),
                Cast("at", CharField()),
                output_field=CharField(),
            )
        )
        .values("packed")[:1]
    )
    annotated = qs.annotate(event=Subquery(last), acceptance=acceptance.acceptance_at(at))
    qs = annotated.filter(event__regex=OPEN_EVENT).order_by(
        "cluster__name", "namespace", "workload_kind", "workload_name", "container", "pk"
    )
    report = Report(
        at=at,
        cluster=cluster,
        namespace=namespace,
        generated_at=timezone.now(),
        generated_by=generated_by,
        _queryset=qs.values_list(*_SELECTED),
        _base=annotated,
        _scope=scope,
    )
    if summarize:
        report._summarize = lambda: _summary(qs, at)
        report.coverage = _coverage(clusters, at)
    return report


def _summary(qs, at: dt.datetime) -> dict[str, dict[str, int]]:
    """Per state, containers, workloads and accepted; aggregated in the database (a fleet
    report has a million rows)."""
    state_at = (
        FindingEvent.objects.filter(finding=OuterRef("pk"), at__lte=at)
        .order_by("-at", "-pk")
        .values("to_state")[:1]
    )
    workload = Concat(
        Cast("cluster_id", CharField()),
        Value("/"),
        "namespace",
        Value("/"),
        "workload_kind",
        Value("/"),
        "workload_name",
        output_field=CharField(),
    )
    return {
        state: {"containers": n, "workloads": w, "accepted": a}
        for state, n, w, a in qs.annotate(state_at=Subquery(state_at))
        .order_by()
        .values("state_at")
        .annotate(
            n=Count("pk"),
            w=Count(workload, distinct=True),
            a=Count("pk", filter=Q(acceptance__isnull=False)),
        )
        .values_list("state_at", "n", "w", "a")
    }


def _coverage(clusters, at: dt.datetime) -> list[dict[str, Any]]:
    """Each cluster's last complete scan before `at`; stale when older than three
    schedules (at least a day)."""
    out = []
    for c in clusters.order_by("name"):
        last, pods, containers, rejected, rejections = ScanRun.objects.filter(
            cluster=c, status=ScanStatus.SUCCEEDED, observed_at__lte=at
        ).order_by("-observed_at").values_list(
            "observed_at", "pods", "containers", "rejected", "rejections"
        ).first() or (None, 0, 0, 0, {})
        limit = max(c.schedule * 3, dt.timedelta(days=1))
        out.append(
            {
                "cluster": c.name,
                "last_complete_scan": last.isoformat() if last else None,
                "recent": last is not None and at - last <= limit,
                # The population that scan evaluated.
                "pods": pods,
                "containers": containers,
                # Objects that scan left out, and why (compliance/rules/gate.py).
                "rejected": rejected,
                "rejected_by_reason": gate.top_rules((rejections or {}).get("by_reason", {})),
            }
        )
    return out


def summary_rows(report) -> int | None:
    """The rows a point-in-time report has, from its summary (None for other documents)."""
    summary = getattr(report, "summary", None)
    if isinstance(report, Report) and isinstance(summary, dict):
        return sum(v["containers"] for v in summary.values())
    return None
