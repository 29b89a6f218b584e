"""`make bench-export`: a point-in-time report of the whole fleet, exported.

Uses the database `welkin_bench` as `make bench-dashboard` leaves it (1,000,000 findings,
10,000,000 events; loaded here when empty) and runs `manage.py report` for each format in
its own process, printing wall seconds, the process's peak RSS (ru_maxrss) and the rows
written. First, in the same run and its own process, the floor: PostgreSQL writing the
report's selection as it is (`COPY (SELECT ...) TO STDOUT`, reports.copy_sql "bare"), read
and thrown away. Goals: CSV at most 2x the floor and under 10 s, JSON under 15 s, both
under 256 MB; the PDF lists the first 10,000 rows (its time is printed).
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


# The floor: the report's selection, COPY'd as PostgreSQL writes it, read and discarded.
FLOOR = """
import os, resource, django
os.environ.setdefault('DJANGO_SETTINGS_MODULE', 'welkin_dash.settings')
django.setup()
from django.conf import settings
from django.db import connection
from compliance.evidence import reports
from compliance.identity import access
report = reports.point_in_time(access.Scope(None, access.AUDITOR), summarize=False)
sql, params = reports.copy_sql(report, 'bare')
class Sink:
    size = lines = 0
    def write(self, data):
        self.size += len(data)
        self.lines += data.count(b'\\n')
sink = Sink()
with connection.cursor() as c:
    c.execute("SET work_mem = %s", [settings.WELKIN_EXPORT_WORK_MEM])  # as the exports have
    query = c.cursor.mogrify(sql, params).decode()
    c.cursor.copy_expert(f'COPY ({query}) TO STDOUT WITH (FORMAT csv)', sink, size=1 << 20)
print(sink.size, sink.lines, resource.getrusage(resource.RUSAGE_SELF).ru_maxrss)
"""


def main() -> None:
    env = {**os.environ, "DATABASE_URL": DB, "DEBUG": "1", "LOG_LEVEL": "WARNING"}
    os.environ.update({"DATABASE_URL": DB, "DEBUG": "1"})
    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "welkin_dash.settings")
    env.setdefault("DJANGO_SETTINGS_MODULE", "welkin_dash.settings")
    import django
    from django.db.utils import OperationalError, ProgrammingError

    django.setup()
    from compliance.models import Finding

    try:  # no database, or no tables: loaded here (any other failure stops the bench)
        loaded = Finding.objects.exists()
    except (OperationalError, ProgrammingError):
        loaded = False
    if not loaded:
        print("welkin_bench is empty: loading it as make bench-dashboard does")
        subprocess.run(
            [
                sys.executable,
                "-c",
                "from tests.bench import bench_dashboard as b;"
                "from tests.bench.bench_scan import fresh_database as f;"
                'import os; f(os.environ["DATABASE_URL"], dict(os.environ));'
                "import django; django.setup(); b.load(1_000_000, 10_000_000)",
            ],
            cwd=ROOT,
            env=env,
            check=True,
        )
    out = Path(tempfile.mkdtemp(prefix="bench-export-"))
    print(f"{'format':<7} {'seconds':>8} {'peak RSS':>9} {'size':>10}  rows      goal")
    t = time.perf_counter()
    p = subprocess.run(
        [sys.executable, "-c", FLOOR], cwd=ROOT, env=env, capture_output=True, text=True
    )
    floor = time.perf_counter() - t
    if p.returncode != 0:
        raise SystemExit(f"floor: {p.stderr[-2000:]}")
    size, rows, rss = p.stdout.split()
    print(
        f"{'floor':<7} {floor:>7.1f}s {int(rss) / 1024:>7.0f}MB {int(size) / 1e6:>8.0f}MB  "
        f"{rows}  (bare COPY of the same selection)",
        flush=True,
    )
    goals = {
        "csv": (min(2 * floor, 10), f"<= {min(2 * floor, 10):.1f} s (2x floor, < 10 s)"),
        "json": (15, "< 15 s"),
        "pdf": (None, "first 10,000 rows"),
    }
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
        limit, goal = goals[fmt]
        met = "" if limit is None else ("  met" if secs <= limit and rss_mb < 256 else "  NOT MET")
        print(
            f"{fmt:<7} {secs:>7.1f}s {rss_mb:>7.0f}MB {path.stat().st_size / 1e6:>8.0f}MB  "
            f"{rows}  {goal}, < 256 MB{met}",
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
