"""`make bench-dashboard`: page server time with 1M findings, 10M events and 10,000
exceptions.

Loads a fleet into the database `welkin_bench` (recreated) with SQL: 20 clusters x 500
namespaces, 1,000,000 findings (80% open), 10,000,000 finding events, 90 days of rollups
(4.5M namespace rows) and activity, and 10,000 exceptions (9,000 for one workload, 1,000
for a whole namespace; 80% approved and in force, the rest requested, revoked or ended)
with their matches. Then requests every page N times through Django's
test client (server time: routing, queries, rendering; no network) for an officer and a
team lead, and prints p50/p95/max and the queries per page. The fleet page is measured
both as served (cached per completed scan) and with its cache cleared before each request.
"""

from __future__ import annotations

import argparse
import gc
import os
import statistics
import time

os.environ["DATABASE_URL"] = os.environ.get(
    "BENCH_DATABASE_URL", "postgres://postgres@127.0.0.1:5432/welkin_bench"
)
os.environ.setdefault("DEBUG", "1")
os.environ.setdefault("LOG_LEVEL", "WARNING")

CLUSTERS, NAMESPACES, DAYS = 20, 500, 90
LOAD_SQL = """
INSERT INTO compliance_cluster (name, source, context, server, schedule_minutes, enabled,
    next_scan_at, created_at)
SELECT 'cluster-' || lpad(c::text, 2, '0'), 'snapshot', '', '', 15, true, now(), now()
FROM generate_series(1, {clusters}) c;

INSERT INTO compliance_scanrun (cluster_id, status, reason, trigger, task_id, started_at,
    finished_at, heartbeat_at, observed_at, pages, pods, containers, findings_opened,
    findings_changed, findings_resolved, timings, worker, rejected, rejections)
SELECT id, 'succeeded', '', 'schedule', '', now() - interval '5 minutes', now(), now(),
    now() - interval '5 minutes', 300, 150000, 150000, 0, 0, 0, '{{}}', '', 0, '{{}}'
FROM compliance_cluster;
UPDATE compliance_cluster c SET last_scan_id = s.id, last_complete_scan_id = s.id
FROM compliance_scanrun s WHERE s.cluster_id = c.id;

INSERT INTO compliance_finding (cluster_id, namespace, workload_kind, workload_name,
    container, container_type, image, state, runs_as_root, kubelet_error, evidence,
    image_user, image_user_source, uid, run_as_user, run_as_non_root, pods, mixed, detail,
    first_seen, last_changed, resolved_at)
SELECT 1 + g % {clusters}, 'ns-' || ((g / {clusters}) % {namespaces}),
    (ARRAY['Deployment','StatefulSet','DaemonSet','CronJob'])[1 + g % 4], 'w-' || g, 'app',
    'app', 'registry.example.com/team/app-' || (g % 500) || ':1.' || (g % 7),
    (ARRAY['blocked','root','unverified','unenforced'])[1 + (g / 7) % 4], (g % 3 = 0), '',
    'predicted', NULL, 'unknown', NULL, NULL, NULL, 1 + g % 10, false, '{{}}'::jsonb,
    now() - ((g % 90) || ' days')::interval, now() - ((g % 30) || ' days')::interval,
    CASE WHEN (g / {clusters}) % 5 = 0 THEN now() - ((g % 20) || ' days')::interval END
FROM generate_series(1, {findings}) g;

INSERT INTO compliance_findingevent (finding_id, scan_id, kind, from_state, to_state, at)
SELECT f, 1 + (f - 1) % {clusters},
    (ARRAY['opened','changed','changed','changed'])[1 + g % 4], 'root', 'blocked',
    now() - ((g % 90) || ' days')::interval
FROM (SELECT g, 1 + g % {findings} AS f FROM generate_series(1, {events}) g) x;

INSERT INTO compliance_dailyrollup (cluster_id, day, namespace, state, containers, pods)
SELECT c, current_date - d, 'ns-' || n, s, (c + n + d) % 40, (c + n + d) % 40 * 3
FROM generate_series(1, {clusters}) c, generate_series(0, {days} - 1) d,
     generate_series(0, {namespaces} - 1) n,
     unnest(ARRAY['compliant','unenforced','root','blocked','unverified']) s;

INSERT INTO compliance_clusterrollup (cluster_id, day, state, containers, pods)
SELECT cluster_id, day, state, sum(containers), sum(pods) FROM compliance_dailyrollup
GROUP BY cluster_id, day, state;

INSERT INTO compliance_dailyactivity (cluster_id, day, namespace, opened, resolved,
    remediation_seconds)
SELECT c, current_date - d, 'ns-' || n, (c + n) % 3, (c + d) % 3, ((c + d) % 3) * 86400 * 4
FROM generate_series(1, {clusters}) c, generate_series(0, {days} - 1) d,
     generate_series(0, {namespaces} - 1) n WHERE (c + n + d) % 10 = 0;
"""


