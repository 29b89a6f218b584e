"""Clusters, scans, findings, their events, and the rollups and rankings the pages read.

Nothing here touches the network; the scan service (compliance/collect/) fills these tables.
"""

from __future__ import annotations

from datetime import timedelta

from django.db import models
from django.db.models import Q
from django.utils import timezone

from compliance import crypto, vocabulary
from compliance.models.choices import (
    ContainerType,
    Evidence,
    ImageUserSource,
    ScanStatus,
    Source,
    State,
    Trigger,
    text_choices,
)
from compliance.rules.gate import top_rules
from compliance.rules.kubeconfig import Credentials


class Cluster(models.Model):
    """A Kubernetes cluster to scan, with its encrypted credentials and schedule."""

    name = models.SlugField(max_length=63, unique=True)
    source = models.CharField(max_length=16, choices=Source.choices, default=Source.KUBECONFIG)
    context = models.CharField(max_length=253, blank=True)
    server = models.CharField(max_length=500, blank=True)
    credentials_encrypted = models.BinaryField(null=True, blank=True, editable=False)
    schedule_minutes = models.PositiveIntegerField(default=15)
    enabled = models.BooleanField(default=True)
    next_scan_at = models.DateTimeField(default=timezone.now)
    last_scan = models.ForeignKey(
        "ScanRun", null=True, blank=True, on_delete=models.SET_NULL, related_name="+"
    )
    last_complete_scan = models.ForeignKey(
        "ScanRun", null=True, blank=True, on_delete=models.SET_NULL, related_name="+"
    )
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        ordering = ["name"]

    def __str__(self) -> str:
        return self.name

    @property
    def credentials(self) -> Credentials | None:
        if not self.credentials_encrypted:
            return None
        return Credentials.from_json(crypto.decrypt(self.credentials_encrypted))

    def set_credentials(self, creds: Credentials) -> None:
        self.credentials_encrypted = crypto.encrypt(creds.to_json())
        self.server = creds.server

    @property
    def schedule(self) -> timedelta:
        return timedelta(minutes=self.schedule_minutes)


class ScanRun(models.Model):
    """One scan of one cluster (or one imported snapshot): the Job record of a run."""

    cluster = models.ForeignKey(Cluster, on_delete=models.CASCADE, related_name="scans")
    status = models.CharField(max_length=16, choices=ScanStatus.choices, default=ScanStatus.RUNNING)
    reason = models.TextField(blank=True)
    trigger = models.CharField(max_length=16, choices=Trigger.choices, default=Trigger.SCHEDULE)
    task_id = models.CharField(max_length=64, blank=True, db_index=True)
    worker = models.CharField(max_length=300, blank=True)  # host:pid of the process
    started_at = models.DateTimeField(default=timezone.now)
    finished_at = models.DateTimeField(null=True, blank=True)
    heartbeat_at = models.DateTimeField(default=timezone.now)
    observed_at = models.DateTimeField(default=timezone.now)  # the time the data describes
    pages = models.PositiveIntegerField(default=0)
    pods = models.PositiveIntegerField(default=0)
    containers = models.PositiveIntegerField(default=0)
    findings_opened = models.PositiveIntegerField(default=0)
    findings_changed = models.PositiveIntegerField(default=0)
    findings_resolved = models.PositiveIntegerField(default=0)
    timings = models.JSONField(default=dict, blank=True)
    # Objects the gate refused (compliance/rules/gate.py): how many, per rule, first examples.
    rejected = models.PositiveIntegerField(default=0)
    rejections = models.JSONField(default=dict, blank=True)

    class Meta:
        ordering = ["-started_at"]
        indexes = [models.Index(fields=["cluster", "-started_at"])]
        constraints = [
            # At most one running scan per cluster, enforced by the database.
            models.UniqueConstraint(
                fields=["cluster"],
                condition=Q(status="running"),
                name="one_running_scan_per_cluster",
            ),
        ]

    def __str__(self) -> str:
        return f"{self.cluster_id}#{self.pk} {self.status}"

    @property
    def top_rejections(self) -> dict[str, int]:
        """The most frequent rules that rejected objects (bounded, for the scans page)."""
        return top_rules((self.rejections or {}).get("by_reason", {}))

    @property
    def duration(self) -> timedelta | None:
        return self.finished_at - self.started_at if self.finished_at else None


