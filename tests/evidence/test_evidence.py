"""Evidence an auditor can rely on: the audit log's hash chain tampered with SQL, signed
and timestamped heads, coverage and RFC 3161 tokens with exports (a real local TSA running
`openssl ts -reply`), retention, samples redrawn from their seed, and OSCAL that
validates with compliance-trestle."""

import datetime as dt
import io
import re
import subprocess

import orjson
import pytest
from django.core.management import call_command
from django.db import connection

from compliance.audit import heads
from compliance.audit import log as audit
from compliance.evidence import pending, reports, retention, samples, store, writers
from compliance.identity import access
from compliance.models import AuditEvent, AuditHead, Export, Finding, FindingEvent, ScanRun
from tests.builders import T0
from tests.tsa import local_tsa

# Export jobs run in the request here (tests/evidence/test_export_jobs.py runs them in a worker).
pytestmark = pytest.mark.usefixtures("exports_in_process")

FLEET = access.Scope(None, access.AUDITOR)


def sql(statement, params=()):
    with connection.cursor() as c:
        c.execute(statement, params)


def log(n=5):
    for i in range(n):
        audit.record(None, AuditEvent.Action.API, f"target {i}", {"i": i, "z": [1, "a"]})


def check():
    return audit.verify_chain()


# --- the audit log's chain --------------------------------------------------------------


def test_the_chain_is_unbroken_and_numbered_without_gaps(db):
    log(4)
    events = list(AuditEvent.objects.order_by("seq"))
    assert [e.seq for e in events] == [1, 2, 3, 4]
    assert events[0].prev_hash == audit.GENESIS
    assert all(b.prev_hash == a.hash for a, b in zip(events, events[1:], strict=False))
    result = check()
    assert result.ok and result.events == 4, result.message


@pytest.mark.parametrize(
    "tamper, expected",
    [
        ("UPDATE compliance_auditevent SET target = 'nothing to see' WHERE seq = 3", "event 3"),
        ("UPDATE compliance_auditevent SET at = at - interval '1 hour' WHERE seq = 2", "event 2"),
        ("UPDATE compliance_auditevent SET scope = '{\"i\": 9}' WHERE seq = 4", "event 4"),
        ("DELETE FROM compliance_auditevent WHERE seq = 3", "events 3 are missing"),
        # Reordered: two rows swap places (numbers and links move with them).
        (
            "UPDATE compliance_auditevent SET seq = -seq WHERE seq IN (2, 3); "
            "UPDATE compliance_auditevent SET seq = CASE seq WHEN -2 THEN 3 ELSE 2 END "
            "WHERE seq IN (-2, -3)",
            "event 2",
        ),
    ],
)
def test_sql_tampering_is_found_at_the_first_broken_link(db, tamper, expected):
    log(5)
    assert check().ok
    sql("SET CONSTRAINTS ALL DEFERRED")
    sql(tamper)
    result = check()
    assert not result.ok
    assert expected in result.message, result.message
    out, err = io.StringIO(), io.StringIO()
    with pytest.raises(SystemExit) as exit:
        call_command("verify_audit_log", stdout=out, stderr=err)
    assert exit.value.code == 1 and out.getvalue().startswith("FAILED: ")


def test_a_recomputed_chain_or_a_cut_tail_is_caught_by_the_signed_head(db):
    log(5)
    head = heads.sign_head()
    assert head is not None and head.seq == 5 and head.timestamp is None
    assert check().ok and "matches all 1 signed heads" in check().message
    # Someone with the database (not the key) edits event 2 and recomputes every hash.
    sql("UPDATE compliance_auditevent SET target = 'rewritten' WHERE seq = 2")
    prev = audit.GENESIS
    for e in AuditEvent.objects.order_by("seq"):
        e.prev_hash = prev
        e.hash = prev = audit.chain_hash(e)
        e.save(update_fields=["prev_hash", "hash"])
    result = check()
    assert not result.ok and "the chain was rewritten" in result.message, result.message
    # Cutting the newest events off (the head's and after) is caught as well.
    AuditEvent.objects.filter(seq__gte=5).delete()
    AuditHead.objects.update(hash=AuditEvent.objects.get(seq=4).hash)
    result = check()
    assert not result.ok and "signature is not valid" in result.message


