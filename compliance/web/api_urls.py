from django.urls import include, path
from drf_spectacular.views import SpectacularAPIView
from rest_framework.routers import DefaultRouter

from compliance.web import api

router = DefaultRouter()
router.register("clusters", api.ClusterViewSet, basename="api-cluster")
router.register("scans", api.ScanViewSet, basename="api-scan")
router.register("findings", api.FindingViewSet, basename="api-finding")
router.register("rollups", api.RollupViewSet, basename="api-rollup")
router.register("exceptions", api.ExceptionViewSet, basename="api-exception")

urlpatterns = [
    path("v1/", include(router.urls)),
    path("v1/report/", api.report, name="api-report"),
    path("v1/exports/", api.export_list, name="api-exports"),
    path("v1/exports/<uuid:pk>/", api.export_detail, name="api-export"),
    path("v1/exports/<uuid:pk>/file", api.export_file, name="api-export-file"),
    path("v1/exports/<uuid:pk>/manifest.json", api.export_manifest, name="api-export-manifest"),
    path(
        "v1/exports/<uuid:pk>/manifest.json.tsr",
        api.export_timestamp,
        name="api-export-timestamp",
    ),
    path("schema/", SpectacularAPIView.as_view(), name="api-schema"),
]
