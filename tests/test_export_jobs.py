"""Exports as jobs, through a real Celery worker on real Redis and PostgreSQL: asked for on
the page or through the API, followed until ready, a worker killed mid-export, the sweep
of dead and expired exports; and COPY's CSV and JSON against the row-by-row writers."""

import datetime as dt
import os
import signal
import subprocess
import sys

import psycopg2
import pytest
from django.contrib.auth.models import User
from django.db import connection
from django.utils import timezone

from compliance import access, export_jobs, exports, reports
from compliance.models import AuditEvent, Export
from tests.builders import T0, make_user
from tests.test_tasks import broker, start_worker, wait_for  # noqa: F401 (fixture)

AT = (T0 + dt.timedelta(days=1, hours=1)).isoformat()
FLEET = access.Scope(None, access.AUDITOR)


@pytest.fixture
def exports_dir(settings, tmp_path):
    settings.EXPORTS_DIR = tmp_path / "exports"
    return settings.EXPORTS_DIR


@pytest.fixture
def worker(broker, exports_dir):  # noqa: F811
    w = start_worker(WELKIN_EXPORTS_DIR=str(exports_dir))
    yield w
    w.kill()


def _verify(client, e: Export) -> exports.Verification:
    content = b"".join(client.get(f"/reports/exports/{e.pk}/").streaming_content)
    manifest = b"".join(client.get(f"/reports/exports/{e.pk}/manifest.json").streaming_content)
    return exports.verify(content, manifest)


@pytest.mark.django_db(transaction=True)
def test_an_export_is_written_by_a_worker_and_followed_on_the_page_and_the_api(
    worker, login_as, history, api_as
):
    c = login_as("auditor")
    r = c.post("/reports/export/", {"at": AT, "format": "csv"})
    assert r.status_code == 302 and r["Location"] == "/reports/#exports"
    e = Export.objects.get()
    # The request only saved and queued it: the worker writes it.
    assert e.request == {"kind": "report", "cluster": "", "namespace": ""}
    e = wait_for(lambda: Export.objects.filter(pk=e.pk, status="done").first())
    # A CSV is not counted first (no summary needed): rows so far, no total.
    assert e.rows == 2 and e.total is None and e.worker.endswith(tuple("0123456789"))
    assert e.expires_at - e.finished_at == dt.timedelta(days=90)
    assert _verify(c, e).ok
    page = c.get("/reports/").content.decode()
    assert f"/reports/exports/{e.pk}/" in page and "hx-get" not in page  # nothing to follow
    done = AuditEvent.objects.get(action="export_done")
    assert done.username == "auditor" and done.content_hash == e.manifest["sha256"]

    api = api_as("auditor")
    r = api.post("/api/v1/exports/", {"format": "json", "at": AT}, format="json")
    assert r.status_code == 202, r.content
    assert r.json()["status"] == "queued" and r["Location"] == r.json()["url"]
    body = wait_for(lambda: (b := api.get(r["Location"]).json())["status"] == "done" and b)
    assert body["rows"] == body["total"] == 2 and body["error"] is None and body["sha256"]
    content = b"".join(api.get(body["files"]["file"]).streaming_content)
    manifest = b"".join(api.get(body["files"]["manifest"]).streaming_content)
    assert exports.verify(content, manifest).ok
    assert [x["id"] for x in api.get("/api/v1/exports/").json()["results"]] == [body["id"]]
    assert api.get(f"/api/v1/exports/{e.pk}/").status_code == 404  # the auditor's, not theirs
    assert api.get(f"/api/v1/exports/{e.pk}/file").status_code == 404


@pytest.mark.django_db(transaction=True)
def test_a_worker_killed_mid_export_leaves_no_file_that_verifies_and_the_export_is_rerun(
    worker, login_as, history, exports_dir
):
    c = login_as("officer")
    # Hold the worker where it is most dangerous: the file written in full under its
    # temporary name, the manifest not yet (it reads the newest signed audit head).
    db = connection.settings_dict
    blocker = psycopg2.connect(
        dbname=db["NAME"], user=db["USER"], host=db["HOST"] or "127.0.0.1", port=db["PORT"] or 5432
    )
    try:
        blocker.cursor().execute("LOCK TABLE compliance_audithead IN ACCESS EXCLUSIVE MODE")
        c.post("/reports/export/", {"at": AT, "format": "csv"})
        e = Export.objects.get()
        wait_for(lambda: list(exports_dir.glob(f".{e.pk}.*.part")))
        e.refresh_from_db()
        assert e.status == "running" and e.attempts == 1
        final = exports.file_path(e)
        assert not final.exists() and not exports.manifest_path(final).exists()
        first = int(e.worker.rpartition(":")[2])
        os.kill(first, signal.SIGKILL)
        # Celery sends the task again (acks_late, reject_on_worker_lost); the next
        # attempt takes the export over from the dead process, and waits at the lock too.
        wait_for(lambda: Export.objects.filter(pk=e.pk, attempts=2).exists())
        assert not final.exists()
    finally:
        blocker.rollback()
        blocker.close()
    e = wait_for(lambda: Export.objects.filter(pk=e.pk, status="done").first())
    assert int(e.worker.rpartition(":")[2]) != first
    assert _verify(c, e).ok and e.rows == 2
    assert not list(exports_dir.glob("*.part")) and not list(exports_dir.glob(".*.part"))
    assert AuditEvent.objects.filter(action="export_done").count() == 1


