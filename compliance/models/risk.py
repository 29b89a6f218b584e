"""Risk acceptance: exceptions, their history, and the findings each one covers."""

from __future__ import annotations

from django.db import models
from django.db.models import Q
from django.utils import timezone

from compliance import vocabulary
from compliance.models.choices import (
    Decision,
    text_choices,
)
from compliance.models.fleet import Cluster, Finding
from compliance.rules.controls import CONTROLS


class RiskException(models.Model):
    """An accepted risk: a scope of findings, why, who asked, who decided, until when.

    The scope never changes after the request (a wider or longer one is a new exception).
    `decision` is the last decision (requested, approved, rejected, revoked); whether it is
    in force at a time T is worked out when read (compliance/risk/exceptions.py): approved at or
    before T, ending after T, not revoked by T. Nothing is deleted; every change is an
    ExceptionEvent."""

    cluster = models.ForeignKey(
        Cluster, null=True, blank=True, on_delete=models.PROTECT, related_name="exceptions"
    )  # None: every cluster
    namespace = models.CharField(max_length=63)  # a name or a glob
    workload_kind = models.CharField(max_length=63, blank=True)  # "": every workload
    workload_name = models.CharField(max_length=253, blank=True)
    container = models.CharField(max_length=253, blank=True)  # "": every container
    image_digest = models.CharField(max_length=200, blank=True)  # "": any image
    # The states it accepts, from the controls it concerns: ",root,blocked," (delimited so
    # that a finding's state is matched with LIKE on any database).
    states = models.CharField(max_length=100)
    controls = models.JSONField(default=list)  # 2013 ids, as requested
    reason = models.TextField()
    ticket = models.CharField(max_length=200)
    requested_by = models.ForeignKey(
        "auth.User", on_delete=models.PROTECT, related_name="exceptions_requested"
    )
    requested_at = models.DateTimeField(default=timezone.now)
    decision = models.CharField(
        max_length=16, choices=Decision.choices, default=Decision.REQUESTED, db_index=True
    )
    decided_by = models.ForeignKey(
        "auth.User", null=True, blank=True, on_delete=models.PROTECT, related_name="+"
    )
    decided_at = models.DateTimeField(null=True, blank=True)  # approved or rejected
    decision_comment = models.TextField(blank=True)
    approved_at = models.DateTimeField(null=True, blank=True)
    revoked_by = models.ForeignKey(
        "auth.User", null=True, blank=True, on_delete=models.PROTECT, related_name="+"
    )
    revoked_at = models.DateTimeField(null=True, blank=True)
    revoke_comment = models.TextField(blank=True)
    ends_at = models.DateTimeField()

    class Meta:
        ordering = ["-pk"]
        indexes = [models.Index(fields=["ends_at"]), models.Index(fields=["namespace"])]
        constraints = [
            models.CheckConstraint(
                condition=Q(approved_at__isnull=True) | Q(decided_by__isnull=False),
                name="approved_has_approver",
            ),
            models.CheckConstraint(
                condition=~Q(decided_by=models.F("requested_by")),
                name="four_eyes",
            ),
        ]

    def __str__(self) -> str:
        return f"exception #{self.pk}"

    @property
    def scope_label(self) -> str:
        where = f"{self.cluster.name if self.cluster_id else '*'}/{self.namespace}"
        if self.workload_kind:
            where += f"/{self.workload_kind}/{self.workload_name}"
        if self.container:
            where += f":{self.container}"
        return where

    @property
    def state_list(self) -> list[str]:
        return [s for s in self.states.split(",") if s]

    @property
    def control_labels(self) -> list[str]:
        """The controls as shown: 2022 number first, 2013 beside it."""
        return [CONTROLS[c].label if c in CONTROLS else c for c in self.controls]


class ExceptionEvent(models.Model):
    """Append-only history of an exception: requested, approved, rejected, revoked."""

    Action = text_choices("Action", vocabulary.EXCEPTION_ACTION)

    exception = models.ForeignKey(RiskException, on_delete=models.PROTECT, related_name="events")
    # The exception's cluster (None: every cluster), copied: what changed since a scan.
    cluster = models.ForeignKey(
        Cluster, null=True, blank=True, on_delete=models.PROTECT, related_name="+"
    )
    at = models.DateTimeField(default=timezone.now)
    user = models.ForeignKey("auth.User", null=True, on_delete=models.SET_NULL, related_name="+")
    username = models.CharField(max_length=150)
    action = models.CharField(max_length=16, choices=Action.choices)
    comment = models.TextField(blank=True)

    class Meta:
        ordering = ["at", "pk"]
        indexes = [models.Index(fields=["at", "cluster"])]  # what changed since a scan

    def __str__(self) -> str:
        return f"#{self.exception_id} {self.action} by {self.username}"


class ExceptionMatch(models.Model):
    """Which findings an exception's scope covers: worked out once, when the exception is
    requested (its open findings) and when a scan opens a finding (the live exceptions).
    Both sides' keys never change, so a pair stays true; whether it accepts the finding at
    T (in force, state, digest) is decided when read.

    The finding's place (cluster, namespace) and its current facts (state, digest, open)
    are copied here, and kept so by reconcile in the scan's transaction, so that live
    counts read these narrow rows and not a million findings."""

    exception = models.ForeignKey(RiskException, on_delete=models.CASCADE, related_name="+")
    finding = models.ForeignKey(Finding, on_delete=models.CASCADE, related_name="+")
    cluster = models.ForeignKey(Cluster, on_delete=models.CASCADE, related_name="+")
    namespace = models.CharField(max_length=63)
    state = models.CharField(max_length=16)
    digest = models.CharField(max_length=200, blank=True)
    open = models.BooleanField(default=True)

    class Meta:
        constraints = [
            models.UniqueConstraint(fields=["exception", "finding"], name="one_match_per_pair")
        ]
        indexes = [models.Index(fields=["finding", "exception"])]

    def __str__(self) -> str:
        return f"#{self.exception_id} covers {self.finding_id}"


# Single sign-on and notifications live in their own modules, in this app.
