"""The REST API: token authentication, the same access rules as the pages for every
endpoint, cursor pagination, and the OpenAPI schema."""

import pytest
from django.contrib.auth.models import Group, User
from rest_framework.authtoken.models import Token
from rest_framework.test import APIClient

from compliance import access
from compliance.models import AuditEvent, Finding, NamespaceGrant
from tests.test_reports import history  # noqa: F401 - the fixture


@pytest.fixture
def api(db):
    def client_for(role, grants=()):
        user = User.objects.create_user(f"{role}-user")
        user.groups.add(Group.objects.get_or_create(name=role)[0])
        for ns in grants:
            NamespaceGrant.objects.create(user=user, namespace=ns)
        c = APIClient()
        c.credentials(HTTP_AUTHORIZATION="Token " + Token.objects.create(user=user).key)
        return c

    return client_for


def names(response):
    return sorted((r["namespace"], r["workload_name"]) for r in response.json()["results"])


def test_it_needs_a_token(db):
    assert APIClient().get("/api/v1/findings/").status_code == 401
    c = APIClient()
    c.credentials(HTTP_AUTHORIZATION="Token nope")
    assert c.get("/api/v1/findings/").status_code == 401


def test_a_user_without_a_role_gets_403(db):
    user = User.objects.create_user("nobody")
    c = APIClient()
    c.credentials(HTTP_AUTHORIZATION="Token " + Token.objects.create(user=user).key)
    assert c.get("/api/v1/findings/").status_code == 403


def test_every_endpoint_follows_the_access_rules(api, history):  # noqa: F811
    officer, lead = api(access.OFFICER), api(access.LEAD, grants=["shop"])
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
    assert b["controls"] == ["A.14.2.5"]
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


def test_findings_page_with_a_cursor(api, history):  # noqa: F811
    officer = api(access.AUDITOR)
    first = officer.get("/api/v1/findings/", {"open": "false", "page_size": 2}).json()
    second = officer.get(first["next"]).json()
    ids = [r["id"] for r in first["results"] + second["results"]]
    assert len(ids) == len(set(ids)) == 3 and second["next"] is None


def test_it_serves_an_openapi_schema(api, db):
    r = api(access.AUDITOR).get("/api/schema/", HTTP_ACCEPT="application/json")
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
