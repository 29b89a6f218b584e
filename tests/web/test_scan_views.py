"""Scan management pages (security officers): scan now, settings, live progress."""

import pytest

from compliance.models import AuditEvent, Cluster, ScanRun


@pytest.fixture
def officer(login_as):
    return login_as("officer")


def test_scan_now_queues_a_task_after_commit(officer, cluster, django_capture_on_commit_callbacks):
    """The task message lands on the real broker (Redis), once the request commits."""
    import json

    import redis
    from django.conf import settings

    from welkin_dash.celery import app

    app.control.purge()
    broker = redis.Redis.from_url(settings.CELERY_BROKER_URL)
    with django_capture_on_commit_callbacks(execute=False) as callbacks:
        r = officer.post("/scans/prod-1/now/")
        assert r.status_code == 302
        assert broker.llen("scans") == 0  # nothing before the commit
    for callback in callbacks:
        callback()
    messages = [json.loads(m) for m in broker.lrange("scans", 0, -1)]
    app.control.purge()
    assert [(m["headers"]["task"], m["headers"]["argsrepr"]) for m in messages] == [
        ("compliance.tasks.scan_cluster", f"({cluster.pk}, 'manual')")
    ]
    assert AuditEvent.objects.get(action="scan_now").scope == {"cluster": "prod-1"}


def test_it_saves_the_schedule_and_enabled_flag(officer, cluster):
    officer.post("/scans/prod-1/schedule/", {"schedule_minutes": "30"})
    cluster.refresh_from_db()
    assert (cluster.schedule_minutes, cluster.enabled) == (30, False)
    # Scans turned off: who, when and what changed are in the audit log.
    e = AuditEvent.objects.get(action="scan_settings")
    assert (e.username, e.target) == ("officer", "prod-1")
    assert e.scope["before"]["enabled"] is True
    assert e.scope["after"] == {"enabled": False, "schedule_minutes": 30}
    r = officer.post(
        "/scans/prod-1/schedule/", {"schedule_minutes": "0", "enabled": "on"}, follow=True
    )
    assert b"Schedule: a whole number of minutes" in r.content
    cluster.refresh_from_db()
    assert cluster.schedule_minutes == 30


def test_progress_polls_while_a_scan_runs(officer, cluster):
    run = ScanRun.objects.create(cluster=cluster, pages=3, pods=1500)
    body = officer.get("/scans/prod-1/progress/").content.decode()
    assert 'hx-trigger="every 2s"' in body and "1500 pods so far" in body
    run.status, run.pods = "succeeded", 2000
    run.save()
    Cluster.objects.filter(pk=cluster.pk).update(last_scan=run)
    body = officer.get("/scans/prod-1/progress/").content.decode()
    assert "hx-trigger" not in body and "Succeeded" in body


def test_the_scans_page_lists_clusters(officer, cluster):
    body = officer.get("/scans/").content.decode()
    assert "prod-1" in body and "Scan now" in body and "htmx-2.0.11.min.js" in body