class Finding(models.Model):
    """A non-compliant container of one workload, open until fixed or gone.

    One open row per (cluster, namespace, workload kind, workload name, container). The
    facts come from the worst pod of the workload; `mixed` says its pods disagree.
    """

    cluster = models.ForeignKey(Cluster, on_delete=models.CASCADE, related_name="findings")
    namespace = models.CharField(max_length=63)
    workload_kind = models.CharField(max_length=63)
    workload_name = models.CharField(max_length=253)
    container = models.CharField(max_length=253)
    container_type = models.CharField(max_length=9, choices=ContainerType.choices)
    image = models.CharField(max_length=1000)
    # The digest the container runs (status imageID, or the spec's @digest); "" unknown.
    image_digest = models.CharField(max_length=200, blank=True, default="", db_default="")
    state = models.CharField(max_length=16, choices=State.choices)
    runs_as_root = models.BooleanField(null=True)
    kubelet_error = models.TextField(blank=True)
    evidence = models.CharField(max_length=9, choices=Evidence.choices)
    # None: unknown; "": the image has no USER (which the kubelet treats as root).
    image_user = models.CharField(max_length=255, null=True, blank=True)  # noqa: DJ001
    image_user_source = models.CharField(
        max_length=16, choices=ImageUserSource.choices, default=ImageUserSource.UNKNOWN
    )
    uid = models.BigIntegerField(null=True)
    run_as_user = models.BigIntegerField(null=True)
    run_as_non_root = models.BooleanField(null=True)
    pods = models.PositiveIntegerField(default=0)
    mixed = models.BooleanField(default=False)
    detail = models.JSONField(default=dict)  # the sample pod's verdict, PSA, level origins
    # The proven fix in one line (rules/fix.one_line), kept by the scan so that exports
    # written by COPY carry the same text the finding page shows.
    fix = models.TextField(blank=True, default="", db_default="")
    first_seen = models.DateTimeField()
    last_changed = models.DateTimeField()
    resolved_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        constraints = [
            models.UniqueConstraint(
                fields=["cluster", "namespace", "workload_kind", "workload_name", "container"],
                condition=Q(resolved_at__isnull=True),
                name="one_open_finding_per_container",
            ),
        ]
        indexes = [
            models.Index(
                fields=["cluster", "namespace", "state"],
                condition=Q(resolved_at__isnull=True),
                name="open_findings_by_ns",
            ),
        ]

    def __str__(self) -> str:
        return (
            f"{self.namespace}/{self.workload_kind}/{self.workload_name}:{self.container} "
            f"{self.state}"
        )


class FindingEvent(models.Model):
    """Append-only history of a finding: opened, state changed, resolved."""

    Kind = text_choices("Kind", vocabulary.EVENT_KIND)

    finding = models.ForeignKey(Finding, on_delete=models.CASCADE, related_name="events")
    # Deleting a cluster deletes its history; single scans cannot be deleted (admin).
    scan = models.ForeignKey(ScanRun, on_delete=models.CASCADE, related_name="events")
    kind = models.CharField(max_length=8, choices=Kind.choices)
    from_state = models.CharField(max_length=16, blank=True)
    to_state = models.CharField(max_length=16, blank=True)
    digest = models.CharField(max_length=200, blank=True, default="", db_default="")
    at = models.DateTimeField()

    class Meta:
        indexes = [
            # A finding's last event at or before T (point-in-time reports, a million of
            # them for a fleet export): read backwards from the index alone.
            models.Index(
                fields=["finding", "at", "id"],
                include=["kind", "to_state", "digest"],
                name="findingevent_last_idx",
            ),
            models.Index(fields=["at"]),
        ]

    def __str__(self) -> str:
        return f"{self.finding_id} {self.kind} {self.from_state}->{self.to_state} {self.at}"