@pytest.mark.django_db(transaction=True)
def test_the_sweep_runs_again_an_export_whose_whole_worker_died(
    worker, login_as, history, exports_dir
):
    c = login_as("auditor")
    user = User.objects.get(username="auditor")
    doc = reports.point_in_time(access.scope_for(user), dt.datetime.fromisoformat(AT))
    e = export_jobs.create(user, "csv", doc, "report", {"cluster": "", "namespace": ""})

    def pod_gone(attempts):
        """Its worker's pod is gone (another host, so no process to look for): nothing
        but a heartbeat 11 minutes old. Redis would give the task back only after its
        2-hour visibility timeout."""
        Export.objects.filter(pk=e.pk).update(
            status="running",
            attempts=attempts,
            worker="worker-7f9c-gone:12",
            heartbeat_at=timezone.now() - dt.timedelta(minutes=11),
        )

    pod_gone(attempts=1)  # and a temporary file left
    exports_dir.mkdir(parents=True, exist_ok=True)
    part = exports_dir / f".{e.pk}.csv.0123.part"
    part.write_bytes(b"id,status\r\n")
    assert export_jobs.sweep() == {"failed": 0, "rerun": 1, "requeued": 0, "expired": 0}
    assert not part.exists()
    e = wait_for(lambda: Export.objects.filter(pk=e.pk, status="done").first())
    assert e.attempts == 2 and e.worker != "worker-7f9c-gone:12" and e.rows == 2
    assert _verify(c, e).ok
    assert AuditEvent.objects.filter(action="export_done").count() == 1
    pod_gone(attempts=3)  # the third time: the sweep gives up and says why
    assert export_jobs.sweep()["failed"] == 1
    e.refresh_from_db()
    assert e.status == "failed" and e.error.startswith("the worker writing it stopped")
    assert not exports.file_path(e).exists()


@pytest.mark.django_db
def test_an_attempt_taken_over_changes_neither_the_files_nor_the_record(history, exports_dir):
    user = make_user("auditor")
    doc = reports.point_in_time(access.scope_for(user), dt.datetime.fromisoformat(AT))
    e = export_jobs.create(user, "csv", doc, "report", {"cluster": "", "namespace": ""})
    stalled = export_jobs.claim(e.pk)
    # While this attempt stalled, the next one took the export over and wrote its files.
    Export.objects.filter(pk=e.pk).update(worker="worker-2:7", attempts=2)
    exports_dir.mkdir(parents=True, exist_ok=True)
    path = exports.file_path(e)
    path.write_bytes(b"the next attempt's file")
    exports.manifest_path(path).write_bytes(b"the next attempt's manifest")
    assert export_jobs.attempt(stalled) == ""
    assert path.read_bytes() == b"the next attempt's file"
    assert exports.manifest_path(path).read_bytes() == b"the next attempt's manifest"
    assert not list(exports_dir.glob(".*.part"))
    e.refresh_from_db()
    assert (e.status, e.worker, e.attempts) == ("running", "worker-2:7", 2)
    assert not AuditEvent.objects.filter(action__in=("export_done", "export_failed")).exists()


