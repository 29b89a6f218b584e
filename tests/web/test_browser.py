"""The pages in a real browser (Debian's Chromium through Playwright), for each role:
log in, walk every page, check the charts draw, nothing errs in the console, no request
leaves the server, and the keyboard reaches the content. Screenshots go to
var/screenshots/."""

import os

import pytest

from compliance import demo
from compliance.models import Finding
from tests.builders import CHROMIUM, SHOTS

PASSWORD = "browser-pass"

pytestmark = [
    pytest.mark.django_db(transaction=True),
    pytest.mark.skipif(not os.path.exists(CHROMIUM), reason="chromium missing"),
]


@pytest.fixture
def demo_fleet(transactional_db):
    demo.load(PASSWORD, days=21)
    welkin = Finding.objects.get(
        cluster__name="prod-eu",
        namespace="payments",
        workload_name="worker",
        resolved_at__isnull=True,
    )
    return {"welkin": welkin.pk, "other": Finding.objects.filter(namespace="data").first().pk}


class Walker:
    def __init__(self, browser, base, role):
        self.base, self.role = base, role
        self.page = browser.new_page(viewport={"width": 1440, "height": 1000})
        self.errors, self.foreign = [], []
        self.page.on("console", lambda m: m.type == "error" and self.errors.append(m.text))
        self.page.on("pageerror", lambda e: self.errors.append(str(e)))
        self.page.on(
            "request",
            lambda r: (
                None
                if r.url.startswith(base) or r.url.startswith("data:")
                else self.foreign.append(r.url)
            ),
        )

    def login(self):
        self.page.goto(self.base + "/")
        assert "/accounts/login/" in self.page.url
        self.page.fill("#id_username", self.role)
        self.page.fill("#id_password", PASSWORD)
        self.page.click("button[type=submit]")
        self.page.wait_for_url(self.base + "/")

    def visit(self, path, name, charts=False):
        response = self.page.goto(self.base + path)
        assert response.status == 200, f"{path}: {response.status}"
        assert self.page.locator("h1").first.is_visible()
        if charts:
            self.page.wait_for_selector("body[data-charts-ready]", timeout=15000)
            assert self.page.get_attribute("body", "data-charts-ready") == "yes"
            drawn = self.page.evaluate(
                "Array.from(document.querySelectorAll('canvas')).every(c => Chart.getChart(c))"
            )
            assert drawn, f"{path}: a chart did not draw"
        SHOTS.mkdir(parents=True, exist_ok=True)
        self.page.screenshot(path=str(SHOTS / f"{self.role}-{name}.png"), full_page=True)
        return response

    def follow(self, selector):
        """Click what loads a new page, and wait for that page: a click returns before the
        navigation it starts has reached Playwright, so the next step could read the old one."""
        with self.page.expect_navigation():
            self.page.click(selector)

    def status(self, path):
        return self.page.goto(self.base + path).status


@pytest.mark.parametrize("role", ["officer", "auditor", "lead"])
def test_each_role_walks_every_page(demo_fleet, browser, live_server, role):
    w = Walker(browser, live_server.url, role)
    w.login()
    w.visit("/", "fleet")
    w.visit("/trends/", "trends", charts=True)
    w.visit("/clusters/prod-eu/", "cluster", charts=True)
    w.visit("/clusters/prod-eu/namespaces/payments/", "namespace", charts=True)
    w.visit(f"/findings/{demo_fleet['welkin']}/", "finding")
    assert "image has non-numeric user (node)" in w.page.inner_text("main")
    if role == "officer":
        w.visit("/scans/", "scans")
    else:
        assert w.status("/scans/") == 404
    if role == "lead":
        assert w.status(f"/findings/{demo_fleet['other']}/") == 404
        assert w.status("/clusters/prod-eu/namespaces/data/") == 404
    assert w.errors == [] or all("404" in e for e in w.errors), w.errors
    assert w.foreign == []


def test_the_keyboard_reaches_the_content_first(demo_fleet, browser, live_server):
    w = Walker(browser, live_server.url, "officer")
    w.login()
    w.page.keyboard.press("Tab")
    assert w.page.evaluate("document.activeElement.textContent") == "Skip to content"
    w.page.keyboard.press("Enter")
    # A fragment's navigation reaches Playwright as an event, after the key press returns.
    w.page.wait_for_url("**/#main", timeout=5000)
    assert w.page.evaluate("document.querySelector(':target')?.id") == "main"


def test_the_trend_filters_redraw_for_a_namespace(demo_fleet, browser, live_server):
    w = Walker(browser, live_server.url, "auditor")
    w.login()
    w.visit("/trends/?cluster=prod-us", "trends-cluster", charts=True)
    w.page.select_option("#t-ns", "web")
    w.follow("form.filters button")
    w.page.wait_for_selector("body[data-charts-ready]")
    assert "namespace=web" in w.page.url
    assert w.errors == []


def test_a_lead_requests_an_exception_an_officer_approves_it(demo_fleet, browser, live_server):
    """Four eyes in the browser: the lead asks from the finding page, the officer approves
    from the fleet page's pending requests, and the fleet page counts it as accepted."""
    officer = Walker(browser, live_server.url, "officer")
    officer.login()
    before = officer.page.goto(live_server.url + "/")
    assert before.status == 200
    open_before = int(officer.page.inner_text("#open-total strong"))
    assert officer.page.inner_text("#accepted-total strong") == "0"

    lead = Walker(browser, live_server.url, "lead")
    lead.login()
    lead.visit(f"/findings/{demo_fleet['welkin']}/", "finding-open")
    lead.follow("#standing a.button")
    assert lead.page.input_value("#x-namespace") == "payments"
    assert lead.page.input_value("#x-name") == "worker"
    lead.page.fill("#x-reason", "USER node until the image is rebuilt with USER 1000")
    lead.page.fill("#x-ticket", "PAY-123")
    lead.page.click("form.form-grid button[type=submit]")
    lead.page.wait_for_selector("text=Requested. A security officer other than you")
    assert "Approve" not in lead.page.inner_text("main")  # not the lead's to decide
    lead.visit(lead.page.url.replace(live_server.url, ""), "exception-requested")

    officer.page.goto(live_server.url + "/")
    assert "1 exception request waiting" in officer.page.inner_text("#pending")
    officer.follow("#pending a")
    officer.follow("table a >> nth=0")
    officer.page.fill("#d-comment", "Approved until the rebuild.")
    officer.page.click("button[value=approve]")
    officer.page.wait_for_selector("h1 >> text=Approved")
    officer.visit("/", "fleet-accepted")
    assert int(officer.page.inner_text("#open-total strong")) == open_before - 1
    assert officer.page.inner_text("#accepted-total strong") == "1"
    lead.visit(f"/findings/{demo_fleet['welkin']}/", "finding-accepted")
    assert "Accepted by exception #" in lead.page.inner_text("#standing")
    assert officer.errors == [] and lead.errors == []
    assert officer.foreign == [] and lead.foreign == []
