"""`make bench-evaluate`: pods per second for the evaluator alone and the whole command.

Writes N generated pods (realistic API bodies, mixed states) to one kubectl-style List
file, then measures (1) runas.evaluate_pod + remediation over the parsed pods and (2) the
full `manage.py evaluate --format json FILE` run (read, parse, evaluate, print).
"""

import argparse
import os
import subprocess
import sys
import time
from pathlib import Path

import orjson

from compliance import offline
from tests import podgen

ROOT = Path(__file__).resolve().parents[2]


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--pods", type=int, default=100_000)
    parser.add_argument("--out", default=str(ROOT / "var" / "bench"))
    args = parser.parse_args()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    path = out / f"pods-{args.pods}.json"
    users = {**podgen.IMAGES}
    if not path.exists():
        pods = [obj for kind, obj in podgen.fleet(args.pods) if kind == "Pod"]
        path.write_bytes(orjson.dumps({"apiVersion": "v1", "kind": "List", "items": pods}))
    alias_bomb(out)
    data = path.read_bytes()
    pods = orjson.loads(data)["items"]
    print(
        f"input: {len(pods):,} pods, {len(data) / 1e6:,.0f} MB ({len(data) / len(pods):,.0f}"
        " bytes/pod)"
    )

    start = time.perf_counter()
    containers = 0
    for pod in pods:
        containers += len(offline.evaluate_object(pod, users)["containers"])
    elapsed = time.perf_counter() - start
    print(
        f"evaluate only:  {len(pods) / elapsed:>10,.0f} pods/s  ({elapsed:.2f} s, "
        f"{containers:,} containers, with remediation)"
    )

    users_file = out / "image-users.json"
    users_file.write_bytes(orjson.dumps(users))
    env = {**os.environ, "DEBUG": "1"}
    start = time.perf_counter()
    p = subprocess.run(
        [
            sys.executable,
            "manage.py",
            "evaluate",
            "--format",
            "json",
            "--image-users",
            str(users_file),
            str(path),
        ],
        cwd=ROOT,
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    elapsed = time.perf_counter() - start
    if p.returncode not in (0, 1):
        sys.exit(f"evaluate failed ({p.returncode}): {p.stderr.decode()[-2000:]}")
    print(
        f"whole command:  {len(pods) / elapsed:>10,.0f} pods/s  ({elapsed:.2f} s: start, "
        "read, parse, evaluate, print JSON)"
    )


def alias_bomb(out: Path) -> None:
    """A 170 KB YAML alias bomb: refused, with the command's own peak memory (VmHWM read
    from /proc while it runs: ru_maxrss of a child counts the parent it was forked from)."""
    bomb = out / "alias-bomb.yaml"
    bomb.write_bytes(podgen.alias_bomb())
    start = time.perf_counter()
    p = subprocess.Popen(
        [sys.executable, "manage.py", "evaluate", str(bomb)],
        cwd=ROOT,
        env={"PATH": os.environ["PATH"]},
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    peak_kb = 0
    while p.poll() is None:
        try:
            status = Path(f"/proc/{p.pid}/status").read_text()
            peak_kb = max(peak_kb, int(status.split("VmHWM:")[1].split()[0]))
        except (OSError, IndexError, ValueError):
            pass
        time.sleep(0.005)
    stderr = p.stderr.read()
    elapsed = time.perf_counter() - start
    refused = p.returncode == 2 and "alias bomb" in stderr
    print(
        f"alias bomb:     {bomb.stat().st_size / 1e3:,.0f} KB of YAML "
        f"{'refused' if refused else 'NOT REFUSED'} (exit {p.returncode}) in {elapsed:.2f} s,"
        f" peak RSS {peak_kb / 1024:,.0f} MB (it took 9 GB before the alias budget)"
    )


if __name__ == "__main__":
    main()
