"""Password guessing is throttled per user name and per address (django-axes), each
lockout is in the audit log, `manage.py axes_reset_username` unlocks, and a real browser
shows the lockout message."""

import os

import pytest
from axes.models import AccessAttempt
from django.core.management import call_command

from compliance.models import AuditEvent
from tests import builders
from tests.builders import CHROMIUM, SHOTS

LIMIT = 3


@pytest.fixture(autouse=True)
def limit(settings):
    settings.AXES_FAILURE_LIMIT = LIMIT


def attempt(client, username, password="wrong", ip="10.0.0.1"):
    return client.post(
        "/accounts/login/", {"username": username, "password": password}, REMOTE_ADDR=ip
    )


def test_it_locks_a_user_name_out_after_the_limit_and_audits_it(client, db):
    builders.make_user("officer")
    for _ in range(LIMIT - 1):
        assert attempt(client, "officer").status_code == 200
    r = attempt(client, "officer")
    assert r.status_code == 429 and b"Too many failed logins" in r.content
    # Now even the right password, from another address, is refused.
    r = attempt(client, "officer", builders.PASSWORD, ip="10.0.0.2")
    assert r.status_code == 429
    locked = AuditEvent.objects.filter(action="lockout")
    assert locked.count() >= 2 and {e.username for e in locked} == {"officer"}
    assert AuditEvent.objects.filter(action="login_failed").count() >= LIMIT
    call_command("axes_reset_username", "officer")
    r = attempt(client, "officer", builders.PASSWORD, ip="10.0.0.2")
    assert r.status_code == 302


def test_it_locks_an_address_out_that_tries_many_names(client, db):
    builders.make_user("auditor")
    for i in range(LIMIT):
        attempt(client, f"guess-{i}", ip="10.0.0.9")
    assert attempt(client, "auditor", builders.PASSWORD, ip="10.0.0.9").status_code == 429
    assert attempt(client, "auditor", builders.PASSWORD, ip="10.0.0.10").status_code == 302
    call_command("axes_reset_ip", "10.0.0.9")
    assert not AccessAttempt.objects.filter(ip_address="10.0.0.9").exists()


@pytest.mark.skipif(not os.path.exists(CHROMIUM), reason="chromium missing")
def test_a_browser_shows_the_lockout_message(transactional_db, browser, live_server):
    builders.make_user("lead")
    page = browser.new_page()
    for _ in range(LIMIT):
        page.goto(live_server.url + "/accounts/login/")
        page.fill("#id_username", "lead")
        page.fill("#id_password", "not-the-password")
        page.click("button[type=submit]")
    page.wait_for_selector("text=Too many failed logins")
    message = page.locator("[role=alert]").inner_text()
    assert "locked out after 3 failed logins. Try again in 15 minutes" in message
    SHOTS.mkdir(parents=True, exist_ok=True)
    page.screenshot(path=str(SHOTS / "lockout.png"))
    page.close()


def test_a_user_name_too_long_to_exist_is_a_failed_login_not_a_500(client, db):
    """django-axes keeps the name in a varchar(255): 5,000 characters were a 500, and
    the attempt was neither counted nor audited."""
    name = "x" * 5000
    for _ in range(LIMIT - 1):
        assert attempt(client, name).status_code == 200
    assert AuditEvent.objects.filter(action="login_failed", username=name[:150]).count() == 2
    assert attempt(client, name).status_code == 429  # counted, like any other name
    assert AccessAttempt.objects.get(ip_address="10.0.0.1").username == name[:255]
