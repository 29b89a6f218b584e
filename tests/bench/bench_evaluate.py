"""`make bench-evaluate`: the CI gate's speed and memory.

- the alias bomb: refused, its time and peak memory;
- welkin-evaluate's start-up (--version, a one-pod file);
- side by side with checkov on the same files (one pod; 11,000 pods as YAML): objects per
  second, peak RSS and the ratio (checkov is installed once into var/checkov-venv);
- the formats (json, sarif, junit, github) on the large file;
- N generated pods (realistic API bodies, mixed states) in one kubectl-style List file:
  runas.evaluate_pod + remediation over the parsed pods, then the full
  `manage.py evaluate --format json FILE` run (read, parse, evaluate, print).
"""

import argparse
import os
import subprocess
import sys
import time
from pathlib import Path

import orjson
import yaml

from compliance.ci import offline
from tests import podgen

ROOT = Path(__file__).resolve().parents[2]


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--pods", type=int, default=100_000)
    parser.add_argument("--out", default=str(ROOT / "var" / "bench"))
    parser.add_argument("--large", type=int, default=11_000, help="objects in the large file")
    parser.add_argument("--no-checkov", action="store_true", help="skip the checkov comparison")
    args = parser.parse_args()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    path = out / f"pods-{args.pods}.json"
    users = {**podgen.IMAGES}
    if not path.exists():
        pods = [obj for kind, obj in podgen.fleet(args.pods) if kind == "Pod"]
        path.write_bytes(orjson.dumps({"apiVersion": "v1", "kind": "List", "items": pods}))
    alias_bomb(out)
    startup(out)
    if not args.no_checkov:
        checkov_side_by_side(out, args.large)
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


