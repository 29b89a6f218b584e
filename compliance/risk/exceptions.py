"""Risk acceptance: exceptions with an owner, a reason, an approver and an end date.

An exception covers a scope (a cluster or all, a namespace name or glob, optionally a
workload and a container, optionally pinned to an image digest) for the states its
controls concern. Team leads request exceptions inside their grants; security officers
approve, reject or revoke; nobody decides on their own request. Nothing is deleted: every
change appends an ExceptionEvent and an audit event. What an exception does to findings,
and when, is compliance/risk/acceptance.py.
"""

from __future__ import annotations

import datetime as dt
import fnmatch
import re
from dataclasses import dataclass
from typing import Any

from celery import shared_task
from django.conf import settings
from django.contrib.auth.models import User
from django.db import transaction
from django.db.models import Count, Q, QuerySet
from django.db.models.functions import Lower, Trim
from django.utils import timezone

from compliance.audit import log
from compliance.identity import access
from compliance.identity.access import Scope
from compliance.models import (
    Cluster,
    ExceptionEvent,
    ExceptionMatch,
    Finding,
    OidcIdentity,
    RiskException,
)
from compliance.notify import outbox
from compliance.risk import acceptance
from compliance.rules import controls, gate
from compliance.vocabulary import (
    APPROVED,
    EXPIRED,
    NONCOMPLIANT,
    REJECTED,
    REQUESTED,
    REVOKED,
    WORKLOAD_KINDS,
)

REASON_MAX = 4000
COMMENT_MAX = 2000
TICKET_MAX = 200


class ExceptionError(ValueError):
    """Bad input for an exception, naming the field: shown on the form, 400 in the API."""

    def __init__(self, field: str, message: str):
        super().__init__(f"{field}: {message}")
        self.field, self.message = field, message


def max_days() -> int:
    return settings.WELKIN_EXCEPTION_MAX_DAYS


def status_at(e: RiskException, at: dt.datetime | None = None) -> str:
    """requested, approved, rejected, expired or revoked, at `at` (default now)."""
    at = at or timezone.now()
    if e.revoked_at is not None and e.revoked_at <= at:
        return REVOKED
    if e.decision == REJECTED and e.decided_at is not None and e.decided_at <= at:
        return REJECTED
    if e.ends_at <= at:
        return EXPIRED
    if e.approved_at is not None and e.approved_at <= at:
        return APPROVED
    return REQUESTED


@dataclass
class Request:
    """A request as entered (form, API or command), checked by `check`."""

    cluster: str  # "" or "*": every cluster
    namespace: str
    workload_kind: str = ""
    workload_name: str = ""
    container: str = ""
    image_digest: str = ""
    controls: tuple[str, ...] = ()
    reason: str = ""
    ticket: str = ""
    ends_at: dt.datetime | None = None


def _text(field: str, value: str, limit: int, required: bool = True) -> str:
    value = (value or "").strip()
    if required and not value:
        raise ExceptionError(field, "required")
    if len(value) > limit:
        raise ExceptionError(field, f"at most {limit} characters")
    try:
        return gate.prose(value, field, limit)
    except gate.Rejected as e:
        raise ExceptionError(field, str(e).removeprefix(field).lstrip(": ")) from None


