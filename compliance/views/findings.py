"""The finding page: why, how other tools differ, how to fix it, and its history."""

from django.shortcuts import render

from compliance import access, dashboards, explain


def finding(request, pk):
    scope = access.scope_for(request.user)
    finding = access.finding_or_404(scope, pk)
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
            "events": dashboards.finding_history(finding),
        },
    )
