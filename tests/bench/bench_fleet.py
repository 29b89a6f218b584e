"""`make bench-fleet`: a fleet scanned as beat schedules it, by 1 then 2 worker processes.

Two fake API servers, each in its own process over HTTPS, answer as the fleet's clusters:
one with 2,500 realistic pods registered as 40 clusters, one with 20,000 registered as 3
(`--small 40x2500 --large 3x20000`): 160,000 pods a fleet scan. Each round marks every
cluster due and sends beat's fan-out task (compliance.tasks.enqueue_due_scans) through the
broker, as beat does; the worker runs it and then the 43 scans it queued. Printed per round:
the time from the fan-out's sending to the last scan's end, scans per minute, fleet pods
per second per worker process, and what PostgreSQL wrote (rows inserted, updated and
deleted, from its own counters; WAL bytes; the database's growth). Rounds: the first scan
(every finding new), then with 1 and with 2 worker processes: a rescan with nothing
changed, and one after 1% of the workloads changed their securityContext. Last, per day at
a 15-minute schedule (96 fleet scans) and per year.

Uses the database `welkin_fleet` (recreated) and Redis db 11. Registry lookups are off
(the images are synthetic): the scans measure the cluster side, as `make bench-scan` does.
"""

from __future__ import annotations

import argparse
import multiprocessing
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
DB = os.environ.get("BENCH_FLEET_DATABASE_URL", "postgres://postgres@127.0.0.1:5432/welkin_fleet")
BROKER = os.environ.get("BENCH_FLEET_BROKER_URL", "redis://127.0.0.1:6379/11")
ENV = {
    **os.environ,
    "DJANGO_SETTINGS_MODULE": "welkin_dash.settings",
    "DATABASE_URL": DB,
    "CELERY_BROKER_URL": BROKER,
    "DEBUG": "1",
    "CELERY_TASK_ALWAYS_EAGER": "0",
    "LOG_LEVEL": "WARNING",
    "WELKIN_REGISTRY_LOOKUPS": "0",
}
os.environ.update({k: ENV[k] for k in ENV if k not in ("PATH", "HOME")})


# --- the fake API servers, each in its own process -----------------------------------------


def _serve(pods: int, kubeconfig: str, conn) -> None:
    """A fake API server with `pods` pods; on ("change", k) 1% of its workloads (every
    100th, from offset k) switch between root and a numeric non-root user."""
    from tests import podgen
    from tests.fakekube import FakeKubeServer

    server = FakeKubeServer()
    objects = list(podgen.fleet(pods))
    server.state.put_many(obj for _, obj in objects)
    server.state.current_snapshot()
    workloads: dict[tuple[str, str], list[dict]] = {}
    for kind, obj in objects:
        if kind == "Pod":
            meta = obj["metadata"]
            owner = (meta.get("ownerReferences") or [{"name": meta["name"]}])[0]["name"]
            workloads.setdefault((meta["namespace"], owner), []).append(obj)
    Path(kubeconfig).write_text(server.kubeconfig_yaml())
    server.start()
    conn.send("ready")
    groups = list(workloads.values())
    while True:
        command, k = conn.recv()
        if command == "stop":
            break
        sc = {"runAsUser": 0} if k % 2 else {"runAsNonRoot": True, "runAsUser": 1000}
        changed = 0
        for group in groups[k % 100 :: 100]:
            for pod in group:
                for c in pod["spec"]["containers"]:
                    c["securityContext"] = sc
                server.state.put(pod)
            changed += 1
        server.state.current_snapshot()
        conn.send(changed)
    server.stop()


class Servers:
    def __init__(self, sizes: list[tuple[int, int]]):
        self.procs, self.conns, self.kubeconfigs = [], [], []
        folder = Path(tempfile.mkdtemp(prefix="bench-fleet-"))
        ctx = multiprocessing.get_context("spawn")
        for i, (_, pods) in enumerate(sizes):
            parent, child = ctx.Pipe()
            path = folder / f"kubeconfig-{i}"
            p = ctx.Process(target=_serve, args=(pods, str(path), child), daemon=True)
            p.start()
            self.procs.append(p)
            self.conns.append(parent)
            self.kubeconfigs.append(path)
        for conn in self.conns:
            assert conn.recv() == "ready"

    def change(self, k: int) -> int:
        for conn in self.conns:
            conn.send(("change", k))
        return sum(conn.recv() for conn in self.conns)

    def stop(self) -> None:
        for conn in self.conns:
            conn.send(("stop", 0))
        for p in self.procs:
            p.join(10)


# --- the database and the workers ----------------------------------------------------------


def fresh_database() -> None:
    from tests.bench import bench_scan

    bench_scan.fresh_database(DB, ENV)


def start_worker(processes: int) -> subprocess.Popen:
    log = open(Path(tempfile.gettempdir()) / f"bench-fleet-worker-{processes}.log", "w+")
    p = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "celery",
            "-A",
            "welkin_dash",
            "worker",
            "-Q",
            "scans,celery",
            "--pool=prefork",
            f"--concurrency={processes}",
            "--loglevel=WARNING",
            "--without-gossip",
            "--without-mingle",
            "--without-heartbeat",
        ],
        cwd=ROOT,
        env=ENV,
        stdout=log,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    time.sleep(1)
    return p


def stop_worker(p: subprocess.Popen) -> None:
    import signal

    os.killpg(p.pid, signal.SIGTERM)
    p.wait(60)