def check(scope: Scope, r: Request, now: dt.datetime | None = None) -> dict[str, Any]:
    """The fields of a RiskException from a request, or ExceptionError naming the field."""
    now = now or timezone.now()
    cluster = None
    if r.cluster and r.cluster != "*":
        # Only a slug can name a cluster (and nothing else reaches the database).
        ok = len(r.cluster) <= 63 and re.fullmatch(r"[-a-zA-Z0-9_]+", r.cluster)
        cluster = Cluster.objects.filter(name=r.cluster).first() if ok else None
        if cluster is None:
            raise ExceptionError("cluster", f"no such cluster: {gate.show(r.cluster)}")
    namespace = (r.namespace or "").strip()
    if not gate.NAMESPACE_GLOB_RE.match(namespace):
        raise ExceptionError(
            "namespace", "a namespace name (lowercase letters, digits, '-') or a glob with * and ?"
        )
    if not _inside_grants(scope, cluster, namespace):
        raise ExceptionError(
            "namespace",
            f"{'*' if cluster is None else cluster.name}/{namespace} is outside the namespaces "
            "granted to you",
        )
    kind, name, container = r.workload_kind.strip(), r.workload_name.strip(), r.container.strip()
    if kind and kind not in WORKLOAD_KINDS:
        raise ExceptionError("workload_kind", f"not a workload kind: {gate.show(kind)}")
    if bool(kind) != bool(name):
        raise ExceptionError("workload_name", "give the workload's kind and name together")
    for field, value, check_name in (
        ("workload_name", name, gate.subdomain),
        ("container", container, gate.label),
    ):
        try:
            if value:
                check_name(value, field)
        except gate.Rejected as e:
            raise ExceptionError(field, str(e).removeprefix(field).lstrip(": ")) from None
    digest = r.image_digest.strip()
    if digest and not gate.DIGEST_RE.match(digest):
        raise ExceptionError("image_digest", "not an image digest (sha256:<64 hex digits>)")
    chosen = tuple(dict.fromkeys(r.controls))
    unknown = [c for c in chosen if c not in controls.CONTROLS]
    if unknown or not chosen:
        raise ExceptionError(
            "controls",
            f"unknown control {gate.show(unknown[0])}" if unknown else "choose at least one",
        )
    states = states_for(chosen)
    if not states:
        raise ExceptionError(
            "controls",
            "no state is covered by these controls alone: "
            + "; ".join(f"{s} concerns {' '.join(controls.controls_for(s))}" for s in NONCOMPLIANT),
        )
    if r.ends_at is None:
        raise ExceptionError("ends_at", "required")
    if r.ends_at <= now:
        raise ExceptionError("ends_at", "is in the past")
    # The last day allowed is counted in whole days (UTC): a date entered on the form means
    # the end of that day.
    last_day = (now + dt.timedelta(days=max_days())).astimezone(dt.UTC).date()
    # (Compared as instants: converting a far date-time to UTC can overflow.)
    if r.ends_at > dt.datetime.combine(last_day, dt.time.max, tzinfo=dt.UTC):
        raise ExceptionError(
            "ends_at",
            f"is more than {max_days()} days away (the longest an exception may last): "
            f"the last end date allowed is {last_day.isoformat()}",
        )
    return {
        "cluster": cluster,
        "namespace": namespace,
        "workload_kind": kind,
        "workload_name": name,
        "container": container,
        "image_digest": digest,
        "controls": list(chosen),
        "states": "," + ",".join(states) + ",",
        "reason": _text("reason", r.reason, REASON_MAX),
        "ticket": _text("ticket", r.ticket, TICKET_MAX),
        "ends_at": r.ends_at,
    }


def states_for(chosen: tuple[str, ...]) -> list[str]:
    """The states an exception for these controls accepts: those whose controls are all
    among them (accepting "root" takes all three; "blocked" only A.14.2.5)."""
    return [s for s in NONCOMPLIANT if set(controls.controls_for(s)) <= set(chosen)]


def _inside_grants(scope: Scope, cluster: Cluster | None, namespace: str) -> bool:
    """A lead may ask only inside a grant: the same cluster (or a grant for every cluster),
    and a namespace (or glob) the grant's glob contains."""
    if scope.fleet:
        return scope.can_manage  # auditors read only
    if scope.role != access.LEAD:
        return False
    for c, glob in scope.grants:
        if c is not None and (cluster is None or cluster.pk != c):
            continue
        if glob == namespace or (
            not gate.is_glob(namespace) and fnmatch.fnmatchcase(namespace, glob)
        ):
            return True
        if gate.is_glob(namespace) and _glob_within(namespace, glob):
            return True
    return False


