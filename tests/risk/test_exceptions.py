"""Risk acceptance: four eyes for every role, grants, expiry to the second on pages and in
reports, a digest pin reopening a finding, revocation, the register (unused, ended),
signed exports that verify, concurrent decisions, the command and the API."""

import datetime as dt
import re
import threading

import orjson
import pytest
from django.contrib.auth.models import User
from django.core.cache import cache
from django.core.management import call_command
from django.db import IntegrityError, close_old_connections, connection, transaction
from django.utils import timezone

from compliance.collect import scanning
from compliance.evidence import reports, signed
from compliance.identity import access
from compliance.models import (
    AuditEvent,
    DailyRollup,
    ExceptionEvent,
    ExceptionMatch,
    Export,
    Finding,
    FindingEvent,
    OidcIdentity,
    RiskException,
)
from compliance.risk import acceptance, exceptions, register
from tests import podgen
from tests.builders import ROOT, TOKEN, make_user, scrape, value

# Export jobs run in the request here (tests/evidence/test_export_jobs.py runs them in a worker).
pytestmark = pytest.mark.usefixtures("exports_in_process")

SHA_A = "sha256:" + "a" * 64
SHA_B = "sha256:" + "b" * 64


def scan(at, workloads):
    """workloads: {(ns, name): (container securityContext, image[, status imageID])}; one
    bare pod each, its status reporting the digest the image runs (podgen's, or the
    image's own when it names one; None: none yet)."""
    items = []
    for (ns, name), (sc, image, *image_id) in workloads.items():
        p = podgen.pod(ns, name, image, {}, sc)
        if image_id or "@" in image:
            status = p["status"]["containerStatuses"][0]
            status["imageID"] = image_id[0] if image_id else "docker-pullable://" + image
            if status["imageID"] is None:  # not pulled yet: the kubelet reports none
                del status["imageID"]
        items.append(p)
    data = orjson.dumps({"apiVersion": "v1", "kind": "List", "items": items})
    r = scanning.import_snapshot("airgap", data, "snap.json", at)
    assert r.status == "succeeded", r.reason


NOW = timezone.now().replace(microsecond=0)
T1 = NOW - dt.timedelta(days=2)


@pytest.fixture
def fleet(db):
    """airgap: shop/a root, shop/b root (pinned image A), ops/c root."""
    scan(
        T1,
        {
            ("shop", "a"): (ROOT, "app:1"),
            ("shop", "b"): (ROOT, "registry.example/b@" + SHA_A),
            ("ops", "c"): (ROOT, "ops:1"),
        },
    )
    return {f.workload_name: f for f in Finding.objects.filter(resolved_at__isnull=True)}


def users():
    return (
        make_user("officer"),
        make_user("officer", username="officer2"),
        make_user("lead", grants=["shop"]),
        make_user("auditor"),
    )


def ask(user, namespace="shop", days=30, **kw):
    scope = access.scope_for(user)
    r = exceptions.Request(
        cluster=kw.pop("cluster", "airgap"),
        namespace=namespace,
        controls=kw.pop("controls", ("A.9.4.4", "A.12.6.1", "A.14.2.5")),
        reason=kw.pop("reason", "vendor image, fix promised in Q1"),
        ticket=kw.pop("ticket", "SEC-42"),
        ends_at=kw.pop("ends_at", timezone.now() + dt.timedelta(days=days)),
        **kw,
    )
    return exceptions.request(scope, user, r).exception


def decide(user, e, action, comment="ok"):
    return exceptions.decide(access.scope_for(user), user, e.pk, action, comment)


def standing(name, at=None):
    r = reports.point_in_time(access.Scope(None, access.OFFICER), at)
    return {row["workload_name"]: (row["standing"], row["exception"]) for row in r.rows()}[name]


# --- four eyes ------------------------------------------------------------------------------


def test_four_eyes_for_every_role(fleet):
    officer, officer2, lead, auditor = users()
    e = ask(lead)
    with pytest.raises(exceptions.ExceptionError, match="only security officers"):
        decide(lead, e, "approve")
    with pytest.raises(exceptions.ExceptionError, match="only security officers"):
        decide(auditor, e, "approve")
    with pytest.raises(exceptions.ExceptionError, match="only team leads and security"):
        ask(auditor)
    own = ask(officer)
    with pytest.raises(exceptions.ExceptionError, match="you requested this exception"):
        decide(officer, own, "approve")
    decide(officer2, own, "approve")
    approved = decide(officer, e, "approve")
    assert approved.decided_by == officer and approved.approved_at is not None
    assert [h.action for h in approved.events.all()] == ["requested", "approved"]
    assert AuditEvent.objects.filter(action="exception").count() == 4
    # The database refuses what the code would: an approver who is the requester.
    with pytest.raises(IntegrityError), transaction.atomic():
        RiskException.objects.filter(pk=e.pk).update(decided_by=lead)


def request_form(**fields) -> dict:
    """The exception request form, filled in; `fields` override."""
    return {
        "cluster": "*",
        "namespace": "shop",
        "controls": ["A.9.4.4", "A.12.6.1", "A.14.2.5"],
        "reason": "r",
        "ticket": "SEC-2",
        "ends_at": (timezone.now() + dt.timedelta(days=5)).date().isoformat(),
        **fields,
    }