def load(findings: int, events: int) -> None:
    from django.db import connection

    sql = LOAD_SQL.format(
        clusters=CLUSTERS, namespaces=NAMESPACES, days=DAYS, findings=findings, events=events
    )
    with connection.cursor() as cur:
        for statement in sql.split(";\n"):
            if statement.strip():
                t = time.perf_counter()
                cur.execute(statement)
                print(
                    f"  {statement.strip().splitlines()[0][:60]:<60} "
                    f"{time.perf_counter() - t:6.1f} s",
                    flush=True,
                )
    with connection.cursor() as cur:
        cur.execute("VACUUM ANALYZE")


EXCEPTIONS_SQL = """
INSERT INTO compliance_riskexception (cluster_id, namespace, workload_kind, workload_name,
    container, image_digest, states, controls, reason, ticket, requested_by_id, requested_at,
    decision, decided_by_id, decided_at, decision_comment, approved_at, revoked_by_id,
    revoked_at, revoke_comment, ends_at)
SELECT cluster_id, namespace, kind, name, '', '', ',blocked,root,unverified,unenforced,',
    '["A.9.4.4", "A.12.6.1", "A.14.2.5"]'::jsonb, 'bench', 'B-' || i, %(lead)s,
    now() - interval '40 days',
    CASE WHEN i %% 20 = 0 THEN 'requested' WHEN i %% 20 = 1 THEN 'revoked' ELSE 'approved' END,
    CASE WHEN i %% 20 = 0 THEN NULL ELSE %(officer)s END,
    CASE WHEN i %% 20 = 0 THEN NULL ELSE now() - interval '39 days' END, '',
    CASE WHEN i %% 20 = 0 THEN NULL ELSE now() - interval '39 days' END,
    CASE WHEN i %% 20 = 1 THEN %(officer)s END,
    CASE WHEN i %% 20 = 1 THEN now() - interval '3 days' END, '',
    CASE WHEN i %% 20 = 2 THEN now() - interval '1 day'
         ELSE now() + ((1 + i %% 120) || ' days')::interval END
FROM (
    SELECT row_number() OVER (ORDER BY id) AS i, cluster_id, namespace,
           workload_kind AS kind, workload_name AS name
    FROM compliance_finding WHERE id %% 97 = 0 LIMIT 9000
) w
UNION ALL
SELECT 1 + i %% {clusters}, 'ns-' || ((i * 7) %% {namespaces}), '', '', '', '',
    ',blocked,root,unverified,unenforced,', '["A.9.4.4", "A.12.6.1", "A.14.2.5"]'::jsonb,
    'bench', 'N-' || i, %(lead)s, now() - interval '40 days', 'approved', %(officer)s,
    now() - interval '39 days', '', now() - interval '39 days', NULL, NULL, '',
    now() + ((1 + i %% 120) || ' days')::interval
FROM generate_series(1, 1000) i;

INSERT INTO compliance_exceptionevent (exception_id, cluster_id, at, user_id, username,
    action, comment)
SELECT id, cluster_id, requested_at, requested_by_id, 'lead', 'requested', ''
FROM compliance_riskexception
UNION ALL
SELECT id, cluster_id, approved_at, decided_by_id, 'officer', 'approved', ''
FROM compliance_riskexception WHERE approved_at IS NOT NULL;

INSERT INTO compliance_exceptionmatch (exception_id, finding_id, cluster_id, namespace,
    state, digest, open)
SELECT e.id, f.id, f.cluster_id, f.namespace, f.state, f.image_digest, true
FROM compliance_riskexception e JOIN compliance_finding f
  ON f.cluster_id = e.cluster_id AND f.namespace = e.namespace
 AND (e.workload_kind = '' OR (f.workload_kind = e.workload_kind
                               AND f.workload_name = e.workload_name))
WHERE f.resolved_at IS NULL;

UPDATE compliance_dailyrollup r SET accepted = LEAST(r.containers, x.n)
FROM (SELECT m.cluster_id, m.namespace, m.state, count(DISTINCT m.finding_id) AS n
      FROM compliance_exceptionmatch m
      JOIN compliance_riskexception e ON e.id = m.exception_id
      WHERE m.open AND e.approved_at <= now() AND e.ends_at > now()
        AND (e.revoked_at IS NULL OR e.revoked_at > now())
      GROUP BY 1, 2, 3) x
WHERE r.cluster_id = x.cluster_id AND r.namespace = x.namespace AND r.state = x.state
  AND r.day = current_date;

UPDATE compliance_clusterrollup c SET accepted = s.a
FROM (SELECT cluster_id, state, sum(accepted) AS a FROM compliance_dailyrollup
      WHERE day = current_date GROUP BY 1, 2) s
WHERE c.cluster_id = s.cluster_id AND c.state = s.state AND c.day = current_date
"""