def _glob_within(inner: str, outer: str) -> bool:
    """Whether every name matching `inner` matches `outer` (conservatively: `outer` is a
    prefix glob `x*` and `inner` starts with x and has no wildcard before it)."""
    if outer == "*":
        return True
    if outer.endswith("*") and not gate.is_glob(outer[:-1]):
        prefix = outer[:-1]
        return inner.startswith(prefix) and not gate.is_glob(inner[: len(prefix)])
    return False


@dataclass
class Created:
    exception: RiskException
    matched: int  # open findings the scope covers now (0: "matches nothing yet")


def may_request(scope: Scope) -> bool:
    """Who asks for exceptions: team leads (inside their grants, as check() holds them to)
    and security officers; auditors only read. Pages, the API and templates ask this."""
    return scope.can_manage or scope.role == access.LEAD


def same_person(a: int | None, b: int | None) -> bool:
    """Two accounts of one person, for four eyes: joined, directly or through others, by a
    link (a provider account linked to a local one, OidcIdentity.person) or the same e-mail
    (a provider account's is verified at sign-in, a local one's set by an administrator)."""
    if a is None or b is None:
        return False
    return a == b or b in _accounts_of(a)


def _accounts_of(user_id: int, limit: int = 50) -> set[int]:
    """Every account one person has, reached from one: links and e-mails followed until
    nothing new (a few queries; bounded)."""
    seen, frontier = {user_id}, {user_id}
    while frontier and len(seen) < limit:
        emails = {
            e.strip().lower()
            for e in User.objects.filter(pk__in=frontier).values_list("email", flat=True)
            if e and e.strip()
        }
        found = set(
            OidcIdentity.objects.filter(
                Q(user_id__in=frontier, person__isnull=False) | Q(person_id__in=frontier)
            ).values_list("user_id", "person_id")
        )
        reached = {pk for pair in found for pk in pair}
        if emails:
            reached |= set(
                User.objects.annotate(address=Lower(Trim("email")))
                .filter(address__in=emails)
                .values_list("pk", flat=True)
            )
        frontier = reached - seen
        seen |= frontier
    return seen


def officers_sharing_an_email() -> list[tuple[str, int]]:
    """(e-mail, accounts) of officers with more than one account (a password and single
    sign-on, say): four eyes count them as one person; the Settings page names them."""
    officers = User.objects.filter(Q(is_superuser=True) | Q(groups__name=access.OFFICER))
    return list(
        officers.exclude(email="")
        .annotate(address=Lower(Trim("email")))
        .values("address")
        .annotate(n=Count("pk", distinct=True))
        .filter(n__gt=1)
        .order_by("address")
        .values_list("address", "n")
    )


def refusal(scope: Scope, e: RiskException, user_id: int, action: str, status: str):
    """Why this user may not approve, reject or revoke this exception in this status (an
    ExceptionError), or None when they may: only a security officer, never on their own
    request (four eyes between persons), approve or reject only what waits for a decision,
    revoke only what is requested or approved. The page's buttons and decide() ask this."""
    if action not in ("approve", "reject", "revoke"):
        return ExceptionError("action", "approve, reject or revoke")
    if not scope.can_manage:
        return ExceptionError("user", "only security officers approve, reject or revoke")
    if action in ("approve", "reject"):
        if e.requested_by_id == user_id:
            return ExceptionError(
                "user", "you requested this exception: another officer decides on it"
            )
        if same_person(e.requested_by_id, user_id):
            return ExceptionError(
                "user",
                "another account of yours (linked, or the same e-mail) requested this "
                "exception: "
                "another officer decides on it",
            )
        if status != REQUESTED:
            return ExceptionError("exception", f"it is {status}, not waiting for a decision")
    elif status not in (REQUESTED, APPROVED):
        return ExceptionError("exception", f"it is {status}: there is nothing to revoke")
    return None


def request(scope: Scope, user, r: Request, http_request=None) -> Created:
    """A lead (or an officer) asks for an exception; matches are stored at once."""
    if not may_request(scope):
        raise ExceptionError("user", "only team leads and security officers request exceptions")
    fields = check(scope, r)
    with transaction.atomic():
        e = RiskException.objects.create(requested_by=user, **fields)
        _event(e, user, "requested", "")
        matched = acceptance.match_exception(e)
        notify(e, "requested", user.get_username())
        log.record(
            http_request,
            "exception",
            f"exception #{e.pk} requested: {e.scope_label}",
            scope={"exception": e.pk, "action": "requested", "matched": matched},
            username=None if http_request is not None else user.get_username(),
        )
    return Created(e, matched)


