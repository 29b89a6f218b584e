"""Settings read from the environment fail loudly on bad values."""

import os
import subprocess
import sys
from pathlib import Path

import pytest

from welkin_dash.env import database_from_url

ROOT = Path(__file__).resolve().parent.parent
SIGNING = "A" * 43 + "="  # base64 of 32 zero bytes


def load_settings(**env):
    # Not inherited: what the test decides (WELKIN_OFFLINE_COMMAND may be left in this
    # process's environment by an in-process `welkin-evaluate --resolve`).
    full = {
        k: v
        for k, v in os.environ.items()
        if k not in ("DATABASE_URL", "DEBUG", "WELKIN_OFFLINE_COMMAND")
    }
    full.update(env)
    return subprocess.run(
        [sys.executable, "-c", "import welkin_dash.settings"],
        cwd=ROOT,
        env=full,
        capture_output=True,
        text=True,
        timeout=30,
    )


@pytest.mark.parametrize(
    "env,message",
    [
        ({"DEBUG": "maybe"}, "DEBUG='maybe': expected true or false"),
        ({"DEBUG": "0"}, "SECRET_KEY is required when DEBUG is off"),
        (
            {"DEBUG": "0", "SECRET_KEY": "k", "WELKIN_SIGNING_KEY": SIGNING},
            "WELKIN_FERNET_KEYS is required when DEBUG is off",
        ),
        ({"DEBUG": "0", "SECRET_KEY": "k"}, "WELKIN_SIGNING_KEY is required when DEBUG is off"),
        (
            {"DEBUG": "1", "WELKIN_SIGNING_KEY": "c2hvcnQ="},
            "WELKIN_SIGNING_KEY: expected base64 of 32 bytes",
        ),
        ({"DEBUG": "1", "WELKIN_PAGE_LIMIT": "0"}, "WELKIN_PAGE_LIMIT='0': must be at least 1"),
        ({"DEBUG": "1", "DATABASE_URL": "mysql://x/y"}, "DATABASE_URL: unsupported scheme 'mysql'"),
        ({"DEBUG": "1", "DATABASE_URL": "postgres://h:5432/"}, "DATABASE_URL: no database name"),
        ({"DEBUG": "1", "TIME_ZONE": "Mars/Base"}, "TIME_ZONE='Mars/Base': not a known time zone"),
        ({"DEBUG": "1", "CELERY_BROKER_URL": "http://x"}, "CELERY_BROKER_URL='http://x'"),
        (
            {"DEBUG": "1", "DATABASE_CONN_MAX_AGE": "soon", "DATABASE_URL": "postgres://h/db"},
            "DATABASE_CONN_MAX_AGE='soon': expected a whole",
        ),
        (
            {"DEBUG": "1", "WELKIN_OIDC_ISSUER": "ftp://idp.example"},
            "WELKIN_OIDC_ISSUER='ftp://idp.example': expected an https:// URL",
        ),
        (
            {"DEBUG": "1", "WELKIN_OIDC_ISSUER": "https://idp.example"},
            "WELKIN_OIDC_CLIENT_ID is required with WELKIN_OIDC_ISSUER",
        ),
        ({"DEBUG": "1", "WELKIN_OIDC_SCOPES": "email"}, "WELKIN_OIDC_SCOPES='email': must"),
        ({"DEBUG": "1", "WELKIN_WEBHOOK_SECRET": "short"}, "WELKIN_WEBHOOK_SECRET: at least 16"),
        (
            {"DEBUG": "1", "WELKIN_EXCEPTION_MAX_DAYS": "1000000000"},
            "WELKIN_EXCEPTION_MAX_DAYS=1000000000: at most 3650",
        ),
        ({"DEBUG": "1", "WELKIN_EXPORT_PARALLEL": "64"}, "WELKIN_EXPORT_PARALLEL=64: at most 16"),
        ({"DEBUG": "1", "WELKIN_EXPORT_PARALLEL": "0"}, "WELKIN_EXPORT_PARALLEL='0': must be"),
    ],
)
def test_it_names_the_bad_variable(env, message):
    p = load_settings(**env)
    assert p.returncode != 0
    assert "ImproperlyConfigured" in p.stderr
    assert message in p.stderr


def test_it_loads_with_good_values():
    p = load_settings(
        DEBUG="0",
        SECRET_KEY="a-production-secret-key-of-fifty-characters-or-more",
        DATABASE_URL="postgres://u:p@h:1/db",
        WELKIN_FERNET_KEYS="Ab5_" * 10 + "xyz=",
        WELKIN_SIGNING_KEY=SIGNING,
        ALLOWED_HOSTS="a.example,b.example",
        TIME_ZONE="Europe/Stockholm",
    )
    assert p.returncode == 0, p.stderr


def test_it_parses_database_urls():
    db = database_from_url("postgresql://us%40er:p%3Ass@db.local:6543/welkin?sslmode=require")
    assert (db["USER"], db["PASSWORD"], db["HOST"], db["PORT"], db["NAME"]) == (
        "us@er",
        "p:ss",
        "db.local",
        "6543",
        "welkin",
    )
    assert db["OPTIONS"] == {"sslmode": "require"}
    assert database_from_url("postgres:///welkin")["HOST"] == ""
