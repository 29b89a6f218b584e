"""Risk acceptance pages: the register, one exception with its history and decisions, the
request form (pre-filled from a finding), and signed exports of the register."""

from __future__ import annotations

import datetime as dt
import re

from django.shortcuts import redirect, render
from django.urls import reverse
from django.utils import timezone
from django.views.decorators.http import require_POST

from compliance import params
from compliance.audit import log
from compliance.evidence import jobs
from compliance.identity import access
from compliance.models import AuditEvent, ExceptionMatch
from compliance.risk import acceptance, exceptions, register
from compliance.rules import controls
from compliance.vocabulary import EXCEPTION_STATUS, FINDING_KINDS, NONCOMPLIANT

REGISTER_FORMATS = ("csv", "json")


def _scope(request) -> access.Scope:
    scope = access.scope_for(request.user)
    if not register.can_read(scope):
        raise log.Denied("Not found")
    return scope


def register_page(request):
    scope = _scope(request)
    filters = register.Filters.from_query(request.GET)
    data = register.page(scope, filters, params.integer(request.GET, "before"))
    return render(
        request,
        "compliance/exceptions.html",
        {
            "scope": scope,
            "can_request": exceptions.may_request(scope),
            "filters": filters,
            "statuses": EXCEPTION_STATUS,
            "clusters": access.clusters(scope).only("name"),
            "formats": REGISTER_FORMATS,
            "query": request.GET.urlencode(),
            **data,
        },
    )


def detail(request, pk):
    scope = _scope(request)
    e = exceptions.exception_or_404(scope, pk)
    now = timezone.now()
    status = exceptions.status_at(e, now)
    # Open findings its scope covers (a lead sees those in their namespaces only).
    matches = ExceptionMatch.objects.filter(scope.q(), exception=e, open=True)
    covered = list(matches.select_related("finding__cluster").order_by("finding_id")[:50])
    accepting = acceptance.accepting([m.finding_id for m in covered], now)
    return render(
        request,
        "compliance/exception.html",
        {
            "scope": scope,
            "e": e,
            "status": status,
            "history": list(e.events.all()),
            "covered": [(m.finding, accepting.get(m.finding_id)) for m in covered],
            "covered_count": matches.count(),
            "can_decide": exceptions.refusal(scope, e, request.user.pk, "approve", status) is None,
            "own_request": e.requested_by_id == request.user.pk,
            "can_revoke": exceptions.refusal(scope, e, request.user.pk, "revoke", status) is None,
            "error": getattr(request, "exception_error", None),
            "new": params.choice(request.GET, "new", ("1", "nothing")),
        },
    )


@require_POST
def decide(request, pk):
    scope = access.scope_for(request.user)
    e = exceptions.exception_or_404(scope, pk)
    if not scope.can_manage:
        raise log.Denied("Not found")
    action = params.choice(request.POST, "action", ("approve", "reject", "revoke"))
    try:
        exceptions.decide(
            scope,
            request.user,
            e.pk,
            action,
            request.POST.get("comment") or "",
            request,
        )
    except exceptions.ExceptionError as error:
        request.exception_error = str(error)
        response = detail(request, pk)
        response.status_code = 400
        return response
    return redirect("compliance-exception", pk=e.pk)


def new(request):
    """The request form: GET shows it (pre-filled from ?finding=), POST creates."""
    scope = access.scope_for(request.user)
    if not exceptions.may_request(scope):
        raise log.Denied("Not found")
    finding = None
    if finding_id := params.integer(request.GET, "finding"):
        finding = access.finding_or_404(scope, finding_id)
    if request.method == "POST":
        form = _form(request.POST)
        try:
            created = exceptions.request(scope, request.user, _request(form), request)
        except (exceptions.ExceptionError, params.BadParameter) as error:
            return _form_page(request, scope, form, finding, error, 400)
        return redirect(_created_url(created))
    return _form_page(request, scope, _prefill(finding), finding, None, 200)


