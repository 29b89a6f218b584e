"""Running it in production, in-process: /healthz, /readyz, /metrics after a real scan
(compared with the database), the security headers, logins that end, keys checked at
start-up and generated for a first look, `check --deploy` with the production settings
of docs/operating.md."""

import os
import stat
import subprocess
import sys
import time
from pathlib import Path

import pytest
from django.conf import settings
from django.core.cache import cache
from django.db.models import Count, Sum

from compliance.collect import scanning
from compliance.evidence import reports, signed, store
from compliance.identity import sessions
from compliance.models import Finding, ScanRun
from compliance.rules.controls import CONTROLS, MAPPING
from tests import podgen
from tests.builders import FAST, PRODUCTION_ENV, TOKEN, deployment, mixed_fleet, scrape, value

ROOT = Path(__file__).resolve().parents[2]


def run_manage(*args, env, cwd=ROOT, python=sys.executable, timeout=60):
    base = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "HOME": os.environ.get("HOME", "/")}
    return subprocess.run(
        [python, "manage.py", *args],
        cwd=cwd,
        env={**base, **env},
        capture_output=True,
        text=True,
        timeout=timeout,
    )


# --- health -----------------------------------------------------------------------------


@pytest.mark.django_db
def test_healthz_answers_anyone_on_any_host_without_a_session(client):
    r = client.get("/healthz", HTTP_HOST="10.1.2.3:8000")  # a kubelet probes the pod IP
    assert r.status_code == 200
    assert r.json() == {"status": "ok"}
    assert r["Cache-Control"] == "no-store"
    assert not r.cookies
    assert client.post("/healthz").status_code == 405


@pytest.mark.django_db
def test_readyz_checks_the_database_and_the_broker(client, settings):
    settings.CELERY_TASK_ALWAYS_EAGER = False
    r = client.get("/readyz", HTTP_HOST="10.1.2.3:8000")
    assert (r.status_code, r.json()) == (200, {"status": "ok", "database": "ok", "broker": "ok"})

    # A broker that does not answer (nothing listens on port 1): not ready, and which part
    # is named, without the reason (that goes to the log).
    settings.CELERY_BROKER_URL = "redis://127.0.0.1:1/0"
    started = time.monotonic()
    r = client.get("/readyz")
    assert time.monotonic() - started < 5
    assert r.status_code == 503
    assert r.json() == {"status": "unavailable", "database": "ok", "broker": "unavailable"}
    assert "127.0.0.1" not in r.content.decode()

    # The embedded first look runs tasks in-process: no broker to ask.
    settings.CELERY_TASK_ALWAYS_EAGER = True
    assert client.get("/readyz").json()["broker"] == "not used"


# --- metrics ----------------------------------------------------------------------------


@pytest.fixture
def metrics_settings(settings, tmp_path):
    settings.WELKIN_METRICS_TOKEN = TOKEN
    settings.WELKIN_METRICS_ALLOWED_NETWORKS = []
    settings.CELERY_TASK_ALWAYS_EAGER = False
    settings.EXPORTS_DIR = tmp_path / "exports"
    cache.clear()
    return settings


@pytest.mark.django_db
def test_metrics_need_the_token_or_an_allowed_network(client, metrics_settings):
    import ipaddress

    r = client.get("/metrics")
    assert r.status_code == 401
    assert r["WWW-Authenticate"] == 'Bearer realm="metrics"'
    assert client.get("/metrics", HTTP_AUTHORIZATION="Bearer wrong").status_code == 401
    assert client.get("/metrics", HTTP_AUTHORIZATION=f"Bearer {TOKEN}").status_code == 200
    # The peer address, never a forwarded header.
    metrics_settings.WELKIN_METRICS_TOKEN = ""
    metrics_settings.WELKIN_METRICS_ALLOWED_NETWORKS = [ipaddress.ip_network("10.0.0.0/8")]
    assert client.get("/metrics", REMOTE_ADDR="10.2.3.4").status_code == 200
    assert client.get("/metrics", REMOTE_ADDR="192.0.2.1").status_code == 401
    r = client.get("/metrics", REMOTE_ADDR="192.0.2.1", HTTP_X_FORWARDED_FOR="10.2.3.4")
    assert r.status_code == 401


