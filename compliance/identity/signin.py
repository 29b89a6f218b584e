"""Who may log in, and how: local passwords (throttled by django-axes, switchable off
except for named superusers) and single sign-on with an OpenID Connect provider, whose
claims are mapped to a role and namespace grants by GroupMapping rules at every sign-in.

The OIDC flow is Authlib's (authorization code with PKCE, discovery, the ID token's
signature, issuer, audience, expiry and nonce checked, `state` bound to the session);
this module only turns its verified claims into a user."""

from __future__ import annotations

import datetime as dt
import hashlib
import re
import time
import unicodedata
from dataclasses import dataclass, field

from axes.backends import AxesStandaloneBackend
from celery import shared_task
from django.conf import settings
from django.contrib.auth.backends import ModelBackend
from django.contrib.auth.models import Group, User
from django.core.exceptions import ValidationError
from django.db import transaction
from django.utils import timezone

from compliance.audit import log
from compliance.identity import access
from compliance.models import NamespaceGrant
from compliance.models.identity import VALUE_MAX, GroupMapping, OidcIdentity
from compliance.models.notify import check_email
from compliance.params import BadParameter, clean_text

# Bounds on what a provider's token may bring in (every claim is hostile).
MAX_CLAIM_VALUES = 500
_USERNAME_RE = re.compile(r"[^\w.@+-]", re.ASCII)
RANK = {access.OFFICER: 3, access.AUDITOR: 2, access.LEAD: 1}


class LoginThrottle(AxesStandaloneBackend):
    """django-axes: refuses a login whose user name or address is locked out. Logins
    without a request (the test client's login(), the shell) come from no address and
    are not counted."""

    def authenticate(self, request, username=None, password=None, **kwargs):
        if request is None:
            return None
        return super().authenticate(request, username, password, **kwargs)


class LocalPasswords(ModelBackend):
    """Django's passwords, unless WELKIN_LOCAL_LOGIN is off: then only the superusers
    named in WELKIN_LOCAL_LOGIN_USERS (break-glass admins) may use one, and a session
    made with a password by anyone else ends at its next request."""

    def user_can_authenticate(self, user) -> bool:
        return super().user_can_authenticate(user) and local_login_allowed(user)


def local_login_allowed(user) -> bool:
    if settings.WELKIN_LOCAL_LOGIN:
        return True
    return user.is_superuser and user.get_username() in settings.WELKIN_LOCAL_LOGIN_USERS


class SingleSignOn(ModelBackend):
    """The backend of sessions made by single sign-on: it checks no password (it
    authenticates nothing itself), and keeps such a session while the user is active."""

    def authenticate(self, request, **kwargs):
        return None


SSO_BACKEND = "compliance.identity.SingleSignOn"


# --- claims -> role and grants ----------------------------------------------------------


def _strings(value) -> tuple[str, ...]:
    """A claim as strings: a list (or one string), each bounded and without controls;
    anything else in it is dropped."""
    items = value if isinstance(value, list) else [value] if isinstance(value, str) else []
    out = []
    for item in items[:MAX_CLAIM_VALUES]:
        if isinstance(item, str):
            try:
                out.append(clean_text(item, "claim", VALUE_MAX))
            except BadParameter:
                continue
    return tuple(out)


@dataclass(frozen=True)
class Claims:
    """What single sign-on uses of a verified ID token (or userinfo)."""

    issuer: str
    subject: str
    username: str = ""
    email: str = ""
    email_verified: bool = False
    groups: tuple[str, ...] = ()
    roles: tuple[str, ...] = ()

    @classmethod
    def from_token(cls, issuer: str, info: dict) -> Claims:
        subject = info.get("sub")
        if not isinstance(subject, str) or not subject:
            raise ValueError("the ID token has no subject")
        subject = clean_text(subject, "sub", 255)
        email = (_strings(info.get("email")) or ("",))[0]
        try:
            email = check_email(email) if email else ""
        except ValidationError:
            email = ""
        username = (_strings(info.get("preferred_username")) or ("",))[0]
        return cls(
            issuer=issuer,
            subject=subject,
            username=username,
            email=email,
            email_verified=info.get("email_verified") is True,
            groups=_strings(info.get(settings.WELKIN_OIDC_GROUPS_CLAIM)),
            roles=_strings(info.get(settings.WELKIN_OIDC_ROLES_CLAIM)),
        )

    @property
    def email_domain(self) -> str:
        """The domain of a verified e-mail only: an unverified one proves nothing."""
        if not (self.email and self.email_verified):
            return ""
        return self.email.rpartition("@")[2].lower()

    def summary(self) -> dict:
        return {
            "groups": list(self.groups[:50]),
            "roles": list(self.roles[:50]),
            "email_domain": self.email_domain,
        }


