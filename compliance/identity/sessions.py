"""How long a login lasts: WELKIN_SESSION_MAX_SECONDS after it was made, and
WELKIN_SESSION_IDLE_SECONDS without a request from the person (htmx's background polling
does not keep a session alive). An ended session is logged out; the next page asks for a
login again (the API answers 401/403 as for any unauthenticated request)."""

from __future__ import annotations

import time

from django.conf import settings
from django.contrib import auth
from django.contrib.auth.signals import user_logged_in
from django.dispatch import receiver

LOGIN_AT = "welkin_login_at"
SEEN_AT = "welkin_seen_at"
# The last-seen time is written at most this often, so browsing does not write the session
# on every request.
SEEN_RESOLUTION = 60


@receiver(user_logged_in)
def _stamp_login(sender, request, user, **kwargs):
    if request is not None and hasattr(request, "session"):
        now = int(time.time())
        request.session[LOGIN_AT] = now
        request.session[SEEN_AT] = now


def ended(session, now: float) -> str | None:
    """Why this session has ended (None while it lasts)."""
    login_at = session.setdefault(LOGIN_AT, int(now))  # a login not seen by the receiver
    seen_at = session.get(SEEN_AT, login_at)
    if now - login_at >= settings.WELKIN_SESSION_MAX_SECONDS:
        return "login lifetime"
    if now - seen_at >= settings.WELKIN_SESSION_IDLE_SECONDS:
        return "idle"
    return None


class SessionLifetime:
    def __init__(self, get_response):
        self.get_response = get_response

    def __call__(self, request):
        user = getattr(request, "user", None)
        # Only sessions: an API token has no session, and is not logged out here.
        if user is not None and user.is_authenticated and request.session.session_key:
            now = time.time()
            if ended(request.session, now):
                auth.logout(request)
            elif request.headers.get("HX-Request") != "true":
                if now - request.session.get(SEEN_AT, 0) >= SEEN_RESOLUTION:
                    request.session[SEEN_AT] = int(now)
        return self.get_response(request)