def load_exceptions() -> None:
    from django.contrib.auth.models import User
    from django.db import connection

    ids = {u.username: u.pk for u in User.objects.filter(username__in=("lead", "officer"))}
    sql = EXCEPTIONS_SQL.format(clusters=CLUSTERS, namespaces=NAMESPACES)
    with connection.cursor() as cur:
        for statement in sql.split(";\n"):
            t = time.perf_counter()
            cur.execute(statement, ids)
            print(
                f"  {statement.strip().splitlines()[0][:60]:<60} {time.perf_counter() - t:6.1f} s"
            )
        cur.execute("SELECT count(*) FROM compliance_exceptionmatch")
        print(f"  {cur.fetchone()[0]:,} exception matches")
        cur.execute("VACUUM ANALYZE")


def rank_clusters() -> None:
    """What each cluster's scan stores with its rollups: its namespaces' ranking."""
    from compliance.collect import rollups
    from compliance.models import Cluster
    from compliance.web import dashboards

    t = time.perf_counter()
    for c in Cluster.objects.select_related("last_complete_scan"):
        rollups.rank_cluster(c.pk, dashboards._latest_days([c])[c.pk])
    print(
        f"  namespace rankings stored (as scans store them)      {time.perf_counter() - t:6.1f} s"
    )


def users() -> None:
    from django.contrib.auth.models import Group, User

    from compliance.identity import access
    from compliance.models import NamespaceGrant

    for name, role in (("officer", access.OFFICER), ("lead", access.LEAD)):
        u = User.objects.create_user(name, password="bench")
        u.groups.add(Group.objects.get_or_create(name=role)[0])
    lead = User.objects.get(username="lead")
    for ns in ("ns-1", "ns-2", "ns-3"):
        NamespaceGrant.objects.create(user=lead, namespace=ns)


def measure(client, url: str, n: int, clear_cache: bool = False) -> tuple[list[float], int]:
    from django.core.cache import cache
    from django.db import connection
    from django.test.utils import CaptureQueriesContext

    times, queries = [], 0
    for i in range(n + 2):
        if clear_cache:
            cache.clear()
        # Outside the timing: this process keeps every response's template contexts (the
        # test client), garbage a server's worker never makes, whose collection otherwise
        # lands inside a few requests (up to 300 ms) as the run goes on.
        gc.collect()
        with CaptureQueriesContext(connection) as ctx:
            t = time.perf_counter()
            r = client.get(url)
            elapsed = time.perf_counter() - t
        if r.status_code != 200:
            raise SystemExit(f"{url}: HTTP {r.status_code}")
        if i >= 2:  # two warm-up requests
            times.append(elapsed * 1000)
            queries = max(queries, len(ctx.captured_queries))
    return times, queries


def report_row(client, name: str, role: str, url: str, n: int, cold: bool) -> float:
    """Measure one page, print its line, return its p95."""
    times, queries = measure(client, url, n, cold)
    p95 = statistics.quantiles(times, n=20)[18]
    print(
        f"{name:<24} {role:<8} {statistics.median(times):>7.1f} {p95:>7.1f} "
        f"{max(times):>7.1f} {queries:>8}",
        flush=True,
    )
    return p95