@dataclass
class Access:
    """What the mapping rules give a person: the highest role, and grants for a lead."""

    role: str | None = None
    grants: set[tuple[int | None, str]] = field(default_factory=set)
    rules: list[int] = field(default_factory=list)


def mapped_access(claims: Claims) -> Access:
    """The role and grants of everyone whose claims match rules (one query)."""
    values = {
        "groups": set(claims.groups),
        "roles": set(claims.roles),
        "email_domain": {claims.email_domain} - {""},
    }
    result = Access()
    for rule in GroupMapping.objects.order_by("pk"):
        if rule.value not in values.get(rule.claim, ()):
            continue
        result.rules.append(rule.pk)
        if result.role is None or RANK[rule.role] > RANK[result.role]:
            result.role = rule.role
        if rule.role == access.LEAD:
            result.grants.add((rule.cluster_id, rule.namespace))
    if result.role != access.LEAD:
        result.grants = set()  # officers and auditors see everything anyway
    return result


def _username(claims: Claims) -> str:
    """An ASCII user name from the provider's. One that had to change to become ASCII
    (josé, a Cyrillic о in "оfficer", an invisible character), or is taken, gets a tag of
    the account: it never reads as another person's name."""
    wanted = claims.username or claims.email or claims.subject
    ascii_ = unicodedata.normalize("NFKD", wanted).encode("ascii", "ignore").decode()
    base = _USERNAME_RE.sub("-", ascii_)[:120]

    def free(name: str) -> bool:  # Bob and bob are one name to a reader
        return not User.objects.filter(username__iexact=name).exists()

    if base and base == wanted and free(base):
        return base
    # The account's tag, longer where someone took the short one (a provider user could
    # pick another's tagged name as theirs): the account's sign-in never fails on a name.
    tag = hashlib.sha256(f"{claims.issuer}\0{claims.subject}".encode()).hexdigest()
    for length in (10, 20, 64):
        name = f"{base or 'sso'}-{tag[:length]}"
        if free(name):
            return name
    return f"sso-{tag}"


@transaction.atomic
def user_for(claims: Claims) -> tuple[User, Access]:
    """The user of this provider account (created at its first sign-in), with its role
    and grants set from the rules now: groups removed at the provider mean access lost.
    A local account is never taken over by a provider account with the same name."""
    identity = (
        OidcIdentity.objects.select_related("user")
        .select_for_update(of=("self",))  # expire_idle waits, then sees this sign-in
        .filter(issuer=claims.issuer, subject=claims.subject)
        .first()
    )
    granted = mapped_access(claims)
    # Only a verified e-mail is where notifications go: an unverified claim is anyone's.
    email = claims.email if claims.email_verified else ""
    if identity is None:
        if granted.role is None:
            # No rule matches: no account is made for a stranger (an unsaved one, named
            # for the refusal page and the audit log).
            return User(username=_username(claims)), granted
        user = User(username=_username(claims), email=email)
        user.set_unusable_password()
        user.save()
        identity = OidcIdentity(user=user, issuer=claims.issuer, subject=claims.subject)
    user = identity.user
    if email and user.email != email:
        user.email = email
        user.save(update_fields=["email"])
    identity.last_login_at = timezone.now()
    identity.claims = claims.summary()
    identity.save()
    role_groups = {g.name: g for g in Group.objects.filter(name__in=access.ROLES)}
    user.groups.remove(*role_groups.values())
    if granted.role:
        group = role_groups.get(granted.role) or Group.objects.create(name=granted.role)
        user.groups.add(group)
    # A provider account's grants are the rules' alone, replaced at every sign-in.
    NamespaceGrant.objects.filter(user=user).delete()
    NamespaceGrant.objects.bulk_create(
        NamespaceGrant(user=user, cluster_id=c, namespace=ns)
        for c, ns in sorted(granted.grants, key=str)
    )
    return user, granted


