"""Endpoints for the platform, not for people: /healthz, /readyz and /metrics.

They are answered by the first middleware, before host validation, HTTPS redirects,
sessions and logins: a kubelet probes the pod by its IP over plain HTTP, and so does a
Prometheus scraper. None of them sets a cookie or touches a session.

- /healthz: the process answers (no I/O at all).
- /readyz: the database and the broker answer, each within WELKIN_READYZ_TIMEOUT seconds;
  503 naming which did not (the reason goes to the log, not to the caller).
- /metrics: Prometheus text, for a bearer token (WELKIN_METRICS_TOKEN) or a peer address
  in WELKIN_METRICS_ALLOWED_NETWORKS; 401 otherwise. See compliance/ops/metrics.py.
"""

from __future__ import annotations

import hmac
import ipaddress
import logging

from django.conf import settings
from django.db import connection, transaction
from django.http import HttpResponse, JsonResponse

from compliance.ops import metrics as m

log = logging.getLogger(__name__)


def _no_store(response: HttpResponse) -> HttpResponse:
    response["Cache-Control"] = "no-store"
    response["X-Content-Type-Options"] = "nosniff"
    return response


def healthz(request) -> HttpResponse:
    return _no_store(JsonResponse({"status": "ok"}))


def check_database() -> None:
    with transaction.atomic(), connection.cursor() as cur:
        if connection.vendor == "postgresql":
            # Bounded: a database that accepts the connection but hangs is not ready.
            cur.execute("SET LOCAL statement_timeout = %s", [settings.WELKIN_READYZ_TIMEOUT * 1000])
        cur.execute("SELECT 1")
        cur.fetchone()


def check_broker() -> None:
    with m.broker_connection() as conn:
        conn.ensure_connection(
            max_retries=1, interval_start=0, timeout=settings.WELKIN_READYZ_TIMEOUT
        )
        conn.default_channel  # noqa: B018 - opens a channel: the broker answers (Redis PING)


def readyz(request) -> HttpResponse:
    checks: dict[str, str] = {}
    for name, check in (("database", check_database), ("broker", check_broker)):
        if name == "broker" and settings.CELERY_TASK_ALWAYS_EAGER:
            checks[name] = "not used"  # tasks run in-process (the embedded first look)
            continue
        try:
            check()
            checks[name] = "ok"
        except Exception as e:  # any failure means not ready; the reason is logged only
            log.warning("readyz: %s is not ready: %s: %s", name, type(e).__name__, e)
            checks[name] = "unavailable"
    ready = all(v in ("ok", "not used") for v in checks.values())
    return _no_store(
        JsonResponse(
            {"status": "ok" if ready else "unavailable", **checks}, status=200 if ready else 503
        )
    )


def metrics_allowed(request) -> bool:
    token = settings.WELKIN_METRICS_TOKEN
    if token:
        scheme, _, given = request.headers.get("Authorization", "").partition(" ")
        if scheme.lower() == "bearer" and hmac.compare_digest(
            given.strip().encode(), token.encode()
        ):
            return True
    try:
        peer = ipaddress.ip_address(request.META.get("REMOTE_ADDR", ""))
    except ValueError:
        return False
    return any(peer in net for net in settings.WELKIN_METRICS_ALLOWED_NETWORKS)


def metrics(request) -> HttpResponse:
    if not metrics_allowed(request):
        response = HttpResponse(
            "metrics: a bearer token or an allowed network is required\n",
            status=401,
            content_type="text/plain",
        )
        response["WWW-Authenticate"] = 'Bearer realm="metrics"'
        return _no_store(response)

    body, content_type = m.exposition(request.headers.get("Accept", ""))
    return _no_store(HttpResponse(body, content_type=content_type))


ENDPOINTS = {"/healthz": healthz, "/readyz": readyz, "/metrics": metrics}


class OpsEndpoints:
    def __init__(self, get_response):
        self.get_response = get_response

    def __call__(self, request):
        view = ENDPOINTS.get(request.path_info)
        if view is None:
            return self.get_response(request)
        if request.method not in ("GET", "HEAD"):
            response = HttpResponse(status=405)
            response["Allow"] = "GET, HEAD"
            return _no_store(response)
        return view(request)
