"""The exception register: every exception a user may read, filtered, as rows for the
register page, the API, `manage.py exceptions` and signed CSV/JSON exports.

Each row says the exception's status now (expired is worked out from its end date), how
many open findings it covers and accepts now, and calls out the unused (in force or
waiting, but covering no open finding) and the ended ones.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

from django.core.exceptions import ObjectDoesNotExist
from django.db.models import Count, F, Q, QuerySet
from django.utils import timezone

from compliance import params
from compliance.identity import access
from compliance.identity.access import Scope
from compliance.models import ExceptionMatch, RiskException
from compliance.risk import acceptance, exceptions
from compliance.rules import controls
from compliance.vocabulary import APPROVED, EXCEPTION_STATUS, EXPIRED, REQUESTED, REVOKED

COLUMNS = [
    "id",
    "status",
    "cluster",
    "namespace",
    "workload_kind",
    "workload_name",
    "container",
    "image_digest",
    "states",
    "controls_2022",
    "controls_2013",
    "reason",
    "ticket",
    "requested_by",
    "requested_at",
    "decided_by",
    "decided_at",
    "decision_comment",
    "revoked_by",
    "revoked_at",
    "ends_at",
    "open_findings_covered",
    "unused",
    "ended",
]
PAGE_SIZE = 50


@dataclass
class Filters:
    status: str = ""
    cluster: str = ""
    namespace: str = ""
    ending_within: int | None = None  # days

    @classmethod
    def from_query(cls, query) -> Filters:
        return cls(
            params.choice(query, "status", EXCEPTION_STATUS.values),
            params.text(query, "cluster", 63).strip(),
            params.text(query, "namespace", 63).strip(),
            params.integer(query, "ending_within", None, minimum=0, maximum=3650),
        )

    def as_dict(self) -> dict[str, Any]:
        return {k: v for k, v in self.__dict__.items() if v not in ("", None)}


def queryset(scope: Scope, f: Filters, now: dt.datetime) -> QuerySet[RiskException]:
    qs = exceptions.visible(scope)
    if f.status:
        qs = qs.filter(exceptions.status_q(f.status, now))
    if f.cluster:
        qs = qs.filter(Q(cluster__name=f.cluster) | Q(cluster__isnull=True))
    if f.namespace:
        qs = qs.filter(namespace=f.namespace)
    if f.ending_within is not None:
        qs = qs.filter(
            decision__in=(REQUESTED, APPROVED),
            ends_at__gt=now,
            ends_at__lte=now + dt.timedelta(days=f.ending_within),
        )
    return qs


def covered_counts(scope: Scope, ids: list[int]) -> dict[int, int]:
    """Open findings (that the user may see) each exception covers now, in one of its
    states and, when pinned, running its digest (what it accepts, or would once approved;
    a scope alone accepts nothing, so a pin to an old build is unused): one query for a
    page of rows."""
    return dict(
        ExceptionMatch.objects.filter(
            scope.q(),
            exception_id__in=ids,
            open=True,
        )
        .filter(acceptance._state_in_exception("state"))
        .filter(Q(exception__image_digest="") | Q(exception__image_digest=F("digest")))
        .values("exception_id")
        .annotate(n=Count("finding_id"))
        .values_list("exception_id", "n")
        .order_by()
    )


def person(user) -> str:
    """An account as the register names it: with the person it is linked to (a provider
    account linked to a local one), so two accounts of one person read as one."""
    try:
        linked = user.oidc.person
    except ObjectDoesNotExist:
        linked = None
    return f"{user.username} ({linked.username})" if linked is not None else user.username


def row(e: RiskException, now: dt.datetime, covered: int) -> dict[str, Any]:
    status = exceptions.status_at(e, now)
    return {
        "id": e.pk,
        "status": status,
        "cluster": e.cluster.name if e.cluster_id else "*",
        "namespace": e.namespace,
        "workload_kind": e.workload_kind,
        "workload_name": e.workload_name,
        "container": e.container,
        "image_digest": e.image_digest,
        "states": " ".join(e.state_list),
        "controls_2022": " ".join(controls.CONTROLS[c].id_2022 for c in e.controls),
        "controls_2013": " ".join(e.controls),
        "reason": e.reason,
        "ticket": e.ticket,
        "requested_by": person(e.requested_by),
        "requested_at": e.requested_at.isoformat(),
        "decided_by": person(e.decided_by) if e.decided_by_id else "",
        "decided_at": e.decided_at.isoformat() if e.decided_at else "",
        "decision_comment": e.decision_comment,
        "revoked_by": e.revoked_by.username if e.revoked_by_id else "",
        "revoked_at": e.revoked_at.isoformat() if e.revoked_at else "",
        "ends_at": e.ends_at.isoformat(),
        "open_findings_covered": covered,
        # In force or waiting, but its scope covers no open finding: a typo, or fixed.
        "unused": status in (REQUESTED, APPROVED) and covered == 0,
        "ended": status in (EXPIRED, REVOKED),
    }


def page(scope: Scope, f: Filters, before: int | None) -> dict[str, Any]:
    """A page of the register, newest first (keyset on id)."""
    now = timezone.now()
    qs = queryset(scope, f, now).select_related("revoked_by")
    if before is not None:
        qs = qs.filter(pk__lt=before)
    items = list(qs.order_by("-pk")[: PAGE_SIZE + 1])
    more = len(items) > PAGE_SIZE
    items = items[:PAGE_SIZE]
    covered = covered_counts(scope, [e.pk for e in items])
    rows = [{**row(e, now, covered.get(e.pk, 0)), "object": e} for e in items]
    return {"rows": rows, "next": items[-1].pk if more else None, "now": now}


@dataclass
class Register:
    """The register as a document compliance/evidence/writers.py writes (CSV, JSON) and signs."""

    scope_: Scope
    filters: Filters
    generated_by: str
    at: dt.datetime = field(default_factory=timezone.now)
    columns: list[str] = field(default_factory=lambda: list(COLUMNS))

    @property
    def generated_at(self) -> dt.datetime:
        return self.at

    @property
    def scope(self) -> dict[str, Any]:
        return {"register": self.filters.as_dict()}

    @property
    def scope_label(self) -> str:
        shown = ", ".join(f"{k}={v}" for k, v in self.filters.as_dict().items())
        return "exception register" + (f" ({shown})" if shown else "")

    def json_head(self, meta: dict[str, Any]) -> dict[str, Any]:
        return {"register": meta, "columns": self.columns}

    def rows(self) -> Iterator[dict[str, Any]]:
        qs = (
            queryset(self.scope_, self.filters, self.at).select_related("revoked_by").order_by("pk")
        )
        batch: list[RiskException] = []
        for e in qs.iterator(chunk_size=1000):
            batch.append(e)
            if len(batch) == 1000:
                yield from self._rows(batch)
                batch = []
        yield from self._rows(batch)

    def _rows(self, batch: list[RiskException]) -> Iterator[dict[str, Any]]:
        covered = covered_counts(self.scope_, [e.pk for e in batch])
        for e in batch:
            yield row(e, self.at, covered.get(e.pk, 0))


def can_read(scope: Scope) -> bool:
    return scope.role is not None and (scope.fleet or scope.role == access.LEAD)