def decide(scope: Scope, user, pk: int, action: str, comment: str, http_request=None):
    """approve, reject or revoke, by a security officer; one consistent outcome when two
    officers act at once (the row is locked, the transition checked under the lock)."""
    if not scope.can_manage:
        raise ExceptionError("user", "only security officers approve, reject or revoke")
    if action not in ("approve", "reject", "revoke"):
        raise ExceptionError("action", "approve, reject or revoke")
    comment = _text("comment", comment, COMMENT_MAX, required=action != "approve")
    with transaction.atomic():
        e = RiskException.objects.select_for_update().filter(pk=pk).first()
        if e is None:
            raise ExceptionError("exception", "no such exception")
        # The time is read holding the row: one read before could predate a decision that
        # committed while this one waited for the lock, and judge the exception as it was.
        # Never before a decision already on the row either (another server's clock may
        # run ahead of this one's): the exception is judged as it stands.
        decided = [t for t in (e.approved_at, e.decided_at, e.revoked_at) if t is not None]
        now = max([timezone.now(), *decided])
        refused = refusal(scope, e, user.pk, action, status_at(e, now))
        if refused is not None:
            raise refused
        if action in ("approve", "reject"):
            e.decided_by, e.decided_at, e.decision_comment = user, now, comment
            if action == "approve":
                e.decision, e.approved_at = APPROVED, now
            else:
                e.decision = REJECTED
        else:
            e.decision, e.revoked_by, e.revoked_at, e.revoke_comment = REVOKED, user, now, comment
        e.save()
        if action == "approve":
            # Findings a scan opened while the request was being stored saw neither side
            # (each transaction missed the other's rows): match again, now both are in.
            acceptance.match_exception(e, missing_only=True)
        done = {"approve": "approved", "reject": "rejected", "revoke": "revoked"}[action]
        _event(e, user, done, comment)
        if done == "approved":
            notify(e, "approved", user.get_username())
        log.record(
            http_request,
            "exception",
            f"exception #{e.pk} {done}: {e.scope_label}",
            scope={"exception": e.pk, "action": done},
            username=None if http_request is not None else user.get_username(),
        )
    return e


def _event(e: RiskException, user, action: str, comment: str) -> None:
    ExceptionEvent.objects.create(
        exception=e,
        cluster_id=e.cluster_id,
        user=user,
        username=user.get_username(),
        action=action,
        comment=comment,
    )


def visible(scope: Scope) -> QuerySet[RiskException]:
    """Exceptions a user may read: all for officers and auditors; for a lead, those for
    their namespaces (the namespace a grant) and those covering a finding they can see (an
    officer's glob that reaches into their namespaces)."""
    qs = RiskException.objects.select_related(
        "cluster", "requested_by__oidc__person", "decided_by__oidc__person"
    )
    if scope.fleet:
        return qs
    if scope.role != access.LEAD or not scope.grants:
        return qs.none()
    q = Q(pk__in=[])
    for c, glob in scope.grants:
        part = (
            Q(namespace=glob)
            if not gate.is_glob(glob)
            else Q(namespace__regex=access.glob_regex(glob))
        )
        if c is not None:
            part &= Q(cluster_id=c)
        q |= part
    covering = ExceptionMatch.objects.filter(scope.q())
    return qs.filter(q | Q(pk__in=covering.values("exception_id")))


def exception_or_404(scope: Scope, pk: int) -> RiskException:
    if not 0 < pk < 2**63:
        raise log.Denied("No such exception")
    e = visible(scope).filter(pk=pk).first()
    if e is None:
        raise log.Denied("No such exception")
    return e