def test_pages_enforce_four_eyes(fleet, client):
    officer, officer2, lead, auditor = users()
    client.force_login(lead)
    r = client.post(
        "/exceptions/new/",
        {
            "cluster": "airgap",
            "namespace": "shop",
            "controls": ["A.9.4.4", "A.12.6.1", "A.14.2.5"],
            "reason": "legacy database\r\nneeds root until migrated",
            "ticket": "CHG-7",
            "ends_at": (timezone.now() + dt.timedelta(days=20)).date().isoformat(),
        },
    )
    assert r.status_code == 302
    e = RiskException.objects.get()
    assert e.reason == "legacy database\r\nneeds root until migrated"
    assert client.post(f"/exceptions/{e.pk}/decide/", {"action": "approve"}).status_code == 404
    client.force_login(auditor)
    assert client.get(f"/exceptions/{e.pk}/").status_code == 200
    assert client.get("/exceptions/new/").status_code == 404
    assert client.post(f"/exceptions/{e.pk}/decide/", {"action": "approve"}).status_code == 404
    client.force_login(make_user("outsider"))
    assert client.get("/exceptions/").status_code == 404
    client.force_login(officer)
    r = client.post(f"/exceptions/{e.pk}/decide/", {"action": "reject", "comment": ""})
    assert r.status_code == 400 and b"comment: required" in r.content
    r = client.post(f"/exceptions/{e.pk}/decide/", {"action": "approve", "comment": "fine"})
    assert r.status_code == 302
    e.refresh_from_db()
    assert e.decision == "approved" and e.decided_by == officer


def test_a_lead_asks_only_inside_their_grants(fleet, client):
    _, _, lead, _ = users()
    with pytest.raises(exceptions.ExceptionError, match="namespace: airgap/ops is outside"):
        ask(lead, "ops")
    with pytest.raises(exceptions.ExceptionError, match=r"namespace: \*/sh\* is outside"):
        ask(lead, "sh*", cluster="*")
    narrow = ask(lead, "shop", workload_kind="Pod", workload_name="a", container="app")
    covered = ExceptionMatch.objects.filter(exception=narrow).values("finding_id")
    assert list(Finding.objects.filter(pk__in=covered).values_list("workload_name", flat=True)) == [
        "a"
    ]
    other = ask(make_user("officer", username="o3"), "ops")
    client.force_login(lead)
    assert client.get(f"/exceptions/{other.pk}/").status_code == 404
    assert client.get(f"/exceptions/{narrow.pk}/").status_code == 200
    body = client.get("/exceptions/").content.decode()
    assert f"#{narrow.pk}" in body and f"#{other.pk}<" not in body
    # A request from a finding outside the grants: 404, as everywhere.
    assert client.get(f"/exceptions/new/?finding={fleet['c'].pk}").status_code == 404
    r = client.get(f"/exceptions/new/?finding={fleet['a'].pk}")
    assert r.status_code == 200 and b'value="shop"' in r.content


@pytest.mark.parametrize(
    "field,kw,message",
    [
        ("ends_at", {"ends_at": NOW - dt.timedelta(seconds=1)}, "is in the past"),
        ("ends_at", {"days": 181}, "more than 180 days away"),
        ("ends_at", {"days": 181}, "the last end date allowed is"),
        (
            "ends_at",
            {"ends_at": dt.datetime.fromisoformat("9999-12-31T23:59:59-14:00")},
            "more than 180 days away",
        ),
        ("controls", {"controls": ()}, "choose at least one"),
        ("controls", {"controls": ("A.1.2.3",)}, "unknown control"),
        ("controls", {"controls": ("A.9.4.4",)}, "no state is covered"),
        ("image_digest", {"image_digest": "sha256:xyz"}, "not an image digest"),
        ("workload_name", {"workload_kind": "Pod"}, "kind and name together"),
        ("workload_kind", {"workload_kind": "Bogus", "workload_name": "x"}, "not a workload"),
        ("namespace", {"namespace": "Shop"}, "a namespace name"),
        ("reason", {"reason": "  "}, "required"),
        ("reason", {"reason": "x\x1b[31m"}, "control characters"),
        ("ticket", {"ticket": "t" * 201}, "at most 200"),
        ("cluster", {"cluster": "nope"}, "no such cluster"),
    ],
)
def test_bad_input_names_the_field(fleet, field, kw, message):
    officer = make_user("officer")
    namespace = kw.pop("namespace", "shop")
    with pytest.raises(exceptions.ExceptionError) as e:
        ask(officer, namespace, **kw)
    assert e.value.field == field and message in e.value.message
    assert not RiskException.objects.exists()


def test_a_glob_that_matches_nothing_yet_is_allowed_and_said(fleet, client):
    client.force_login(make_user("officer"))
    r = client.post("/exceptions/new/", request_form(namespace="vendor-*"), follow=True)
    assert b"matches no open finding yet" in r.content


def test_approving_a_revoked_or_rejected_exception_is_refused(fleet):
    officer, officer2, lead, _ = users()
    e = ask(lead)
    decide(officer, e, "revoke", "asked by mistake")
    with pytest.raises(exceptions.ExceptionError, match="it is revoked"):
        decide(officer2, e, "approve")
    r = ask(lead)
    decide(officer, r, "reject", "no")
    with pytest.raises(exceptions.ExceptionError, match="it is rejected"):
        decide(officer2, r, "approve")
    with pytest.raises(exceptions.ExceptionError, match="nothing to revoke"):
        decide(officer2, r, "revoke", "x")


