"""400, never 500: every route of the URLconf and every API endpoint, as every role, with
NUL bytes, overlong values, impossible dates, out-of-range times, junk cursors and
non-ASCII digits in every parameter and path value."""

import base64
import uuid
from urllib.parse import quote

from django.contrib.auth.models import User
from django.core.cache import cache
from django.urls import get_resolver

from compliance import demo
from compliance.models import Finding, RiskException

ROLES = ["officer", "auditor", "lead"]
DEMO_DAYS = 3  # the demo fleet, short: the sweep only needs every page to have data

HOSTILE = [
    "\x00",
    "x" * 5000,
    "2026-02-30",
    "0001-01-01T00:00+14:00",
    "9999-12-31T23:59:59-14:00",
    base64.b64encode(b"p=abc").decode(),
    base64.urlsafe_b64encode(b'["a","b","c\\u0000",1]').decode(),
    "²",
    "١٢٣",
    "99999999999999999999",
    "<script>x</script>",
    "\r\nSet-Cookie: a=b",
]
PARAMS = [
    "q",
    "namespace",
    "cluster",
    "kind",
    "state",
    "after",
    "since",
    "at",
    "days",
    "before",
    "action",
    "cursor",
    "page_size",
    "open",
    "preview",
    "format",
]
# The risk-acceptance routes read these parameters and no others: each is tried with
# each hostile value (the generic ones above are the other routes').
EXCEPTION_PARAMS = ["cluster", "namespace", "format", "action", "before", "page_size"]
ROUTE_PARAMS = {
    "compliance-exceptions": ["status", "ending_within", *EXCEPTION_PARAMS],
    "api-exception-list": ["status", "ending_within", "cursor", *EXCEPTION_PARAMS],
    "compliance-exception-new": [
        "finding",
        "ends_at",
        "controls",
        "reason",
        "ticket",
        "image_digest",
        "workload_kind",
        "workload_name",
        "container",
        *EXCEPTION_PARAMS,
    ],
    "compliance-exceptions-export": ["status", "ending_within", *EXCEPTION_PARAMS],
    "compliance-exception": ["new", *EXCEPTION_PARAMS],
    "compliance-exception-decide": ["comment", *EXCEPTION_PARAMS],
}
# Routes that read only a few parameters (and are costly to request: an export written,
# a schema generated, a report rebuilt) get those, plus two they ignore.
IGNORED = ["q", "namespace"]
ROUTE_PARAMS.update(
    {
        "compliance-export": ["at", "cluster", "namespace", "format", "q"],
        "api-report": ["at", "cluster", "namespace", "q"],
        "api-exports": ["at", "cluster", "namespace", "format", "q"],
        "api-schema": ["format", "lang", *IGNORED],
        "compliance-finding": IGNORED,
        "compliance-audit": ["action", "before", *IGNORED],
        "compliance-audit-export": IGNORED,
        "compliance-audit-verify": IGNORED,
        "compliance-samples": ["at", "size", "seed", "cluster", "namespace"],
        "compliance-sample": IGNORED,
        "compliance-sample-export": ["format"],
        "compliance-export-timestamp": IGNORED,
        "compliance-exports": IGNORED,
        "api-export": IGNORED,
        "api-export-file": IGNORED,
        "api-export-manifest": IGNORED,
        "api-export-timestamp": IGNORED,
    }
)
EXTRA_PARAMS = {"api-finding-list": ["standing"]}
LEAD_PARAMS = {"cluster", "namespace", "q", "after", "cursor", "at", "before", "finding"}
# Path values for <str:...> and DRF's [^/.]+ segments (a '/' would not reach the view).
HOSTILE_PATH = [
    "\x00",
    "x" * 300,
    "%25",
    "..",
    "١٢٣",
    "<b>",
    "99999999999999999999",
    "a b",
    "\u202e",
]


