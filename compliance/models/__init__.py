"""welkin-dash data: clusters, scans, findings, their events and daily rollups.

Nothing here touches the network; the scan service (scanning.py) fills these tables.
"""

from __future__ import annotations

import re
import uuid
from datetime import timedelta

from django.db import models
from django.db.models import Q
from django.utils import timezone

from compliance import crypto, vocabulary
from compliance.rules.gate import NAMESPACE_GLOB_RE, top_rules
from compliance.rules.kubeconfig import Credentials


def _choices(name: str, words: vocabulary.Vocabulary) -> type[models.TextChoices]:
    """Model choices from a vocabulary (compliance/vocabulary.py, the one source)."""
    return models.TextChoices(name, [(t.value.upper(), (t.value, t.label)) for t in words])


State = _choices("State", vocabulary.STATE)  # a container's effective runAs state
Source = _choices("Source", vocabulary.CLUSTER_SOURCE)
ScanStatus = _choices("ScanStatus", vocabulary.SCAN_STATUS)
Trigger = _choices("Trigger", vocabulary.TRIGGER)
Evidence = _choices("Evidence", vocabulary.EVIDENCE)
ImageUserSource = _choices("ImageUserSource", vocabulary.IMAGE_USER_SOURCE)
ContainerType = _choices("ContainerType", vocabulary.CONTAINER_TYPE)


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

    Kind = _choices("Kind", vocabulary.EVENT_KIND)

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


class Registry(models.Model):
    """How to reach one container registry: credentials (encrypted), CA, plain HTTP."""

    host = models.CharField(
        max_length=255,
        unique=True,
        help_text="As in image references: ghcr.io, registry.example.com:5000"
        " (docker.io for Docker Hub)",
    )
    username = models.CharField(max_length=255, blank=True)
    password_encrypted = models.BinaryField(null=True, blank=True, editable=False)
    ca_pem = models.TextField(blank=True, help_text="PEM CA certificates to trust (optional)")
    plain_http = models.BooleanField(
        default=False, help_text="Only for registries without TLS on a trusted network"
    )

    class Meta:
        ordering = ["host"]
        verbose_name_plural = "registries"

    def __str__(self) -> str:
        return self.host

    @property
    def password(self) -> str | None:
        if not self.password_encrypted:
            return None
        return crypto.decrypt(self.password_encrypted).decode()

    def set_password(self, value: str | None) -> None:
        self.password_encrypted = crypto.encrypt(value.encode()) if value else None


class ImageUserOverride(models.Model):
    """An operator-supplied image user, for images the dashboard cannot look up.

    `pattern` is a glob over the image reference as written in the pod (`registry.internal/
    team/*`, `*:legacy-*`); `user` is the image config's User ("" for no USER)."""

    pattern = models.CharField(max_length=500, unique=True)
    user = models.CharField(max_length=255, blank=True)
    note = models.CharField(max_length=500, blank=True)
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        ordering = ["pattern"]

    def __str__(self) -> str:
        return f"{self.pattern} -> {self.user!r}"


class ImageCache(models.Model):
    """A registry lookup: reference (+platform) -> config User, or the failure.

    Digest references never expire (an image config never changes); tags and failures
    expire after a short time."""

    key = models.CharField(max_length=1100, unique=True)  # normalised reference | platform
    user = models.CharField(max_length=255, null=True, blank=True)  # noqa: DJ001 - None=unknown
    digest = models.CharField(max_length=200, blank=True)  # sha512 digests are 135
    config_digest = models.CharField(max_length=200, blank=True)
    error = models.TextField(blank=True)
    resolved_at = models.DateTimeField()
    expires_at = models.DateTimeField(null=True, blank=True)  # None: for good

    def __str__(self) -> str:
        return f"{self.key} -> {self.user!r}{' ' + self.error if self.error else ''}"


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
    ten of each, written with the rollups (dashboards.rank_cluster), so the cold fleet
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


class NamespaceGrant(models.Model):
    """Lets a team lead (a user, or everyone in a group) see namespaces.

    `cluster` empty means every cluster; `namespace` is a name or a glob (`team-a-*`)."""

    user = models.ForeignKey(
        "auth.User",
        null=True,
        blank=True,
        on_delete=models.CASCADE,
        related_name="namespace_grants",
    )
    group = models.ForeignKey(
        "auth.Group",
        null=True,
        blank=True,
        on_delete=models.CASCADE,
        related_name="namespace_grants",
    )
    cluster = models.ForeignKey(
        Cluster, null=True, blank=True, on_delete=models.CASCADE, related_name="grants"
    )
    namespace = models.CharField(max_length=63, help_text="A namespace, or a glob: team-a-*")

    class Meta:
        constraints = [
            models.CheckConstraint(
                condition=Q(user__isnull=False) | Q(group__isnull=False),
                name="grant_has_user_or_group",
            )
        ]

    def __str__(self) -> str:
        who = self.user or self.group
        return f"{who}: {self.cluster or '*'}/{self.namespace}"

    def clean(self) -> None:
        from django.core.exceptions import ValidationError

        if not NAMESPACE_GLOB_RE.match(self.namespace or ""):
            raise ValidationError(
                {
                    "namespace": "a namespace name (lowercase letters, digits, "
                    "'-') or a glob with * and ?"
                }
            )
        if (self.user_id is None) == (self.group_id is None):
            raise ValidationError("grant to a user or to a group (one of them)")


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


class AuditEvent(models.Model):
    """Who did what, when: exports, report views, logins, failed logins, denied access.

    A hash chain (compliance/audit.py): `seq` counts events without gaps, each event's
    `hash` covers its own fields and the previous event's hash, so a row deleted, edited or
    reordered in the database breaks the chain at that row."""

    Action = _choices("Action", vocabulary.AUDIT_ACTION)

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
    signature = models.CharField(max_length=200)
    public_key = models.CharField(max_length=100)
    timestamp = models.BinaryField(null=True, blank=True)  # RFC 3161 TimeStampResp, DER
    timestamp_error = models.TextField(blank=True)

    class Meta:
        ordering = ["-at", "-pk"]

    def __str__(self) -> str:
        return f"head {self.seq} {self.hash[:12]} at {self.at:%Y-%m-%d %H:%M}"


class ExportStatus(models.TextChoices):
    QUEUED = "queued", "Queued"
    RUNNING = "running", "Running"
    DONE = "done", "Ready"
    FAILED = "failed", "Failed"


class Export(models.Model):
    """A report file written for a user by a Celery job (compliance/exports.py run), with
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
        from compliance.exports import EXTENSIONS

        return EXTENSIONS.get(self.format, self.format)

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
    from it (compliance/samples.py), so anyone with the seed draws the same sample."""

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

Decision = _choices("Decision", vocabulary.EXCEPTION_STATUS)


class RiskException(models.Model):
    """An accepted risk: a scope of findings, why, who asked, who decided, until when.

    The scope never changes after the request (a wider or longer one is a new exception).
    `decision` is the last decision (requested, approved, rejected, revoked); whether it is
    in force at a time T is worked out when read (compliance/exceptions.py): approved at or
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
        from compliance.rules.controls import CONTROLS

        return [CONTROLS[c].label if c in CONTROLS else c for c in self.controls]


class ExceptionEvent(models.Model):
    """Append-only history of an exception: requested, approved, rejected, revoked."""

    Action = _choices("Action", vocabulary.EXCEPTION_ACTION)

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
from compliance.models.identity import GroupMapping, OidcIdentity  # noqa: E402, F401
from compliance.models.notify import Contact, Delivery, OutboxEvent  # noqa: E402, F401
