"""Cluster and namespace pages (the namespace page is a team lead's home)."""

from django.shortcuts import render

from compliance import access, dashboards, params
from compliance.vocabulary import FINDING_KINDS, NONCOMPLIANT


def cluster(request, name):
    scope = access.scope_for(request.user)
    c = access.cluster_or_404(scope, name)
    return render(
        request,
        "compliance/cluster.html",
        {"scope": scope, "cluster": c, **dashboards.cluster_overview(scope, c)},
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
