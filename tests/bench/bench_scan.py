"""`make bench-scan`: fleet scanning against the budgets in DESIGN.md.

For each fleet size a fake API server (its own process, HTTPS) serves a synthetic cluster
of realistic pods (about 5 KB of JSON each, mixed states, Deployments of 10 replicas,
CronJobs, StatefulSets, DaemonSets, bare pods). A fresh Celery worker (`--pool=solo`, one
process) runs the scan task into PostgreSQL; the figures are

- parse + evaluate pods/s against the kubernetes client's typed models on the same page
  bytes (the ratio, measured in this run);
- end-to-end seconds (task start to reconcile committed) and the worker's peak RSS
  (VmHWM) for each size;
- rows written by a rescan in which nothing changed (PostgreSQL's own tuple counters);
- then, for a hostile API server (a repeated continue token, 200,000 pods in one page
  whatever the limit, a page drip-fed a few bytes a second), the same scan in a fresh
  worker: its outcome and reason, seconds and peak RSS. Default bounds, except a 10 s
  request deadline (WELKIN_KUBE_REQUEST_DEADLINE) so that the drip-fed page costs 10 s
  rather than 120 s. `--no-hostile` leaves this part out;
- notifications: a snapshot opening 10,000 root findings across 500 namespaces, owned by
  500 team leads, 20 group grants with globs, 10 contacts and 3 officers: the seconds the
  outbox adds to the reconcile's transaction (scan.timings["notify_s"]), and the messages
  queued (one per owner and channel). `--no-notify` leaves this part out.

Uses the database `welkin_bench_scan` on the local server (dropped and created each run; not
`welkin_bench`, which bench-dashboard loads for bench-export) and Redis db 12.
"""

from __future__ import annotations

import argparse
import os
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
DB = os.environ.get("BENCH_DATABASE_URL", "postgres://postgres@127.0.0.1:5432/welkin_bench_scan")
BROKER = os.environ.get("BENCH_BROKER_URL", "redis://127.0.0.1:6379/12")
# The synthetic images live in no registry: scans here measure the cluster side only.
ENV = {
    **os.environ,
    "DATABASE_URL": DB,
    "CELERY_BROKER_URL": BROKER,
    "DEBUG": "1",
    "CELERY_TASK_ALWAYS_EAGER": "0",
    "LOG_LEVEL": "WARNING",
    "WELKIN_REGISTRY_LOOKUPS": "0",
}


def use_environment() -> None:
    """Point this process at bench-scan's database and broker, before django.setup() (not
    on import: bench-dashboard and bench-export import fresh_database from here and keep
    their own database)."""
    os.environ.update(
        {
            k: ENV[k]
            for k in (
                "DATABASE_URL",
                "CELERY_BROKER_URL",
                "DEBUG",
                "CELERY_TASK_ALWAYS_EAGER",
                "LOG_LEVEL",
                "WELKIN_REGISTRY_LOOKUPS",
            )
        }
    )


def fresh_database(db: str = DB, env: dict | None = None) -> None:
    """Drop and create a bench database and migrate it, so every run starts from the same
    state."""
    import psycopg2

    name = db.rsplit("/", 1)[1]
    conn = psycopg2.connect(db.rsplit("/", 1)[0] + "/postgres")
    conn.autocommit = True
    with conn.cursor() as cur:
        cur.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        cur.execute(f'CREATE DATABASE "{name}"')
    conn.close()
    subprocess.run(
        [sys.executable, "manage.py", "migrate", "-v0"],
        cwd=ROOT,
        env={**(env or ENV), "DATABASE_URL": db},
        check=True,
    )


class Server:
    def __init__(self, pods: int, extra: tuple[str, ...] = ()):
        self.kubeconfig = Path(tempfile.mkdtemp(prefix="bench-")) / "kubeconfig"
        self.p = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "tests.fakekube",
                "--pods",
                str(pods),
                "--kubeconfig",
                str(self.kubeconfig),
                *extra,
            ],
            cwd=ROOT,
            env=ENV,
            stdout=subprocess.PIPE,
            text=True,
        )
        line = self.p.stdout.readline()
        if not line.startswith("ready"):
            raise SystemExit(f"fake API server did not start: {line!r}")

    def stop(self) -> None:
        self.p.send_signal(signal.SIGINT)
        self.p.wait(30)


