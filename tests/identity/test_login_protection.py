"""Password guessing is throttled per address and per user name from an address
(django-axes), behind a real reverse proxy too (the client's address, not the proxy's),
each lockout is in the audit log, `manage.py axes_reset_*` unlocks, and a real browser
shows the lockout message."""

import http.client
import ipaddress
import os
import re
from urllib.parse import urlencode, urlsplit

import pytest
from axes.models import AccessAttempt
from django.core.management import call_command

from compliance.models import AuditEvent
from tests import builders
from tests.builders import CHROMIUM, SHOTS
from tests.processes import listener

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
    # From that address even the right password is refused; from another it is not (a
    # stranger must not lock a known name out everywhere).
    assert attempt(client, "officer", builders.PASSWORD).status_code == 429
    assert attempt(client, "officer", builders.PASSWORD, ip="10.0.0.2").status_code == 302
    client.logout()
    locked = AuditEvent.objects.filter(action="lockout")
    assert locked.count() >= 2 and {e.username for e in locked} == {"officer"}
    assert AuditEvent.objects.filter(action="login_failed").count() >= LIMIT
    call_command("axes_reset_username", "officer")
    call_command("axes_reset_ip", "10.0.0.1")
    r = attempt(client, "officer", builders.PASSWORD)
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


class Browserless:
    """A login form client from one source address (127.0.0.x), through a URL."""

    def __init__(self, base: str, source: str):
        parts = urlsplit(base)
        self.host, self.port, self.source = parts.hostname, parts.port, source

    def login(self, username: str, password: str, headers: dict | None = None) -> int:
        conn = http.client.HTTPConnection(
            self.host, self.port, timeout=30, source_address=(self.source, 0)
        )
        conn.request("GET", "/accounts/login/", headers=headers or {})
        page = conn.getresponse()
        html = page.read().decode()
        cookie = page.getheader("Set-Cookie", "").split(";", 1)[0]
        token = re.search(r'name="csrfmiddlewaretoken" value="([^"]+)"', html).group(1)
        form = urlencode({"username": username, "password": password, "csrfmiddlewaretoken": token})
        conn.request(
            "POST",
            "/accounts/login/",
            body=form,
            headers={
                **(headers or {}),
                "Cookie": cookie,
                "Content-Type": "application/x-www-form-urlencoded",
            },
        )
        r = conn.getresponse()
        r.read()
        conn.close()
        return r.status


@pytest.fixture
def proxy(live_server, settings):
    settings.WELKIN_TRUSTED_PROXIES = [ipaddress.ip_network("127.0.0.1/32")]
    settings.ALLOWED_HOSTS = ["*"]
    p, url = listener("tests.reverseproxy", live_server.url)
    yield url
    p.terminate()
    p.wait(10)


@pytest.mark.django_db(transaction=True)
def test_behind_a_proxy_a_stranger_cannot_lock_an_officer_out(proxy, live_server):
    """Through a real reverse proxy (it adds X-Forwarded-For), a stranger's failures lock
    the stranger, not the officer signing in from elsewhere; the audit log names the
    stranger's address, not the proxy's; a guesser is still throttled."""
    builders.make_user("officer")
    stranger, officer = Browserless(proxy, "127.0.0.2"), Browserless(proxy, "127.0.0.3")
    for _ in range(LIMIT):
        stranger.login("officer", "wrong")
    assert stranger.login("officer", builders.PASSWORD) == 429
    assert stranger.login("someone-else", "wrong") == 429  # the address is locked
    assert officer.login("officer", builders.PASSWORD) == 302
    failed = AuditEvent.objects.filter(action="login_failed")
    assert failed.exists() and set(failed.values_list("ip", flat=True)) == {"127.0.0.2"}
    # Straight to the server (not through the proxy), X-Forwarded-For is not believed.
    direct = Browserless(live_server.url, "127.0.0.4")
    for _ in range(LIMIT):
        direct.login("nobody", "wrong", headers={"X-Forwarded-For": "127.0.0.3"})
    assert officer.login("officer", builders.PASSWORD) == 302
    assert AuditEvent.objects.filter(action="login_failed", ip="127.0.0.4").exists()


@pytest.mark.parametrize(
    "forwarded, client",
    [
        (", ".join(["198.51.100.7"] * 64 + ["203.0.113.9"]), "203.0.113.9"),  # a long list
        ("198.51.100.7, 203.0.113.9, 10.0.0.9", "203.0.113.9"),  # proxies on the right
        ("1.2.3.4:5555", "1.2.3.4"),
        ("[2001:db8::1]:80", "2001:db8::1"),
        ("fe80::1%eth0", "10.0.0.5"),  # scoped: no database stores it
        ("not-an-address", "10.0.0.5"),
    ],
)
def test_the_client_address_is_the_right_most_untrusted_hop(rf, settings, forwarded, client):
    """What a client writes in X-Forwarded-For comes first; the proxies append on the
    right. However long the client's list, the real address is the one taken."""
    from compliance.params import client_address

    settings.WELKIN_TRUSTED_PROXIES = [ipaddress.ip_network("10.0.0.0/8")]
    request = rf.get("/", REMOTE_ADDR="10.0.0.5", HTTP_X_FORWARDED_FOR=forwarded)
    assert client_address(request) == client
