"""The landing page, served from PostgreSQL-backed Django."""

from pathlib import Path

import pytest
from django.db import connection

from compliance.rules import runas


@pytest.mark.django_db
def test_it_runs_on_postgresql():
    assert connection.vendor == "postgresql"


@pytest.mark.django_db
def test_it_sends_visitors_to_the_login_page(client):
    r = client.get("/", follow=True)
    assert r.redirect_chain == [("/accounts/login/?next=/", 302)]
    assert b"Log in" in r.content and b'name="password"' in r.content


def test_it_builds_an_image_that_passes_its_own_check():
    """The Dockerfile's last USER, under runAsNonRoot, is compliant by our evaluator."""
    users = [
        line.split(None, 1)[1].strip()
        for line in (Path(__file__).parents[2] / "Dockerfile").read_text().splitlines()
        if line.startswith("USER ")
    ]
    pod = {
        "metadata": {"name": "web"},
        "spec": {
            "securityContext": {"runAsNonRoot": True},
            "containers": [{"name": "web", "image": "w"}],
        },
    }
    verdict = runas.evaluate_pod(pod, {"w": users[-1]}).containers[0]
    assert verdict.state == "compliant"


def test_static_files_are_served_without_debug(client, settings, tmp_path):
    """Under gunicorn (DEBUG off) WhiteNoise serves what collectstatic gathered."""
    from django.core.management import call_command
    from whitenoise.middleware import WhiteNoiseMiddleware

    settings.STATIC_ROOT = tmp_path
    call_command("collectstatic", "--noinput", verbosity=0)
    middleware = WhiteNoiseMiddleware(lambda request: None, settings=settings)
    assert "/static/vendor/chart-4.6.1.umd.min.js" in middleware.files
    assert "/static/compliance/site.css" in middleware.files
