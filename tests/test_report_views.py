"""Report pages, exports through the UI, the verify page, and the audit log."""

import datetime as dt
import io

import pytest
from django.contrib.auth.models import Group, User

from compliance import access
from compliance.models import AuditEvent, Export, NamespaceGrant
from tests.test_reports import T0, history  # noqa: F401 - the fixture

AT = (T0 + dt.timedelta(days=1, hours=1)).strftime("%Y-%m-%dT%H:%M")


@pytest.fixture
def login(client, db, settings, tmp_path):
    settings.EXPORTS_DIR = tmp_path / "exports"

    def as_role(role, grants=()):
        user = User.objects.create_user(role, password="pw")
        user.groups.add(Group.objects.get_or_create(name=role)[0])
        for ns in grants:
            NamespaceGrant.objects.create(user=user, namespace=ns)
        assert client.login(username=role, password="pw")
        return client

    return as_role


def test_an_auditor_previews_exports_downloads_and_verifies(login, history):  # noqa: F811
    c = login(access.AUDITOR)
    r = c.get("/reports/", {"preview": 1, "at": AT})
    assert r.status_code == 200
    assert {(row["namespace"], row["workload_name"]) for row in r.context["rows"]} == {
        ("shop", "b"),
        ("ops", "d"),
    }
    r = c.post("/reports/export/", {"at": AT, "format": "csv", "cluster": "", "namespace": ""})
    assert r.status_code == 302
    e = Export.objects.get()
    content = b"".join(c.get(f"/reports/exports/{e.pk}/").streaming_content)
    manifest = c.get(f"/reports/exports/{e.pk}/manifest.json").content
    assert content.count(b"\n") == 3  # header and two findings
    up = c.post(
        "/reports/verify/", {"file": _file("r.csv", content), "manifest": _file("m.json", manifest)}
    )
    assert b"Verified:</strong> unmodified" in up.content
    up = c.post(
        "/reports/verify/",
        {"file": _file("r.csv", content + b"x"), "manifest": _file("m.json", manifest)},
    )
    assert b"the file was modified" in up.content
    actions = list(AuditEvent.objects.order_by("pk").values_list("action", flat=True))
    assert actions == ["login", "report_view", "export", "verify", "verify"]
    assert AuditEvent.objects.get(action="export").content_hash == e.manifest["sha256"]


def _file(name, data):
    f = io.BytesIO(data)
    f.name = name
    return f


def test_a_lead_exports_only_their_namespaces(login, history):  # noqa: F811
    c = login(access.LEAD, grants=["ops"])
    c.post("/reports/export/", {"at": AT, "format": "json"})
    e = Export.objects.get()
    body = b"".join(c.get(f"/reports/exports/{e.pk}/").streaming_content)
    assert b'"namespace":"ops"' in body and b'"namespace":"shop"' not in body
    r = c.get("/reports/", {"preview": 1, "cluster": "airgap", "namespace": "shop"})
    assert "no such namespace in your scope" in r.content.decode()


def test_exports_are_private_to_their_user(login, client, history):  # noqa: F811
    c = login(access.AUDITOR)
    c.post("/reports/export/", {"at": AT, "format": "csv"})
    e = Export.objects.get()
    c.logout()
    login(access.OFFICER)
    assert client.get(f"/reports/exports/{e.pk}/").status_code == 404
    assert AuditEvent.objects.filter(action="denied").count() == 1


def test_the_audit_log_records_logins_failures_and_denials(login, client, history):  # noqa: F811
    client.post("/accounts/login/", {"username": "mallory", "password": "guess"})
    c = login(access.LEAD, grants=["ops"])
    assert c.get("/clusters/airgap/namespaces/shop/").status_code == 404
    assert c.get("/audit/").status_code == 404
    c.logout()
    c = login(access.AUDITOR)
    r = c.get("/audit/")
    got = [(e.action, e.username) for e in r.context["events"]]
    assert ("login_failed", "mallory") in got
    assert ("denied", access.LEAD) in got
    denied = AuditEvent.objects.filter(action="denied", username=access.LEAD)
    assert {d.target for d in denied} == {"/clusters/airgap/namespaces/shop/", "/audit/"}
    csv_body = b"".join(c.get("/audit/export.csv").streaming_content).decode()
    assert "login_failed" in csv_body and "mallory" in csv_body
    assert AuditEvent.objects.filter(action="audit_export").count() == 1