def counters() -> tuple[int, int, int]:
    """(rows inserted + updated + deleted in this database, WAL bytes so far, size)."""
    from django.db import connection

    time.sleep(1.5)  # backends flush their counters within a second of going idle
    with connection.cursor() as c:
        c.execute("SELECT pg_stat_clear_snapshot()")
        c.execute(
            "SELECT coalesce(sum(n_tup_ins + n_tup_upd + n_tup_del), 0) FROM pg_stat_user_tables"
        )
        rows = int(c.fetchone()[0])
        c.execute("SELECT pg_wal_lsn_diff(pg_current_wal_lsn(), '0/0')::bigint")
        wal = int(c.fetchone()[0])
        c.execute("SELECT pg_database_size(current_database())")
        size = int(c.fetchone()[0])
    return rows, wal, size


def fleet_scan(expected: int, timeout: float = 900) -> dict:
    """Mark every cluster due, send beat's fan-out, wait for every scan to end."""
    from django.utils import timezone

    from compliance import tasks
    from compliance.models import Cluster, ScanRun

    Cluster.objects.update(next_scan_at=timezone.now())
    before = counters()
    fired = timezone.now()
    t = time.perf_counter()
    tasks.enqueue_due_scans.apply_async()
    deadline = time.monotonic() + timeout
    while True:
        runs = ScanRun.objects.filter(started_at__gte=fired)
        done = runs.exclude(status="running")
        if done.count() >= expected:
            break
        if time.monotonic() > deadline:
            raise SystemExit(f"timed out: {done.count()} of {expected} scans ended")
        time.sleep(0.2)
    wall = time.perf_counter() - t
    after = counters()
    statuses = set(done.values_list("status", flat=True))
    if statuses != {"succeeded"}:
        reasons = set(done.exclude(status="succeeded").values_list("reason", flat=True))
        raise SystemExit(f"scans ended {statuses}: {reasons}")
    last = max(done.values_list("finished_at", flat=True))
    pods = sum(done.values_list("pods", flat=True))
    changes = sum(
        r.findings_opened + r.findings_changed + r.findings_resolved
        for r in done.only("findings_opened", "findings_changed", "findings_resolved")
    )
    return {
        "seconds": (last - fired).total_seconds(),
        "wall": wall,
        "pods": pods,
        "changes": changes,
        "rows": after[0] - before[0],
        "wal": after[1] - before[1],
        "growth": after[2] - before[2],
    }


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--small", default="40x2500", help="CLUSTERSxPODS")
    parser.add_argument("--large", default="3x20000", help="CLUSTERSxPODS")
    args = parser.parse_args()
    sizes = [tuple(int(x) for x in s.split("x")) for s in (args.small, args.large)]
    clusters_total = sum(n for n, _ in sizes)
    pods_total = sum(n * p for n, p in sizes)
    started = time.perf_counter()
    fresh_database()
    import django

    django.setup()
    from compliance.collect import clusters
    from welkin_dash.celery import app

    print(
        f"fleet: {clusters_total} clusters, {pods_total:,} pods "
        f"({' + '.join(f'{n} x {p:,}' for n, p in sizes)}); 2 fake API servers",
        flush=True,
    )
    servers = Servers(sizes)
    for (n, _), kubeconfig in zip(sizes, servers.kubeconfigs, strict=True):
        for i in range(n):
            clusters.add_cluster(
                f"c{kubeconfig.name[-1]}-{i:03d}", kubeconfig=kubeconfig.read_text()
            )
    app.control.purge()
    print(
        f"{'round':<28} {'workers':>7} {'seconds':>8} {'scans/min':>9} {'pods/s/worker':>13} "
        f"{'changes':>8} {'rows':>9} {'WAL MB':>7} {'growth MB':>9}",
        flush=True,
    )
    results = {}

    def run(name: str, workers: int) -> dict:
        r = fleet_scan(clusters_total)
        results[(name, workers)] = r
        print(
            f"{name:<28} {workers:>7} {r['seconds']:>7.1f}s "
            f"{clusters_total / r['seconds'] * 60:>9.1f} "
            f"{r['pods'] / r['seconds'] / workers:>13,.0f} {r['changes']:>8,} "
            f"{r['rows']:>9,} {r['wal'] / 1e6:>7.1f} {r['growth'] / 1e6:>9.1f}",
            flush=True,
        )
        return r

    k = 0
    try:
        for workers in (1, 2):
            w = start_worker(workers)
            try:
                if workers == 1:
                    run("first scan (all new)", workers)
                run("nothing changed", workers)
                k += 1
                servers.change(k)
                run("1% of workloads changed", workers)
            finally:
                stop_worker(w)
    finally:
        servers.stop()
    same, changed = results[("nothing changed", 2)], results[("1% of workloads changed", 2)]
    per_day = 96
    print()
    for label, r in (("nothing changed", same), ("1% changed", changed)):
        print(
            f"per day at a 15-minute schedule, {label}: {r['rows'] * per_day:,} rows, "
            f"{r['wal'] * per_day / 1e9:.2f} GB of WAL, the database grows "
            f"{r['growth'] * per_day / 1e6:.0f} MB ({r['growth'] * per_day * 365 / 1e9:.1f} GB "
            "a year)"
        )
    one = results[("nothing changed", 1)]
    rate = one["pods"] / one["seconds"]
    print(
        f"one worker process: {rate:,.0f} fleet pods/s; a fleet of N pods on a 15-minute "
        f"schedule needs N / {rate * 900:,.0f} processes at 100% busy"
    )
    print(f"bench-fleet took {time.perf_counter() - started:.0f} s")


if __name__ == "__main__":
    main()