def routes(finding_pk: int, export_pk: str, exception_pk: int = 1) -> dict[str, list[str]]:
    """Every URL name -> paths that reach it with valid and with hostile path values."""
    q = [quote(v, safe="") for v in HOSTILE_PATH]
    return {
        "login": ["/accounts/login/"],
        "compliance-fleet": ["/"],
        "compliance-trends": ["/trends/"],
        "compliance-trend-data": ["/trends/data.json"],
        "compliance-cluster": ["/clusters/prod-eu/", "/clusters/" + "x" * 300 + "/"],
        "compliance-namespace": [
            "/clusters/prod-eu/namespaces/payments/",
            *(f"/clusters/prod-eu/namespaces/{v}/" for v in q),
        ],
        "compliance-finding": [
            f"/findings/{finding_pk}/",
            "/findings/0/",
            "/findings/99999999999999999999/",
        ],
        "compliance-reports": ["/reports/"],
        "compliance-export": ["/reports/export/"],
        "compliance-exports": ["/reports/exports/"],
        "compliance-export-file": [f"/reports/exports/{export_pk}/"],
        "compliance-export-manifest": [f"/reports/exports/{export_pk}/manifest.json"],
        "compliance-export-timestamp": [f"/reports/exports/{export_pk}/manifest.json.tsr"],
        "compliance-samples": ["/reports/samples/"],
        "compliance-sample": [f"/reports/samples/{export_pk}/"],
        "compliance-sample-export": [f"/reports/samples/{export_pk}/export/"],
        "compliance-verify": ["/reports/verify/"],
        "compliance-audit": ["/audit/"],
        "compliance-audit-export": ["/audit/export.csv"],
        "compliance-audit-verify": ["/audit/verify/"],
        "compliance-scans": ["/scans/"],
        "compliance-scan-progress": ["/scans/prod-eu/progress/"],
        "compliance-scan-now": ["/scans/prod-eu/now/"],
        "compliance-scan-schedule": ["/scans/prod-eu/schedule/"],
        "compliance-settings": ["/settings/"],
        "compliance-contact-test": [
            "/settings/contacts/1/test/",
            "/settings/contacts/99999999999999999999/test/",
        ],
        "compliance-token-revoke": [
            "/settings/tokens/1/revoke/",
            "/settings/tokens/99999999999999999999/revoke/",
        ],
        "compliance-sso-login": ["/sso/login/"],
        "compliance-sso-callback": ["/sso/callback/"],
        "api-root": ["/api/v1/"],
        "api-schema": ["/api/schema/"],
        "api-report": ["/api/v1/report/"],
        "api-exports": ["/api/v1/exports/"],
        "api-export": [f"/api/v1/exports/{export_pk}/", "/api/v1/exports/1/"],
        "api-export-file": [f"/api/v1/exports/{export_pk}/file"],
        "api-export-manifest": [f"/api/v1/exports/{export_pk}/manifest.json"],
        "api-export-timestamp": [f"/api/v1/exports/{export_pk}/manifest.json.tsr"],
        "api-cluster-list": ["/api/v1/clusters/"],
        "api-cluster-detail": ["/api/v1/clusters/prod-eu/", *(f"/api/v1/clusters/{v}/" for v in q)],
        "api-scan-list": ["/api/v1/scans/"],
        "api-scan-detail": ["/api/v1/scans/1/", *(f"/api/v1/scans/{v}/" for v in q)],
        "api-finding-list": ["/api/v1/findings/"],
        "api-finding-detail": [
            f"/api/v1/findings/{finding_pk}/",
            *(f"/api/v1/findings/{v}/" for v in q),
        ],
        "api-rollup-list": ["/api/v1/rollups/"],
        "api-exception-list": ["/api/v1/exceptions/"],
        "api-exception-detail": [
            f"/api/v1/exceptions/{exception_pk}/",
            *(f"/api/v1/exceptions/{v}/" for v in q),
        ],
        "compliance-exceptions": ["/exceptions/"],
        "compliance-exception-new": ["/exceptions/new/", "/exceptions/new/?finding=0"],
        "compliance-exceptions-export": ["/exceptions/export/"],
        "compliance-exception": [
            "/exceptions/1/",
            "/exceptions/0/",
            "/exceptions/99999999999999999999/",
        ],
        "compliance-exception-decide": ["/exceptions/1/decide/", "/exceptions/0/decide/"],
        "api-rollup-detail": ["/api/v1/rollups/1/", *(f"/api/v1/rollups/{v}/" for v in q)],
        "compliance-logout": ["/logout/"],  # last: it ends the sweep's session
    }