def test_cutting_the_newest_events_off_is_caught_by_the_head(db):
    log(3)
    heads.sign_head()  # signs event 3, then records its own event 4
    AuditEvent.objects.filter(seq__gte=3).delete()
    result = check()
    assert not result.ok and "events were deleted from the end" in result.message


def test_the_auditors_page_shows_the_chain_and_leads_do_not_see_it(login_as, db):
    log(3)
    c = login_as("auditor")
    r = c.get("/audit/verify/")
    assert r.status_code == 200 and b"Unbroken:" in r.content
    sql("UPDATE compliance_auditevent SET username = 'mallory' WHERE seq = 2")
    r = c.get("/audit/verify/")
    assert b"Broken:" in r.content and b"event 2" in r.content
    assert login_as("lead", ["payments"]).get("/audit/verify/").status_code == 404


# --- exports: coverage in the signature, trusted timestamps ------------------------------


@pytest.fixture
def tsa_settings(settings, tmp_path):
    settings.EXPORTS_DIR = tmp_path / "exports"

    def use(tsa):
        settings.WELKIN_TSA_URL = tsa.url
        settings.WELKIN_TSA_CA_BUNDLE = tsa.ca_path
        settings.WELKIN_TSA_CRLS = []

    return use


def export_as(client, fmt="csv", at=None):
    at = at or (T0 + dt.timedelta(days=1, hours=1)).strftime("%Y-%m-%dT%H:%M")
    r = client.post("/reports/export/", {"at": at, "format": fmt})
    assert r.status_code == 302, r.content[:500]
    e = Export.objects.order_by("-created_at").first()
    path = store.file_path(e)
    return e, path, store.manifest_path(path)


def verify_report(*args):
    out = io.StringIO()
    try:
        call_command("verify_report", *map(str, args), stdout=out)
        return 0, out.getvalue()
    except SystemExit as e:
        return e.code, out.getvalue()


def test_an_export_is_timestamped_and_verified_by_the_tsa_and_by_openssl(
    login_as, history, tsa_settings
):
    with local_tsa("good") as tsa:
        tsa_settings(tsa)
        c = login_as("auditor")
        e, path, manifest = export_as(c)
    m = orjson.loads(manifest.read_bytes())
    assert m["timestamp"]["authority"] == tsa.url
    assert m["coverage"]["complete"] is True and m["coverage"]["reasons"] == []
    assert m["coverage"]["pods"] == 4 and m["coverage"]["clusters_scanned"] == 1
    token = store.token_path(path)
    assert e.timestamp and token.read_bytes() == bytes(e.timestamp)
    code, out = verify_report(path)
    assert code == 0, out
    assert "timestamped by CN=" in out and "coverage complete: 4 pods" in out
    # An auditor with nothing but openssl and the TSA's CA.
    done = subprocess.run(
        ["openssl", "ts", "-verify", "-data", manifest, "-in", token, "-CAfile", tsa.ca_path],
        capture_output=True,
        text=True,
    )
    assert done.returncode == 0 and "Verification: OK" in done.stdout, done.stderr
    # The download serves the token; the verify page shows the TSA's time.
    assert c.get(f"/reports/exports/{e.pk}/manifest.json.tsr").content == token.read_bytes()
    up = c.post(
        "/reports/verify/",
        {
            "file": _file("r.csv", path.read_bytes()),
            "manifest": _file("m.json", manifest.read_bytes()),
            "timestamp": _file("t.tsr", token.read_bytes()),
        },
    )
    assert b"Verified:</strong> unmodified" in up.content
    assert b"its time: <strong>" in up.content


def test_verify_refuses_a_wrong_or_untrusted_token_and_edited_coverage(
    login_as, history, tsa_settings, tmp_path
):
    with local_tsa("good") as tsa:
        tsa_settings(tsa)
        c = login_as("auditor")
        _, path, manifest = export_as(c)
        _, other, _ = export_as(c, "json")
    # The token of another export's manifest.
    code, out = verify_report(path, "--timestamp", store.token_path(other))
    assert code == 1 and "another digest" in out, out
    # A token from a TSA this server does not trust.
    with local_tsa("untrusted") as rogue:
        from compliance.audit import timestamps

        forged = timestamps.request(manifest.read_bytes(), rogue.url)
    bad = tmp_path / "rogue.tsr"
    bad.write_bytes(forged)
    code, out = verify_report(path, "--timestamp", bad)
    assert code == 1 and "trusted CA" in out, out
    # Coverage edited in the manifest (a cluster "complete" that was not).
    m = orjson.loads(manifest.read_bytes())
    m["coverage"]["pods"] = 1
    edited = tmp_path / "edited.json"
    edited.write_bytes(orjson.dumps(m))
    code, out = verify_report(path, edited)
    assert code == 1 and "signature is not valid" in out


