"""Single sign-on against a real OpenID Connect provider in its own process
(tests/oidcprovider.py, over HTTP on 127.0.0.1): login, group mapping, a group taken away,
tokens that must be refused, the provider down, logout, and passwords switched off."""

import datetime as dt
import json
import socket
import time
from pathlib import Path
from urllib.parse import parse_qs, urlsplit

import pytest
import requests
from django.contrib.auth.models import User
from django.core.management import CommandError, call_command
from django.utils import timezone

from compliance import tasks  # noqa: F401 - registers every task
from compliance.identity import access, sessions, signin
from compliance.models import AuditEvent, NamespaceGrant
from compliance.models.identity import GroupMapping, OidcIdentity
from tests import builders
from tests.processes import listener
from welkin_dash.celery import app

CLIENT_ID, CLIENT_SECRET = "welkin", "client-secret-for-tests"


class Provider:
    def __init__(self, tmp: Path):
        config = tmp / "oidc.json"
        config.write_text(
            json.dumps(
                {
                    "client_id": CLIENT_ID,
                    "client_secret": CLIENT_SECRET,
                    "users": {
                        "alice": {
                            "password": "pw",
                            "email": "alice@example.com",
                            "groups": ["team-a"],
                        },
                        "bob": {"password": "pw", "email": "bob@corp.example", "groups": []},
                        "mallory": {
                            "password": "pw",
                            "email": "mallory@corp.example",
                            "email_verified": False,
                            "groups": [],
                        },
                    },
                }
            )
        )
        self.p, self.url = listener("tests.oidcprovider", str(config))

    def control(self, **body):
        requests.post(self.url + "/control", json=body, timeout=5).raise_for_status()

    def stop(self):
        self.p.terminate()
        self.p.wait(10)


@pytest.fixture(scope="module")
def provider(tmp_path_factory):
    p = Provider(tmp_path_factory.mktemp("oidc"))
    yield p
    p.stop()


@pytest.fixture
def sso(provider, settings, db):
    settings.WELKIN_OIDC_ISSUER = provider.url
    settings.WELKIN_OIDC_CLIENT_ID = CLIENT_ID
    settings.WELKIN_OIDC_CLIENT_SECRET = CLIENT_SECRET
    provider.control(mode="")
    provider.control(user="alice", set={"groups": ["team-a"]})
    # As configured: a test may have changed them.
    provider.control(
        user="bob", set={"email": "bob@corp.example", "preferred_username": "bob", "groups": []}
    )
    provider.control(user="mallory", set={"groups": []})
    GroupMapping.objects.create(claim="groups", value="platform", role=access.OFFICER)
    GroupMapping.objects.create(
        claim="groups", value="team-a", role=access.LEAD, namespace="team-a-*"
    )
    GroupMapping.objects.create(claim="email_domain", value="corp.example", role=access.AUDITOR)
    return provider


def sign_in(client, user, password="pw", next_url=""):
    """The browser's part: our login redirect, the provider's form, back to our callback."""
    r = client.get("/sso/login/", {"next": next_url} if next_url else {})
    assert r.status_code == 302, r.content
    authorize = r["Location"]
    q = parse_qs(urlsplit(authorize).query)
    assert q["code_challenge_method"] == ["S256"] and q["nonce"] and q["state"]
    r = requests.post(
        authorize, data={"username": user, "password": password}, allow_redirects=False, timeout=10
    )
    assert r.status_code == 302, r.text
    back = urlsplit(r.headers["Location"])
    assert back.path == "/sso/callback/"
    return client.get(back.path + "?" + back.query)


def test_it_signs_in_and_maps_groups_to_a_role_and_grants(client, sso):
    r = sign_in(client, "alice", next_url="/trends/")
    assert r.status_code == 302 and r["Location"] == "/trends/"
    user = User.objects.get(oidc__subject="alice")
    assert not user.has_usable_password() and user.email == "alice@example.com"
    scope = access.scope_for(user)
    assert scope.role == access.LEAD and scope.grants == ((None, "team-a-*"),)
    assert client.get("/").status_code == 200
    assert AuditEvent.objects.filter(action="login", username=user.username).exists()


def test_a_verified_email_domain_maps_and_an_unverified_one_does_not(client, sso):
    assert sign_in(client, "bob").status_code == 302
    assert access.scope_for(User.objects.get(oidc__subject="bob")).role == access.AUDITOR
    client.logout()
    r = sign_in(client, "mallory")  # claims the domain, not verified
    assert r.status_code == 403 and b"no access" in r.content