def _created_url(created: exceptions.Created) -> str:
    url = reverse("compliance-exception", args=[created.exception.pk])
    return url + ("?new=nothing" if created.matched == 0 else "?new=1")


FIELDS = (
    "cluster",
    "namespace",
    "workload_kind",
    "workload_name",
    "container",
    "image_digest",
    "reason",
    "ticket",
    "ends_at",
)


def _form(post) -> dict:
    """The posted fields as entered (exceptions.check names what is wrong with them; a
    reason may hold line breaks, which query parameters may not)."""
    form = {name: post.get(name) or "" for name in FIELDS}
    form["controls"] = post.getlist("controls")[:10]
    return form


def _request(form: dict) -> exceptions.Request:
    return exceptions.Request(
        cluster=form["cluster"],
        namespace=form["namespace"],
        workload_kind=form["workload_kind"],
        workload_name=form["workload_name"],
        container=form["container"],
        image_digest=form["image_digest"],
        controls=tuple(form["controls"]),
        reason=form["reason"],
        ticket=form["ticket"],
        ends_at=_end_date(form["ends_at"]),
    )


def _end_date(value: str) -> dt.datetime | None:
    """A date (YYYY-MM-DD: the end of that day, UTC) or an ISO date-time with a zone, in
    UTC (an offset PostgreSQL cannot store, +23:59, was a 500)."""
    value = value.strip()
    if not value:
        return None
    if re.fullmatch(r"[0-9]{4}-[0-9]{2}-[0-9]{2}", value):
        try:
            day = dt.date.fromisoformat(value)
        except ValueError:
            raise exceptions.ExceptionError("ends_at", f"{value!r} is not a date") from None
        return dt.datetime.combine(day, dt.time(23, 59, 59), tzinfo=dt.UTC)
    if "T" not in value and " " not in value:  # 2027-W02-1, 20270115: not what the form asks
        raise exceptions.ExceptionError(
            "ends_at", "a date (YYYY-MM-DD) or a date-time with a time zone"
        )
    try:
        return params.parse_moment(value, "ends_at", naive_as_utc=False)
    except params.BadParameter as e:
        raise exceptions.ExceptionError("ends_at", e.problem) from None


def _prefill(finding) -> dict:
    form = dict.fromkeys(FIELDS, "")
    form["controls"] = []
    default_end = timezone.now().date() + dt.timedelta(days=min(90, exceptions.max_days()))
    form["ends_at"] = default_end.isoformat()
    if finding is not None:
        form.update(
            cluster=finding.cluster.name,
            namespace=finding.namespace,
            workload_kind=finding.workload_kind,
            workload_name=finding.workload_name,
            container=finding.container,
            image_digest=finding.image_digest,
            controls=list(controls.controls_for(finding.state)),
        )
    return form


def _form_page(request, scope, form, finding, error, status):
    return render(
        request,
        "compliance/exception_form.html",
        {
            "scope": scope,
            "form": form,
            "finding": finding,
            "error": error,
            "clusters": access.clusters(scope).only("name"),
            "kinds": FINDING_KINDS,
            "controls": controls.CONTROLS.values(),
            "states": NONCOMPLIANT,
            "max_days": exceptions.max_days(),
        },
        status=status,
    )


@require_POST
def export(request):
    """The register (with the page's filters) as a signed CSV or JSON export."""
    scope = _scope(request)
    fmt = params.choice(request.POST, "format", REGISTER_FORMATS, "csv")
    filters = register.Filters.from_query(request.POST)
    doc = register.Register(scope, filters, request.user.get_username())
    query = {k: str(v) for k, v in filters.as_dict().items()}
    try:
        jobs.ask(
            request, AuditEvent.Action.EXCEPTION_EXPORT, fmt, doc, "register", {"filters": query}
        )
    except jobs.Busy as busy:
        context = {
            "scope": scope,
            "can_request": exceptions.may_request(scope),
            "filters": filters,
            "error": str(busy),
            "rows": [],
        }
        return render(request, "compliance/exceptions.html", context, status=429)
    return redirect(reverse("compliance-reports") + "#exports")