# --- what it does to findings ---------------------------------------------------------------


def test_expiry_at_the_exact_second_on_pages_and_in_reports(fleet, client, monkeypatch):
    officer, officer2, lead, _ = users()
    ends = timezone.now().replace(microsecond=0) + dt.timedelta(hours=1)
    e = ask(lead, workload_kind="Pod", workload_name="a", ends_at=ends)
    before_approval = timezone.now()
    decide(officer, e, "approve")
    e.refresh_from_db()
    client.force_login(officer2)
    ns = "/clusters/airgap/namespaces/shop/"

    def at(moment):
        monkeypatch.setattr(timezone, "now", lambda: moment)

    at(ends - dt.timedelta(microseconds=1))
    fleet_page = client.get("/").content.decode()
    assert 'id="accepted-total"' in fleet_page
    assert _number(fleet_page, "accepted-total") == 1 and _number(fleet_page, "open-total") == 2
    assert _number(client.get(ns).content.decode(), "accepted-count") == 1
    at(ends)  # the end date: open again, with nothing written, through the cached page
    fleet_page = client.get("/").content.decode()
    assert _number(fleet_page, "accepted-total") == 0 and _number(fleet_page, "open-total") == 3
    assert _number(client.get(ns).content.decode(), "accepted-count") == 0
    page = client.get(f"/findings/{fleet['a'].pk}/").content.decode()
    assert "Open again" in page and f"exception #{e.pk} ended" in page
    at(ends + dt.timedelta(seconds=1))  # reports are of the past: a future time is refused
    assert standing("a", before_approval) == ("open", None)
    assert standing("a", ends - dt.timedelta(microseconds=1)) == ("accepted", e.pk)
    assert standing("a", ends) == ("open", None)
    assert exceptions.status_at(e, ends) == "expired"


def _number(html, element_id):
    """The figure in the element with that id (a count on a page)."""
    m = re.search(rf'id="{element_id}">(?:[^<]|<(?!strong>)[^>]*>)*?(?:<strong>)?(\d+)', html)
    assert m, f"no #{element_id}"
    return int(m.group(1))


def test_accepted_findings_keep_their_state_and_count_apart(fleet, client, monkeypatch):
    officer, _, lead, _ = users()
    e = ask(lead, workload_kind="Pod", workload_name="a")
    decide(officer, e, "approve")
    a = Finding.objects.get(pk=fleet["a"].pk)
    assert a.state == "root"  # evaluated state unchanged
    r = reports.point_in_time(access.Scope(None, access.OFFICER))
    assert r.summary["root"] == {"containers": 3, "workloads": 3, "accepted": 1}
    summary = {c["control_2013"]: c for c in r.control_summary()}
    assert summary["A.9.4.4"]["accepted"] == 1 and summary["A.9.4.4"]["open"] == 2
    client.force_login(officer)
    page = client.get("/clusters/airgap/").content.decode()
    assert "Accepted" in page
    api = client.get("/api/v1/findings/?standing=accepted").json()
    assert [f["workload_name"] for f in api["results"]] == ["a"]
    assert api["results"][0]["exception"]["id"] == e.pk
    assert api["results"][0]["standing"] == "accepted"
    open_ = client.get("/api/v1/findings/?standing=open").json()
    assert sorted(f["workload_name"] for f in open_["results"]) == ["b", "c"]
    assert client.get("/api/v1/findings/?standing=maybe").status_code == 400
    # A rescan writes the day's accepted count into the rollups (the charts' history).
    scan(
        None,
        {
            ("shop", "a"): (ROOT, "app:1"),
            ("shop", "b"): (ROOT, "registry.example/b@" + SHA_A),
            ("ops", "c"): (ROOT, "ops:1"),
        },
    )
    row = DailyRollup.objects.get(namespace="shop", state="root", day=timezone.localdate())
    assert (row.containers, row.accepted) == (2, 1)
    trend = client.get("/trends/data.json?cluster=airgap").json()
    assert trend["accepted"][-1] == 1 and trend["states"]["root"][-1] == 2
    # Nothing changed since that scan: the pages count from its rollups...
    cache.clear()
    fleet_page = client.get("/").content.decode()
    assert _number(fleet_page, "accepted-total") == 1 and _number(fleet_page, "open-total") == 2
    # ...until the exception ends, with no scan and no write.
    e.refresh_from_db()
    later = e.ends_at
    monkeypatch.setattr(timezone, "now", lambda: later)
    client.force_login(officer)  # a month later: a new session
    fleet_page = client.get("/").content.decode()
    assert _number(fleet_page, "accepted-total") == 0 and _number(fleet_page, "open-total") == 3
    assert "Accepted" not in client.get(f"/findings/{a.pk}/").content.decode().split("History")[0]


