"""`make bench-evaluate`: pods per second for the evaluator alone and the whole command.

Writes N generated pods (realistic API bodies, mixed states) to one kubectl-style List
file, then measures (1) runas.evaluate_pod + remediation over the parsed pods and (2) the
full `manage.py evaluate --format json FILE` run (read, parse, evaluate, print).
"""

import argparse
import os
import resource
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
    """A 100 KB YAML alias bomb: refused, with the command's peak memory (measured first,
    while no larger child has run: ru_maxrss of children is the largest so far)."""
    bomb = out / "alias-bomb.yaml"
    bomb.write_bytes(podgen.alias_bomb())
    start = time.perf_counter()
    p = subprocess.run(
        [sys.executable, "manage.py", "evaluate", str(bomb)],
        cwd=ROOT,
        env={"PATH": os.environ["PATH"]},
        capture_output=True,
        text=True,
    )
    elapsed = time.perf_counter() - start
    peak = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024
    refused = p.returncode == 2 and "alias bomb" in p.stderr
    print(
        f"alias bomb:     {bomb.stat().st_size / 1e3:,.0f} KB of YAML "
        f"{'refused' if refused else 'NOT REFUSED'} (exit {p.returncode}) in {elapsed:.2f} s,"
        f" peak RSS {peak:,.0f} MB (it took 9 GB before the alias budget)"
    )


if __name__ == "__main__":
    main()
