"""Logins survive an upgrade: a session stores the dotted path of the backend that made it,
and Django drops the session when that path is no longer a configured backend."""

import pytest
from django.conf import settings
from django.contrib.auth import BACKEND_SESSION_KEY

from tests.builders import make_user

pytestmark = pytest.mark.django_db


@pytest.mark.parametrize(
    "backend", ["compliance.identity.LocalPasswords", "compliance.identity.SingleSignOn"]
)
def test_a_session_made_before_the_packages_still_signs_in(client, backend):
    """The backends moved into compliance/identity/signin.py; sessions made before hold
    compliance.identity.<Backend>, which stays both configured and importable."""
    assert backend in settings.AUTHENTICATION_BACKENDS
    client.force_login(make_user("officer"), backend=backend)
    assert client.session[BACKEND_SESSION_KEY] == backend
    page = client.get("/")
    assert page.status_code == 200
    assert page.wsgi_request.user.username == "officer"
