"""COPY's CSV and JSON (compliance/reports.copy_sql) against the row-by-row writers: the
same bytes, on hostile strings, accepted findings, several times and scopes."""

import datetime as dt
import io
import time

import pytest
from django.contrib.auth.models import User
from django.utils import timezone

from compliance import access, controls, demo, exceptions, exports, reports
from compliance.models import Cluster, ScanRun
from tests.test_hostile_data import FORMULAS, stored_finding

FLEET = access.Scope(None, access.AUDITOR)

DEMO_DAYS = 3


@pytest.mark.django_db(transaction=True)
def test_copy_writes_the_same_bytes_as_the_row_by_row_writers(demo_fleet, settings):
    """PostgreSQL formats the rows (reports.copy_sql); the Python writers are the
    reference. Hostile strings, accepted findings, several times and scopes; the rows
    cut into three ranges written by three connections from one snapshot (committed
    data: another connection sees nothing of a test's open transaction)."""
    settings.WELKIN_EXPORT_PARALLEL = 3
    demo.add_exceptions()
    lead, officer = (User.objects.get(username=u) for u in ("lead", "officer"))
    accepted = exceptions.request(
        access.scope_for(lead),
        lead,
        exceptions.Request(
            "prod-eu",
            "web",
            "Deployment",
            "edge",
            "",
            "",
            tuple(controls.CONTROLS),
            "Vendor image, rebuild planned.",
            "WEB-1",
            timezone.now() + dt.timedelta(days=9),
        ),
    ).exception
    exceptions.decide(access.scope_for(officer), officer, accepted.pk, "approve", "ok")
    cluster = Cluster.objects.order_by("name").first()
    at = timezone.now() - dt.timedelta(minutes=5)
    scan = ScanRun.objects.create(cluster=cluster, status="succeeded", observed_at=at)
    hostile = [*FORMULAS, 'a "quoted", name', "ünï ☃", "", "x|y|z", "back\\slash", "a\nb", "a\r\nb"]
    for i, value in enumerate(hostile):
        stored_finding(
            cluster, scan, at, workload_name=f"w{i}", image=value, container=value[:60] or "c"
        )
    now = timezone.now()
    times = [now, now - dt.timedelta(days=1, hours=3)]
    checked = 0
    for when in times:
        for cluster_name in (None, cluster.name):
            report = reports.point_in_time(FLEET, when, cluster_name)
            assert len(exports._parts(report)) == 3, cluster_name
            for fmt in ("csv", "json"):
                fast, slow = io.BytesIO(), io.BytesIO()
                a = exports.write(report, fmt, fast)
                b = exports.write(report, fmt, slow, copy=False)
                assert fast.getvalue() == slow.getvalue(), (fmt, when, cluster_name)
                assert a == b and a.rows > 0
                checked += a.rows
    assert checked > 100
    # Accepted rows and hostile cells are among them.
    body = io.BytesIO()
    exports.write(reports.point_in_time(FLEET, now), "csv", body)
    assert b",accepted," in body.getvalue() and b"'=HYPERLINK" in body.getvalue()


@pytest.mark.django_db(transaction=True)
def test_a_range_whose_connection_dies_fails_the_export_and_leaves_nothing(settings, tmp_path):
    """The connection writing the second range is terminated by the server mid-export:
    the export fails naming why, with no file, no temporary file and no backend left."""
    import threading

    import psycopg2
    from django.db import connection

    settings.WELKIN_EXPORT_PARALLEL = 2
    settings.EXPORTS_DIR = tmp_path
    at = timezone.now() - dt.timedelta(hours=1)
    for name in ("prod-a", "prod-b"):
        cluster = Cluster.objects.create(name=name, source="snapshot")
        scan = ScanRun.objects.create(cluster=cluster, status="succeeded", observed_at=at)
        stored_finding(cluster, scan, at)
    report = reports.point_in_time(FLEET, timezone.now())
    assert len(exports._parts(report)) == 2
    db = connection.settings_dict
    admin = psycopg2.connect(
        dbname=db["NAME"], user=db["USER"], host=db["HOST"] or "127.0.0.1", port=db["PORT"] or 5432
    )
    admin.autocommit = True
    blocker = psycopg2.connect(
        dbname=db["NAME"], user=db["USER"], host=db["HOST"] or "127.0.0.1", port=db["PORT"] or 5432
    )
    path = tmp_path / "fleet.csv"
    outcome = {}

    def export():
        try:
            exports.export_to(report, "csv", path)
            outcome["result"] = "written"
        except exports.ExportError as e:
            outcome["result"] = str(e)
        finally:
            connection.close()

    def copying():  # backends running one of the ranges' COPY, newest first
        with admin.cursor() as cur:
            cur.execute(
                "SELECT pid FROM pg_stat_activity WHERE datname = %s AND query LIKE 'COPY (%%'"
                " AND pid <> pg_backend_pid() ORDER BY backend_start DESC",
                [db["NAME"]],
            )
            return [pid for (pid,) in cur.fetchall()]

    try:
        # Both COPYs wait at a table they read, so that one can be cut off mid-export.
        blocker.cursor().execute("LOCK TABLE compliance_exceptionmatch IN ACCESS EXCLUSIVE MODE")
        thread = threading.Thread(target=export)
        thread.start()
        deadline = time.monotonic() + 30
        while len(copying()) < 2 and time.monotonic() < deadline:
            time.sleep(0.05)
        pids = copying()
        assert len(pids) == 2, pids
        with admin.cursor() as cur:
            cur.execute("SELECT pg_terminate_backend(%s)", [pids[0]])  # the second range's
    finally:
        blocker.rollback()
        blocker.close()
    thread.join(60)
    assert not thread.is_alive()
    assert outcome["result"].startswith("the CSV export failed, and left no file: ")
    assert "terminat" in outcome["result"], outcome["result"]
    assert list(tmp_path.iterdir()) == []
    deadline = time.monotonic() + 10
    while copying() and time.monotonic() < deadline:
        time.sleep(0.05)
    assert copying() == []
    admin.close()