class DailyRollup(models.Model):
    """Per day, cluster, namespace and state: containers (workload x container) and pods.

    Written when a scan completes; trend charts read these rows only.
    """

    cluster = models.ForeignKey(Cluster, on_delete=models.CASCADE, related_name="rollups")
    day = models.DateField()
    namespace = models.CharField(max_length=63)
    state = models.CharField(max_length=16, choices=State.choices)
    containers = models.PositiveIntegerField(default=0)
    pods = models.PositiveIntegerField(default=0)
    accepted = models.PositiveIntegerField(default=0, db_default=0)  # as the scan saw it

    class Meta:
        constraints = [
            models.UniqueConstraint(
                fields=["cluster", "namespace", "state", "day"], name="one_rollup_per_day"
            )
        ]
        indexes = [
            models.Index(fields=["day", "cluster"]),
            # A team lead's rows: by namespace, also for anchored globs (team-a-*).
            models.Index(
                fields=["namespace", "day"],
                name="rollup_by_namespace",
                opclasses=["varchar_pattern_ops", "date_ops"],
            ),
        ]

    def __str__(self) -> str:
        return f"{self.cluster_id} {self.day} {self.namespace} {self.state}={self.containers}"


class ClusterRollup(models.Model):
    """DailyRollup summed over namespaces: what fleet-wide charts and counts read (a few
    rows per cluster and day instead of one per namespace)."""

    cluster = models.ForeignKey(Cluster, on_delete=models.CASCADE, related_name="+")
    day = models.DateField()
    state = models.CharField(max_length=16, choices=State.choices)
    containers = models.PositiveIntegerField(default=0)
    pods = models.PositiveIntegerField(default=0)
    accepted = models.PositiveIntegerField(default=0, db_default=0)

    class Meta:
        constraints = [
            models.UniqueConstraint(
                fields=["cluster", "state", "day"], name="one_cluster_rollup_per_day"
            )
        ]
        indexes = [models.Index(fields=["day"])]

    def __str__(self) -> str:
        return f"{self.cluster_id} {self.day} {self.state}={self.containers}"


class NamespaceRanking(models.Model):
    """One cluster's namespaces that can be in the fleet page's two lists (the most open
    findings; the most grown since a week before), as of its latest rollup day: at most
    ten of each, written with the rollups (rollups.rank_cluster), so the cold fleet
    page reads a few rows per cluster instead of ranking every namespace."""

    cluster = models.ForeignKey(Cluster, on_delete=models.CASCADE, related_name="+")
    day = models.DateField()
    namespace = models.CharField(max_length=63)
    now = models.IntegerField()
    before = models.IntegerField()

    class Meta:
        constraints = [
            models.UniqueConstraint(
                fields=["cluster", "day", "namespace"], name="one_ranking_row_per_namespace"
            )
        ]

    def __str__(self) -> str:
        return f"{self.cluster_id} {self.day} {self.namespace} {self.before}->{self.now}"


class DailyActivity(models.Model):
    """Per day, cluster and namespace: findings opened, resolved, and the seconds from
    first seen to resolved summed over the resolved ones (mean time to remediate)."""

    cluster = models.ForeignKey(Cluster, on_delete=models.CASCADE, related_name="activity")
    day = models.DateField()
    namespace = models.CharField(max_length=63)
    opened = models.PositiveIntegerField(default=0)
    resolved = models.PositiveIntegerField(default=0)
    remediation_seconds = models.BigIntegerField(default=0)

    class Meta:
        constraints = [
            models.UniqueConstraint(
                fields=["cluster", "namespace", "day"], name="one_activity_per_day"
            )
        ]
        indexes = [
            models.Index(fields=["day"]),
            # A team lead's rows (trend data), as rollup_by_namespace.
            models.Index(
                fields=["namespace", "day"],
                name="activity_by_namespace",
                opclasses=["varchar_pattern_ops", "date_ops"],
            ),
        ]

    def __str__(self) -> str:
        return f"{self.cluster_id} {self.day} {self.namespace} +{self.opened} -{self.resolved}"
