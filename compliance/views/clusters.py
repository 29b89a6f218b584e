"""Cluster and namespace pages (the namespace page is a team lead's home)."""

from urllib.parse import quote

from django.shortcuts import render
from django.urls import reverse
from django.utils.http import RFC3986_SUBDELIMS

from compliance import access, dashboards, params
from compliance.vocabulary import FINDING_KINDS, NONCOMPLIANT, STATES_BY_SEVERITY


def cluster(request, name):
    scope = access.scope_for(request.user)
    c = access.cluster_or_404(scope, name)
    data = dashboards.cluster_overview(scope, c)
    # Each row as the table shows it: the namespace's link and its counts in column order
    # (a thousand-namespace cluster would otherwise reverse a URL and look up every cell
    # in the template: most of the page's time).
    prefix = reverse("compliance-namespace", args=[c.name, "-"])[:-2]
    rows = [
        (
            ns,
            f"{prefix}{quote(ns, safe=RFC3986_SUBDELIMS + '/~:@')}/",
            # As text: an int in a template goes through number localisation, cell by cell.
            [str(counts.get(s, 0)) for s in STATES_BY_SEVERITY],
            str(accepted),
        )
        for ns, counts, accepted in data["namespaces"]
    ]
    return render(
        request,
        "compliance/cluster.html",
        {"scope": scope, "cluster": c, **data, "rows": rows},
    )


def namespace(request, name, namespace):
    scope = access.scope_for(request.user)
    c = access.cluster_or_404(scope, name)
    ns = access.namespace_or_404(scope, c, namespace)
    filt = dashboards.FindingFilter.from_query(request.GET)
    data = dashboards.namespace_findings(
        scope, c, ns, filt, params.text(request.GET, "after", 2000)
    )
    return render(
        request,
        "compliance/namespace.html",
        {
            "scope": scope,
            "cluster": c,
            "namespace": ns,
            "filter": filt,
            "states": NONCOMPLIANT,
            "kinds": FINDING_KINDS,
            **data,
        },
    )