def test_a_digest_pin_reopens_the_finding_when_the_image_changes(fleet, client):
    officer, _, lead, _ = users()
    b = fleet["b"]
    assert b.image_digest == SHA_A
    e = ask(lead, workload_kind="Pod", workload_name="b", image_digest=SHA_A)
    decide(officer, e, "approve")
    t_pinned = timezone.now()
    assert standing("b", t_pinned) == ("accepted", e.pk)
    scan(
        None,
        {
            ("shop", "a"): (ROOT, "app:1"),
            ("shop", "b"): (ROOT, "registry.example/b@" + SHA_B),
            ("ops", "c"): (ROOT, "ops:1"),
        },
    )
    b.refresh_from_db()
    assert b.image_digest == SHA_B and b.state == "root"
    assert standing("b", t_pinned) == ("accepted", e.pk)  # the past stays as it was
    assert standing("b") == ("open", None)
    event = FindingEvent.objects.get(finding=b, kind="image")
    assert event.digest == SHA_B
    client.force_login(officer)
    page = client.get(f"/findings/{b.pk}/").content.decode()
    assert "Image changed" in page and f"exception #{e.pk} was pinned to" in page


def test_a_revoked_exception_stops_at_its_revocation(fleet):
    officer, officer2, lead, _ = users()
    e = ask(lead)
    decide(officer, e, "approve")
    during = timezone.now()
    decide(officer2, e, "revoke", "the vendor shipped a fix")
    assert standing("a", during) == ("accepted", e.pk)
    assert standing("a") == ("open", None)
    assert exceptions.status_at(e.__class__.objects.get(pk=e.pk)) == "revoked"
    with pytest.raises(exceptions.ExceptionError, match="it is revoked"):
        decide(officer, e, "revoke", "again")


def test_a_container_that_needs_root_is_offered_an_exception_first(db, client):
    privileged = {"privileged": True, "runAsUser": 0}
    scan(T1, {("shop", "agent"): (privileged, "agent:1")})
    f = Finding.objects.get()
    client.force_login(make_user("lead", grants=["shop"]))
    page = client.get(f"/findings/{f.pk}/").content.decode()
    fix = page[page.index('id="fix-h"') :]
    assert fix.index("Request an exception") < fix.index("</section>")
    assert "<pre>" not in fix[: fix.index("Request an exception")]


# --- the register ---------------------------------------------------------------------------


def test_the_register_calls_out_unused_and_ended_exceptions(fleet, client, monkeypatch):
    officer, officer2, lead, _ = users()
    used = ask(lead)
    decide(officer, used, "approve")
    unused = ask(officer, "nothing-here")
    short = ask(lead, ends_at=timezone.now() + dt.timedelta(seconds=30))
    decide(officer, short, "approve")
    later = timezone.now() + dt.timedelta(minutes=1)
    monkeypatch.setattr(timezone, "now", lambda: later)
    client.force_login(officer2)
    rows = {r["id"]: r for r in client.get("/api/v1/exceptions/").json()["results"]}
    assert rows[used.pk]["status"] == "approved" and not rows[used.pk]["unused"]
    assert rows[used.pk]["open_findings_covered"] == 2
    assert rows[unused.pk]["unused"] and rows[unused.pk]["status"] == "requested"
    assert rows[short.pk]["status"] == "expired" and rows[short.pk]["ended"]
    page = client.get("/exceptions/").content.decode()
    assert "unused: covers no open finding" in page and "ended" in page
    expired = client.get("/exceptions/?status=expired").content.decode()
    assert f"#{short.pk}<" in expired and f"#{used.pk}<" not in expired
    soon = client.get("/api/v1/exceptions/?ending_within=31").json()["results"]
    assert {r["id"] for r in soon} == {used.pk, unused.pk}
    assert client.get("/exceptions/?ending_within=x").status_code == 400
    assert client.get("/exceptions/?status=bogus").status_code == 400


def test_register_and_report_exports_verify(fleet, client, tmp_path, settings):
    settings.EXPORTS_DIR = tmp_path
    officer, officer2, lead, _ = users()
    e = ask(lead, reason='=HYPERLINK("http://evil")')
    decide(officer, e, "approve")
    client.force_login(officer2)
    for fmt in ("csv", "json"):
        assert client.post("/exceptions/export/", {"format": fmt}).status_code == 302
    assert client.post("/reports/export/", {"format": "csv"}).status_code == 302
    for x in Export.objects.all():
        body = (tmp_path / f"{x.id}.{x.format}").read_bytes()
        result = signed.verify(body, orjson.dumps(x.manifest))
        assert result.ok, result.message
        if "register" in x.scope and x.format == "csv":
            assert b"'=HYPERLINK" in body and b"approved" in body
            assert x.filename.startswith("welkin-exceptions-")
        elif "register" in x.scope:
            assert orjson.loads(body)["exceptions"][0]["decided_by"] == "officer"
        else:
            assert b",accepted," + str(e.pk).encode() + b",officer," in body
    assert AuditEvent.objects.filter(action="exception_export").count() == 2


# --- concurrency, the command ---------------------------------------------------------------


@pytest.mark.django_db(transaction=True)
def test_concurrent_approve_and_revoke_leave_one_consistent_outcome():
    scan(T1, {("shop", "a"): (ROOT, "app:1")})
    officer, officer2, lead, _ = users()
    outcomes = []
    for _ in range(6):
        e = ask(lead)
        barrier = threading.Barrier(2)
        results = {}

        def act(user, action, e=e, barrier=barrier, results=results):
            close_old_connections()
            try:
                barrier.wait()
                decide(user, e, action, "now")
                results[action] = "done"
            except exceptions.ExceptionError as error:
                results[action] = str(error)
            finally:
                connection.close()

        threads = [
            threading.Thread(target=act, args=(officer, "approve")),
            threading.Thread(target=act, args=(officer2, "revoke")),
        ]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        e.refresh_from_db()
        actions = [h.action for h in ExceptionEvent.objects.filter(exception=e)]
        assert e.decision == "revoked" and results["revoke"] == "done"
        if results["approve"] == "done":
            assert actions == ["requested", "approved", "revoked"] and e.approved_at
        else:
            assert "it is revoked" in results["approve"]
            assert actions == ["requested", "revoked"] and e.approved_at is None
        outcomes.append(results["approve"] == "done")
    assert len(outcomes) == 6