@pytest.fixture
def fleet(fake_kube):
    """Every state, a CronJob's pod, and one object the gate rejects."""
    mixed_fleet(fake_kube)
    deployment(fake_kube, "data", "report", "report", 1)  # image user unknown: unverified
    bad = podgen.pod("data", "hostile", "busybox", {}, {})
    bad["spec"]["containers"][0]["name"] = "Not_A_DNS_Label"
    fake_kube.state.put(bad)
    return fake_kube


@pytest.mark.django_db
def test_metrics_after_a_real_scan_match_the_database(
    client, metrics_settings, cluster, fleet, fake_kube, login_as, exports_in_process
):
    from compliance.collect import clusters

    result = scanning.scan_cluster(cluster.pk, policy=FAST)
    assert result.status == "succeeded" and result.rejected == 1
    broken = clusters.add_cluster("broken", kubeconfig=fake_kube.kubeconfig_yaml(token="nope"))
    assert scanning.scan_cluster(broken.pk, policy=FAST).status == "failed"
    # One export through the page, as a person makes it.
    before = scrape(client)
    officer = login_as("officer")
    r = officer.post("/reports/export/", {"format": "csv", "cluster": "prod-1"})
    assert r.status_code == 302
    officer.logout()

    m = scrape(client)
    open_ = Finding.objects.filter(resolved_at__isnull=True)
    counts = {
        (r["cluster__name"], r["state"]): (r["n"], r["pods"])
        for r in open_.values("cluster__name", "state").annotate(n=Count("id"), pods=Sum("pods"))
    }
    assert {s for _, s in counts} == {"root", "blocked", "unenforced", "unverified"}
    got = {(dict(k)["cluster"], dict(k)["state"]): v for k, v in m["welkin_findings"].items()}
    assert got == {k: n for k, (n, _) in counts.items()}
    for (c, s), (n, pods) in counts.items():
        assert value(m, "welkin_finding_pods", cluster=c, state=s) == pods
        for control in MAPPING[s]:
            assert (
                value(
                    m,
                    "welkin_control_findings",
                    cluster=c,
                    control=control,
                    control_2022=CONTROLS[control].id_2022,
                    state=s,
                )
                == n
            )
    assert len(m["welkin_control_findings"]) == sum(len(MAPPING[s]) for _, s in counts)

    cluster.refresh_from_db()
    done = cluster.last_complete_scan
    assert value(m, "welkin_cluster_last_complete_scan_timestamp_seconds", cluster="prod-1") == (
        pytest.approx(done.observed_at.timestamp())
    )
    assert value(m, "welkin_scan_duration_seconds", cluster="prod-1") == pytest.approx(
        (done.finished_at - done.started_at).total_seconds()
    )
    assert value(m, "welkin_scan_pods", cluster="prod-1") == done.pods == 13
    assert value(m, "welkin_scan_rejected_objects", cluster="prod-1") == done.rejected == 1
    assert value(m, "welkin_scan_registry_lookups", cluster="prod-1") == 0  # lookups off
    assert value(m, "welkin_cluster_scan_interval_seconds", cluster="prod-1") == 15 * 60
    assert value(m, "welkin_cluster_enabled", cluster="prod-1") == 1
    assert value(m, "welkin_cluster_last_scan_failed", cluster="prod-1") == 0

    failed = ScanRun.objects.get(cluster=broken)
    assert value(m, "welkin_cluster_last_scan_failed", cluster="broken") == 1
    assert value(m, "welkin_cluster_last_failure_timestamp_seconds", cluster="broken") == (
        pytest.approx(failed.finished_at.timestamp())
    )
    assert value(m, "welkin_cluster_last_complete_scan_timestamp_seconds", cluster="broken") == 0
    assert value(m, "welkin_scan_duration_seconds", cluster="broken") is None

    def exported(metrics, result="ok"):
        return value(metrics, "welkin_exports_total", format="csv", result=result) or 0

    assert exported(m) == exported(before) + 1
    assert value(m, "welkin_export_duration_seconds_count", format="csv") >= 1
    assert value(m, "welkin_broker_up") == 1


