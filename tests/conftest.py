"""Shared fixtures: the personas (officer, auditor, lead, outsider), a fake API server over
HTTPS with a cluster registered against it, a history of snapshots, fast password hashing."""

import ipaddress
import os

import pytest

from compliance.collect import clusters
from tests import builders
from tests.builders import CHROMIUM
from tests.fakekube import FakeKubeServer
from welkin_dash.celery import app


@pytest.fixture(autouse=True)
def no_registry_lookups(request, settings):
    """Tests reach only registries they start themselves (mark: uses_registry)."""
    if "uses_registry" not in request.keywords:
        settings.WELKIN_REGISTRY_LOOKUPS = False


@pytest.fixture(autouse=True)
def webhooks_to_loopback(settings):
    """The tests' webhook receivers listen on 127.0.0.1: allowed here, as an operator
    would allow an in-house server (tests/notify/test_outbound.py checks the default)."""
    settings.WELKIN_WEBHOOK_ALLOWED_NETWORKS = [ipaddress.ip_network("127.0.0.0/8")]


@pytest.fixture
def exports_in_process(settings):
    """Export jobs run in the request, as under `make run` (tests/evidence/test_export_jobs.py runs
    them through a real worker)."""
    settings.WELKIN_EXPORTS_IN_PROCESS = True


@pytest.fixture
def fake_kube():
    server = FakeKubeServer().start()
    yield server
    server.stop()


@pytest.fixture
def faults(regs):
    """Start FaultServers in front of the module's real registry (its `regs` fixture)."""
    from tests.registries import FaultServer  # noqa: PLC0415 - only registry tests need it

    started = []

    def start(mode, **kw):
        f = FaultServer(mode, upstream=regs.plain.host, **kw)
        started.append(f)
        return f

    yield start
    for f in started:
        f.stop()


@pytest.fixture
def cluster(db, fake_kube):
    return clusters.add_cluster("prod-1", kubeconfig=fake_kube.kubeconfig_yaml())


@pytest.fixture(scope="module")
def demo_fleet(request, django_db_setup, django_db_blocker):
    """The demo fleet (its users: officer, auditor, lead), loaded once for a module whose
    tests only read it: DEMO_DAYS in the module, else 14 days. Flushed afterwards."""
    from django.core.management import call_command

    from compliance import demo

    with django_db_blocker.unblock():
        demo.load(builders.PASSWORD, days=getattr(request.module, "DEMO_DAYS", 14))
        yield
        call_command("flush", interactive=False, verbosity=0)  # as other modules expect


@pytest.fixture
def history(db):
    """t0: a root, b root, c compliant; t1: a fixed, b blocked, d root; t2: d gone."""
    builders.record_history()


@pytest.fixture(scope="session", autouse=True)
def fast_password_hashing():
    """MD5 in tests: each login with the default PBKDF2 costs about 0.4 s."""
    from django.conf import settings
    from django.contrib.auth.hashers import get_hashers

    settings.PASSWORD_HASHERS = ["django.contrib.auth.hashers.MD5PasswordHasher"]
    get_hashers.cache_clear()


@pytest.fixture
def persona(db):
    """persona("officer" | "auditor" | "lead" | "outsider", grants=()) -> a new User."""
    return builders.make_user


@pytest.fixture
def login_as(client, persona):
    """login_as(persona, grants=()) -> the test client, logged in as a new such user."""

    def login(name, grants=()):
        client.force_login(persona(name, grants))
        return client

    return login


@pytest.fixture
def api_as(persona):
    """api_as(persona, grants=()) -> a REST client with a new such user's token."""
    from rest_framework.authtoken.models import Token
    from rest_framework.test import APIClient

    def api(name, grants=()):
        c = APIClient()
        c.credentials(
            HTTP_AUTHORIZATION="Token "
            + Token.objects.create(user=persona(name, grants, username=f"{name}-user")).key
        )
        return c

    return api


@pytest.fixture(scope="session", autouse=True)
def _end_stray_connections(django_db_setup, django_db_blocker):
    """Before the test database is dropped: end any connection to it still open. A live
    server's request thread (a daemon, parked on a browser's keep-alive socket) can hold
    one after its server stopped, and the drop would fail ("being accessed by other
    users") after waiting 5 s."""
    yield
    from django.db import connection

    if connection.vendor != "postgresql":
        return
    from welkin_dash.env import database_from_url

    if connection.settings_dict["NAME"] == database_from_url(os.environ["DATABASE_URL"])["NAME"]:
        return  # no test here used the database: none was made (this is the real one)
    with django_db_blocker.unblock(), connection.cursor() as cur:
        cur.execute(
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
            "WHERE datname = current_database() AND pid <> pg_backend_pid()"
        )


@pytest.fixture
def broker():
    """The broker the test process and its worker share (make test: Redis db 13)."""
    assert not app.conf.task_always_eager
    app.control.purge()
    yield
    app.control.purge()


@pytest.fixture
def browser(monkeypatch):
    # Playwright's sync API keeps an event loop in this thread; the ORM calls in the
    # fixtures happen before it starts and after it stops.
    monkeypatch.setenv("DJANGO_ALLOW_ASYNC_UNSAFE", "true")
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        b = p.chromium.launch(
            executable_path=CHROMIUM,
            args=[
                "--headless",
                "--no-sandbox",
                "--disable-gpu",
                "--disable-background-networking",
                "--disable-component-update",
                "--no-first-run",
            ],
        )
        yield b
        b.close()