def measured(cmd: list[str], cwd: Path = ROOT, env: dict | None = None):
    """(seconds, peak RSS in MB, exit code, stderr) of a command. The peak is VmHWM read
    from /proc while it runs (ru_maxrss of a child counts the parent it was forked from);
    the process tree's largest (checkov runs helpers)."""
    start = time.perf_counter()
    p = subprocess.Popen(
        cmd,
        cwd=cwd,
        env=env or {"PATH": os.environ["PATH"]},
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
    return time.perf_counter() - start, peak_kb / 1024, p.returncode, stderr


def alias_bomb(out: Path) -> None:
    """A 170 KB YAML alias bomb: refused, with the command's peak memory."""
    bomb = out / "alias-bomb.yaml"
    bomb.write_bytes(podgen.alias_bomb())
    elapsed, peak, code, stderr = measured([sys.executable, "manage.py", "evaluate", str(bomb)])
    refused = code == 2 and "alias bomb" in stderr
    print(
        f"alias bomb:     {bomb.stat().st_size / 1e3:,.0f} KB of YAML "
        f"{'refused' if refused else 'NOT REFUSED'} (exit {code}) in {elapsed:.2f} s,"
        f" peak RSS {peak:,.0f} MB (it took 9 GB before the alias budget)"
    )


WELKIN_EVALUATE = Path(sys.executable).parent / "welkin-evaluate"
CHECKOV_VENV = ROOT / "var" / "checkov-venv"
CHECKOV_VERSION = "3.3.30"


def manifests(n: int) -> bytes:
    """n workloads as people keep them in Git: multi-document YAML of Deployments,
    StatefulSets, CronJobs and Services (about 1.3 KB a workload), mixed securityContexts."""
    docs = []
    for i in range(n):
        app = f"app-{i:05d}"
        sc = [
            {},
            {"runAsNonRoot": True},
            {"runAsNonRoot": True, "runAsUser": 1000},
            {"runAsUser": 0},
        ][i % 4]
        container = {
            "name": "main",
            "image": f"registry.example.com/team-{i % 40}/{app}:1.{i % 9}.0",
            "ports": [{"name": "http", "containerPort": 8080}],
            "env": [{"name": "LOG_LEVEL", "value": "info"}, {"name": "PORT", "value": "8080"}],
            "resources": {
                "requests": {"cpu": "100m", "memory": "128Mi"},
                "limits": {"memory": "256Mi"},
            },
            "readinessProbe": {"httpGet": {"path": "/healthz", "port": "http"}},
            "securityContext": {"allowPrivilegeEscalation": False, **sc},
        }
        meta = {"name": app, "namespace": f"team-{i % 40}", "labels": {"app": app}}
        template = {"metadata": {"labels": {"app": app}}, "spec": {"containers": [container]}}
        kind = ("Deployment", "StatefulSet", "CronJob")[i % 3]
        if kind == "CronJob":
            spec = {
                "schedule": "0 3 * * *",
                "jobTemplate": {
                    "spec": {
                        "template": {
                            **template,
                            "spec": {**template["spec"], "restartPolicy": "OnFailure"},
                        }
                    }
                },
            }
        else:
            spec = {"replicas": 2, "selector": {"matchLabels": {"app": app}}, "template": template}
        docs.append(
            {
                "apiVersion": "apps/v1" if kind != "CronJob" else "batch/v1",
                "kind": kind,
                "metadata": meta,
                "spec": spec,
            }
        )
        if i % 2 == 0:
            docs.append(
                {
                    "apiVersion": "v1",
                    "kind": "Service",
                    "metadata": meta,
                    "spec": {"selector": {"app": app}, "ports": [{"port": 80}]},
                }
            )
    return yaml.safe_dump_all(docs, sort_keys=False).encode()


def startup(out: Path) -> None:
    """welkin-evaluate's start-up: --version, and a one-pod file (best of 5)."""
    one = out / "one-pod.yaml"
    one.write_bytes(manifests(1))
    for label, args in (("--version", ["--version"]), ("one pod", [str(one)])):
        best = min(measured([str(WELKIN_EVALUATE), *args])[0] for _ in range(5))
        print(f"welkin-evaluate {label + ':':<10} {best * 1000:,.0f} ms (best of 5)")


def checkov_side_by_side(out: Path, large: int) -> None:
    """The same files through welkin-evaluate and checkov (CKV_K8S_23, CKV_K8S_40: the
    runAsNonRoot and high-uid checks): objects per second and peak RSS, and the ratio."""
    checkov = CHECKOV_VENV / "bin" / "checkov"
    if not checkov.exists():
        print(f"checkov: installing checkov=={CHECKOV_VERSION} into {CHECKOV_VENV} (once)")
        subprocess.run([sys.executable, "-m", "venv", str(CHECKOV_VENV)], check=True)
        subprocess.run(
            [str(CHECKOV_VENV / "bin" / "pip"), "install", "-q", f"checkov=={CHECKOV_VERSION}"],
            check=True,
        )
    files = {"small": (1, out / "one-pod.yaml"), "large": (large, out / f"pods-{large}.yaml")}
    if not files["large"][1].exists():
        files["large"][1].write_bytes(manifests(large))
    env = {"PATH": os.environ["PATH"], "HOME": str(out), "BC_SKIP_MAPPING": "TRUE"}
    head = ("file", "objects", "tool", "seconds", "objects/s", "peak RSS")
    print("{:<6} {:>8}  {:<16} {:>8} {:>10} {:>9}".format(*head))
    for label, (n, path) in files.items():
        ours = measured([str(WELKIN_EVALUATE), "--format", "json", str(path)])
        theirs = measured(
            [
                str(checkov),
                "-f",
                str(path),
                "--framework",
                "kubernetes",
                "--check",
                "CKV_K8S_23,CKV_K8S_40",
                "--quiet",
                "--compact",
                "-o",
                "json",
            ],
            env=env,
        )
        for tool, (secs, peak, _, _) in (("welkin-evaluate", ours), ("checkov", theirs)):
            print(f"{label:<6} {n:>8,}  {tool:<16} {secs:>8.2f} {n / secs:>10,.0f} {peak:>7,.0f}MB")
        print(
            f"{label:<6} ratio: welkin-evaluate is {theirs[0] / ours[0]:,.0f}x faster, with "
            f"{ours[1] / theirs[1]:.0%} of checkov's memory"
        )
    large_path = files["large"][1]
    for fmt in ("json", "sarif", "junit", "github"):
        secs = measured([str(WELKIN_EVALUATE), "--format", fmt, str(large_path)])[0]
        print(f"format {fmt:<7} on the large file: {secs:.2f} s")


if __name__ == "__main__":
    main()
