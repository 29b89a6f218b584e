"""COPY's CSV and JSON (compliance/reports.copy_sql) against the row-by-row writers: the
same bytes, on hostile strings, accepted findings, several times and scopes."""

import csv
import datetime as dt
import io
import time

import pytest
from django.contrib.auth.models import User
from django.utils import timezone

from compliance import demo
from compliance.evidence import pgcopy, reports, store, writers
from compliance.identity import access
from compliance.models import Cluster, Finding, ScanRun
from compliance.risk import exceptions
from compliance.rules import controls, explain
from tests.builders import FORMULAS, stored_finding

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
            cluster,
            scan,
            at,
            workload_name=f"w{i}",
            image=value,
            container=value[:60] or "c",
            fix=value,
        )
    now = timezone.now()
    times = [now, now - dt.timedelta(days=1, hours=3)]
    checked = 0
    for when in times:
        for cluster_name in (None, cluster.name):
            report = reports.point_in_time(FLEET, when, cluster_name)
            assert len(pgcopy._parts(report)) == 3, cluster_name
            for fmt in ("csv", "json"):
                fast, slow = io.BytesIO(), io.BytesIO()
                a = writers.write(report, fmt, fast)
                b = writers.write(report, fmt, slow, copy=False)
                assert fast.getvalue() == slow.getvalue(), (fmt, when, cluster_name)
                assert a == b and a.rows > 0
                checked += a.rows
    assert checked > 100
    # A team lead's report is cut by the lead's own namespaces' counts.
    report = reports.point_in_time(access.scope_for(lead), now)
    assert len(pgcopy._parts(report)) > 1
    for fmt in ("csv", "json"):
        fast, slow = io.BytesIO(), io.BytesIO()
        a = writers.write(report, fmt, fast)
        b = writers.write(report, fmt, slow, copy=False)
        assert fast.getvalue() == slow.getvalue() and a == b and a.rows > 0, fmt
    # Accepted rows and hostile cells are among them.
    body = io.BytesIO()
    writers.write(reports.point_in_time(FLEET, now), "csv", body)
    assert b",accepted," in body.getvalue() and b"'=HYPERLINK" in body.getvalue()
    # The fix column is the finding page's fix, in one line.
    rows = list(csv.DictReader(io.StringIO(body.getvalue().decode())))
    worker = Finding.objects.get(
        cluster__name="prod-eu", namespace="payments", workload_name="worker", resolved_at=None
    )
    row = next(r for r in rows if (r["cluster"], r["workload_name"]) == ("prod-eu", "worker"))
    assert row["fix"] == worker.fix == explain.remediation(worker)["one_line"]
    assert "uid 1000 from /etc/passwd in layer sha256:" in row["fix"]


@pytest.mark.django_db(transaction=True)
def test_a_migration_waiting_for_the_tables_fails_a_parallel_export_at_once(settings, tmp_path):
    """A schema change queued behind the export's locks while its ranges start: the ranges'
    connections do not wait behind it (the export's first connection would wait for them
    while the change waits for it, a cycle PostgreSQL cannot see), the export fails at
    once saying why, leaves no file and no connection, and the change then goes ahead."""
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
    assert len(pgcopy._parts(report)) == 2
    db = connection.settings_dict

    def connect():
        return psycopg2.connect(
            dbname=db["NAME"],
            user=db["USER"],
            host=db["HOST"] or "127.0.0.1",
            port=db["PORT"] or 5432,
        )

    admin, blocker, migration = connect(), connect(), connect()
    admin.autocommit = True
    path = tmp_path / "fleet.csv"
    outcome = {}

    def export():
        try:
            store.export_to(report, "csv", path)
            outcome["result"] = "written"
        except store.ExportError as e:
            outcome["result"] = str(e)
        finally:
            connection.close()

    def migrate():
        migration.cursor().execute("LOCK TABLE compliance_finding IN ACCESS EXCLUSIVE MODE")
        outcome["migration"] = "ran"

    def waiting(pattern):
        with admin.cursor() as cur:
            cur.execute(
                "SELECT count(*) FROM pg_stat_activity WHERE datname = %s AND query LIKE %s"
                " AND wait_event_type = 'Lock'",
                [db["NAME"], pattern],
            )
            return cur.fetchone()[0]

    def until(predicate):
        deadline = time.monotonic() + 30
        while not predicate() and time.monotonic() < deadline:
            time.sleep(0.02)
        assert predicate()

    threads = [threading.Thread(target=export), threading.Thread(target=migrate)]
    try:
        # The export locks its tables in order; held at the last, it has the first.
        blocker.cursor().execute("LOCK TABLE auth_user IN ACCESS EXCLUSIVE MODE")
        threads[0].start()
        until(lambda: waiting("LOCK TABLE %ACCESS SHARE MODE") == 1)
        threads[1].start()  # a migration, queued behind the export's lock on findings
        until(lambda: waiting("LOCK TABLE compliance_finding IN ACCESS EXCLUSIVE%") == 1)
    finally:
        blocker.rollback()
    threads[0].join(30)
    assert not threads[0].is_alive()
    assert outcome["result"] == (
        "the CSV export failed, and left no file: a schema change (a migration?) is waiting "
        "for the tables the report reads: ask for it again once it is done"
    )
    threads[1].join(30)
    assert outcome["migration"] == "ran"
    migration.rollback()
    assert list(tmp_path.iterdir()) == []
    with admin.cursor() as cur:
        cur.execute(
            "SELECT count(*) FROM pg_stat_activity WHERE datname = %s AND pid <> pg_backend_pid()"
            " AND (query LIKE 'COPY%%' OR state LIKE 'idle in transaction%%')",
            [db["NAME"]],
        )
        assert cur.fetchone()[0] == 0
    for c in (admin, blocker, migration):
        c.close()


@pytest.mark.django_db
def test_an_interrupted_export_leaves_no_file(monkeypatch, tmp_path):
    """Ctrl-C (or a worker's shutdown) mid-COPY: the interrupt goes on, and neither the
    file nor its temporary is left behind."""
    at = timezone.now() - dt.timedelta(hours=1)
    cluster = Cluster.objects.create(name="prod-a", source="snapshot")
    scan = ScanRun.objects.create(cluster=cluster, status="succeeded", observed_at=at)
    stored_finding(cluster, scan, at)

    def interrupt(self, data):
        raise KeyboardInterrupt

    monkeypatch.setattr(pgcopy._CopyOut, "write", interrupt)
    with pytest.raises(KeyboardInterrupt):
        store.export_to(reports.point_in_time(FLEET), "csv", tmp_path / "r.csv")
    assert list(tmp_path.iterdir()) == []