class Worker:
    def __init__(self, env: dict | None = None):
        self.log = tempfile.NamedTemporaryFile("w+", prefix="bench-worker-", suffix=".log")
        self.p = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "celery",
                "-A",
                "welkin_dash",
                "worker",
                "--pool=solo",
                "--loglevel=WARNING",
                "--without-gossip",
                "--without-mingle",
                "--without-heartbeat",
            ],
            cwd=ROOT,
            env={**ENV, **(env or {})},
            stdout=self.log,
            stderr=subprocess.STDOUT,
        )

    def peak_rss_mb(self) -> float:
        for line in Path(f"/proc/{self.p.pid}/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
        return float("nan")

    def stop(self) -> None:
        self.p.send_signal(signal.SIGTERM)
        self.p.wait(60)


def typed_ratio(kubeconfig_path: Path, pages: int = 6) -> tuple[float, float]:
    """(our pods/s, typed pods/s) over the same raw pages."""
    import orjson
    from kubernetes.client import ApiClient

    from compliance.collect import kube, scanning
    from compliance.rules import kubeconfig, podjson
    from compliance.rules.workloads import OwnerIndex

    _, creds = kubeconfig.parse_kubeconfig(kubeconfig_path.read_text())
    bodies, token = [], None
    with kube.ClusterClient(creds) as c:
        for _ in range(pages):
            body = c._page("pods", token)
            bodies.append(body)
            token = orjson.loads(body)["metadata"].get("continue")
            if not token:
                break
    pods = sum(len(orjson.loads(b)["items"]) for b in bodies)

    start = time.perf_counter()
    scanning.collect_pods(
        (podjson.decode_page("pods", body)[0] for body in bodies),
        OwnerIndex(),
        scanning.NoLookups(),
    )
    ours = pods / (time.perf_counter() - start)

    api = ApiClient()
    start = time.perf_counter()
    for body in bodies:
        api.deserialize(body.decode(), "V1PodList", "application/json")
    typed = pods / (time.perf_counter() - start)
    return ours, typed


def rows_written() -> dict[str, int]:
    """Row writes (inserts + updates + deletes) per table, from PostgreSQL's counters."""
    from django.db import connection

    with connection.cursor() as cur:
        cur.execute("SELECT pg_stat_clear_snapshot()")
        cur.execute(
            "SELECT relname, n_tup_ins + n_tup_upd + n_tup_del "
            "FROM pg_stat_user_tables WHERE relname LIKE 'compliance_%%'"
        )
        return {name.removeprefix("compliance_"): int(n) for name, n in cur.fetchall()}


def run_scan(cluster_id: int, timeout: float = 900):
    from compliance import tasks
    from compliance.models import ScanRun

    result = tasks.scan_cluster.apply_async((cluster_id,))
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        scan = ScanRun.objects.filter(task_id=result.id).exclude(status="running").first()
        if scan:
            return scan
        time.sleep(0.2)
    raise SystemExit("scan timed out")


# (label, fleet size, fake server flags): the pods list misbehaves, the rest is a fleet.
HOSTILE = [
    ("repeated continue token", 2_000, ("--repeat-continue",)),
    ("200,000 pods in one page", 1_000, ("--generated-pods", "200000")),
    ("200,000 small pods/page", 1_000, ("--generated-pods", "200000", "--small-pods")),
    ("page drip-fed at 100 B/s", 2_000, ("--drip-bytes-per-second", "100")),
]
HOSTILE_ENV = {"WELKIN_KUBE_REQUEST_DEADLINE": "10"}


def hostile_scans() -> None:
    """Each misbehaviour against a fresh worker: how the scan ends, how fast, how big."""
    from compliance.collect import clusters

    print(
        f"hostile API server (request deadline {HOSTILE_ENV['WELKIN_KUBE_REQUEST_DEADLINE']}"
        " s, other bounds default):"
    )
    print(f"  {'misbehaviour':<26} {'outcome':>8} {'seconds':>8} {'peak RSS':>9}  reason")
    for i, (label, fleet, flags) in enumerate(HOSTILE):
        server = Server(fleet, flags)
        try:
            cluster = clusters.add_cluster(f"hostile-{i}", kubeconfig=server.kubeconfig.read_text())
            worker = Worker(HOSTILE_ENV)
            try:
                scan = run_scan(cluster.pk, timeout=300)
                rss = worker.peak_rss_mb()
            finally:
                worker.stop()
        finally:
            server.stop()
        secs = (scan.finished_at - scan.started_at).total_seconds()
        print(
            f"  {label:<26} {scan.status:>8} {secs:>7.1f}s {rss:>7.0f}MB  {scan.reason}", flush=True
        )


def notification_bench(findings: int = 10_000, namespaces: int = 500) -> None:
    """The outbox's cost in a scan that opens many findings for many owners."""
    import orjson
    from django.conf import settings
    from django.contrib.auth.models import Group, User

    from compliance.collect import scanning
    from compliance.models import NamespaceGrant
    from compliance.models.notify import Contact, Delivery, OutboxEvent
    from tests import podgen

    settings.EMAIL_HOST = "mail.invalid"  # e-mail on (nothing is sent here)
    officers = Group.objects.get_or_create(name="security-officer")[0]
    leads = Group.objects.get_or_create(name="team-lead")[0]
    for i in range(3):
        u = User.objects.create_user(f"bench-officer-{i}", email=f"o{i}@example.com")
        u.groups.add(officers)
    for i in range(namespaces):
        u = User.objects.create_user(f"bench-lead-{i}", email=f"l{i}@example.com")
        u.groups.add(leads)
        NamespaceGrant.objects.create(user=u, namespace=f"team-{i:03d}")
    for i in range(20):
        g = Group.objects.create(name=f"bench-team-{i}")
        NamespaceGrant.objects.create(group=g, namespace=f"team-{i:02d}*")
        u = User.objects.create_user(f"bench-group-member-{i}", email=f"g{i}@example.com")
        u.groups.add(g, leads)
    for i in range(10):
        Contact.objects.create(
            name=f"hook-{i}",
            channel="webhook",
            url=f"https://hooks.example/{i}",
            namespace=f"team-{i}*" if i else "*",
        )
    root = {"runAsUser": 0}
    items = [
        podgen.pod(f"team-{i % namespaces:03d}", f"w{i}", "img", {}, root) for i in range(findings)
    ]
    data = orjson.dumps({"apiVersion": "v1", "kind": "List", "items": items})
    result = scanning.import_snapshot("bench-notify", data, "notify.json")
    from compliance.models import ScanRun

    scan = ScanRun.objects.get(pk=result.scan_id)
    event = OutboxEvent.objects.get(scan=scan)
    messages = Delivery.objects.filter(event=event).count()
    print(
        f"notifications: a scan opening {scan.findings_opened:,} findings across "
        f"{namespaces} namespaces queued {messages} messages (one per owner and channel) in "
        f"{scan.timings['notify_s']:.2f} s extra (reconcile {scan.timings['reconcile_s']:.2f} s)",
        flush=True,
    )


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--sizes", default="10000,50000,150000")
    parser.add_argument(
        "--no-hostile", action="store_true", help="leave out the scans of hostile API servers"
    )
    parser.add_argument(
        "--no-notify", action="store_true", help="leave out the notification outbox's figures"
    )
    args = parser.parse_args()
    sizes = [int(s) for s in args.sizes.split(",")]

    use_environment()
    fresh_database()
    import django

    django.setup()
    from compliance.collect import clusters
    from welkin_dash.celery import app

    app.control.purge()
    print(
        f"{'pods':>8} {'pages':>6} {'findings':>9} {'end-to-end':>11} {'pods/s':>8} "
        f"{'list+parse+eval':>16} {'reconcile':>10} {'notify':>7} {'peak RSS':>9}"
    )
    ratio_line = rescan_line = ""
    for n in sizes:
        server = Server(n)
        try:
            if not ratio_line:
                ours, typed = typed_ratio(server.kubeconfig)
                ratio_line = (
                    f"parse + evaluate: {ours:,.0f} pods/s; kubernetes typed models "
                    f"(deserialize only): {typed:,.0f} pods/s; ratio "
                    f"{ours / typed:.1f}x"
                )
            cluster = clusters.add_cluster(f"bench-{n}", kubeconfig=server.kubeconfig.read_text())
            worker = Worker()
            try:
                scan = run_scan(cluster.pk)
                rss = worker.peak_rss_mb()
                if scan.status != "succeeded":
                    raise SystemExit(f"scan failed: {scan.reason}")
                t = scan.timings
                secs = (scan.finished_at - scan.started_at).total_seconds()
                print(
                    f"{n:>8,} {scan.pages:>6} {scan.findings_opened:>9,} {secs:>10.1f}s "
                    f"{n / secs:>8,.0f} {t['owners_s'] + t['pods_s']:>15.1f}s "
                    f"{t['reconcile_s']:>9.1f}s {t.get('notify_s', 0):>6.2f}s {rss:>7.0f}MB",
                    flush=True,
                )
                if n == max(sizes):
                    before = rows_written()
                    again = run_scan(cluster.pk)
                    time.sleep(1.0)  # statistics are flushed at most once a second
                    after = rows_written()
                    per_table = {
                        t: after[t] - before.get(t, 0)
                        for t in after
                        if after[t] != before.get(t, 0)
                    }
                    written = (
                        f"{sum(per_table.values())} row writes ("
                        + ", ".join(f"{t} {n}" for t, n in sorted(per_table.items()))
                        + ")"
                    )
                    touched = (
                        again.findings_opened + again.findings_changed + again.findings_resolved
                    )
                    seconds = (again.finished_at - again.started_at).total_seconds()
                    rescan_line = (
                        f"rescan with nothing changed ({n:,} pods, "
                        f"{scan.findings_opened:,} findings): {written}, "
                        f"{touched} findings touched, {seconds:.1f} s"
                    )
            finally:
                worker.stop()
        finally:
            server.stop()
    print(ratio_line)
    print(rescan_line)
    if not args.no_notify:
        notification_bench()
        app.control.purge()
    if not args.no_hostile:
        hostile_scans()


if __name__ == "__main__":
    main()
