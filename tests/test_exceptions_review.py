# ruff: noqa: F811 (the fleet fixture is imported from test_exceptions)
"""Review of issue 11: what an adversarial reading of risk acceptance found."""

import re

from django.utils import timezone

from compliance.risk import acceptance, exceptions
from tests.test_exceptions import (
    SHA_B,
    ask,
    decide,
    fleet,  # noqa: F401 (a fixture)
    users,
)


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

    from tests.test_exceptions import ROOT, SHA_A, _number, scan

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
