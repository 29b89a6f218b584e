"""The audit log: one function records an event; Django's login hooks and a middleware for
denied access call it."""

from __future__ import annotations

import csv
from collections.abc import Iterator
from typing import Any

import orjson
from axes.signals import user_locked_out
from django.contrib.auth.signals import user_logged_in, user_login_failed
from django.dispatch import receiver
from django.http import Http404

from compliance.models import AuditEvent

PAGE_SIZE = 100
CSV_COLUMNS = ["at", "user", "action", "target", "scope", "content_hash", "ip"]


class Denied(Http404):
    """An object outside the user's scope: answered as 404, and audited."""


def record(
    request,
    action: str,
    target: str = "",
    scope: dict | None = None,
    content_hash: str = "",
    username: str | None = None,
) -> AuditEvent:
    user = getattr(request, "user", None) if request is not None else None
    authenticated = user is not None and user.is_authenticated
    return AuditEvent.objects.create(
        user=user if authenticated else None,
        username=username
        if username is not None
        else (user.get_username() if authenticated else ""),
        action=action,
        target=target[:1000],
        scope=scope or {},
        content_hash=content_hash,
        ip=_ip(request),
    )


def for_log_page(action: str, before: int | None) -> list[AuditEvent]:
    """The audit log page: newest first, 100 at a time before an id, of one action."""
    qs = AuditEvent.objects.all()
    if action:
        qs = qs.filter(action=action)
    if before is not None:
        qs = qs.filter(pk__lt=before)
    return list(qs.order_by("-pk")[:PAGE_SIZE])


class _Echo:
    def write(self, value: str) -> str:
        return value


def csv_lines() -> Iterator[str]:
    """The whole audit log as CSV lines, streamed; every cell made inert (user names of
    failed logins are whatever an anonymous visitor typed)."""
    from compliance.exports import inert_row

    writer = csv.writer(_Echo())
    yield writer.writerow(CSV_COLUMNS)
    for e in AuditEvent.objects.order_by("pk").iterator(5000):
        yield writer.writerow(
            inert_row(
                [
                    e.at.isoformat(),
                    e.username,
                    e.action,
                    e.target,
                    orjson.dumps(e.scope).decode(),
                    e.content_hash,
                    e.ip or "",
                ]
            )
        )


def _ip(request) -> str | None:
    if request is None:
        return None
    return request.META.get("REMOTE_ADDR") or None


@receiver(user_logged_in)
def _logged_in(sender, request, user, **kwargs: Any) -> None:
    record(request, AuditEvent.Action.LOGIN, target="login")


@receiver(user_login_failed)
def _login_failed(sender, credentials, request=None, **kwargs: Any) -> None:
    record(
        request,
        AuditEvent.Action.LOGIN_FAILED,
        target="login",
        username=str(credentials.get("username", ""))[:150],
    )


@receiver(user_locked_out)
def _locked_out(sender, request, username, ip_address, **kwargs: Any) -> None:
    """django-axes locked a user name or address out (and refuses it while locked)."""
    record(request, AuditEvent.Action.LOCKOUT, target="login", username=str(username or "")[:150])


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
