"""The worker's and beat's liveness without inbound connections: a real Celery worker and
beat touch their heartbeat file while their loops run; `welkin_dash/alive.py` (the probe)
says alive while the file is fresh and not alive once the process stops touching it."""

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from django.conf import settings

ROOT = Path(__file__).resolve().parents[2]


def alive(path: Path, seconds: float) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, str(ROOT / "welkin_dash" / "alive.py"), str(path), str(seconds)],
        env={"PATH": os.environ.get("PATH", "/usr/bin:/bin")},
        capture_output=True,
        text=True,
        timeout=30,
    )


def wait_for(predicate, timeout=60.0):
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if predicate():
            return
        time.sleep(0.2)
    raise AssertionError(f"timed out waiting for {predicate}")


@pytest.fixture
def celery(tmp_path):
    started = []

    def start(*args):
        heartbeat = tmp_path / f"heartbeat-{args[0]}"
        log = open(tmp_path / f"{args[0]}.log", "w+")
        p = subprocess.Popen(
            [sys.executable, "-m", "celery", "-A", "welkin_dash", *args],
            cwd=ROOT,
            env={
                **os.environ,
                "DEBUG": "1",
                "CELERY_BROKER_URL": settings.CELERY_BROKER_URL,
                "CELERY_TASK_ALWAYS_EAGER": "0",
                "WELKIN_HEARTBEAT_FILE": str(heartbeat),
                "WELKIN_HEARTBEAT_SECONDS": "1",
                "WELKIN_FANOUT_SECONDS": "5",
            },
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        started.append((p, log))
        return p, heartbeat, log

    yield start
    for p, log in started:
        if p.poll() is None:
            os.killpg(p.pid, signal.SIGCONT)
            os.killpg(p.pid, signal.SIGTERM)
            try:
                p.wait(20)
            except subprocess.TimeoutExpired:
                os.killpg(p.pid, signal.SIGKILL)
                p.wait(10)
        log.close()


def test_the_worker_is_alive_while_its_loop_runs(celery):
    p, heartbeat, log = celery("worker", "--pool=solo", "--without-gossip", "--without-mingle")
    wait_for(heartbeat.exists)
    first = heartbeat.stat().st_mtime
    wait_for(lambda: heartbeat.stat().st_mtime > first + 1)  # touched again, and again
    assert alive(heartbeat, 5).returncode == 0
    os.killpg(p.pid, signal.SIGSTOP)  # a hung worker: its loop stops
    time.sleep(3)
    r = alive(heartbeat, 2)
    assert r.returncode == 1 and "last touched" in r.stderr
    os.killpg(p.pid, signal.SIGCONT)
    wait_for(lambda: alive(heartbeat, 2).returncode == 0, timeout=30)


def test_beat_touches_its_heartbeat_on_every_tick(celery, tmp_path):
    _, heartbeat, _ = celery(
        "beat",
        "--scheduler=welkin_dash.celery:HeartbeatScheduler",
        f"--schedule={tmp_path}/schedule",
        f"--pidfile={tmp_path}/beat.pid",
        "--max-interval=1",
    )
    wait_for(heartbeat.exists)
    first = heartbeat.stat().st_mtime
    wait_for(lambda: heartbeat.stat().st_mtime > first)
    assert alive(heartbeat, 10).returncode == 0


def test_no_heartbeat_file_is_not_alive(tmp_path):
    r = alive(tmp_path / "missing", 60)
    assert r.returncode == 1 and "No such file" in r.stderr
