"""The audit log: one function records an event; Django's login hooks and a middleware for
denied access call it."""

from __future__ import annotations

from typing import Any

from django.contrib.auth.signals import user_logged_in, user_login_failed
from django.dispatch import receiver
from django.http import Http404

from compliance.models import AuditEvent


class Denied(Http404):
    """An object outside the user's scope: answered as 404, and audited."""


def record(request, action: str, target: str = "", scope: dict | None = None,
           content_hash: str = "", username: str | None = None) -> AuditEvent:
    user = getattr(request, "user", None) if request is not None else None
    authenticated = user is not None and user.is_authenticated
    return AuditEvent.objects.create(
        user=user if authenticated else None,
        username=username if username is not None else (
            user.get_username() if authenticated else ""),
        action=action, target=target[:1000], scope=scope or {}, content_hash=content_hash,
        ip=_ip(request))


def _ip(request) -> str | None:
    if request is None:
        return None
    return request.META.get("REMOTE_ADDR") or None


@receiver(user_logged_in)
def _logged_in(sender, request, user, **kwargs: Any) -> None:
    record(request, AuditEvent.Action.LOGIN, target="login")


@receiver(user_login_failed)
def _login_failed(sender, credentials, request=None, **kwargs: Any) -> None:
    record(request, AuditEvent.Action.LOGIN_FAILED, target="login",
           username=str(credentials.get("username", ""))[:150])


class DeniedAccessMiddleware:
    """Records every Denied raised by access.py for the request's path."""

    def __init__(self, get_response):
        self.get_response = get_response

    def __call__(self, request):
        return self.get_response(request)

    def process_exception(self, request, exception):
        if isinstance(exception, Denied):
            record(request, AuditEvent.Action.DENIED, target=request.get_full_path())
        return None