def test_verify_report_fails_when_the_token_of_a_timestamped_manifest_is_missing(
    login_as, history, tsa_settings, settings
):
    """Removing the .tsr must not turn "when did it exist" into silence: the manifest names
    its TSA, so the token is required unless the auditor says they check without it."""
    with local_tsa("good") as tsa:
        tsa_settings(tsa)
        _, path, manifest = export_as(login_as("auditor"))
    store.token_path(path).unlink()
    code, out = verify_report(path)
    assert code == 1, out
    assert f"made for the timestamp authority {tsa.url}, and its token is missing" in out
    code, out = verify_report(path, "--no-require-timestamp")
    assert code == 0 and "not checked against a timestamp" in out, out
    # An empty or garbage token, where no TSA CA can check it, proves nothing either.
    settings.WELKIN_TSA_CA_BUNDLE = ""
    for junk in (b"", b"not a token at all"):
        store.token_path(path).write_bytes(junk)
        code, out = verify_report(path)
        assert code == 1 and "its token could not be checked" in out, out


def test_a_tsa_that_is_down_does_not_block_an_export_and_the_token_comes_later(
    login_as, history, tsa_settings
):
    with local_tsa("down") as tsa:
        tsa_settings(tsa)
        e, path, _ = export_as(login_as("auditor"))
        assert e.timestamp is None and "503" in e.timestamp_error
        head = heads.sign_head()
        assert head.timestamp is None and head.timestamp_error
        assert path.exists() and not store.token_path(path).exists()
        assert pending.timestamp_pending() == 0  # still down
    with local_tsa("good") as good:
        tsa_settings(good)
        # The same CA: the local TSAs share their root.
        assert pending.timestamp_pending() == 2
    e.refresh_from_db()
    assert e.timestamp and e.timestamp_error == ""
    assert store.token_path(path).read_bytes() == bytes(e.timestamp)
    assert AuditEvent.objects.filter(action="timestamp").count() == 2
    assert check().ok, check().message
    code, out = verify_report(path)
    assert code == 0 and "timestamped by" in out


def test_a_manifest_without_a_tsa_says_so(login_as, history, settings, tmp_path):
    settings.EXPORTS_DIR = tmp_path
    _, path, manifest = export_as(login_as("auditor"))
    assert orjson.loads(manifest.read_bytes())["timestamp"]["authority"] is None
    code, out = verify_report(path)
    assert code == 0 and "not timestamped (no timestamp authority was configured)" in out


def test_a_head_token_that_does_not_match_breaks_the_check(db, tsa_settings):
    log(2)
    with local_tsa("good") as tsa:
        tsa_settings(tsa)
        first = heads.sign_head()
        assert first.timestamp
        log(1)
        second = heads.sign_head()
        assert check().ok, check().message
        AuditHead.objects.filter(pk=first.pk).update(timestamp=second.timestamp)
        result = check()
    assert not result.ok and "timestamp is not valid" in result.message


def _file(name, data):
    f = io.BytesIO(data)
    f.name = name
    return f


# --- retention ----------------------------------------------------------------------------


def test_pruning_keeps_reports_after_the_cut_off_exact_and_refuses_earlier_ones(history, settings):
    settings.WELKIN_RETENTION_DAYS = 30
    now = T0 + dt.timedelta(days=31, hours=12)  # cut-off: T0 + 1.5 days
    later = T0 + dt.timedelta(days=2, hours=1)
    before = [r for r in reports.point_in_time(FLEET, later).rows()]
    assert FindingEvent.objects.count() == 6 and ScanRun.objects.count() == 3
    done = retention.prune(now)
    # a (resolved at T0+1d) is gone with its events; b keeps only its last event before
    # the cut-off; the scan at T0 has no event left and is not the last before the cut-off.
    assert (done.findings, done.events, done.scans) == (1, 3, 1)
    assert not Finding.objects.filter(workload_name="a").exists()
    assert list(reports.point_in_time(FLEET, later).rows()) == before
    with pytest.raises(reports.ReportError, match="deleted under the retention policy"):
        reports.point_in_time(FLEET, T0 + dt.timedelta(days=1))
    event = AuditEvent.objects.get(action="prune")
    assert event.scope["findings"] == 1 and event.scope["cutoff"].startswith("2026-11-02T22:00")
    assert check().ok