def status_q(status: str, now: dt.datetime) -> Q:
    """Exceptions in one status now (the register's filter)."""
    live = Q(ends_at__gt=now)
    return {
        REQUESTED: Q(decision=REQUESTED) & live,
        APPROVED: Q(decision=APPROVED) & live,
        REJECTED: Q(decision=REJECTED),
        REVOKED: Q(decision=REVOKED),
        EXPIRED: Q(decision__in=(REQUESTED, APPROVED), ends_at__lte=now),
    }[status]


def for_finding(finding: Finding) -> list[RiskException]:
    """Every exception whose scope covers the finding, newest first."""
    return list(
        RiskException.objects.filter(
            pk__in=ExceptionMatch.objects.filter(finding=finding).values("exception_id")
        ).select_related("cluster", "requested_by", "decided_by", "revoked_by")[:50]
    )


# --- notifications ----------------------------------------------------------------------------


def _places(e: RiskException) -> list[tuple[Cluster, str]]:
    """Whose namespaces an exception concerns: its own, or (a glob, every cluster) those of
    the open findings it covers (at most 20)."""
    if e.cluster_id is not None and not gate.is_glob(e.namespace):
        return [(e.cluster, e.namespace)]
    pairs = (
        ExceptionMatch.objects.filter(exception=e, open=True)
        .values_list("cluster_id", "namespace")
        .distinct()
        .order_by("cluster_id", "namespace")[:20]
    )
    clusters = Cluster.objects.in_bulk({c for c, _ in pairs})
    return [(clusters[c], ns) for c, ns in pairs]


def notify(e: RiskException, kind: str, by: str = "") -> int:
    """Tell the owners of the namespaces an exception concerns (and the officers): requested,
    approved, ending (within 14 days) or ended. Once per exception, kind and namespace."""
    from django.urls import reverse

    places = _places(e)
    if not places:
        # Every cluster or a glob, covering no open finding yet: no namespace owner to
        # tell, but the officers (and fleet-wide contacts) must still hear of a request.
        where = f"{e.cluster.name if e.cluster_id else '*'}"
        event = outbox.publish(
            f"exception_{kind}",
            {
                "cluster": where,
                "namespace": e.namespace,
                "title": f"Exception #{e.pk} {kind}: {e.scope_label}"[:300],
                "detail": f"{e.reason}\nTicket: {e.ticket}"[:2000],
                "link": reverse("compliance-exception", args=[e.pk]),
                "ends_at": e.ends_at.isoformat(),
                "by": by[:150],
                "namespaces": {},
            },
            None,
            cluster=e.cluster,
            dedupe_key=f"exception-{kind}:{e.pk}:*",
        )
        return int(event is not None)
    sent = 0
    for cluster, namespace in places:
        sent += (
            outbox.exception_event(
                kind,
                cluster,
                namespace,
                f"Exception #{e.pk} {kind}: {e.scope_label}",
                detail=f"{e.reason}\nTicket: {e.ticket}",
                link=reverse("compliance-exception", args=[e.pk]),
                ends_at=e.ends_at,
                by=by,
                dedupe_key=f"exception-{kind}:{e.pk}:{cluster.pk}:{namespace}",
            )
            is not None
        )
    return sent


def notify_ending(now: dt.datetime | None = None, days: int = 14) -> int:
    """The periodic check: approved exceptions ending within `days`, and those that ended
    in the last week (each told once)."""
    now = now or timezone.now()
    live = RiskException.objects.filter(decision=APPROVED).select_related("cluster")
    sent = 0
    for e in live.filter(ends_at__gt=now, ends_at__lte=now + dt.timedelta(days=days)):
        sent += notify(e, "ending")
    for e in live.filter(ends_at__lte=now, ends_at__gt=now - dt.timedelta(days=7)):
        sent += notify(e, "ended")
    return sent


# --- tasks (names pinned: routes, beat entries and messages already queued use them) -----


@shared_task(name="compliance.tasks.notify_exceptions_ending")
def notify_exceptions_ending() -> int:
    """Exceptions ending within 14 days, or ended: told once to their namespaces' owners."""
    return notify_ending()