def main() -> None:
    global CLUSTERS
    parser = argparse.ArgumentParser()
    parser.add_argument("--findings", type=int, default=1_000_000)
    parser.add_argument("--events", type=int, default=10_000_000)
    parser.add_argument("--clusters", type=int, default=CLUSTERS, help="500 namespaces each")
    parser.add_argument("--requests", type=int, default=30)
    parser.add_argument(
        "--keep", action="store_true", help="measure the database a previous run loaded"
    )
    args = parser.parse_args()
    CLUSTERS = args.clusters

    from tests.bench.bench_scan import fresh_database

    if not args.keep:
        fresh_database(os.environ["DATABASE_URL"], dict(os.environ))
    import django

    django.setup()
    from django.test import Client
    from django.test.utils import setup_test_environment

    setup_test_environment()
    from django.contrib.auth.models import User

    from compliance.models import Finding

    if not args.keep:
        t = time.perf_counter()
        print(
            f"loading {args.findings:,} findings and {args.events:,} events in {CLUSTERS} clusters:"
        )
        load(args.findings, args.events)
        users()
        load_exceptions()
        rank_clusters()
        print(f"loaded in {time.perf_counter() - t:.0f} s\n")

    open_in = Finding.objects.filter(
        cluster__name="cluster-01", namespace="ns-1", resolved_at__isnull=True
    )
    finding = open_in.order_by("pk").first().pk
    from compliance.models import RiskException

    exception = RiskException.objects.filter(namespace="ns-1").order_by("pk").first().pk
    page2 = None
    pages = [
        ("fleet (as served)", "/", False),
        ("fleet (cache cleared)", "/", True),
        ("trends data, fleet", "/trends/data.json", False),
        ("trends data, cluster", "/trends/data.json?cluster=cluster-01", False),
        ("cluster", "/clusters/cluster-01/", False),
        ("namespace", "/clusters/cluster-01/namespaces/ns-1/", False),
        ("namespace, page 2", None, False),
        ("namespace, search", "/clusters/cluster-01/namespaces/ns-1/?q=app-1", False),
        ("finding", f"/findings/{finding}/", False),
        ("trends page", "/trends/", False),
        ("scans", "/scans/", False),
        ("exception register", "/exceptions/", False),
        ("register, ending <14 d", "/exceptions/?ending_within=14", False),
        ("exception", f"/exceptions/{exception}/", False),
    ]
    print(f"{'page':<24} {'role':<8} {'p50 ms':>7} {'p95 ms':>7} {'max ms':>7} {'queries':>8}")
    worst = 0.0
    for role in ("officer", "lead"):
        client = Client()
        client.login(username=role, password="bench")
        for name, url, cold in pages:
            if url is None:
                r = client.get("/clusters/cluster-01/namespaces/ns-1/")
                page2 = f"/clusters/cluster-01/namespaces/ns-1/?after={r.context['next_cursor']}"
                url = page2
            if role == "lead" and url == "/scans/":
                continue
            worst = max(worst, report_row(client, name, role, url, args.requests, cold))
    # Right after an officer approves an exception in one cluster, that cluster's rollups
    # no longer tell its accepted count: it is counted live until its next scan.
    from django.db import transaction

    from compliance.identity import access
    from compliance.models import RiskException
    from compliance.risk import exceptions

    officer = User.objects.get(username="officer")
    pending = RiskException.objects.filter(decision="requested", cluster__name="cluster-01")
    client = Client()
    client.login(username="officer", password="bench")
    # Rolled back afterwards, so that --keep measures the same database again.
    with transaction.atomic():
        exceptions.decide(access.scope_for(officer), officer, pending.first().pk, "approve", "")
        for name, url, cold in (
            ("fleet, after an approval", "/", True),
            ("cluster, after approval", "/clusters/cluster-01/", False),
        ):
            worst = max(worst, report_row(client, name, "officer", url, args.requests, cold))
        transaction.set_rollback(True)
    print(f"\nworst p95: {worst:.1f} ms (goal: at or under 100 ms, at most 10 queries)")
    report_with_exceptions()


def report_with_exceptions() -> None:
    """The point-in-time report's rows and summary with the exceptions applied, timed in
    this process (bench-export times the exports as a whole)."""
    from compliance.evidence import reports
    from compliance.identity import access

    t = time.perf_counter()
    r = reports.point_in_time(access.Scope(None, access.OFFICER))
    summary = time.perf_counter() - t
    rows = accepted = 0
    for row in r.rows():
        rows += 1
        accepted += row["standing"] == "accepted"
    print(
        f"point-in-time report, whole fleet: summary {summary:.1f} s, {rows:,} rows "
        f"({accepted:,} accepted) in {time.perf_counter() - t:.1f} s"
    )


if __name__ == "__main__":
    main()
