"""Fleet-wide pages: the overview and the trends (every role, filtered by scope)."""

from django.http import JsonResponse
from django.shortcuts import render

from compliance import access, dashboards
from compliance.models import DailyRollup


def overview(request):
    scope = access.scope_for(request.user)
    if scope.role is None:
        return render(request, "compliance/no_access.html", status=403)
    return render(request, "compliance/fleet.html", {
        "scope": scope, **dashboards.fleet_overview(scope)})


def _trend_scope(request):
    """(scope, cluster or None, namespace or None) from ?cluster=&namespace=, or 404."""
    scope = access.scope_for(request.user)
    cluster = namespace = None
    if request.GET.get("cluster"):
        cluster = access.cluster_or_404(scope, request.GET["cluster"])
        if request.GET.get("namespace"):
            namespace = access.namespace_or_404(scope, cluster, request.GET["namespace"])
    return scope, cluster, namespace


def trends(request):
    scope, cluster, namespace = _trend_scope(request)
    return render(request, "compliance/trends.html", {
        "scope": scope, "cluster": cluster, "namespace": namespace,
        "clusters": access.clusters(scope).only("name"),
        "namespaces": (DailyRollup.objects.filter(scope.q(), cluster=cluster)
                       .values_list("namespace", flat=True).distinct().order_by("namespace")
                       if cluster else [])})


def trend_data(request):
    scope, cluster, namespace = _trend_scope(request)
    try:
        days = min(max(int(request.GET.get("days", 90)), 7), 400)
    except ValueError:
        days = 90
    return JsonResponse(dashboards.trend_data(scope, cluster, namespace, days))