@pytest.mark.django_db(transaction=True)
def test_an_approval_whose_clock_was_read_before_a_revocation_does_not_follow_it(monkeypatch):
    """The interleaving forced: the approver reads the time, then (before it has the row)
    another officer revokes and commits. Its decision must be taken at a time read under
    the lock: refused (it is revoked) or, if it got the row first, before the revocation;
    never an approval after a revocation (history requested -> revoked -> approved)."""
    scan(T1, {("shop", "a"): (ROOT, "app:1")})
    officer, officer2, lead, _ = users()
    e = ask(lead)
    clock_read, revoked = threading.Event(), threading.Event()
    real_now = timezone.now

    def now():
        t = real_now()
        if threading.current_thread().name == "approver" and not clock_read.is_set():
            clock_read.set()
            revoked.wait(2)  # the revocation commits now, unless this thread holds the row
        return t

    monkeypatch.setattr(timezone, "now", now)
    results = {}

    def approve():
        close_old_connections()
        try:
            decide(officer, e, "approve", "now")
            results["approve"] = "done"
        except exceptions.ExceptionError as error:
            results["approve"] = str(error)
        finally:
            connection.close()

    approver = threading.Thread(target=approve, name="approver")
    approver.start()
    assert clock_read.wait(10)
    try:
        decide(officer2, e, "revoke", "withdrawn")
        results["revoke"] = "done"
    except exceptions.ExceptionError as error:
        results["revoke"] = str(error)
    revoked.set()
    approver.join(30)
    e.refresh_from_db()
    actions = [h.action for h in ExceptionEvent.objects.filter(exception=e).order_by("pk")]
    assert actions in (["requested", "revoked"], ["requested", "approved", "revoked"]), actions
    assert exceptions.status_at(e) == "revoked"


def test_a_server_whose_clock_runs_behind_cannot_approve_a_revoked_exception(db, monkeypatch):
    """Another officer revoked on a server whose clock is 2 s ahead: this one must not see
    the exception as still requested (approved after revoked, and its news sent)."""
    scan(T1, {("shop", "a"): (ROOT, "app:1")})
    officer, officer2, lead, _ = users()
    e = ask(lead)
    decide(officer2, e, "revoke", "withdrawn")
    behind = timezone.now() - dt.timedelta(seconds=2)
    monkeypatch.setattr(timezone, "now", lambda: behind)
    with pytest.raises(exceptions.ExceptionError, match="it is revoked"):
        decide(officer, e, "approve", "ok")
    assert [h.action for h in ExceptionEvent.objects.filter(exception=e).order_by("pk")] == [
        "requested",
        "revoked",
    ]


def test_the_exceptions_command_lists_as_a_table(fleet, capsys):
    officer, _, lead, _ = users()
    e = ask(lead, days=10)
    decide(officer, e, "approve")
    call_command("exceptions", "list")
    out = capsys.readouterr().out
    assert "approved" in out and "airgap/shop" in out
    call_command("exceptions", "expiring", "--days", "14", "--format", "json")
    rows = orjson.loads(capsys.readouterr().out)
    assert [r["id"] for r in rows] == [e.pk]
    with pytest.raises(Exception, match="--days"):
        call_command("exceptions", "expiring", "--days", "-1")


def test_users_deleted_never_take_history_with_them(fleet):
    officer, _, lead, _ = users()
    e = ask(lead)
    decide(officer, e, "approve")
    with pytest.raises(Exception, match="protected"):
        User.objects.filter(pk=lead.pk).delete()


def test_metrics_count_accepted_findings_apart(fleet, client, settings):
    settings.WELKIN_METRICS_TOKEN = TOKEN
    settings.WELKIN_METRICS_ALLOWED_NETWORKS = []
    officer, _, lead, _ = users()
    e = ask(lead, workload_kind="Pod", workload_name="a")
    assert value(scrape(client), "welkin_findings_accepted", cluster="airgap", state="root") is None
    decide(officer, e, "approve")
    m = scrape(client)
    assert value(m, "welkin_findings_accepted", cluster="airgap", state="root") == 1
    assert value(m, "welkin_findings", cluster="airgap", state="root") == 3


def test_a_lead_reads_an_officers_exception_that_covers_their_namespace(fleet, client):
    officer, officer2, lead, _ = users()
    wide = ask(officer, "s*", cluster="*")
    decide(officer2, wide, "approve")
    elsewhere = ask(officer, "ops")
    client.force_login(lead)
    assert client.get(f"/exceptions/{wide.pk}/").status_code == 200
    assert client.get(f"/exceptions/{elsewhere.pk}/").status_code == 404
    page = client.get(f"/exceptions/{wide.pk}/").content.decode()
    assert "/shop/Pod/a:app" in page and "/ops/" not in page  # only findings they may see


