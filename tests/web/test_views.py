"""Every page for each role, access (404 outside a team lead's namespaces, by any URL),
and the query count of each page."""

import pytest
from django.contrib.auth.models import User
from django.core.cache import cache

from compliance.identity import access
from compliance.models import Cluster, Finding, NamespaceGrant


@pytest.fixture
def as_user(client, demo_fleet, db):
    def login(username):
        cache.clear()
        client.force_login(User.objects.get(username=username))
        return client

    return login


def open_finding(**kw):
    return Finding.objects.filter(resolved_at__isnull=True, **kw).order_by("pk").first()


PAGES = [
    "/",
    "/trends/",
    "/trends/data.json",
    "/clusters/prod-eu/",
    "/clusters/prod-eu/namespaces/payments/",
    "/trends/data.json?cluster=prod-eu",
]


@pytest.mark.parametrize("role", ["officer", "auditor", "lead"])
def test_it_serves_every_page_to_each_role(as_user, role):
    c = as_user(role)
    for url in PAGES:
        assert c.get(url).status_code == 200, url
    f = open_finding(namespace="payments")
    r = c.get(f"/findings/{f.pk}/")
    assert r.status_code == 200
    assert b"How to fix it" in r.content


def test_it_requires_login(client, demo_fleet, db):
    for url in [*PAGES, "/scans/", f"/findings/{open_finding().pk}/"]:
        r = client.get(url)
        assert r.status_code == 302 and r["Location"].startswith("/accounts/login/")


def test_the_fleet_page_shows_controls_clusters_and_trends(as_user):
    r = as_user("officer").get("/")
    body = r.content.decode()
    for text in (
        '8.18 <span class="muted">(2013: A.9.4.4)',
        '8.8 <span class="muted">(2013: A.12.6.1)',
        '8.27 <span class="muted">(2013: A.14.2.5)',
        "prod-eu",
        "prod-us",
        "staging",
        "Worse than a week ago",
        "Namespaces with most violations",
    ):
        assert text in body
    data = r.context
    assert sum(row["counts"]["blocked"] for row in data["clusters"]) >= 2


def test_a_lead_sees_only_granted_namespaces(as_user):
    c = as_user("lead")
    body = c.get("/clusters/prod-eu/").content.decode()
    assert "/namespaces/payments/" in body and "/namespaces/web/" in body
    assert "/namespaces/data/" not in body and "Scan history" not in body
    fleet = c.get("/").context
    assert {r["namespace"] for r in fleet["top_namespaces"]} <= {"payments", "web"}
    trend = c.get("/trends/data.json").json()
    officer = as_user("officer").get("/trends/data.json").json()
    assert sum(map(sum, trend["states"].values())) < sum(map(sum, officer["states"].values()))


def test_a_lead_gets_404_for_everything_outside_their_namespaces(as_user):
    c = as_user("lead")
    other = open_finding(namespace="data")
    assert c.get(f"/findings/{other.pk}/").status_code == 404
    assert c.get("/clusters/prod-eu/namespaces/data/").status_code == 404
    assert c.get("/trends/data.json?cluster=prod-eu&namespace=data").status_code == 404
    assert c.get("/trends/?cluster=prod-eu&namespace=data").status_code == 404
    assert c.get("/scans/").status_code == 404
    assert c.get("/scans/prod-eu/progress/").status_code == 404
    assert c.post("/scans/prod-eu/now/").status_code == 404
    assert c.post("/scans/prod-eu/schedule/", {"schedule_minutes": 5}).status_code == 404
    assert c.get("/clusters/nope/").status_code == 404
    assert c.get("/findings/999999999/").status_code == 404


def test_a_lead_limited_to_one_cluster_cannot_see_the_others(as_user):
    lead = User.objects.get(username="lead")
    NamespaceGrant.objects.filter(user=lead).update(cluster=Cluster.objects.get(name="staging"))
    try:
        c = as_user("lead")
        assert c.get("/clusters/prod-eu/").status_code == 404
        assert c.get("/clusters/staging/namespaces/payments/").status_code == 200
        f = open_finding(cluster__name="prod-eu", namespace="payments")
        assert c.get(f"/findings/{f.pk}/").status_code == 404
    finally:
        NamespaceGrant.objects.filter(user=lead).update(cluster=None)


def test_a_user_without_a_role_sees_nothing(login_as, demo_fleet):
    client = login_as("outsider")
    try:
        assert client.get("/").status_code == 403
        assert client.get("/clusters/prod-eu/").status_code == 404
        assert client.get(f"/findings/{open_finding().pk}/").status_code == 404
        assert client.get("/trends/data.json").json()["days"] == []
    finally:
        User.objects.filter(username="outsider").delete()


def test_the_welkin_cases_are_explained_with_their_fix(as_user):
    f = open_finding(cluster__name="prod-eu", namespace="payments", workload_name="worker")
    body = as_user("lead").get(f"/findings/{f.pk}/").content.decode()
    assert "image has non-numeric user (node)" in body
    assert "USER 1000" in body  # the numeric form of node, read from the image
    assert "uid 1000 for node: from /etc/passwd in layer sha256:" in body and "line 19" in body
    assert "Checked: after the workload change below, this container is" in body
    assert "kubectl --context prod-eu -n payments patch deployment worker" in body
    assert "`" not in body.split('id="fix-h"')[1].split("</section>")[0]  # no raw Markdown
    assert "none of them can see the image" in body  # how other tools differ
    assert "Opened" in body  # history