@pytest.mark.django_db
def test_metrics_count_a_failed_export(metrics_settings, client, history, login_as):
    """Counted from the audit log the workers write (here the job runs in-process)."""
    metrics_settings.WELKIN_EXPORTS_IN_PROCESS = True
    before = scrape(client)
    blocker = metrics_settings.EXPORTS_DIR
    blocker.write_text("a file where the exports folder should be")
    officer = login_as("officer")
    assert officer.post("/reports/export/", {"format": "json"}).status_code == 302
    officer.logout()
    m = scrape(client)
    key = dict(format="json", result="failed")
    assert (value(m, "welkin_exports_total", **key) or 0) == (
        value(before, "welkin_exports_total", **key) or 0
    ) + 1


def reports_scope():
    from compliance.identity import access

    return access.Scope(None, access.OFFICER)


@pytest.mark.django_db
def test_metrics_add_the_namespace_only_when_asked(client, metrics_settings, cluster, fleet):
    scanning.scan_cluster(cluster.pk, policy=FAST)
    m = scrape(client)
    assert all("workload_namespace" not in dict(k) for k in m["welkin_findings"])
    metrics_settings.WELKIN_METRICS_NAMESPACES = True
    m = scrape(client)
    by_ns = {
        (dict(k)["workload_namespace"], dict(k)["state"]): v
        for k, v in m["welkin_findings"].items()
    }
    expected = {
        (r["namespace"], r["state"]): r["n"]
        for r in Finding.objects.filter(resolved_at__isnull=True)
        .values("namespace", "state")
        .annotate(n=Count("id"))
    }
    assert by_ns == expected


@pytest.mark.django_db
def test_metrics_show_the_queue_depth_from_the_broker(client, metrics_settings, cluster):
    from compliance import tasks
    from welkin_dash.celery import app

    def purge():
        with app.connection_for_write() as conn:
            for queue in settings.CELERY_QUEUES_BY_PURPOSE:
                conn.default_channel.queue_purge(queue)

    purge()
    assert value(scrape(client), "welkin_celery_queue_length", queue="scans") == 0
    try:
        for _ in range(3):
            tasks.scan_cluster.apply_async((cluster.pk,), expires=60)
        # Scans have their queue: housekeeping and exports never wait behind them.
        m = scrape(client)
        assert value(m, "welkin_celery_queue_length", queue="scans") == 3
        assert value(m, "welkin_celery_queue_length", queue="celery") == 0
        assert value(m, "welkin_celery_queue_length", queue="exports") == 0
    finally:
        purge()

    metrics_settings.CELERY_BROKER_URL = "redis://127.0.0.1:1/0"
    m = scrape(client)
    assert value(m, "welkin_broker_up") == 0
    assert "welkin_celery_queue_length" not in m


# --- headers ----------------------------------------------------------------------------


@pytest.mark.django_db
def test_every_page_has_a_csp_without_unsafe_inline(client):
    r = client.get("/accounts/login/")
    csp = r["Content-Security-Policy"]
    directives = dict(d.strip().split(" ", 1) for d in csp.split(";"))
    assert directives["default-src"] == "'self'"
    assert directives["script-src"] == "'self'"
    assert directives["style-src"] == "'self'"
    assert directives["object-src"] == "'none'"
    assert directives["frame-ancestors"] == "'none'"
    assert "unsafe-inline" not in csp and "unsafe-eval" not in csp
    assert r["X-Frame-Options"] == "DENY"
    assert r["X-Content-Type-Options"] == "nosniff"
    assert r["Referrer-Policy"] == "same-origin"


