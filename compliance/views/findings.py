"""The finding page: why, how other tools differ, how to fix it, and its history."""

from django.shortcuts import render

from compliance import access, dashboards, explain


def finding(request, pk):
    scope = access.scope_for(request.user)
    f = access.finding_or_404(scope, pk)
    return render(request, "compliance/finding.html", {
        "scope": scope, "f": f, "steps": explain.steps(f),
        "other_tools": explain.other_tools(f), "fix": explain.remediation(f),
        "controls": explain.control_rows(f), "events": dashboards.finding_history(f)})