def test_a_group_removed_at_the_provider_removes_access_at_the_next_login(client, sso):
    sign_in(client, "alice")
    user = User.objects.get(oidc__subject="alice")
    assert NamespaceGrant.objects.filter(user=user).count() == 1
    client.post("/logout/")
    sso.control(user="alice", set={"groups": ["platform"]})
    sign_in(client, "alice")
    user.refresh_from_db()
    assert access.scope_for(user).role == access.OFFICER
    assert not NamespaceGrant.objects.filter(user=user).exists()
    client.post("/logout/")
    sso.control(user="alice", set={"groups": ["someone-elses"]})
    r = sign_in(client, "alice")
    assert r.status_code == 403 and b"none of your groups" in r.content
    assert not user.groups.exists()
    assert client.get("/").status_code == 302  # not logged in
    denied = AuditEvent.objects.get(action="sso_denied")
    assert denied.username == "alice" and denied.scope["groups"] == ["someone-elses"]
    assert OidcIdentity.objects.count() == 1  # the same account each time


@pytest.mark.parametrize(
    "mode, why",
    [
        ("other_key", "BadSignatureError"),
        ("wrong_nonce", "nonce"),
        ("wrong_audience", "aud"),
        ("expired", "ExpiredTokenError"),
        ("no_id_token", "no ID token"),
    ],
)
def test_it_refuses_a_token_it_cannot_trust(client, sso, mode, why):
    sso.control(mode=mode)
    r = sign_in(client, "alice")
    assert r.status_code == 400 and b"refused" in r.content
    reason = AuditEvent.objects.get(action="sso_failed").scope["reason"]
    assert why in reason, reason
    assert client.get("/").status_code == 302
    assert not User.objects.filter(oidc__subject="alice").exists()
    assert AuditEvent.objects.filter(action="sso_failed").count() == 1


def test_a_callback_with_another_state_is_refused(client, sso):
    r = client.get("/sso/login/")
    state = parse_qs(urlsplit(r["Location"]).query)["state"][0]
    r = client.get("/sso/callback/", {"code": "x", "state": state + "x"})
    assert r.status_code == 400 and b"MismatchingStateError" in r.content


def test_the_provider_down_is_a_clear_page_and_passwords_still_work(client, sso, settings):
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        settings.WELKIN_OIDC_ISSUER = f"http://127.0.0.1:{s.getsockname()[1]}"
    r = client.get("/sso/login/")
    assert r.status_code == 503 and b"cannot be reached" in r.content
    assert b"log in with a password" in r.content
    builders.make_user("officer")
    r = client.post("/accounts/login/", {"username": "officer", "password": builders.PASSWORD})
    assert r.status_code == 302 and client.get("/").status_code == 200


def test_logout_ends_the_session_here_and_at_the_provider(client, sso):
    sign_in(client, "alice")
    r = client.post("/logout/")
    assert r.status_code == 302 and r["Location"].startswith(sso.url + "/logout?")
    q = parse_qs(urlsplit(r["Location"]).query)
    assert q["id_token_hint"] and q["post_logout_redirect_uri"] == [
        "http://testserver/accounts/login/"
    ]
    assert client.get("/").status_code == 302


def test_a_login_lasts_at_most_the_configured_time(client, sso, settings):
    sign_in(client, "alice")
    session = client.session
    session[sessions.LOGIN_AT] = int(time.time()) - settings.WELKIN_SESSION_MAX_SECONDS - 1
    session.save()
    assert client.get("/").status_code == 302


def test_passwords_switched_off_leave_only_named_superusers(client, settings, db):
    settings.WELKIN_LOCAL_LOGIN = False
    settings.WELKIN_LOCAL_LOGIN_USERS = ["breakglass"]
    builders.make_user("officer")
    User.objects.create_superuser("breakglass", password=builders.PASSWORD)
    User.objects.create_superuser("other-admin", password=builders.PASSWORD)
    for name, works in [("officer", False), ("other-admin", False), ("breakglass", True)]:
        r = client.post("/accounts/login/", {"username": name, "password": builders.PASSWORD})
        assert (r.status_code == 302) is works, name
        client.logout()


def test_the_mapping_command_adds_lists_and_removes_rules(db, capsys):
    call_command(
        "sso_mapping",
        "add",
        "--claim",
        "groups",
        "--value",
        "t",
        "--role",
        "team-lead",
        "--namespace",
        "t-*",
    )
    with pytest.raises(CommandError, match="namespace"):
        call_command(
            "sso_mapping", "add", "--claim", "groups", "--value", "t", "--role", "team-lead"
        )
    with pytest.raises(CommandError, match="value"):
        call_command(
            "sso_mapping", "add", "--claim", "roles", "--value", "a\x00", "--role", "auditor"
        )
    rule = GroupMapping.objects.get()
    call_command("sso_mapping", "list")
    assert "groups=t -> team-lead */t-*" in capsys.readouterr().out
    call_command("sso_mapping", "remove", str(rule.pk))
    assert not GroupMapping.objects.exists()
    changes = [
        e.scope["change"] for e in AuditEvent.objects.filter(action="admin_change").order_by("seq")
    ]
    assert changes == ["added", "deleted"]  # as the admin's changes are