def test_an_unknown_digest_keeps_the_last_one_seen_for_the_same_image(db):
    def pods(image, image_id):
        return {("shop", "t"): (ROOT, image, image_id)}

    scan(T1, pods("app:2", "docker.io/library/app@" + SHA_A))
    t = Finding.objects.get(workload_name="t")
    assert t.image_digest == SHA_A
    scan(T1 + dt.timedelta(hours=1), pods("app:2", None))  # still pulling: not known
    t.refresh_from_db()
    assert t.image_digest == SHA_A
    assert not FindingEvent.objects.filter(finding=t, kind="image").exists()
    scan(T1 + dt.timedelta(hours=2), pods("app:3", None))  # another image: not the pin's
    t.refresh_from_db()
    assert t.image_digest == ""
    assert FindingEvent.objects.get(finding=t, kind="image").digest == ""


def test_a_refused_container_without_an_image_id_does_not_keep_an_older_digest(db):
    """A pin accepts one build. A container the kubelet now refuses reports no imageID:
    keeping the digest last seen would keep it accepted for a build nobody checked."""
    officer, _, lead, _ = users()
    scan(T1, {("shop", "t"): (ROOT, "app:2", "docker.io/library/app@" + SHA_A)})
    t = Finding.objects.get(workload_name="t")
    pinned = ask(lead, workload_kind="Pod", workload_name="t", image_digest=SHA_A)
    decide(officer, pinned, "approve")
    assert acceptance.accepting([t.pk])
    refused = {"runAsNonRoot": True, "runAsUser": 0}
    scan(T1 + dt.timedelta(hours=1), {("shop", "t"): (refused, "app:2", None)})
    t.refresh_from_db()
    assert (t.state, t.image_digest) == ("blocked", "")
    assert acceptance.accepting([t.pk]) == {}


def test_a_pin_accepts_a_workload_only_while_every_pod_runs_the_pinned_build(db, client):
    """9 of 10 pods on a build nobody approved: the finding is open, listing the builds
    (the finding kept the digest of one pod, the first by name, and stayed accepted)."""
    officer, _, lead, _ = users()

    def rollout(at, digests):
        owner = podgen.owner_ref("ReplicaSet", "web-5d8f", "shop")
        items = []
        for i, digest in enumerate(digests):
            p = podgen.pod("shop", f"web-5d8f-{i:02d}", "app:2", {}, ROOT, owner=owner)
            p["status"]["containerStatuses"][0]["imageID"] = "docker.io/library/app@" + digest
            items.append(p)
        data = orjson.dumps({"apiVersion": "v1", "kind": "List", "items": items})
        assert scanning.import_snapshot("airgap", data, "snap.json", at).status == "succeeded"

    rollout(T1, [SHA_A] * 10)
    f = Finding.objects.get(workload_name="web-5d8f")
    assert f.image_digest == SHA_A
    pinned = ask(
        lead, workload_kind=f.workload_kind, workload_name=f.workload_name, image_digest=SHA_A
    )
    decide(officer, pinned, "approve")
    assert acceptance.accepting([f.pk])
    rollout(T1 + dt.timedelta(hours=1), [SHA_A] + [SHA_B] * 9)  # the first pod by name: A
    f.refresh_from_db()
    assert f.image_digest == "" and f.detail["digests"] == sorted([SHA_A, SHA_B])
    assert acceptance.accepting([f.pk]) == {}
    client.force_login(lead)
    page = client.get(f"/findings/{f.pk}/").content.decode()
    assert "Its pods run 2 builds" in page and SHA_B in page
    rollout(T1 + dt.timedelta(hours=2), [SHA_A] * 10)  # rolled back: accepted again
    f.refresh_from_db()
    assert f.image_digest == SHA_A and acceptance.accepting([f.pk])


def test_owners_hear_of_requests_approvals_and_ends_once(fleet, monkeypatch):
    from compliance.models.notify import Contact, OutboxEvent

    Contact.objects.create(
        name="shop team", channel="webhook", url="https://hooks.example.com/shop", namespace="shop"
    )
    officer, _, lead, _ = users()
    e = ask(lead, ends_at=timezone.now() + dt.timedelta(days=3))
    decide(officer, e, "approve")
    kinds = list(OutboxEvent.objects.order_by("pk").values_list("kind", flat=True))
    assert kinds == ["exception_requested", "exception_approved"]
    assert exceptions.notify_ending() == 1 and exceptions.notify_ending() == 0  # once
    later = e.ends_at + dt.timedelta(minutes=1)
    monkeypatch.setattr(timezone, "now", lambda: later)
    assert exceptions.notify_ending() == 1 and exceptions.notify_ending() == 0
    assert OutboxEvent.objects.filter(kind="exception_ended").count() == 1
    ask(officer, "vendor-*", cluster="*", ends_at=later + dt.timedelta(days=1))  # covers nothing
    assert OutboxEvent.objects.count() == 4


def test_the_last_day_allowed_is_the_whole_day(fleet):
    officer = make_user("officer")
    last = (timezone.now() + dt.timedelta(days=180)).date()
    end = dt.datetime.combine(last, dt.time(23, 59, 59), tzinfo=dt.UTC)
    assert ask(officer, ends_at=end).ends_at == end