POSTS = {
    "compliance-export",
    "api-exports",
    "compliance-samples",
    "compliance-sample-export",
    "compliance-exception-new",
    "compliance-exceptions-export",
    "compliance-exception-decide",
    "compliance-verify",
    "compliance-scan-now",
    "compliance-scan-schedule",
    "compliance-contact-test",
    "compliance-logout",
    "login",
}
NOT_OURS = {
    "logout",
    "password_change",
    "password_change_done",
    "password_reset",
    "password_reset_done",
    "password_reset_confirm",
    "password_reset_complete",
}


def url_names() -> set[str]:
    def walk(patterns):
        for p in patterns:
            if hasattr(p, "url_patterns"):
                if not str(p.pattern).startswith("admin"):
                    yield from walk(p.url_patterns)
            elif p.name:
                yield p.name

    return set(walk(get_resolver().url_patterns))


def test_the_sweep_covers_every_route(db):
    assert url_names() - NOT_OURS == set(routes(1, "x"))


def sweep(client, role: str, every_parameter: bool) -> int:
    """Request every route; with every_parameter, each parameter with each hostile value
    (GET, and POST where the route takes one), else each path once per method."""
    cache.clear()
    client.force_login(User.objects.get(username=role))
    finding = Finding.objects.filter(namespace="payments").order_by("pk").first()
    exception = RiskException.objects.filter(namespace="payments").order_by("pk").first()
    tried = 0
    for name, paths in routes(finding.pk, str(uuid.uuid4()), exception.pk).items():
        for i, path in enumerate(paths):
            # Hostile path values are tried without parameters; the valid path with all.
            cases = (
                [
                    (p, v)
                    for p in ROUTE_PARAMS.get(name, PARAMS + EXTRA_PARAMS.get(name, []))
                    # A lead's pass tries what narrows or names a scope; the officer's all.
                    if role == "officer" or p in LEAD_PARAMS
                    for v in HOSTILE
                ]
                if every_parameter and i == 0
                else [("q", "")]
            )
            for param, value in cases:
                # Hostile values are posted as the officer; the other roles post each
                # path once (their POSTs are refused before any parameter is read).
                post = name in POSTS and (role == "officer" or param == "q")
                for method in ["get", "post"] if post else ["get"]:
                    data = {param: value}
                    if method == "post" and name in ("compliance-export", "api-exports"):
                        data.setdefault("format", "csv")
                    r = getattr(client, method)(path, data)
                    tried += 1
                    assert r.status_code < 500, (role, method, path, param, value, r.status_code)
                    if value == "\x00" and method == "get":
                        assert r.status_code == 400, (path, param)
    return tried


def test_no_parameter_or_path_value_answers_5xx(client, demo_fleet, db, settings, tmp_path):
    settings.EXPORTS_DIR = tmp_path
    demo.add_exceptions()
    tried = sweep(client, "officer", every_parameter=True)
    for role in ("auditor", "lead"):
        tried += sweep(client, role, every_parameter=role == "lead")
    print(f"\n{tried} hostile requests over every route and role, none answered 5xx")
    assert tried > 10_000


def test_a_bad_parameter_is_named_in_the_answer(client, demo_fleet, db):
    client.force_login(User.objects.get(username="officer"))
    r = client.get("/trends/data.json", {"days": "²"})
    assert r.status_code == 400 and b"days: expected a whole number" in r.content
    r = client.get("/api/v1/rollups/", {"since": "2026-02-30"})
    assert r.status_code == 400 and r.json() == {
        "since": ["'2026-02-30' is not a date (YYYY-MM-DD)"]
    }
    r = client.get("/api/v1/report/", {"at": "0001-01-01T00:00+14:00"})
    assert r.status_code == 400 and "out of range" in r.json()["at"][0]
    r = client.get("/audit/", {"before": "²"})
    assert r.status_code == 400
    r = client.get("/api/v1/findings/", {"cursor": base64.b64encode(b"p=abc").decode()})
    assert r.status_code == 400 and r.json() == {"cursor": ["not a cursor from this list"]}
    r = client.get("/clusters/prod-eu/namespaces/payments/", {"q": "a\x00"})
    assert r.status_code == 400 and b"q: contains control characters" in r.content