def test_no_template_has_inline_script_style_or_handlers():
    """The CSP allows no inline code: every script and style is a file under static/."""
    import re

    offenders = []
    for path in (ROOT / "templates").rglob("*.html"):
        text = path.read_text()
        for pattern in (
            r"<script(?![^>]*\bsrc=)[^>]*>",  # inline script
            r"<style\b",
            r"\sstyle\s*=",
            r"\son[a-z]+\s*=",  # onclick=, onload=...
            r"javascript:",
            r"\shx-on",
        ):
            offenders += [f"{path.relative_to(ROOT)}: {m}" for m in re.findall(pattern, text)]
    assert offenders == []


def test_check_deploy_reports_nothing_with_the_production_settings(tmp_path):
    p = run_manage(
        "check",
        "--deploy",
        "--fail-level",
        "DEBUG",
        env={**PRODUCTION_ENV, "STATIC_ROOT": str(tmp_path)},
    )
    assert p.returncode == 0, p.stdout + p.stderr
    assert "System check identified no issues (0 silenced)." in p.stdout


def test_check_deploy_names_what_is_missing_without_them(tmp_path):
    env = {
        **PRODUCTION_ENV,
        "STATIC_ROOT": str(tmp_path),
        "SECURE_SSL_REDIRECT": "false",
        "SECURE_HSTS_SECONDS": "0",
    }
    p = run_manage("check", "--deploy", env=env)
    assert "security.W004" in p.stderr and "security.W008" in p.stderr


# --- keys -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "env,message",
    [
        (
            {"WELKIN_FERNET_KEYS": "not-a-key"},
            "WELKIN_FERNET_KEYS: key 1 of 1 is not a Fernet key",
        ),
        (
            {"WELKIN_FERNET_KEYS": "B" * 43 + "=,short"},
            "WELKIN_FERNET_KEYS: key 2 of 2 is not a Fernet key",
        ),
        ({"WELKIN_SIGNING_KEY": "c2hvcnQ="}, "WELKIN_SIGNING_KEY: expected base64 of 32 bytes"),
        ({"SECRET_KEY": "too-short"}, "SECRET_KEY: at least 50 characters"),
        ({"WELKIN_METRICS_TOKEN": "short"}, "WELKIN_METRICS_TOKEN: at least 16 characters"),
        ({"WELKIN_METRICS_ALLOWED_NETWORKS": "10.0.0.0/8,nope"}, "'nope' is not a network"),
        ({"SECURE_PROXY_SSL_HEADER": "X Forwarded"}, "SECURE_PROXY_SSL_HEADER="),
        ({"SECURE_HSTS_SECONDS": "a year"}, "SECURE_HSTS_SECONDS='a year'"),
    ],
)
def test_a_malformed_key_stops_start_up_naming_it(env, message, tmp_path):
    p = run_manage("check", env={**PRODUCTION_ENV, "STATIC_ROOT": str(tmp_path), **env})
    assert p.returncode == 2
    assert message in p.stderr
    assert "Traceback" not in p.stderr