@pytest.mark.parametrize(
    "ends_at,problem",
    [
        ("2027-W02-1", b"ends_at: a date (YYYY-MM-DD) or a date-time with a time zone"),
        ("20270115", b"ends_at: a date (YYYY-MM-DD) or a date-time with a time zone"),
        ("2027-02-30", b"ends_at: &#x27;2027-02-30&#x27; is not a date"),
        ("2027-01-15T00:00:00", b"needs a time zone"),
        ("\uff12\uff10\uff12\uff17-01-15T00:00:00Z", b"expected an ISO 8601 time"),
    ],
)
def test_an_end_date_the_form_does_not_ask_for_is_a_400_naming_it(fleet, client, ends_at, problem):
    client.force_login(make_user("officer"))
    form = request_form(ends_at=ends_at)
    r = client.post("/exceptions/new/", form)
    assert r.status_code == 400 and problem in r.content
    assert not RiskException.objects.exists()


def test_an_end_time_with_any_offset_is_kept_in_utc(fleet, client):
    """+23:59 is a valid ISO offset PostgreSQL cannot store (it answered a 500)."""
    client.force_login(make_user("officer"))
    day = (timezone.now() + dt.timedelta(days=3)).date()
    r = client.post("/exceptions/new/", request_form(ends_at=f"{day.isoformat()}T00:00:00+23:59"))
    assert r.status_code == 302
    expected = dt.datetime.combine(day, dt.time(0, 0), tzinfo=dt.UTC) - dt.timedelta(
        hours=23, minutes=59
    )
    assert RiskException.objects.get().ends_at == expected


# --- from the review of issue 11: what an adversarial reading of risk acceptance found ---


def test_a_finding_history_says_accepted_only_for_exceptions_that_accept_it(fleet, client):
    """A scope alone accepts nothing: an exception for blocked containers only, or pinned to
    another image, covers the root finding's scope but never accepted it, so its history
    must not say "Accepted" (it did, next to "open" on the same page)."""
    officer, _, lead, _ = users()
    a = fleet["a"]
    blocked_only = ask(lead, workload_kind="Pod", workload_name="a", controls=("A.14.2.5",))
    other_image = ask(lead, workload_kind="Pod", workload_name="a", image_digest=SHA_B)
    decide(officer, blocked_only, "approve")
    decide(officer, other_image, "approve")
    assert acceptance.accepting([a.pk]) == {}
    client.force_login(officer)
    page = re.sub(r"\s+", " ", client.get(f"/findings/{a.pk}/").content.decode())
    for e in (blocked_only, other_image):
        assert f"exception #{e.pk} approved by" not in page
    # One that does accept it is in the history.
    right = ask(lead, workload_kind="Pod", workload_name="a")
    right = decide(officer, right, "approve")
    page = re.sub(r"\s+", " ", client.get(f"/findings/{a.pk}/").content.decode())
    assert f"exception #{right.pk} approved by officer" in page
    assert exceptions.status_at(right, timezone.now()) == "approved"


def test_the_register_calls_an_exception_that_accepts_nothing_unused(fleet):
    """A pin to an image no longer running, or controls that accept none of the covered
    findings' states, match a scope but accept nothing: the silently useless exception the
    register is there to call out (it counted it as covering one open finding)."""
    from compliance.identity import access
    from compliance.risk import register

    officer, _, lead, _ = users()
    blocked_only = ask(lead, workload_kind="Pod", workload_name="a", controls=("A.14.2.5",))
    old_pin = ask(lead, workload_kind="Pod", workload_name="b", image_digest=SHA_B)
    used = ask(lead, workload_kind="Pod", workload_name="a")
    for e in (blocked_only, old_pin, used):
        decide(officer, e, "approve")
    doc = register.Register(access.scope_for(officer), register.Filters(), "t")
    rows = {r["id"]: r for r in doc.rows()}
    assert rows[blocked_only.pk]["unused"] and rows[blocked_only.pk]["open_findings_covered"] == 0
    assert rows[old_pin.pk]["unused"] and rows[old_pin.pk]["open_findings_covered"] == 0
    assert not rows[used.pk]["unused"] and rows[used.pk]["open_findings_covered"] == 1


def test_approval_matches_findings_a_concurrent_scan_opened(fleet):
    """A scan that opens a finding while a request is being stored: the scan's transaction
    does not see the uncommitted request, the request's match does not see the uncommitted
    finding, so no match was ever stored and the approved exception silently accepted
    nothing for that finding (a rescan does not help: it is no longer new). Approving
    matches again."""
    from compliance.models import ExceptionMatch

    officer, _, lead, _ = users()
    e = ask(lead)
    a = fleet["a"]
    ExceptionMatch.objects.filter(exception=e, finding=a).delete()  # the race's outcome
    decide(officer, e, "approve")
    assert acceptance.accepting([a.pk])[a.pk].exception_id == e.pk