def expire_idle(now=None) -> int:
    """Provider accounts not seen for WELKIN_SSO_ACCESS_SECONDS lose their role and grants
    (audited): a leaver never signs in again, and only a sign-in tells what the provider
    says now. Their next sign-in maps them again. Returns how many lost access."""
    now = now or timezone.now()
    cutoff = now - dt.timedelta(seconds=settings.WELKIN_SSO_ACCESS_SECONDS)
    ended = 0
    idle = OidcIdentity.objects.filter(last_login_at__lt=cutoff).select_related("user")
    for identity in idle.iterator():
        user = identity.user
        with transaction.atomic():
            # Seen again since the list was read (a sign-in holds this row while it maps
            # the account): left alone.
            fresh = OidcIdentity.objects.select_for_update().filter(pk=identity.pk).first()
            if fresh is None or fresh.last_login_at is None or fresh.last_login_at >= cutoff:
                continue
            roles = list(user.groups.filter(name__in=access.ROLES).values_list("name", flat=True))
            grants = NamespaceGrant.objects.filter(user=user)
            if not roles and not grants.exists():
                continue
            user.groups.remove(*Group.objects.filter(name__in=roles))
            removed = grants.count()
            grants.delete()
            log.record(
                None,
                "sso_expired",
                f"user {user.pk}",
                {
                    "roles": roles,
                    "grants": removed,
                    "last_seen": identity.last_login_at.isoformat(),
                },
                username=user.get_username(),
            )
            ended += 1
    return ended


@shared_task(name="compliance.tasks.expire_sso_access")
def expire_sso_access() -> int:
    """Beat, hourly: end the access of provider accounts not seen for a while."""
    return expire_idle()


# --- the provider ---------------------------------------------------------------------

_clients: dict[tuple, object] = {}
METADATA_MAX_AGE = 3600  # discovery re-read hourly: endpoints and keys can change


def enabled() -> bool:
    return bool(settings.WELKIN_OIDC_ISSUER)


def client():
    """Authlib's client for the configured provider (one per configuration)."""
    from authlib.integrations.django_client import OAuth

    key = (
        settings.WELKIN_OIDC_ISSUER,
        settings.WELKIN_OIDC_CLIENT_ID,
        settings.WELKIN_OIDC_CLIENT_SECRET,
        settings.WELKIN_OIDC_SCOPES,
        settings.WELKIN_OIDC_TIMEOUT,
    )
    app = _clients.get(key)
    if (
        app is not None
        and time.time() - app.server_metadata.get("_loaded_at", 0) > METADATA_MAX_AGE
    ):
        app = None
    if app is None:
        _clients.clear()
        app = OAuth().register(
            "welkin",
            client_id=settings.WELKIN_OIDC_CLIENT_ID,
            client_secret=settings.WELKIN_OIDC_CLIENT_SECRET,
            server_metadata_url=settings.WELKIN_OIDC_ISSUER + "/.well-known/openid-configuration",
            client_kwargs={
                "scope": settings.WELKIN_OIDC_SCOPES,
                "code_challenge_method": "S256",
                "default_timeout": settings.WELKIN_OIDC_TIMEOUT,
            },
        )
        _clients[key] = app
    return app


def id_token_checks() -> dict:
    """Beyond Authlib's defaults (signature, expiry, nonce): the issuer must be ours and
    the audience must name this client (Authlib alone accepts another audience with an
    `azp` of ours)."""
    return {
        "iss": {"essential": True, "values": [settings.WELKIN_OIDC_ISSUER]},
        "aud": {"essential": True, "values": [settings.WELKIN_OIDC_CLIENT_ID]},
        "sub": {"essential": True},
    }


def errors() -> tuple[type[BaseException], ...]:
    """What a provider that is down, or answers wrongly, raises through Authlib."""
    import requests
    from authlib.common.errors import AuthlibBaseError
    from joserfc.errors import JoseError

    return (
        AuthlibBaseError,
        JoseError,
        requests.RequestException,
        ValueError,
        RuntimeError,
        KeyError,
    )