@pytest.mark.django_db
def test_the_sweep_fails_an_export_whose_worker_died_and_deletes_expired_ones(
    history, exports_dir, settings
):
    user = make_user("auditor")
    settings.WELKIN_EXPORTS_IN_PROCESS = True
    doc = reports.point_in_time(access.scope_for(user), dt.datetime.fromisoformat(AT))
    done = export_jobs.create(user, "csv", doc, "report", {"cluster": "", "namespace": ""})
    export_jobs.queue(done)
    assert done.status == "done" and exports.file_path(done).exists()
    # A worker that died writing: a process that has exited, its temporary file left.
    dead = subprocess.run(
        [sys.executable, "-c", "import os; print(os.getpid())"],
        text=True,
        capture_output=True,
        check=True,
    )
    orphan = export_jobs.create(user, "json", doc, "report", {"cluster": "", "namespace": ""})
    Export.objects.filter(pk=orphan.pk).update(
        status="running",
        attempts=1,
        worker=f"{export_jobs.worker_id().rpartition(':')[0]}:{dead.stdout.strip()}",
        heartbeat_at=timezone.now(),
    )
    part = exports_dir / f".{orphan.pk}.json.0123.part"
    part.write_bytes(b'{"report":')
    # Under `make run` no worker could run it again: failed.
    assert export_jobs.sweep() == {"failed": 1, "rerun": 0, "requeued": 0, "expired": 0}
    orphan.refresh_from_db()
    assert orphan.status == "failed" and orphan.error.startswith("the worker writing it stopped")
    assert not part.exists()
    # Done exports are deleted once expired: files and record, audited.
    path = exports.file_path(done)
    later = done.expires_at + dt.timedelta(seconds=1)
    assert export_jobs.sweep(later)["expired"] == 2  # the failed one too
    assert not path.exists() and not exports.manifest_path(path).exists()
    assert not Export.objects.exists()
    pruned = AuditEvent.objects.get(action="export_expired")
    assert pruned.scope["exports"] == 2 and str(done.pk) in pruned.scope["ids"]
    # Not the data's retention: reports of times before the exports' cut-off still work.
    assert not AuditEvent.objects.filter(action="prune").exists()
    failed = AuditEvent.objects.get(action="export_failed")
    assert failed.scope["format"] == "json" and failed.scope["reason"].startswith("the worker")


@pytest.mark.django_db
def test_a_running_export_is_shown_with_its_progress_and_polled(login_as, exports_dir):
    c = login_as("auditor")
    user = Export._meta.get_field("user").related_model.objects.get(username="auditor")
    e = Export.objects.create(
        user=user,
        format="csv",
        scope={"cluster": None, "namespace": None},
        at=timezone.now(),
        status="running",
        rows=1500,
        total=4000,
    )
    part = c.get("/reports/exports/").content.decode()
    assert 'hx-get="/reports/exports/"' in part and 'hx-trigger="every 2s"' in part
    assert '<progress max="4000" value="1500">' in part and "1500 of 4000" in part
    assert c.get(f"/reports/exports/{e.pk}/").status_code == 404  # not ready: no file
    Export.objects.filter(pk=e.pk).update(status="failed", error="the disk <b>is</b> full")
    part = c.get("/reports/exports/").content.decode()
    assert "hx-get" not in part and "failed: the disk &lt;b&gt;is&lt;/b&gt; full" in part


@pytest.mark.django_db
def test_the_api_refuses_a_malformed_export_request_naming_the_field(api_as, history):
    api = api_as("auditor")
    cases = [
        ({"at": AT}, "format", "required"),
        ({"format": "xls"}, "format", "expected one of"),
        ({"format": "csv", "at": 5}, "at", "expected a string"),
        ({"format": "csv", "at": "tomorrow"}, "at", ""),
        ({"format": "csv", "cluster": "a\x00"}, "cluster", "control characters"),
    ]
    for body, field, problem in cases:
        r = api.post("/api/v1/exports/", body, format="json")
        assert r.status_code == 400, (body, r.content)
        assert problem in r.json()[field][0], r.json()
    r = api.post("/api/v1/exports/", ["csv"], format="json")
    assert r.status_code == 400
    future = (timezone.now() + dt.timedelta(days=1)).isoformat()
    r = api.post("/api/v1/exports/", {"format": "csv", "at": future}, format="json")
    assert r.status_code == 400 and "in the future" in r.json()["detail"]
    assert not Export.objects.exists()
    other = Export.objects.create(user=make_user("officer"), format="csv", at=timezone.now())
    assert api.get(f"/api/v1/exports/{other.pk}/").status_code == 404


@pytest.mark.django_db
def test_a_user_may_have_only_a_few_exports_waiting(login_as, api_as, history, settings):
    settings.WELKIN_EXPORT_MAX_ACTIVE = 2
    c = login_as("lead", ["shop"])
    for _ in range(2):  # queued: no worker here
        assert c.post("/reports/export/", {"at": AT, "format": "csv"}).status_code == 302
    r = c.post("/reports/export/", {"at": AT, "format": "json"})
    assert r.status_code == 429 and b"You have 2 exports queued or being written" in r.content
    api = api_as("auditor")
    for status in (202, 202, 429):
        r = api.post("/api/v1/exports/", {"format": "csv", "at": AT}, format="json")
        assert r.status_code == status
    assert "at most 2 at a time" in r.json()["detail"]
    assert Export.objects.count() == 4