def test_a_request_covering_no_finding_yet_still_reaches_the_officers(fleet):
    """A request for every cluster, or a glob, that covers no open finding yet has no
    namespace owner to tell, and told nobody: not even the officers who must decide it."""
    import datetime as dt

    from compliance.models.notify import Contact, OutboxEvent

    Contact.objects.create(
        name="security", channel="webhook", url="https://hooks.example.com/sec", namespace="*"
    )
    officer, _, lead, _ = users()
    e = ask(
        lead,
        cluster="*",
        workload_kind="CronJob",
        workload_name="not-deployed-yet",
        ends_at=timezone.now() + dt.timedelta(days=3),
    )
    event = OutboxEvent.objects.get(kind="exception_requested")
    assert event.payload["cluster"] == "*" and str(e.pk) in event.payload["title"]
    decide(officer, e, "approve")
    assert OutboxEvent.objects.filter(kind="exception_approved").count() == 1


def test_the_exceptions_table_lines_up(fleet, capsys):
    """`manage.py exceptions list` padded every column to 22 characters, and an end date
    is 32: every column after it was shifted under the wrong heading."""
    from django.core.management import call_command

    officer, _, lead, _ = users()
    decide(officer, ask(lead), "approve")
    call_command("exceptions", "list")
    header, *lines = capsys.readouterr().out.splitlines()
    at = header.index("requested_by")
    assert lines and all(line[at:].startswith("lead ") for line in lines)
    assert all(line[header.index("scope") :].startswith("airgap/shop") for line in lines)


def test_pages_and_api_agree_through_rescans_and_a_fleet_wide_exception(fleet, client):
    """The fleet page's accepted count equals the findings the API lists as accepted, for
    an officer and a lead, after a rescan and when an exception for every cluster is
    approved, then revoked (no scan in between)."""
    from django.core.cache import cache

    officer, officer2, lead, _ = users()
    workloads = {
        ("shop", "a"): (ROOT, "app:1"),
        ("shop", "b"): (ROOT, "registry.example/b@" + SHA_A),
        ("ops", "c"): (ROOT, "ops:1"),
    }

    def agree(expected):
        for user in (officer, lead):
            client.force_login(user)
            page = client.get("/").content.decode()
            api = client.get("/api/v1/findings/?standing=accepted&page_size=1000").json()
            assert _number(page, "accepted-total") == len(api["results"]), user
        client.force_login(officer)
        assert _number(client.get("/").content.decode(), "accepted-total") == expected

    e = ask(officer, "*", cluster="*")
    decide(officer2, e, "approve")
    agree(3)
    scan(None, workloads)
    cache.clear()
    agree(3)
    decide(officer2, e, "revoke", "over")
    agree(0)
    scan(None, workloads)
    agree(0)


def test_two_accounts_of_one_officer_do_not_make_four_eyes(db, client):
    """With passwords and single sign-on both on, an officer's provider account is a
    second user: it must not decide on the local account's request (the same e-mail is
    one person), and Settings names such officers."""
    scan(T1, {("shop", "a"): (ROOT, "app:1")})
    local, other, _, _ = users()
    local.email = "Alice@Example.com"
    local.save()
    sso = make_user("officer", username="alice-sso")
    sso.email = "alice@example.com"
    sso.save()
    e = ask(local)
    with pytest.raises(exceptions.ExceptionError, match="another account of yours"):
        decide(sso, e, "approve")
    assert decide(other, e, "approve").decision == "approved"
    client.force_login(other)
    page = client.get("/settings/").content.decode()
    assert "one person, several officer accounts" in page and "alice@example.com" in page


def test_a_provider_account_linked_to_a_local_one_is_one_person(db, client):
    """Without a shared e-mail: an administrator links the accounts (manage.py
    link_identity, or the admin); four eyes then count them as one, and the register
    names the person."""
    scan(T1, {("shop", "a"): (ROOT, "app:1")})
    local, other, _, _ = users()
    sso = make_user("officer", username="alice-sso")
    OidcIdentity.objects.create(user=sso, issuer="https://idp.example", subject="alice")
    call_command("link_identity", "alice-sso", "officer")
    e = ask(local)
    with pytest.raises(exceptions.ExceptionError, match="another account of yours"):
        decide(sso, e, "approve")
    f = ask(sso)
    with pytest.raises(exceptions.ExceptionError, match="another account of yours"):
        decide(local, f, "approve")
    rows = {
        r["id"]: r for r in register.page(access.scope_for(other), register.Filters(), None)["rows"]
    }
    assert rows[f.pk]["requested_by"] == "alice-sso (officer)"
    assert AuditEvent.objects.filter(action="admin_change", scope__fields=["person"]).exists()
    call_command("link_identity", "alice-sso", "--unlink")
    assert decide(sso, e, "approve").decision == "approved"


def test_one_person_is_followed_through_links_and_emails(db):
    """A chain counts: a provider account linked to a local one, and that local account
    sharing an e-mail with a third, are all one person; a stranger is not."""
    scan(T1, {("shop", "a"): (ROOT, "app:1")})
    local, other, _, _ = users()
    local.email = "alice@example.com"
    local.save()
    third = make_user("officer", username="alice-old")
    third.email = " ALICE@example.com"
    third.save()
    sso = make_user("officer", username="alice-sso")
    OidcIdentity.objects.create(
        user=sso, issuer="https://idp.example", subject="alice", person=local
    )
    e = ask(third)
    with pytest.raises(exceptions.ExceptionError, match="another account of yours"):
        decide(sso, e, "approve")
    assert exceptions.same_person(third.pk, sso.pk) and exceptions.same_person(sso.pk, third.pk)
    assert not exceptions.same_person(other.pk, sso.pk)
    assert decide(other, e, "approve").decision == "approved"
