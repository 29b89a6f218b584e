"""`make bench-export`: a point-in-time report of the whole fleet, exported.

Uses the database `welkin_bench` as `make bench-dashboard` leaves it (1,000,000 findings,
10,000,000 events; loaded here when empty) and runs `manage.py report` for each format in
its own process, printing wall seconds, the process's peak RSS (ru_maxrss) and the rows
written. Budget (DESIGN.md): 1M rows in 60 s or less with 256 MB or less.
"""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
DB = os.environ.get("BENCH_DATABASE_URL", "postgres://postgres@127.0.0.1:5432/welkin_bench")


PEAK = (
    "import resource, sys; from django.core.management import execute_from_command_line;"
    "import os; os.environ.setdefault('DJANGO_SETTINGS_MODULE', 'welkin_dash.settings');"
    "execute_from_command_line(['manage.py'] + sys.argv[1:]);"
    "print(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss, file=sys.stderr)"
)


def main() -> None:
    env = {**os.environ, "DATABASE_URL": DB, "DEBUG": "1", "LOG_LEVEL": "WARNING"}
    os.environ.update({"DATABASE_URL": DB, "DEBUG": "1"})
    import django

    try:
        django.setup()
        from compliance.models import Finding

        loaded = Finding.objects.exists()
    except Exception:
        loaded = False
    if not loaded:
        print("welkin_bench is empty: loading it as make bench-dashboard does")
        subprocess.run(
            [
                sys.executable,
                "-c",
                "from tests.bench import bench_dashboard as b;"
                "from tests.bench.bench_scan import fresh_database as f; f();"
                "import django; django.setup(); b.load(1_000_000, 10_000_000)",
            ],
            cwd=ROOT,
            env=env,
            check=True,
        )
    out = Path(tempfile.mkdtemp(prefix="bench-export-"))
    print(f"{'format':<7} {'seconds':>8} {'peak RSS':>9} {'size':>10}  rows")
    for fmt in ("csv", "json", "pdf"):
        path = out / f"fleet.{fmt}"
        t = time.perf_counter()
        # The child runs the command, then prints its own peak RSS (KiB) last on stderr.
        p = subprocess.run(
            [sys.executable, "-c", PEAK, "report", "--format", fmt, "-o", str(path)],
            cwd=ROOT,
            env=env,
            capture_output=True,
            text=True,
        )
        secs = time.perf_counter() - t
        if p.returncode != 0:
            raise SystemExit(f"{fmt}: {p.stderr[-2000:]}")
        rss_mb = int(p.stderr.strip().splitlines()[-1]) / 1024
        rows = p.stdout.split(":", 2)[1].split()[0]
        print(
            f"{fmt:<7} {secs:>7.1f}s {rss_mb:>7.0f}MB {path.stat().st_size / 1e6:>8.0f}MB  {rows}",
            flush=True,
        )
        verify = subprocess.run(
            [sys.executable, "manage.py", "verify_report", str(path)],
            cwd=ROOT,
            env=env,
            capture_output=True,
            text=True,
        )
        print(f"        {verify.stdout.strip()[:100]}")


if __name__ == "__main__":
    main()
