from django.urls import path

from compliance.views import clusters, findings, fleet, scans

urlpatterns = [
    path("", fleet.overview, name="compliance-fleet"),
    path("trends/", fleet.trends, name="compliance-trends"),
    path("trends/data.json", fleet.trend_data, name="compliance-trend-data"),
    path("clusters/<slug:name>/", clusters.cluster, name="compliance-cluster"),
    path("clusters/<slug:name>/namespaces/<str:namespace>/", clusters.namespace,
         name="compliance-namespace"),
    path("findings/<int:pk>/", findings.finding, name="compliance-finding"),
    path("scans/", scans.scans, name="compliance-scans"),
    path("scans/<slug:name>/progress/", scans.progress, name="compliance-scan-progress"),
    path("scans/<slug:name>/now/", scans.scan_now, name="compliance-scan-now"),
    path("scans/<slug:name>/settings/", scans.settings, name="compliance-scan-settings"),
]