def test_pruning_never_passes_a_kept_export(history, settings):
    settings.WELKIN_RETENTION_DAYS = 30
    Export.objects.create(format="csv", at=T0 + dt.timedelta(hours=12))
    done = retention.prune(T0 + dt.timedelta(days=31, hours=12))
    assert done.held_back_by.startswith("the oldest kept export")
    assert (done.findings, done.events) == (0, 0)


# --- samples --------------------------------------------------------------------------------


def auditor(client):
    from django.contrib.auth.models import User

    client.force_login(User.objects.get(username="auditor"))
    return client


def test_a_sample_is_redrawn_from_its_seed(client, demo_fleet, settings, tmp_path):
    settings.EXPORTS_DIR = tmp_path
    c = auditor(client)
    r = c.post("/reports/samples/", {"size": "5", "seed": "audit-2026"})
    assert r.status_code == 302, r.content[:400]
    s = samples.Sample.objects.get()
    # The drawer's seed, and the server's nonce after it: the drawer cannot pick the draw.
    assert re.fullmatch(r"audit-2026-[0-9a-f]{32}", s.seed), s.seed
    assert len(s.items) == 5 and s.population > 5
    first = s.items[0]["containers"][0]
    assert first["steps"] and first["state"] and first["controls_2022"]
    page = c.get(f"/reports/samples/{s.pk}/")
    assert page.status_code == 200 and s.seed.encode() in page.content
    # Anyone with the seed draws the same workloads from the same population.
    out = io.StringIO()
    call_command("sample", "--size", "5", "--seed", s.seed, "--at", s.at.isoformat(), stdout=out)
    again = orjson.loads(out.getvalue())
    assert again["population_sha256"] == s.population_sha256
    assert [
        (w["cluster"], w["namespace"], w["workload_kind"], w["workload_name"])
        for w in again["workloads"]
    ] == [(w["cluster"], w["namespace"], w["workload_kind"], w["workload_name"]) for w in s.items]
    other = samples.draw(FLEET, s.at, 5, "another-seed")
    assert other.chosen != [tuple(w[k] for k in list(w)[:4]) for w in s.items]
    # Exported signed, and verified.
    r = c.post(f"/reports/samples/{s.pk}/export/", {"format": "json"})
    assert r.status_code == 302
    e = Export.objects.get()
    path = store.file_path(e)
    doc = orjson.loads(path.read_bytes())
    assert doc["sample"]["seed"] == s.seed and f"--seed {s.seed}" in doc["sample"]["redraw"]
    code, out = verify_report(path)
    assert code == 0, out
    # Both draws are audited: the page's and the command line's.
    assert AuditEvent.objects.filter(action="sample").count() == 2
    # The same seed asked for again gets another nonce: trying seeds offline picks nothing.
    c.post("/reports/samples/", {"size": "5", "seed": "audit-2026"})
    seeds = set(samples.Sample.objects.values_list("seed", flat=True))
    assert len(seeds) == 2 and all(x.startswith("audit-2026-") for x in seeds)


@pytest.mark.parametrize(
    "data, message",
    [
        ({"size": "0"}, "size: expected a number from 1 to 500"),
        ({"size": "501"}, "size: expected a number"),
        ({"size": "3", "seed": "a b"}, "the seed"),
        ({"size": "3", "at": "yesterday"}, "at:"),
    ],
)
def test_a_bad_sample_request_is_named(client, demo_fleet, data, message):
    r = auditor(client).post("/reports/samples/", data)
    assert r.status_code == 400 and message in r.content.decode()


# --- OSCAL ----------------------------------------------------------------------------------


