"""Identity and notification settings (security officers): the single sign-on mapping
rules, the contacts with a "send a test" button, and deliveries that failed for good.
Rules and contacts are edited in the admin (or `manage.py sso_mapping`)."""

from __future__ import annotations

from django.conf import settings
from django.contrib import messages
from django.shortcuts import get_object_or_404, redirect, render
from django.utils import timezone
from django.views.decorators.http import require_POST
from rest_framework.authtoken.models import Token

from compliance import params
from compliance.audit import log
from compliance.identity import access, signin
from compliance.models import AuditEvent
from compliance.models.identity import GroupMapping
from compliance.models.notify import Contact, Delivery
from compliance.notify import delivery, outbox
from compliance.risk import exceptions
from compliance.vocabulary import FAILED, PENDING, SENDING
from compliance.web import api_auth

FAILED_PAGE = 50


def _officer(request):
    scope = access.scope_for(request.user)
    access.require_manage(scope)
    return scope


def overview(request):
    _officer(request)
    before = params.integer(request.GET, "before", None, minimum=1)
    failed = Delivery.objects.filter(status=FAILED).select_related("event").order_by("-pk")
    if before is not None:
        failed = failed.filter(pk__lt=before)
    failed = list(failed[:FAILED_PAGE])

    return render(
        request,
        "compliance/settings.html",
        {
            "sso_enabled": signin.enabled(),
            "issuer": settings.WELKIN_OIDC_ISSUER,
            "local_login": settings.WELKIN_LOCAL_LOGIN,
            "local_users": settings.WELKIN_LOCAL_LOGIN_USERS,
            "shared_officers": exceptions.officers_sharing_an_email(),
            "tokens": [
                (t.user, t.created, api_auth.expires_at(t))
                for t in Token.objects.select_related("user").order_by("created")
            ],
            "now": timezone.now(),
            "token_days": settings.WELKIN_API_TOKEN_DAYS,
            "rules": GroupMapping.objects.select_related("cluster"),
            "contacts": Contact.objects.select_related("cluster"),
            "email_on": outbox.email_on(),
            "email_host": settings.EMAIL_HOST,
            "waiting": Delivery.objects.filter(status__in=[PENDING, SENDING]).count(),
            "failed": failed,
            "more": failed[-1].pk if len(failed) == FAILED_PAGE else None,
        },
    )


@require_POST
def send_test(request, pk):
    _officer(request)
    contact = get_object_or_404(Contact, pk=pk)
    d = outbox.test_event(contact, by=request.user.get_username())
    outcome = delivery.deliver_one(d.pk)
    d.refresh_from_db()
    log.record(
        request,
        AuditEvent.Action.NOTIFY_TEST,
        target=f"contact:{contact.pk}",
        scope={"outcome": outcome},
    )
    if outcome == "sent":
        messages.success(request, f"Test message sent to {contact.name}.")
    else:
        messages.error(request, f"Test message to {contact.name} not sent: {d.last_error}")
    return redirect("compliance-settings")


@require_POST
def revoke_token(request, user_id):
    """Revoke one user's API token (officers; audited like an admin change)."""
    _officer(request)
    token = get_object_or_404(Token.objects.select_related("user"), user_id=user_id)
    name = token.user.get_username()
    token.delete()
    log.record_change(
        request, "authtoken.token", user_id, "deleted", (), f"the API token of {name}"
    )
    messages.success(request, f"The API token of {name} is revoked.")
    return redirect("compliance-settings")
