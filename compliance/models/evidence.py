"""Evidence: the audit log and its signed heads, exports and audit samples."""

from __future__ import annotations

import re
import uuid

from django.db import models
from django.utils import timezone

from compliance import vocabulary
from compliance.models.choices import (
    ExportStatus,
    text_choices,
)
from compliance.vocabulary import EXPORT_EXTENSIONS


class AuditEvent(models.Model):
    """Who did what, when: exports, report views, logins, failed logins, denied access.

    A hash chain (compliance/audit/log.py): `seq` counts events without gaps, each event's
    `hash` covers its own fields and the previous event's hash, so a row deleted, edited or
    reordered in the database breaks the chain at that row."""

    Action = text_choices("Action", vocabulary.AUDIT_ACTION)

    at = models.DateTimeField(default=timezone.now, db_index=True)
    user = models.ForeignKey(
        "auth.User", null=True, blank=True, on_delete=models.SET_NULL, related_name="+"
    )
    username = models.CharField(max_length=150, blank=True)
    action = models.CharField(max_length=16, choices=Action.choices)
    target = models.CharField(max_length=1000, blank=True)  # path or object
    scope = models.JSONField(default=dict, blank=True)
    content_hash = models.CharField(max_length=64, blank=True)
    ip = models.GenericIPAddressField(null=True, blank=True)
    seq = models.BigIntegerField(unique=True)
    prev_hash = models.CharField(max_length=64)
    hash = models.CharField(max_length=64)

    class Meta:
        ordering = ["-at", "-pk"]
        indexes = [models.Index(fields=["action", "-at"])]

    def __str__(self) -> str:
        return f"{self.at:%Y-%m-%d %H:%M:%S} {self.username} {self.action} {self.target}"


class AuditHead(models.Model):
    """The audit chain's head (its last event) signed with the server's key, daily, and
    timestamped by the TSA when one is configured: rewriting the chain before a signed
    head needs the key, and the TSA's token proves the head existed at its time."""

    seq = models.BigIntegerField()
    hash = models.CharField(max_length=64)
    at = models.DateTimeField(default=timezone.now)
    # SHA-256 of the previous head's signed bytes: the heads form a chain of their own, so
    # deleting one breaks the next ("" for the first, and for heads signed before this).
    previous = models.CharField(max_length=64, blank=True, default="")
    signature = models.CharField(max_length=200)
    public_key = models.CharField(max_length=100)
    timestamp = models.BinaryField(null=True, blank=True)  # RFC 3161 TimeStampResp, DER
    timestamp_error = models.TextField(blank=True)

    class Meta:
        ordering = ["-at", "-pk"]

    def __str__(self) -> str:
        return f"head {self.seq} {self.hash[:12]} at {self.at:%Y-%m-%d %H:%M}"


class Export(models.Model):
    """A report file written for a user by a Celery job (compliance/evidence/jobs.py), with
    its signed manifest: queued, running (rows written so far), done, or failed with why."""

    id = models.UUIDField(primary_key=True, default=uuid.uuid4, editable=False)
    user = models.ForeignKey("auth.User", null=True, on_delete=models.SET_NULL, related_name="+")
    format = models.CharField(max_length=8)
    scope = models.JSONField(default=dict)
    at = models.DateTimeField()
    created_at = models.DateTimeField(auto_now_add=True)
    manifest = models.JSONField(default=dict)
    status = models.CharField(
        max_length=8, choices=ExportStatus.choices, default=ExportStatus.QUEUED
    )
    # What to write: {"kind": "report" | "register" | "sample", ...its parameters}.
    request = models.JSONField(default=dict)
    rows = models.BigIntegerField(default=0)  # written so far (running) or in all (done)
    total = models.BigIntegerField(null=True, blank=True)  # expected, when known up front
    error = models.TextField(blank=True)
    attempts = models.PositiveSmallIntegerField(default=0)
    worker = models.CharField(max_length=300, blank=True)  # host:pid of the running attempt
    started_at = models.DateTimeField(null=True, blank=True)
    heartbeat_at = models.DateTimeField(null=True, blank=True)
    finished_at = models.DateTimeField(null=True, blank=True)
    expires_at = models.DateTimeField(null=True, blank=True, db_index=True)
    # The TSA's token over the manifest file's bytes (also written beside it as .tsr);
    # empty with timestamp_error set when the TSA could not be reached (retried by a task).
    timestamp = models.BinaryField(null=True, blank=True)
    timestamp_error = models.TextField(blank=True)

    class Meta:
        indexes = [models.Index(fields=["user", "-created_at"])]

    def __str__(self) -> str:
        return f"{self.id} {self.format} {self.scope}"

    @property
    def extension(self) -> str:

        return EXPORT_EXTENSIONS.get(self.format, self.format)

    @property
    def filename(self) -> str:
        if "register" in self.scope:
            return f"welkin-exceptions-{self.at:%Y%m%dT%H%M%SZ}.{self.extension}"
        if "sample" in self.scope:
            sample = self.scope["sample"][:8]
            return f"welkin-sample-{sample}-{self.at:%Y%m%dT%H%M%SZ}.{self.extension}"
        scope = (
            "-".join(v for v in (self.scope.get("cluster"), self.scope.get("namespace")) if v)
            or "fleet"
        )
        # Names are DNS labels when they come through the gate; anything else (a row put
        # in by hand) must not shape the download's header or the manifest's `file`.
        scope = re.sub(r"[^A-Za-z0-9._-]", "_", scope)[:120]
        return f"welkin-report-{scope}-{self.at:%Y%m%dT%H%M%SZ}.{self.extension}"


class Sample(models.Model):
    """An auditor's reproducible random sample of workloads at a time, in a scope: the
    population is the point-in-time report's workloads in a fixed order, the seed picks
    from it (compliance/evidence/samples.py), so anyone with the seed draws the same sample."""

    id = models.UUIDField(primary_key=True, default=uuid.uuid4, editable=False)
    user = models.ForeignKey("auth.User", null=True, on_delete=models.SET_NULL, related_name="+")
    created_at = models.DateTimeField(default=timezone.now)
    cluster = models.CharField(max_length=63, blank=True)
    namespace = models.CharField(max_length=63, blank=True)
    at = models.DateTimeField()
    size = models.PositiveIntegerField()
    seed = models.CharField(max_length=64)
    population = models.PositiveIntegerField()
    population_sha256 = models.CharField(max_length=64)
    items = models.JSONField(default=list)  # the drawn workloads, each with its evidence

    class Meta:
        ordering = ["-created_at"]

    def __str__(self) -> str:
        return f"sample {self.id} of {self.size} from {self.population} at {self.at}"


# --- risk acceptance ------------------------------------------------------------------------
