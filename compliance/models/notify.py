"""Notification data: the contacts officers set, the outbox of events, and one delivery
per (event, destination). Imported by models.py (one app); compliance/notify/outbox.py fills
them and compliance/notify/delivery.py sends them."""

from __future__ import annotations

from urllib.parse import urlsplit

from django.conf import settings
from django.core.exceptions import ValidationError
from django.core.validators import validate_email
from django.db import models
from django.db.models import Q
from django.utils import timezone

from compliance import crypto
from compliance.params import BadParameter, clean_text
from compliance.rules.gate import NAMESPACE_GLOB_RE
from compliance.vocabulary import DELIVERY_STATUS, PENDING, SENDING

URL_MAX = 2000
EMAIL_MAX = 254
CHANNELS = [("email", "E-mail"), ("webhook", "Webhook")]
WEBHOOK_FORMATS = [("json", "Generic JSON (signed)"), ("slack", "Slack-compatible")]


def check_webhook_url(url: str) -> str:
    """An http(s) URL with a host, bounded, without credentials or controls (it is shown
    on the settings page and in the reason of a failed delivery)."""
    try:
        clean_text(url, "url", URL_MAX)
    except BadParameter as e:
        raise ValidationError(f"URL {e.problem}") from None
    try:
        parts = urlsplit(url)
        parts.port  # noqa: B018 - a bad port raises here
    except ValueError:
        raise ValidationError("not a URL") from None
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ValidationError("a webhook URL is http:// or https:// with a host")
    if parts.username or parts.password:
        raise ValidationError("no user or password in the URL (it would be shown and logged)")
    if any(c.isspace() for c in url):
        raise ValidationError("no spaces in the URL")
    return url


def check_email(address: str) -> str:
    try:
        clean_text(address, "email", EMAIL_MAX)
        validate_email(address)
    except (BadParameter, ValidationError):
        raise ValidationError("not an e-mail address") from None
    return address


class Contact(models.Model):
    """Where the owners of some namespaces hear about them: an e-mail address or a webhook.

    `namespace` is a name or glob (`*`: every namespace, which makes it a fleet-wide
    contact that also hears fleet-wide events); `cluster` empty means every cluster."""

    name = models.CharField(max_length=100)
    channel = models.CharField(max_length=8, choices=CHANNELS)
    email = models.CharField(max_length=EMAIL_MAX, blank=True)
    url = models.CharField(max_length=URL_MAX, blank=True)
    webhook_format = models.CharField(max_length=8, choices=WEBHOOK_FORMATS, default="json")
    secret_encrypted = models.BinaryField(null=True, blank=True, editable=False)
    cluster = models.ForeignKey(
        "compliance.Cluster", null=True, blank=True, on_delete=models.CASCADE, related_name="+"
    )
    namespace = models.CharField(max_length=63, default="*", help_text="A name, a glob, or *")
    enabled = models.BooleanField(default=True)
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        ordering = ["name"]

    def __str__(self) -> str:
        return f"{self.name} ({self.channel}: {self.cluster or '*'}/{self.namespace})"

    @property
    def address(self) -> str:
        return self.email if self.channel == "email" else self.url

    @property
    def fleet_wide(self) -> bool:
        return self.namespace == "*" and self.cluster_id is None

    @property
    def secret(self) -> str:
        """The HMAC key of this webhook: its own (encrypted at rest), else the server's."""
        if self.secret_encrypted:
            return crypto.decrypt(self.secret_encrypted).decode()
        return settings.WELKIN_WEBHOOK_SECRET

    def set_secret(self, value: str | None) -> None:
        self.secret_encrypted = crypto.encrypt(value.encode()) if value else None

    def clean(self) -> None:
        if not NAMESPACE_GLOB_RE.match(self.namespace or ""):
            raise ValidationError({"namespace": "a namespace name, a glob, or *"})
        if self.channel == "email":
            self.url = ""
            try:
                check_email(self.email)
            except ValidationError as e:
                raise ValidationError({"email": e.messages}) from None
        else:
            self.email = ""
            try:
                check_webhook_url(self.url)
            except ValidationError as e:
                raise ValidationError({"url": e.messages}) from None


class OutboxEvent(models.Model):
    """Something owners must hear about, written in the transaction that caused it (a
    scan's reconcile, an exception's change) or by a periodic check (`dedupe_key` makes
    that check idempotent). `payload` is what every message about it is rendered from."""

    kind = models.CharField(max_length=32)
    cluster = models.ForeignKey(
        "compliance.Cluster", null=True, blank=True, on_delete=models.CASCADE, related_name="+"
    )
    scan = models.ForeignKey(
        "compliance.ScanRun", null=True, blank=True, on_delete=models.CASCADE, related_name="+"
    )
    dedupe_key = models.CharField(max_length=200, null=True, blank=True, unique=True)
    payload = models.JSONField(default=dict)
    created_at = models.DateTimeField(default=timezone.now, db_index=True)

    def __str__(self) -> str:
        return f"{self.pk} {self.kind} {self.created_at:%Y-%m-%d %H:%M}"


class Delivery(models.Model):
    """One message of one event to one destination. (event, destination) is unique: the
    idempotency key, so the event is never sent twice to the same place. `namespaces`
    ("cluster/namespace" keys) is what of the event this destination hears about; None:
    all of it."""

    event = models.ForeignKey(OutboxEvent, on_delete=models.CASCADE, related_name="deliveries")
    destination = models.CharField(max_length=40)  # user:<id> or contact:<id>
    channel = models.CharField(max_length=8, choices=CHANNELS)
    address = models.CharField(max_length=URL_MAX)
    contact = models.ForeignKey(
        Contact, null=True, blank=True, on_delete=models.SET_NULL, related_name="deliveries"
    )
    namespaces = models.JSONField(null=True, blank=True)
    status = models.CharField(max_length=8, choices=DELIVERY_STATUS.choices, default=PENDING)
    attempts = models.PositiveIntegerField(default=0)
    next_attempt_at = models.DateTimeField(default=timezone.now)
    lease_until = models.DateTimeField(null=True, blank=True)
    last_error = models.TextField(blank=True)
    sent_at = models.DateTimeField(null=True, blank=True)
    created_at = models.DateTimeField(default=timezone.now)

    class Meta:
        constraints = [
            models.UniqueConstraint(fields=["event", "destination"], name="one_delivery_per_dest")
        ]
        indexes = [
            models.Index(
                fields=["next_attempt_at"],
                condition=Q(status__in=[PENDING, SENDING]),
                name="deliveries_due",
            ),
            models.Index(fields=["status", "-created_at"], name="deliveries_by_status"),
        ]
        verbose_name_plural = "deliveries"

    def __str__(self) -> str:
        return f"{self.idempotency_key} {self.channel} {self.status}"

    @property
    def idempotency_key(self) -> str:
        return f"welkin-{self.event_id}-{self.destination.replace(':', '-')}"