def test_hostile_claims_are_bounded_and_dropped():
    claims = signin.Claims.from_token(
        "https://idp",
        {
            "sub": "s",
            "email": "not an address",
            "groups": ["ok", "bad\x00", "x" * 300, 7, *(f"g{i}" for i in range(600))],
            "roles": "solo",
        },
    )
    assert claims.email == "" and claims.groups[0] == "ok" and "bad\x00" not in claims.groups
    assert len(claims.groups) < signin.MAX_CLAIM_VALUES and claims.roles == ("solo",)


def test_a_deactivated_account_gets_no_access_whatever_its_groups(client, sso):
    sign_in(client, "alice")
    client.post("/logout/")
    User.objects.filter(oidc__subject="alice").update(is_active=False)
    assert sign_in(client, "alice").status_code == 403
    assert client.get("/").status_code == 302


def test_a_provider_account_never_takes_over_a_local_account(client, sso):
    local = builders.make_user("auditor", username="alice")
    assert sign_in(client, "alice").status_code == 302
    sso_user = User.objects.get(oidc__subject="alice")
    assert sso_user.pk != local.pk and sso_user.username.startswith("alice-")
    assert access.scope_for(local).role == access.AUDITOR  # untouched


def test_a_stranger_gets_no_account_and_names_are_ascii(client, sso):
    """No rule matches: refused, and no user row is made. A provider name that reads as
    another person's (a Cyrillic о) becomes ASCII with the account's tag."""
    before = User.objects.count()
    sso.control(user="bob", set={"email": "bob@elsewhere.example"})  # no rule matches
    r = sign_in(client, "bob")
    assert r.status_code == 403 and User.objects.count() == before
    assert AuditEvent.objects.filter(action="sso_denied").exists()
    sso.control(user="bob", set={"email": "bob@corp.example", "preferred_username": "\u043efficer"})
    assert sign_in(client, "bob").status_code == 302
    user = User.objects.get(oidc__subject="bob")
    assert user.username.isascii() and user.username != "officer"
    assert user.username.startswith("fficer-")


def test_an_unverified_email_is_not_where_notifications_go(client, sso):
    sso.control(user="mallory", set={"groups": ["team-a"]})  # matched by group, not domain
    assert sign_in(client, "mallory").status_code == 302
    assert User.objects.get(oidc__subject="mallory").email == ""


def test_a_provider_account_not_seen_for_a_while_loses_its_access(client, sso, settings):
    """A leaver never signs in again: the hourly sweep ends the access of accounts not
    seen for WELKIN_SSO_ACCESS_SECONDS (audited); a sign-in maps them again."""
    settings.WELKIN_SSO_ACCESS_SECONDS = 3600
    sign_in(client, "alice")
    client.post("/logout/")
    sign_in(client, "bob")
    alice = User.objects.get(oidc__subject="alice")
    bob = User.objects.get(oidc__subject="bob")
    OidcIdentity.objects.filter(user=alice).update(
        last_login_at=timezone.now() - dt.timedelta(hours=2)
    )
    assert signin.expire_idle() == 1
    assert access.scope_for(User.objects.get(pk=alice.pk)).role is None
    assert not NamespaceGrant.objects.filter(user=alice).exists()
    assert access.scope_for(User.objects.get(pk=bob.pk)).role == access.AUDITOR
    event = AuditEvent.objects.get(action="sso_expired")
    assert event.username == alice.username and event.scope["roles"] == [access.LEAD]
    assert signin.expire_idle() == 0  # nothing left to end
    client.post("/logout/")
    assert sign_in(client, "alice").status_code == 302  # mapped again
    assert access.scope_for(User.objects.get(pk=alice.pk)).role == access.LEAD
    assert settings.CELERY_BEAT_SCHEDULE["expire-sso-access"]["task"] in tasks_registered()


def tasks_registered() -> set[str]:
    return set(app.tasks)


def test_a_tagged_name_taken_first_or_in_another_case_does_not_lock_an_account_out(client, sso):
    """Someone at the provider picks, as their own name, the tagged name another account
    will get; or a local "Bob" exists: the account still signs in, under a name no one
    else has in any letter case."""
    User.objects.create_user("Bob")
    tag = signin._username(signin.Claims(issuer=sso.url, subject="bob", username="b\u00f6b"))
    User.objects.create_user(tag)  # the squatter
    sso.control(user="bob", set={"preferred_username": "b\u00f6b"})
    assert sign_in(client, "bob").status_code == 302
    name = User.objects.get(oidc__subject="bob").username
    assert name != tag and name.lower() != "bob" and name.startswith("bob-")
