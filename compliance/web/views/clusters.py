"""Cluster and namespace pages (the namespace page is a team lead's home)."""

from urllib.parse import quote

from django.shortcuts import render
from django.urls import reverse
from django.utils.html import format_html
from django.utils.http import RFC3986_SUBDELIMS
from django.utils.safestring import mark_safe

from compliance import params
from compliance.identity import access
from compliance.vocabulary import FINDING_KINDS, NONCOMPLIANT, STATES_BY_SEVERITY
from compliance.web import dashboards


def cluster(request, name):
    scope = access.scope_for(request.user)
    c = access.cluster_or_404(scope, name)
    data = dashboards.cluster_overview(scope, c)
    # The table's rows are written here, not by the template: a cluster of a thousand
    # namespaces would have it reverse a URL, localise a number and escape a value for
    # every cell (most of the page's time).
    prefix = reverse("compliance-namespace", args=[c.name, "-"])[:-2]
    rows = "".join(
        format_html(
            ROW,
            f"{prefix}{quote(ns, safe=RFC3986_SUBDELIMS + '/~:@')}/",
            ns,
            mark_safe(
                "".join(f'<td class="num">{int(counts.get(s, 0))}</td>' for s in STATES_BY_SEVERITY)
            ),
            int(accepted),
        )
        for ns, counts, accepted in data["namespaces"]
    )
    return render(
        request,
        "compliance/cluster.html",
        {"scope": scope, "cluster": c, **data, "rows": mark_safe(rows)},
    )


ROW = (
    '\n      <tr><th scope="row"><a href="{}">{}</a></th>\n        {}'
    '<td class="num">{}</td></tr>\n    '
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
