"""Fleet-wide pages: the overview and the trends (every role, filtered by scope)."""

from django.http import JsonResponse
from django.shortcuts import render

from compliance import params
from compliance.identity import access
from compliance.models import DailyRollup
from compliance.web import dashboards


def overview(request):
    scope = access.scope_for(request.user)
    if scope.role is None:
        return render(request, "compliance/no_access.html", status=403)
    return render(
        request, "compliance/fleet.html", {"scope": scope, **dashboards.fleet_overview(scope)}
    )


def _trend_scope(request):
    """(scope, cluster or None, namespace or None) from ?cluster=&namespace=, or 404."""
    scope = access.scope_for(request.user)
    cluster = namespace = None
    if name := params.text(request.GET, "cluster", 63):
        cluster = access.cluster_or_404(scope, name)
        if ns := params.text(request.GET, "namespace", 63):
            namespace = access.namespace_or_404(scope, cluster, ns)
    return scope, cluster, namespace


def trends(request):
    scope, cluster, namespace = _trend_scope(request)
    return render(
        request,
        "compliance/trends.html",
        {
            "scope": scope,
            "cluster": cluster,
            "namespace": namespace,
            "clusters": access.clusters(scope).only("name"),
            "namespaces": (
                DailyRollup.objects.filter(scope.q(), cluster=cluster)
                .values_list("namespace", flat=True)
                .distinct()
                .order_by("namespace")
                if cluster
                else []
            ),
        },
    )


def trend_data(request):
    scope, cluster, namespace = _trend_scope(request)
    days = params.integer(request.GET, "days", 90, minimum=7, maximum=400)
    return JsonResponse(dashboards.trend_data(scope, cluster, namespace, days))
