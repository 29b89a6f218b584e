"""The REST API: token authentication, the same access rules as the pages for every
endpoint, cursor pagination, and the OpenAPI schema."""

import datetime as dt

from rest_framework.test import APIClient

from compliance.models import AuditEvent, Finding


def names(response):
    return sorted((r["namespace"], r["workload_name"]) for r in response.json()["results"])


def test_it_needs_a_token(db):
    assert APIClient().get("/api/v1/findings/").status_code == 401
    c = APIClient()
    c.credentials(HTTP_AUTHORIZATION="Token nope")
    assert c.get("/api/v1/findings/").status_code == 401


def test_a_user_without_a_role_gets_403(api_as):
    assert api_as("outsider").get("/api/v1/findings/").status_code == 403


def test_every_endpoint_follows_the_access_rules(api_as, history):
    officer, lead = api_as("officer"), api_as("lead", ["shop"])
    assert names(officer.get("/api/v1/findings/")) == [("shop", "b")]
    assert names(officer.get("/api/v1/findings/", {"open": "false"})) == [
        ("ops", "d"),
        ("shop", "a"),
        ("shop", "b"),
    ]
    assert names(lead.get("/api/v1/findings/", {"open": "false"})) == [("shop", "a"), ("shop", "b")]
    d = Finding.objects.get(workload_name="d")
    assert officer.get(f"/api/v1/findings/{d.pk}/").status_code == 200
    assert lead.get(f"/api/v1/findings/{d.pk}/").status_code == 404
    b = lead.get(f"/api/v1/findings/{Finding.objects.get(workload_name='b').pk}/").json()
    assert b["state"] == "blocked" and b["remediation"]["summary"]
    # The fix as data another tool can apply: the patch, the proof, the same one line.
    fix = b["remediation"]
    assert set(fix) >= {"kind", "change", "patch", "dockerfile", "proof", "uid", "uid_source"}
    assert fix["one_line"] == b["fix"] == Finding.objects.get(workload_name="b").fix
    listed = lead.get("/api/v1/findings/").json()["results"]
    assert [r["fix"] for r in listed] == [b["fix"]]
    assert b["controls_2022"] == ["8.27"] and b["controls_2013"] == ["A.14.2.5"]
    assert [c["name"] for c in lead.get("/api/v1/clusters/").json()["results"]] == ["airgap"]
    assert lead.get("/api/v1/scans/").json()["results"] == []
    assert len(officer.get("/api/v1/scans/").json()["results"]) == 3
    assert {r["namespace"] for r in lead.get("/api/v1/rollups/").json()["results"]} == {"shop"}
    assert {r["namespace"] for r in officer.get("/api/v1/rollups/").json()["results"]} == {
        "shop",
        "ops",
    }
    rep = lead.get("/api/v1/report/", {"at": "2026-11-02T11:00:00Z"}).json()
    assert [(f["namespace"], f["workload_name"]) for f in rep["findings"]] == [("shop", "b")]
    assert lead.get("/api/v1/report/", {"cluster": "airgap", "namespace": "ops"}).status_code == 400
    assert AuditEvent.objects.filter(action="report_view").count() == 1


def test_findings_page_with_a_cursor(api_as, history):
    officer = api_as("auditor")
    first = officer.get("/api/v1/findings/", {"open": "false", "page_size": 2}).json()
    second = officer.get(first["next"]).json()
    ids = [r["id"] for r in first["results"] + second["results"]]
    assert len(ids) == len(set(ids)) == 3 and second["next"] is None


def test_it_serves_an_openapi_schema(api_as, db):
    r = api_as("auditor").get("/api/schema/", HTTP_ACCEPT="application/json")
    assert r.status_code == 200
    body = r.content.decode()
    for path in (
        "/api/v1/findings/",
        "/api/v1/clusters/",
        "/api/v1/scans/",
        "/api/v1/rollups/",
        "/api/v1/report/",
    ):
        assert path in body


def test_a_token_ends_after_its_days_and_with_its_owners_password_login(api_as, settings):
    """Access that ends: a token older than WELKIN_API_TOKEN_DAYS, or of a local account
    that may no longer sign in with its password, is refused (it kept working)."""
    from rest_framework.authtoken.models import Token

    api = api_as("auditor")
    assert api.get("/api/v1/clusters/").status_code == 200
    token = Token.objects.get()
    Token.objects.filter(pk=token.pk).update(
        created=token.created - dt.timedelta(days=settings.WELKIN_API_TOKEN_DAYS)
    )
    r = api.get("/api/v1/clusters/")
    assert r.status_code == 401 and "expired" in r.json()["detail"]
    Token.objects.filter(pk=token.pk).update(created=token.created)
    settings.WELKIN_LOCAL_LOGIN = False  # passwords off: this local account's token too
    r = api.get("/api/v1/clusters/")
    assert r.status_code == 401 and "WELKIN_LOCAL_LOGIN" in r.json()["detail"]
    token.user.set_unusable_password()  # no password is still a local account
    token.user.save()
    r = api.get("/api/v1/clusters/")
    assert r.status_code == 401 and "WELKIN_LOCAL_LOGIN" in r.json()["detail"]


def test_the_admin_lists_tokens_by_owner_never_by_key(api_as, client):
    from django.contrib.auth.models import User
    from rest_framework.authtoken.models import Token

    api_as("auditor")
    key = Token.objects.get().key
    client.force_login(User.objects.create_superuser("root", "root@example.com", "x"))
    page = client.get("/admin/authtoken/tokenproxy/")
    assert page.status_code == 200 and "auditor-user" in page.content.decode()
    assert key not in page.content.decode()
    assert client.get("/admin/authtoken/tokenproxy/add/").status_code == 403


def test_settings_lists_the_tokens_and_an_officer_revokes_one(api_as, login_as):
    api = api_as("auditor")
    officer = login_as("officer")
    page = officer.get("/settings/").content.decode()
    assert "auditor-user" in page and "API tokens" in page
    owner = AuditEvent.objects.model._meta.apps.get_model("auth", "User").objects.get(
        username="auditor-user"
    )
    r = officer.post(f"/settings/tokens/{owner.pk}/revoke/")
    assert r.status_code == 302
    assert api.get("/api/v1/clusters/").status_code == 401
    assert AuditEvent.objects.filter(
        action="admin_change", scope__model="authtoken.token", scope__change="deleted"
    ).exists()
