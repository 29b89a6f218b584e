"""The finding page: why, how other tools differ, how to fix it, the exceptions that cover
it, and its history (scan events and exceptions starting and ending, in one timeline)."""

from django.shortcuts import render
from django.utils import timezone

from compliance.identity import access
from compliance.risk import acceptance, exceptions
from compliance.rules import explain
from compliance.web import dashboards


def finding(request, pk):
    scope = access.scope_for(request.user)
    finding = access.finding_or_404(scope, pk)
    now = timezone.now()
    covering = exceptions.for_finding(finding)
    accepted_by = (
        acceptance.accepting([finding.pk], now).get(finding.pk)
        if finding.resolved_at is None
        else None
    )
    return render(
        request,
        "compliance/finding.html",
        {
            "scope": scope,
            "finding": finding,
            "steps": explain.steps(finding),
            "other_tools": explain.other_tools(finding),
            "fix": explain.remediation(finding),
            "controls": explain.control_rows(finding),
            "acceptance": accepted_by,
            "exceptions": [(e, exceptions.status_at(e, now)) for e in covering],
            "can_request": exceptions.may_request(scope),
            "events": acceptance.timeline(
                dashboards.finding_history(finding), covering, now, finding.first_seen
            ),
        },
    )