def test_a_first_look_generates_its_keys_once_into_var(tmp_path):
    code = (
        "from django.conf import settings as s; "
        "print(s.SECRET_KEY, s.WELKIN_SIGNING_KEY, s.WELKIN_FERNET_KEYS[0], "
        "s.WELKIN_DEVELOPMENT_SIGNING_KEY)"
    )

    def keys(var):
        p = subprocess.run(
            [sys.executable, "-c", "import django; django.setup(); " + code],
            cwd=ROOT,
            env={
                "PATH": os.environ["PATH"],
                "DJANGO_SETTINGS_MODULE": "welkin_dash.settings",
                "DEBUG": "1",
                "WELKIN_VAR_DIR": str(var),
            },
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert p.returncode == 0, p.stderr
        return p.stdout.split()

    first = keys(tmp_path / "a")
    path = tmp_path / "a" / "development-keys.json"
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert keys(tmp_path / "a") == first  # read again, not regenerated
    other = keys(tmp_path / "b")
    assert other[:3] != first[:3]  # random, not derived from the source
    assert first[3] == "True"
    assert "insecure" not in first[0]
    from cryptography.fernet import Fernet

    Fernet(first[2])  # a usable key

    path.chmod(0o644)  # a copy that lost its mode is tightened again
    keys(tmp_path / "a")
    assert stat.S_IMODE(path.stat().st_mode) == 0o600


def test_a_first_look_that_cannot_keep_its_keys_says_where(tmp_path):
    (tmp_path / "var").write_text("a file where the folder should be")
    p = run_manage("check", env={"DEBUG": "1", "WELKIN_VAR_DIR": str(tmp_path / "var")})
    assert p.returncode == 2
    assert "SECRET_KEY: not set, and no development key can be kept in" in p.stderr
    assert "Traceback" not in p.stderr


@pytest.mark.django_db
def test_a_manifest_signed_with_a_development_key_says_so(settings, history, tmp_path):
    r = reports.point_in_time(reports_scope(), None, None, None)
    settings.WELKIN_DEVELOPMENT_SIGNING_KEY = True
    m = store.export_to(r, "csv", tmp_path / "dev.csv")
    assert m["development_key"] is True
    v = signed.verify(
        (tmp_path / "dev.csv").read_bytes(), (tmp_path / "dev.csv.manifest.json").read_bytes()
    )
    assert v.ok and "signed with a development key" in v.message
    p = subprocess.run(
        [sys.executable, "manage.py", "verify_report", str(tmp_path / "dev.csv")],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
        env={**os.environ, "WELKIN_SIGNING_KEY": settings.WELKIN_SIGNING_KEY},
    )
    # Same key given explicitly: verified, and still said to be a development key (the
    # flag is signed into the manifest, so it cannot be dropped without breaking it).
    assert p.returncode == 0, p.stdout + p.stderr
    assert "signed with a development key" in p.stdout

    settings.WELKIN_DEVELOPMENT_SIGNING_KEY = False
    m = store.export_to(r, "csv", tmp_path / "prod.csv")
    assert "development_key" not in m
    v = signed.verify(
        (tmp_path / "prod.csv").read_bytes(), (tmp_path / "prod.csv.manifest.json").read_bytes()
    )
    assert v.ok and "development key" not in v.message


# --- logins that end --------------------------------------------------------------------


@pytest.mark.django_db
def test_a_login_ends_when_idle_and_after_its_lifetime(login_as, settings, monkeypatch):
    settings.WELKIN_SESSION_IDLE_SECONDS = 600
    settings.WELKIN_SESSION_MAX_SECONDS = 3600
    c = login_as("officer")
    now = [time.time()]
    monkeypatch.setattr(sessions.time, "time", lambda: now[0])
    assert c.get("/").status_code == 200

    now[0] += 500  # active within the idle limit: still logged in, and seen again
    assert c.get("/").status_code == 200
    now[0] += 500  # 500 s since the last request (1000 s since the login)
    assert c.get("/").status_code == 200
    # htmx polling in the background does not count as activity.
    now[0] += 400
    assert c.get("/", HTTP_HX_REQUEST="true").status_code == 200
    now[0] += 300  # 700 s since the person last did something
    r = c.get("/")
    assert r.status_code == 302 and r["Location"].startswith("/accounts/login/")
    assert "_auth_user_id" not in c.session

    c = login_as("auditor")
    start = time.time()
    now[0] = start
    for _ in range(8):  # busy all along, but an hour after the login it ends
        now[0] += 500
        r = c.get("/")
    assert now[0] - start >= 3600
    assert r.status_code == 302


@pytest.mark.django_db
def test_the_api_token_is_not_a_session(api_as, settings):
    settings.WELKIN_SESSION_MAX_SECONDS = 60
    api = api_as("officer")
    assert api.get("/api/v1/clusters/").status_code == 200


@pytest.mark.django_db
def test_the_apps_connections_have_jit_off_unless_asked(settings):
    """compliance/apps.py: JIT compiling cost a large fleet's pages 25-30 ms."""
    from django.db import connection

    def jit(conn):
        with conn.cursor() as cur:
            cur.execute("SHOW jit")
            return cur.fetchone()[0]

    assert jit(connection) == "off"
    settings.WELKIN_DB_JIT = True
    other = connection.copy()
    try:
        assert jit(other) == "on"  # the server's default, left alone
    finally:
        other.close()