def test_the_namespace_page_filters_and_pages(as_user, monkeypatch):
    from compliance.web import dashboards

    monkeypatch.setattr(dashboards, "PAGE_SIZE", 2)
    c = as_user("officer")
    r = c.get("/clusters/prod-eu/namespaces/monitoring/")
    first = [f.pk for f in r.context["rows"]]
    cursor = r.context["next_cursor"]
    seen = list(first)
    while cursor:
        r = c.get("/clusters/prod-eu/namespaces/monitoring/", {"after": cursor})
        seen += [f.pk for f in r.context["rows"]]
        cursor = r.context["next_cursor"]
    expected = Finding.objects.filter(
        cluster__name="prod-eu", namespace="monitoring", resolved_at__isnull=True
    ).count()
    assert len(seen) == len(set(seen)) == expected
    r = c.get("/clusters/prod-eu/namespaces/monitoring/", {"q": "vendor"})
    assert all("vendor" in f.workload_name or "vendor" in f.image for f in r.context["rows"])
    r = c.get("/clusters/prod-eu/namespaces/monitoring/", {"after": "garbage!!"})
    assert r.status_code == 400  # a malformed parameter, named
    assert "after: not a cursor from this page" in r.content.decode()
    r = c.get("/clusters/prod-eu/namespaces/monitoring/", {"kind": "DaemonSet"})
    assert r.context["rows"] and all(f.workload_kind == "DaemonSet" for f in r.context["rows"])
    assert "<option selected>DaemonSet</option>" in r.content.decode()


@pytest.mark.parametrize("role", ["officer", "lead"])
@pytest.mark.parametrize(
    "url",
    [
        "/",
        "/trends/",
        "/trends/data.json",
        "/clusters/prod-eu/",
        "/clusters/prod-eu/namespaces/payments/",
        "finding",
        "/scans/",
    ],
)
def test_no_page_issues_more_than_10_queries(as_user, django_assert_max_num_queries, role, url):
    c = as_user(role)
    if url == "/scans/" and role != "officer":
        return
    if url == "finding":
        url = f"/findings/{open_finding(namespace='payments').pk}/"
    with django_assert_max_num_queries(10):
        assert c.get(url).status_code == 200


def test_the_fleet_page_is_cached_until_a_scan_completes(as_user, django_assert_max_num_queries):
    c = as_user("officer")
    c.get("/")
    with django_assert_max_num_queries(4):  # session, user, groups, scan marker
        c.get("/")


def test_a_fleet_page_cached_by_other_code_is_built_again(as_user):
    """The cache is shared by every web process: one running the code before an upgrade
    wrote a class that no longer imports (compliance.acceptance moved). The page is built
    again, not a 500."""
    c = as_user("officer")
    c.get("/")
    stored = [k for k in cache._cache if ":fleet:" in k]  # LocMemCache keeps pickles
    assert stored
    for k in stored:
        cache._cache[k] = b"ccompliance.acceptance\nAccepted\n."  # a pickle of the old path
    page = c.get("/")
    assert page.status_code == 200 and page.context["clusters"]


def test_scope_globs_match_like_fnmatch():
    s = access.Scope(1, access.LEAD, ((None, "team-*"), (3, "web")))
    assert s.allows(9, "team-a") and s.allows(3, "web") and not s.allows(4, "web")
    assert access.glob_regex("team-?x*") == "^team\\-.x.*$"


def test_cluster_ages_move_on_while_the_page_is_cached(as_user, monkeypatch):
    import datetime as dt

    from django.utils import timezone

    c = as_user("officer")
    first = {r["cluster"].name: r["age"] for r in c.get("/").context["clusters"]}
    later = timezone.now() + dt.timedelta(days=2)
    monkeypatch.setattr(timezone, "now", lambda: later)
    # Two days on, the login has ended (WELKIN_SESSION_MAX_SECONDS): log in again, keeping
    # the page cache.
    c.force_login(User.objects.get(username="officer"))
    rows = c.get("/").context["clusters"]
    assert all(r["age"] > first[r["cluster"].name] + dt.timedelta(days=1) for r in rows)
    assert all(r["stale"] for r in rows)


def test_a_created_user_is_two_dockerfile_lines_that_copy_as_two_lines(as_user):
    f = open_finding(cluster__name="prod-eu", namespace="search", workload_name="indexer")
    body = as_user("officer").get(f"/findings/{f.pk}/").content.decode()
    block = body.split('<pre id="fix-dockerfile">')[1].split("</pre>")[0]
    assert block.splitlines() == [
        "RUN useradd --system --no-create-home --uid 10001 app",  # Debian, from os-release
        "USER 10001",
    ]
    assert "uid 10001 is a choice, not read from the image" in body
