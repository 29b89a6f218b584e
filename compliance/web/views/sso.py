"""Single sign-on (OpenID Connect): start, callback, logout. compliance/identity/signin.py does
the work; these views only route the browser and render the outcome."""

from __future__ import annotations

import logging

from django.conf import settings
from django.contrib import auth
from django.contrib.auth.decorators import login_not_required
from django.http import Http404, HttpResponseRedirect
from django.shortcuts import redirect, render
from django.urls import reverse
from django.utils.http import url_has_allowed_host_and_scheme
from django.views.decorators.http import require_GET, require_POST

from compliance import params
from compliance.audit import log as audit
from compliance.identity import signin
from compliance.models import AuditEvent

log = logging.getLogger(__name__)
NEXT = "welkin_sso_next"
ID_TOKEN = "welkin_sso_id_token"


def login_options(request) -> dict:
    """Template context for the login and lockout pages: the sign-on button, the password
    note, how long a lockout lasts."""
    return {
        "sso_enabled": signin.enabled(),
        "sso_name": settings.WELKIN_OIDC_NAME,
        "local_login": settings.WELKIN_LOCAL_LOGIN,
        "lockout_minutes": int(settings.AXES_COOLOFF_TIME.total_seconds() // 60),
    }


def _safe_next(request, value: str) -> str:
    if value and url_has_allowed_host_and_scheme(
        value, allowed_hosts={request.get_host()}, require_https=request.is_secure()
    ):
        return value
    return settings.LOGIN_REDIRECT_URL


def _problem(request, reason: str, status: int):
    """The provider could not be used: say so, point at the password login, audit it."""
    audit.record(request, AuditEvent.Action.SSO_FAILED, target="sso", scope={"reason": reason})
    return render(
        request,
        "registration/sso_error.html",
        {"reason": reason, "provider_down": status == 503},
        status=status,
    )


def _reason(error: BaseException) -> str:
    # The error's class and first line: never the token or the request (no secrets).
    text = str(error).splitlines()[0] if str(error) else ""
    return f"{type(error).__name__}: {text}"[:300]


@login_not_required
@require_GET
def start(request):
    if not signin.enabled():
        raise Http404("Single sign-on is not configured")
    request.session[NEXT] = _safe_next(request, params.text(request.GET, "next", 2000))
    callback = request.build_absolute_uri(reverse("compliance-sso-callback"))
    try:
        return signin.client().authorize_redirect(request, callback)
    except signin.errors() as e:
        log.warning("single sign-on: the provider cannot be reached: %s", _reason(e))
        return _problem(request, "the sign-in provider cannot be reached", 503)


@login_not_required
@require_GET
def callback(request):
    if not signin.enabled():
        raise Http404("Single sign-on is not configured")
    for name in ("code", "state", "error", "error_description"):
        params.text(request.GET, name, 2000)
    try:
        token = signin.client().authorize_access_token(
            request, claims_options=signin.id_token_checks()
        )
        info = token.get("userinfo")
        if not info:
            raise ValueError("the provider returned no ID token")
        claims = signin.Claims.from_token(settings.WELKIN_OIDC_ISSUER, dict(info))
    except signin.errors() as e:
        import requests

        down = isinstance(e, requests.ConnectionError | requests.Timeout)
        log.warning("single sign-on refused: %s", _reason(e))
        return _problem(
            request,
            "the sign-in provider cannot be reached" if down else _reason(e),
            503 if down else 400,
        )
    user, granted = signin.user_for(claims)
    if granted.role is None or not user.is_active:  # an admin can deactivate one too
        auth.logout(request)
        audit.record(
            request,
            AuditEvent.Action.SSO_DENIED,
            target="sso",
            scope=claims.summary(),
            username=user.get_username(),
        )
        return render(request, "registration/sso_no_access.html", {"who": user}, status=403)
    next_url = request.session.get(NEXT) or settings.LOGIN_REDIRECT_URL
    auth.login(request, user, backend=signin.SSO_BACKEND)
    request.session[ID_TOKEN] = token.get("id_token", "")[:8000]
    return HttpResponseRedirect(_safe_next(request, next_url))


@login_not_required
@require_POST
def logout(request):
    """Log out here, and at the provider when the login came from it (RP-initiated
    logout, when the provider has an end_session_endpoint)."""
    id_token = request.session.get(ID_TOKEN)
    auth.logout(request)
    login = request.build_absolute_uri(settings.LOGOUT_REDIRECT_URL)
    if id_token and signin.enabled():
        try:
            app = signin.client()
            if app.load_server_metadata().get("end_session_endpoint"):
                return app.logout_redirect(
                    request, post_logout_redirect_uri=login, id_token_hint=id_token
                )
        except signin.errors() as e:
            log.warning("single sign-on logout at the provider failed: %s", _reason(e))
    return redirect(settings.LOGOUT_REDIRECT_URL)
