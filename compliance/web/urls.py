from django.urls import path

from compliance.web.views import (
    clusters,
    exceptions,
    findings,
    fleet,
    notifications,
    reports,
    samples,
    scans,
    sso,
)

urlpatterns = [
    path("", fleet.overview, name="compliance-fleet"),
    path("trends/", fleet.trends, name="compliance-trends"),
    path("trends/data.json", fleet.trend_data, name="compliance-trend-data"),
    path("clusters/<slug:name>/", clusters.cluster, name="compliance-cluster"),
    path(
        "clusters/<slug:name>/namespaces/<str:namespace>/",
        clusters.namespace,
        name="compliance-namespace",
    ),
    path("findings/<int:pk>/", findings.finding, name="compliance-finding"),
    path("exceptions/", exceptions.register_page, name="compliance-exceptions"),
    path("exceptions/new/", exceptions.new, name="compliance-exception-new"),
    path("exceptions/export/", exceptions.export, name="compliance-exceptions-export"),
    path("exceptions/<int:pk>/", exceptions.detail, name="compliance-exception"),
    path("exceptions/<int:pk>/decide/", exceptions.decide, name="compliance-exception-decide"),
    path("reports/", reports.report, name="compliance-reports"),
    path("reports/export/", reports.export, name="compliance-export"),
    path("reports/exports/", reports.exports_list, name="compliance-exports"),
    path("reports/exports/<uuid:pk>/", reports.download, name="compliance-export-file"),
    path(
        "reports/exports/<uuid:pk>/manifest.json",
        reports.manifest,
        name="compliance-export-manifest",
    ),
    path(
        "reports/exports/<uuid:pk>/manifest.json.tsr",
        reports.timestamp,
        name="compliance-export-timestamp",
    ),
    path("reports/verify/", reports.verify, name="compliance-verify"),
    path("reports/samples/", samples.sample_list, name="compliance-samples"),
    path("reports/samples/<uuid:pk>/", samples.sample_detail, name="compliance-sample"),
    path(
        "reports/samples/<uuid:pk>/export/",
        samples.sample_export,
        name="compliance-sample-export",
    ),
    path("audit/", reports.audit_log, name="compliance-audit"),
    path("audit/export.csv", reports.audit_export, name="compliance-audit-export"),
    path("audit/verify/", reports.audit_verify, name="compliance-audit-verify"),
    path("scans/", scans.scans, name="compliance-scans"),
    path("scans/<slug:name>/progress/", scans.progress, name="compliance-scan-progress"),
    path("scans/<slug:name>/now/", scans.scan_now, name="compliance-scan-now"),
    path("scans/<slug:name>/schedule/", scans.schedule, name="compliance-scan-schedule"),
    path("settings/", notifications.overview, name="compliance-settings"),
    path(
        "settings/contacts/<int:pk>/test/", notifications.send_test, name="compliance-contact-test"
    ),
    path(
        "settings/tokens/<int:user_id>/revoke/",
        notifications.revoke_token,
        name="compliance-token-revoke",
    ),
    path("sso/login/", sso.start, name="compliance-sso-login"),
    path("sso/callback/", sso.callback, name="compliance-sso-callback"),
    path("logout/", sso.logout, name="compliance-logout"),
]
