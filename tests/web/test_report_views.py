"""Report pages, exports through the UI, the verify page, and the audit log."""

import datetime as dt
import io

import pytest

from compliance.models import AuditEvent, Export, NamespaceGrant
from tests.builders import T0

# Export jobs run in the request here (tests/evidence/test_export_jobs.py runs them in a worker).
pytestmark = pytest.mark.usefixtures("exports_in_process")

AT = (T0 + dt.timedelta(days=1, hours=1)).strftime("%Y-%m-%dT%H:%M")


@pytest.fixture(autouse=True)
def exports_dir(settings, tmp_path):
    settings.EXPORTS_DIR = tmp_path / "exports"


def test_an_auditor_previews_exports_downloads_and_verifies(login_as, history):
    c = login_as("auditor")
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
    manifest = b"".join(c.get(f"/reports/exports/{e.pk}/manifest.json").streaming_content)
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
    assert actions == ["login", "report_view", "export", "export_done", "verify", "verify"]
    assert AuditEvent.objects.get(action="export_done").content_hash == e.manifest["sha256"]


def test_an_export_is_downloadable_only_while_the_asker_sees_what_they_saw(login_as, history):
    c = login_as("lead", ["ops"])
    c.post("/reports/export/", {"at": AT, "format": "csv"})
    e = Export.objects.get()
    url = f"/reports/exports/{e.pk}/"
    assert c.get(url).status_code == 200
    lead = e.user
    lead.namespace_grants.all().delete()  # the grant withdrawn: the file holds ops
    assert c.get(url).status_code == 404
    assert c.get(url + "manifest.json").status_code == 404
    assert AuditEvent.objects.filter(action="denied").exists()
    NamespaceGrant.objects.create(user=lead, namespace="ops")  # given back
    assert c.get(url).status_code == 200
    lead.groups.clear()  # the role ended
    assert c.get(url).status_code in (403, 404)


def test_the_api_shows_an_exports_files_only_while_they_may_be_downloaded(
    login_as, api_as, history
):
    api = api_as("lead", ["ops"])
    r = api.post("/api/v1/exports/", {"format": "csv", "at": AT + ":00Z"}, format="json")
    assert r.status_code == 202, r.content
    body = api.get(r["Location"]).json()
    assert body["downloadable"] and body["files"] and body["sha256"]
    lead = Export.objects.get().user
    lead.namespace_grants.all().delete()
    body = api.get(r["Location"]).json()
    assert not body["downloadable"] and body["files"] is None and body["sha256"] is None


def _file(name, data):
    f = io.BytesIO(data)
    f.name = name
    return f


def test_a_lead_exports_only_their_namespaces(login_as, history):
    c = login_as("lead", ["ops"])
    c.post("/reports/export/", {"at": AT, "format": "json"})
    e = Export.objects.get()
    body = b"".join(c.get(f"/reports/exports/{e.pk}/").streaming_content)
    assert b'"namespace":"ops"' in body and b'"namespace":"shop"' not in body
    r = c.get("/reports/", {"preview": 1, "cluster": "airgap", "namespace": "shop"})
    assert "no such namespace in your scope" in r.content.decode()


def test_exports_are_private_to_their_user(login_as, client, history):
    c = login_as("auditor")
    c.post("/reports/export/", {"at": AT, "format": "csv"})
    e = Export.objects.get()
    c.logout()
    login_as("officer")
    assert client.get(f"/reports/exports/{e.pk}/").status_code == 404
    assert AuditEvent.objects.filter(action="denied").count() == 1


def test_the_audit_log_records_logins_failures_and_denials(login_as, client, history):
    client.post("/accounts/login/", {"username": "mallory", "password": "guess"})
    c = login_as("lead", ["ops"])
    assert c.get("/clusters/airgap/namespaces/shop/").status_code == 404
    assert c.get("/audit/").status_code == 404
    c.logout()
    c = login_as("auditor")
    r = c.get("/audit/")
    got = [(e.action, e.username) for e in r.context["events"]]
    assert ("login_failed", "mallory") in got
    assert ("denied", "lead") in got
    denied = AuditEvent.objects.filter(action="denied", username="lead")
    assert {d.target for d in denied} == {"/clusters/airgap/namespaces/shop/", "/audit/"}
    csv_body = b"".join(c.get("/audit/export.csv").streaming_content).decode()
    assert "login_failed" in csv_body and "mallory" in csv_body
    assert AuditEvent.objects.filter(action="audit_export").count() == 1