def test_the_oscal_export_validates_and_carries_both_numberings(
    login_as, history, settings, tmp_path
):
    from trestle.oscal.assessment_results import Model

    settings.EXPORTS_DIR = tmp_path
    e, path, _ = export_as(login_as("auditor"), "oscal")
    assert path.name.endswith(".oscal.json") and e.filename.endswith(".oscal.json")
    doc = orjson.loads(path.read_bytes())
    Model.model_validate(doc)  # compliance-trestle's pydantic models of OSCAL 1.x
    result = doc["assessment-results"]["results"][0]
    ids = [
        c["control-id"]
        for c in result["reviewed-controls"]["control-selections"][0]["include-controls"]
    ]
    assert ids == ["a.8.18", "a.8.8", "a.8.27"]
    assert len(result["observations"]) == 2  # b blocked, d root at T0+1d
    targets = sorted(f["target"]["target-id"] for f in result["findings"])
    assert targets == ["a.8.18_smt", "a.8.27_smt", "a.8.27_smt", "a.8.8_smt"]
    assert {p["value"] for f in result["findings"] for p in f["props"]} >= {"A.9.4.4"}
    code, out = verify_report(path)
    assert code == 0, out
    # The same report gives the same document, ids included.
    again = io.BytesIO()
    r = reports.point_in_time(FLEET, e.at)
    r.generated_at = dt.datetime.fromisoformat(
        doc["assessment-results"]["metadata"]["last-modified"]
    )
    r.generated_by = doc["assessment-results"]["metadata"]["props"][0]["value"]
    writers.write(r, "oscal", again)
    assert orjson.loads(again.getvalue()) == doc


def test_an_empty_oscal_report_validates(db, tmp_path):
    from trestle.oscal.assessment_results import Model

    out = io.BytesIO()
    writers.write(reports.point_in_time(FLEET), "oscal", out)
    doc = orjson.loads(out.getvalue())
    Model.model_validate(doc)
    assert "observations" not in doc["assessment-results"]["results"][0]


