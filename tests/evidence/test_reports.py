"""Point-in-time reports and their exports: correctness in time, every format agreeing,
the PDF's text, signed manifests, and access rules."""

import csv
import datetime as dt
import io
import json

import pytest
from django.core.management import CommandError, call_command
from pypdf import PdfReader

from compliance.evidence import reports, signed, store, writers
from compliance.identity import access
from tests.builders import T0, make_user

FLEET = access.Scope(None, access.AUDITOR)


def states_at(at, scope=FLEET, **kw):
    r = reports.point_in_time(scope, at, **kw)
    return {(row["namespace"], row["workload_name"]): row["state"] for row in r.rows()}, r


def test_it_rebuilds_the_state_at_any_time(history):
    before, _ = states_at(T0 - dt.timedelta(hours=1))
    assert before == {}
    t0, _ = states_at(T0 + dt.timedelta(hours=1))
    assert t0 == {("shop", "a"): "root", ("shop", "b"): "root"}
    t1, r1 = states_at(T0 + dt.timedelta(days=1, hours=1))
    assert t1 == {("shop", "b"): "blocked", ("ops", "d"): "root"}
    assert r1.summary == {
        "blocked": {"containers": 1, "workloads": 1, "accepted": 0},
        "root": {"containers": 1, "workloads": 1, "accepted": 0},
    }
    t2, _ = states_at(T0 + dt.timedelta(days=3))
    assert t2 == {("shop", "b"): "blocked"}


def test_it_reports_coverage_and_stale_clusters(history):
    _, r = states_at(T0 + dt.timedelta(days=10))
    assert r.coverage == [
        {
            "cluster": "airgap",
            "recent": False,
            "last_complete_scan": (T0 + dt.timedelta(days=2)).isoformat(),
            "pods": 2,
            "containers": 2,
            "rejected": 0,
            "rejected_by_reason": {},
        }
    ]
    c = r.completeness()
    assert c["complete"] is False and c["pods"] == 2 and c["containers"] == 2
    assert c["reasons"] == [
        "cluster airgap: the last complete scan before the report time "
        f"({(T0 + dt.timedelta(days=2)).isoformat()}) is not recent"
    ]
    _, r = states_at(T0 + dt.timedelta(days=2, hours=1))
    assert r.coverage[0]["recent"] is True
    assert r.completeness() | {"per_cluster": None} == {
        "complete": True,
        "reasons": [],
        "clusters": 1,
        "clusters_scanned": 1,
        "pods": 2,
        "containers": 2,
        "rejected": 0,
        "per_cluster": None,
    }
    _, r = states_at(T0 - dt.timedelta(days=1))
    assert r.completeness()["reasons"] == [
        "cluster airgap: no complete scan before the report time"
    ]


def test_a_lead_report_holds_only_their_namespaces(history):
    lead = make_user("lead", ["ops"])
    scope = access.Scope(lead.pk, access.LEAD, ((None, "ops"),))
    rows, _ = states_at(T0 + dt.timedelta(days=1, hours=1), scope)
    assert rows == {("ops", "d"): "root"}
    with pytest.raises(reports.ReportError, match="no such namespace in your scope"):
        reports.point_in_time(scope, None, "airgap", "shop")


def export(report, fmt):
    buf = io.BytesIO()
    written = writers.write(report, fmt, buf)
    return buf.getvalue(), written


def test_every_format_holds_the_same_findings_as_the_pages(history, login_as):
    report = reports.point_in_time(FLEET, None)
    csv_bytes, w_csv = export(report, "csv")
    json_bytes, w_json = export(report, "json")
    pdf_bytes, w_pdf = export(report, "pdf")
    rows = list(csv.DictReader(io.StringIO(csv_bytes.decode())))
    doc = json.loads(json_bytes)
    client = login_as("auditor")
    on_page = len(client.get("/clusters/airgap/namespaces/shop/").context["rows"]) + len(
        client.get("/clusters/airgap/namespaces/ops/").context["rows"]
    )
    assert (
        len(rows) == len(doc["findings"]) == w_csv.rows == w_json.rows == w_pdf.rows == on_page == 1
    )
    assert rows[0]["state"] == doc["findings"][0]["state"] == "blocked"
    assert rows[0]["controls_2022"] == "8.27" and rows[0]["controls_2013"] == "A.14.2.5"
    assert list(rows[0]).index("controls_2022") < list(rows[0]).index("controls_2013")
    assert doc["report"]["scope_label"] == "the whole fleet"
    assert [c["control_2022"] for c in doc["controls"]] == ["8.18", "8.8", "8.27"]
    assert [c["control_2013"] for c in doc["controls"]] == ["A.9.4.4", "A.12.6.1", "A.14.2.5"]


def test_the_pdf_is_a_document_an_auditor_can_file(history):
    report = reports.point_in_time(
        FLEET, T0 + dt.timedelta(days=1, hours=1), "airgap", generated_by="alice"
    )
    pdf, _ = export(report, "pdf")
    text = "\n".join(p.extract_text() for p in PdfReader(io.BytesIO(pdf)).pages)
    for expected in (
        "Container runAs compliance report",
        "Scope: cluster airgap",
        "State as of 2026-11-02 11:00:00",
        "by alice",
        "Control summary",
        "A.9.4.4",
        "8.18",
        "Coverage",
        "Non-compliant findings",
        "Pod/b",
        "Pod/d",
        "Blocked by kubelet",
        "Methodology",
        "the kubelet refuses",
    ):
        assert expected in text, expected


def test_a_signed_manifest_verifies_and_fails_after_one_byte_changes(history, tmp_path):
    report = reports.point_in_time(FLEET, None, generated_by="alice")
    path = tmp_path / "report.csv"
    m = store.export_to(report, "csv", path)
    content = path.read_bytes()
    manifest = (tmp_path / "report.csv.manifest.json").read_bytes()
    ok = signed.verify(content, manifest)
    assert ok.ok and "generated at" in ok.message and "by alice" in ok.message
    changed = bytearray(content)
    changed[-2] ^= 1
    bad = signed.verify(bytes(changed), manifest)
    assert not bad.ok and "the file was modified" in bad.message
    forged = json.loads(manifest)
    forged["sha256"] = "0" * 64
    assert "signature is not valid" in signed.verify(content, json.dumps(forged).encode()).message
    assert m["rows"] == 1 and m["scope"] == {"cluster": None, "namespace": None}


def test_the_report_and_verify_commands(history, tmp_path, capsys):
    out = tmp_path / "r.json"
    call_command(
        "report",
        "--format",
        "json",
        "--cluster",
        "airgap",
        "--at",
        (T0 + dt.timedelta(days=1, hours=1)).isoformat(),
        "-o",
        str(out),
    )
    assert json.loads(out.read_text())["report"]["scope"]["cluster"] == "airgap"
    call_command("verify_report", str(out))
    assert capsys.readouterr().out.splitlines()[-1].startswith("OK: unmodified: JSON report")
    out.write_bytes(out.read_bytes().replace(b"root", b"ROOT"))
    with pytest.raises(SystemExit) as e:
        call_command("verify_report", str(out))
    assert e.value.code == 1
    with pytest.raises(CommandError, match="no such cluster in your scope: nope"):
        call_command(
            "report", "--format", "csv", "--cluster", "nope", "-o", str(tmp_path / "x.csv")
        )
    with pytest.raises(CommandError, match="needs a time zone"):
        call_command(
            "report",
            "--format",
            "csv",
            "--at",
            "2026-11-01T10:00:00",
            "-o",
            str(tmp_path / "x.csv"),
        )
