"""COPY's CSV and JSON (compliance/reports.copy_sql) against the row-by-row writers: the
same bytes, on hostile strings, accepted findings, several times and scopes."""

import datetime as dt
import io

import pytest
from django.contrib.auth.models import User
from django.utils import timezone

from compliance import access, controls, demo, exceptions, exports, reports
from compliance.models import Cluster, ScanRun
from tests.test_hostile_data import FORMULAS, stored_finding

FLEET = access.Scope(None, access.AUDITOR)

DEMO_DAYS = 3


@pytest.mark.django_db
def test_copy_writes_the_same_bytes_as_the_row_by_row_writers(demo_fleet):
    """PostgreSQL formats the rows (reports.copy_sql); the Python writers are the
    reference. Hostile strings, accepted findings, several times and scopes."""
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
