"""The Content-Security-Policy in a real browser (Debian's Chromium through Playwright):
the policy is enforced (an injected inline script does not run and is reported), and no
page, the Django admin's included, trips it."""

import os
import shutil

import pytest
from django.contrib.auth.models import User

from compliance import demo

CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
PASSWORD = "csp-browser-pass"

pytestmark = [
    pytest.mark.django_db(transaction=True),
    pytest.mark.skipif(not os.path.exists(CHROMIUM), reason="chromium missing"),
]

# Every violation the page sees, collected from the start of each document.
COLLECT = """
window.__csp = [];
document.addEventListener('securitypolicyviolation', e =>
  window.__csp.push(e.violatedDirective + ' ' + (e.blockedURI || 'inline')));
"""


@pytest.fixture
def page(monkeypatch, live_server, transactional_db):
    demo.load(PASSWORD, days=7)
    User.objects.create_superuser("root-admin", password=PASSWORD)
    monkeypatch.setenv("DJANGO_ALLOW_ASYNC_UNSAFE", "true")
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        browser = p.chromium.launch(
            executable_path=CHROMIUM,
            args=["--headless", "--no-sandbox", "--disable-gpu", "--no-first-run"],
        )
        pg = browser.new_page()
        pg.add_init_script(COLLECT)
        pg.errors = []
        pg.on("console", lambda m: m.type == "error" and pg.errors.append(m.text))
        pg.goto(live_server.url + "/accounts/login/")
        pg.fill("#id_username", "root-admin")
        pg.fill("#id_password", PASSWORD)
        pg.click("button[type=submit]")
        pg.wait_for_url(live_server.url + "/")
        pg.base = live_server.url
        yield pg
        browser.close()


def test_the_policy_is_enforced(page):
    page.goto(page.base + "/")
    ran = page.evaluate(
        """() => {
          const s = document.createElement('script');
          s.textContent = 'window.__inline_ran = true';
          document.body.appendChild(s);
          const d = document.createElement('div');
          d.setAttribute('onclick', 'window.__handler_ran = true');
          document.body.appendChild(d);
          d.click();
          return [window.__inline_ran === true, window.__handler_ran === true];
        }"""
    )
    assert ran == [False, False]
    page.wait_for_function("window.__csp.length >= 2")
    assert all(v.startswith("script-src") for v in page.evaluate("window.__csp"))


def test_no_page_trips_the_policy(page):
    paths = [
        "/",
        "/trends/",
        "/clusters/prod-eu/",
        "/clusters/prod-eu/namespaces/payments/",
        "/reports/",
        "/reports/verify/",
        "/audit/",
        "/scans/",
        "/settings/",
        "/admin/",
        "/admin/compliance/contact/add/",
        "/admin/compliance/groupmapping/add/",
        "/admin/compliance/cluster/",
        "/admin/compliance/cluster/add/",
        "/admin/compliance/finding/",
        "/admin/compliance/namespacegrant/add/",
        "/admin/compliance/registry/add/",
        "/admin/auth/user/",
        "/admin/auth/group/add/",
    ]
    for path in paths:
        response = page.goto(page.base + path)
        assert response.status == 200, path
        page.wait_for_load_state("networkidle")
        assert page.evaluate("window.__csp") == [], path
    # (the admin's pages ask for /favicon.ico, which is not there: a 404, not a violation)
    assert [e for e in page.errors if "404" not in e] == []