@pytest.mark.django_db(transaction=True)
def test_concurrent_writers_keep_one_unbroken_chain():
    """Four threads (four database connections) append at once: the advisory lock makes
    them take turns, so numbers stay unique and links unbroken."""
    import threading

    from django.db import connections

    def write(k):
        try:
            for i in range(15):
                audit.record(None, AuditEvent.Action.API, f"w{k}-{i}")
        finally:
            connections.close_all()

    threads = [threading.Thread(target=write, args=(k,)) for k in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    result = check()
    assert result.ok and result.events == 60, result.message


# --- found by an attack review ------------------------------------------------------------


def test_deleting_the_signed_heads_with_a_rewrite_is_caught(db):
    log(3)
    heads.sign_head()
    AuditHead.objects.all().delete()
    result = check()
    assert not result.ok and "signed heads were deleted" in result.message, result.message


def test_old_events_must_be_under_a_signed_head(db):
    from django.utils import timezone

    old = timezone.now() - dt.timedelta(days=3)
    audit._append(AuditEvent(action=AuditEvent.Action.API, target="old", scope={}, at=old))
    log(1)
    result = check()
    assert not result.ok and "no signed head covers them" in result.message
    heads.sign_head()
    assert check().ok


def test_an_emptied_log_is_not_an_unbroken_one(db, persona):
    from django.utils import timezone

    user = persona("auditor")
    user.last_login = timezone.now()
    user.save()
    AuditEvent.objects.all().delete()
    result = check()
    assert not result.ok and "emptied" in result.message


@pytest.mark.parametrize("name", ["AttributeError", "InvalidVersion", "UnsupportedAlgorithm"])
def test_a_garbled_token_is_refused_not_a_crash(login_as, history, tsa_settings, name):
    """Tokens an attack review garbled byte by byte (each once crashed a library)."""
    from pathlib import Path

    garbled = Path(__file__).parents[1] / "fixtures" / "tokens" / f"garbled-{name}.tsr"
    with local_tsa("good") as tsa:
        tsa_settings(tsa)
        c = login_as("auditor")
        _, path, manifest = export_as(c)
    code, out = verify_report(path, "--timestamp", garbled)
    assert code == 1 and "FAILED: the timestamp token does not prove this manifest" in out, out
    up = c.post(
        "/reports/verify/",
        {
            "file": _file("r.csv", path.read_bytes()),
            "manifest": _file("m.json", manifest.read_bytes()),
            "timestamp": _file("t.tsr", garbled.read_bytes()),
        },
    )
    assert up.status_code == 200 and b"Not verified" in up.content
    head = heads.sign_head()
    AuditHead.objects.filter(pk=head.pk).update(timestamp=garbled.read_bytes())
    result = check()
    assert not result.ok and "timestamp is not valid" in result.message


def test_without_the_tsas_ca_a_token_is_not_checked_and_says_so(
    login_as, history, tsa_settings, settings
):
    with local_tsa("good") as tsa:
        tsa_settings(tsa)
        _, path, _ = export_as(login_as("auditor"))
    settings.WELKIN_TSA_URL, settings.WELKIN_TSA_CA_BUNDLE = "", ""
    # Unchecked, the token proves no time: a failure, unless the auditor opts out.
    code, out = verify_report(path)
    assert code == 1 and "its token could not be checked" in out, out
    code, out = verify_report(path, "--no-require-timestamp")
    assert code == 0 and "the timestamp token was NOT checked" in out, out
    code, out = verify_report(path, "--tsa-ca", tsa.ca_path)
    assert code == 0 and "timestamped by CN=" in out, out


def test_a_manifest_with_a_key_given_twice_is_refused(login_as, history, settings, tmp_path):
    settings.EXPORTS_DIR = tmp_path
    _, path, manifest = export_as(login_as("auditor"))
    text = manifest.read_bytes()
    forged = text.replace(b"{", b'{\n  "coverage": {"pods": 123456},', 1)
    edited = tmp_path / "dup.json"
    edited.write_bytes(forged)
    code, out = verify_report(path, edited)
    assert code == 1 and "gives the key 'coverage' twice" in out, out


def test_a_report_of_the_future_is_refused(db):
    with pytest.raises(reports.ReportError, match="in the future"):
        reports.point_in_time(FLEET, dt.datetime(2099, 1, 1, tzinfo=dt.UTC))


def test_an_export_before_any_data_does_not_stop_retention(history, settings):
    settings.WELKIN_RETENTION_DAYS = 30
    Export.objects.create(format="json", at=dt.datetime(2000, 1, 1, tzinfo=dt.UTC))
    done = retention.prune(T0 + dt.timedelta(days=31, hours=12))
    assert done.held_back_by == "" and done.findings == 1


def test_the_heads_in_export_manifests_are_checked_against_the_log(
    login_as, history, settings, tmp_path
):
    """Manifests kept outside the database hold the log's signed head of their day: after
    the heads are deleted and the log rewritten, verify_audit_log --manifests says so."""
    settings.EXPORTS_DIR = tmp_path
    log(2)
    head = heads.sign_head()
    export_as(login_as("auditor"))
    out = io.StringIO()
    call_command("verify_audit_log", "--manifests", str(tmp_path), stdout=out)
    assert "the heads of 1 export manifests are all in it" in out.getvalue()
    AuditHead.objects.filter(pk=head.pk).delete()
    AuditEvent.objects.filter(action=AuditEvent.Action.AUDIT_HEAD).delete()
    prev = audit.GENESIS
    for i, e in enumerate(AuditEvent.objects.order_by("seq"), 1):
        AuditEvent.objects.filter(pk=e.pk).update(seq=-i)
    for i, e in enumerate(AuditEvent.objects.order_by("-seq"), 1):
        e.seq, e.prev_hash = i, prev
        e.hash = prev = audit.chain_hash(e)
        e.save()
    with pytest.raises(SystemExit) as exit:
        call_command(
            "verify_audit_log", "--manifests", str(tmp_path), stdout=(out := io.StringIO())
        )
    assert exit.value.code == 1
    assert f"over event {head.seq}, which the log no longer holds" in out.getvalue(), out.getvalue()


def test_exports_carry_the_newest_signed_head(login_as, history, settings, tmp_path):
    settings.EXPORTS_DIR = tmp_path
    log(2)
    head = heads.sign_head()
    _, _, manifest = export_as(login_as("auditor"))
    m = orjson.loads(manifest.read_bytes())
    assert m["audit_head"]["seq"] == head.seq and m["audit_head"]["hash"] == head.hash
