"""The words welkin-dash uses, each defined once (DESIGN.md's vocabulary).

Every enumeration -- container states, scan, export and delivery statuses, triggers,
evidence, image user sources, container types, cluster sources, workload kinds, roles --
is a tuple of Terms here:
value, label, description, severity (higher is worse) and the CSS class and terminal
colour that show it. Models take their choices from here, the evaluator and controls
their states, pages their columns and badges, exports and the CLI their labels and
colours, the API schema its enums. Adding a state is a change here plus its mapping to
controls (controls.py). Standard library only.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from dataclasses import dataclass


@dataclass(frozen=True)
class Term:
    """One word of a vocabulary."""

    value: str  # stored and exported
    label: str  # shown to people
    description: str = ""
    severity: int = 0  # higher is worse; orders states
    css: str = ""  # CSS class that colours it (always shown with its label too)
    ansi: str = ""  # SGR colour for terminals


class Vocabulary:
    """An ordered set of Terms, looked up by value."""

    def __init__(self, name: str, terms: Iterable[Term]):
        self.name = name
        self.terms = tuple(terms)
        self._by_value = {t.value: t for t in self.terms}

    def __iter__(self) -> Iterator[Term]:
        return iter(self.terms)

    def __getitem__(self, value: str) -> Term:
        return self._by_value[value]

    def __contains__(self, value: object) -> bool:
        return value in self._by_value

    @property
    def values(self) -> tuple[str, ...]:
        return tuple(t.value for t in self.terms)

    @property
    def choices(self) -> list[tuple[str, str]]:
        """(value, label) pairs for model fields and forms."""
        return [(t.value, t.label) for t in self.terms]

    def label(self, value: str) -> str:
        term = self._by_value.get(value)
        return term.label if term else value

    def by_severity(self) -> tuple[str, ...]:
        """Values, worst first (the order pages show states in)."""
        return tuple(t.value for t in sorted(self.terms, key=lambda t: -t.severity))

    def worst(self, values: Iterable[str]) -> str:
        """The most severe of several values (a workload whose pods disagree)."""
        return max(values, key=lambda v: self._by_value[v].severity)


# --- a container's effective runAs state ------------------------------------------------

COMPLIANT, UNENFORCED, ROOT, BLOCKED, UNVERIFIED = (
    "compliant",
    "unenforced",
    "root",
    "blocked",
    "unverified",
)

STATE = Vocabulary(
    "state",
    [
        Term(
            COMPLIANT,
            "Compliant",
            "runAsNonRoot is in force and the container's uid is known to be non-zero.",
            0,
            "state-compliant",
            "32",
        ),
        Term(
            UNENFORCED,
            "Not enforced",
            "Runs as a known non-zero uid, but runAsNonRoot is not set: the guardrail is "
            "missing and a future image could run as root unnoticed.",
            1,
            "state-unenforced",
            "33",
        ),
        Term(
            ROOT,
            "Runs as root",
            "Runs (or would run) as uid 0 and nothing refuses it.",
            3,
            "state-root",
            "31;1",
        ),
        Term(
            BLOCKED,
            "Blocked by kubelet",
            "The kubelet refuses to start it (CreateContainerConfigError), because runAsNonRoot "
            "is set and the user is root or cannot be verified.",
            4,
            "state-blocked",
            "35;1",
        ),
        Term(
            UNVERIFIED,
            "Unverified",
            "The identity cannot be determined: the image's USER is unknown or is a user name "
            "that only the image's /etc/passwd can map to a uid.",
            2,
            "state-unverified",
            "36",
        ),
    ],
)
STATES = STATE.values  # definition order: summaries and exports
STATES_BY_SEVERITY = STATE.by_severity()  # worst first: pages and tables
NONCOMPLIANT = tuple(s for s in STATES_BY_SEVERITY if s != COMPLIANT)

# --- scans ------------------------------------------------------------------------------

RUNNING, SUCCEEDED, FAILED, SKIPPED = "running", "succeeded", "failed", "skipped"
SCAN_STATUS = Vocabulary(
    "scan status",
    [
        Term(RUNNING, "Running", "The scan is listing or reconciling now.", css="status-running"),
        Term(
            SUCCEEDED, "Succeeded", "Complete: its findings are reconciled.", css="status-succeeded"
        ),
        Term(
            FAILED,
            "Failed",
            "It ended early with the reason; it resolved nothing.",
            css="status-failed",
        ),
        Term(SKIPPED, "Skipped", "Another scan of the cluster was running.", css="status-skipped"),
    ],
)

TRIGGER = Vocabulary(
    "trigger",
    [
        Term("schedule", "Schedule", "Queued by beat when the cluster was due."),
        Term("manual", "Manual", "Scan now (page or manage.py scan)."),
        Term("snapshot", "Snapshot", "manage.py import_snapshot."),
    ],
)

CLUSTER_SOURCE = Vocabulary(
    "cluster source",
    [
        Term("kubeconfig", "Kubeconfig context"),
        Term("in_cluster", "In-cluster service account"),
        Term("snapshot", "Offline snapshot"),
    ],
)

# --- findings' history and the audit log -------------------------------------------------

EVENT_KIND = Vocabulary(
    "finding event",
    [
        Term("opened", "Opened", "First seen not compliant by a complete scan."),
        Term("changed", "Changed", "Its state changed between two complete scans."),
        Term("resolved", "Resolved", "Compliant, or gone, in a complete scan."),
        Term(
            "image",
            "Image changed",
            "Same state, but the container now runs another image digest (an exception "
            "pinned to the old digest no longer covers it).",
        ),
    ],
)

AUDIT_ACTION = Vocabulary(
    "audit action",
    [
        Term("login", "Logged in"),
        Term("login_failed", "Failed login"),
        Term("denied", "Denied access"),
        Term("report_view", "Viewed a report"),
        Term("export", "Exported a report", "An export asked for (written by a job)."),
        Term("export_done", "Export written", "An export job's file: its SHA-256."),
        Term("export_failed", "Export failed", "An export job that ended without a file."),
        Term("export_expired", "Deleted expired exports", "Exports past their retention."),
        Term("verify", "Verified a report"),
        Term("audit_export", "Exported the audit log"),
        Term("api", "API request"),
        Term("exception", "Risk acceptance", "An exception requested, decided or revoked."),
        Term("exception_export", "Exported the exception register"),
        Term("lockout", "Locked out", "Too many failed logins for a user name or address."),
        Term("sso_denied", "Signed in, no access", "Single sign-on matched no mapping rule."),
        Term("sso_failed", "Failed sign-on", "The provider's answer was refused or absent."),
        Term(
            "sso_expired",
            "Single sign-on access ended",
            "A provider account not seen for WELKIN_SSO_ACCESS_SECONDS lost its role and "
            "grants (its next sign-in maps them again).",
        ),
        Term("notify_test", "Sent a test notification"),
        Term("audit_head", "Signed the audit log's head", "The daily signature of the chain."),
        Term("audit_verify", "Checked the audit log's chain"),
        Term("prune", "Pruned old data", "Retention: what was deleted, and the cut-off."),
        Term("sample", "Drew an audit sample"),
        Term("timestamp", "Timestamped evidence", "A TSA's token added to a manifest or head."),
        Term(
            "scan_settings",
            "Changed a cluster's scans",
            "Its scans turned on or off, or its schedule changed: what evidence is collected.",
        ),
        Term("scan_now", "Asked for a scan", "A scan of one cluster queued by hand."),
        Term(
            "admin_change",
            "Changed in the admin",
            "A grant, mapping rule, contact, identity, registry, image user or delivery added, "
            "changed (which fields) or deleted in the Django admin.",
        ),
        Term(
            "notify_dropped",
            "Dropped a notification",
            "A pending delivery whose contact was deleted: nothing was sent.",
        ),
    ],
)

# --- risk acceptance (exceptions) ---------------------------------------------------------

OPEN, ACCEPTED = "open", "accepted"
# A finding's standing: its evaluated state never changes; an exception in force makes it
# accepted (counted apart from open).
STANDING = Vocabulary(
    "standing",
    [
        Term(OPEN, "Open", "Not compliant, and no exception in force covers it.", css="open"),
        Term(
            ACCEPTED,
            "Accepted",
            "Not compliant, but an approved exception in force covers it (risk accepted "
            "until its end date).",
            css="accepted",
        ),
    ],
)

REQUESTED, APPROVED, REJECTED, EXPIRED, REVOKED = (
    "requested",
    "approved",
    "rejected",
    "expired",
    "revoked",
)
# Stored: requested, approved, rejected, revoked (the last decision). Expired is worked out
# when read: an exception past its end date, whatever was decided before (no job needed).
EXCEPTION_STATUS = Vocabulary(
    "exception status",
    [
        Term(REQUESTED, "Requested", "Waiting for a security officer.", css="exc-requested"),
        Term(
            APPROVED,
            "Approved",
            "In force from its approval until its end date.",
            css="exc-approved",
        ),
        Term(REJECTED, "Rejected", "A security officer said no.", css="exc-rejected"),
        Term(EXPIRED, "Expired", "Its end date has passed.", css="exc-expired"),
        Term(REVOKED, "Revoked", "Withdrawn before its end date.", css="exc-revoked"),
    ],
)
EXCEPTION_DECISIONS = (REQUESTED, APPROVED, REJECTED, REVOKED)  # what is stored

EXCEPTION_ACTION = Vocabulary(
    "exception action",
    [
        Term("requested", "Requested"),
        Term("approved", "Approved"),
        Term("rejected", "Rejected"),
        Term("revoked", "Revoked"),
    ],
)

# --- a verdict's facts ------------------------------------------------------------------

PREDICTED, OBSERVED = "predicted", "observed"
EVIDENCE = Vocabulary(
    "evidence",
    [
        Term(PREDICTED, "Predicted", "From the pod spec and the image's configured user."),
        Term(
            OBSERVED,
            "Observed",
            "From the pod's status: the kubelet's refusal or the uid of "
            "the container's first process.",
        ),
    ],
)

SOURCE_REGISTRY, SOURCE_RUNTIME, SOURCE_OPERATOR, SOURCE_SUPPLIED, SOURCE_UNKNOWN = (
    "registry",
    "runtime",
    "operator",
    "supplied",
    "unknown",
)
IMAGE_USER_SOURCE = Vocabulary(
    "image user source",
    [
        Term(SOURCE_REGISTRY, "Registry", "The image config's User, read from its registry."),
        Term(SOURCE_RUNTIME, "Runtime", "The kubelet's own message or status."),
        Term(SOURCE_OPERATOR, "Operator", "An image user override set by an operator."),
        Term(SOURCE_SUPPLIED, "Supplied", "Given to manage.py evaluate."),
        Term(SOURCE_UNKNOWN, "Unknown", "Not known: the container is judged without it."),
    ],
)

CONTAINER_TYPE = Vocabulary(
    "container type",
    [
        Term("init", "Init", "spec.initContainers that run to completion"),
        Term(
            "sidecar",
            "Sidecar",
            "spec.initContainers with restartPolicy: Always (native sidecars: they run beside "
            "the app containers)",
        ),
        Term("app", "App", "spec.containers"),
        Term("ephemeral", "Ephemeral", "spec.ephemeralContainers"),
    ],
)


# --- workload kinds -----------------------------------------------------------------------


@dataclass(frozen=True)
class WorkloadKind:
    """A kind that owns pods: how kubectl names it and where its pod template is."""

    kind: str
    resource: str | None  # for `kubectl patch`; None: cannot be patched in place
    template: tuple[str, ...] | None  # path to the pod template; None for a Pod

    @property
    def pod_spec(self) -> tuple[str, ...] | None:
        return (*self.template, "spec") if self.template is not None else None


WORKLOAD_KINDS = {
    k.kind: k
    for k in [
        WorkloadKind("Deployment", "deployment", ("spec", "template")),
        WorkloadKind("StatefulSet", "statefulset", ("spec", "template")),
        WorkloadKind("DaemonSet", "daemonset", ("spec", "template")),
        WorkloadKind("CronJob", "cronjob", ("spec", "jobTemplate", "spec", "template")),
        WorkloadKind("Job", "job", ("spec", "template")),
        WorkloadKind("ReplicaSet", "replicaset", ("spec", "template")),
        WorkloadKind("ReplicationController", "replicationcontroller", ("spec", "template")),
        WorkloadKind("PodTemplate", None, ("template",)),
        WorkloadKind("Pod", None, None),
    ]
}
# The kinds findings are grouped under, in the order the namespace page offers them.
FINDING_KINDS = tuple(k for k in WORKLOAD_KINDS if k != "PodTemplate")

# --- exports ----------------------------------------------------------------------------

QUEUED, DONE = "queued", "done"  # and RUNNING, FAILED, as scans say them
EXPORT_STATUS = Vocabulary(
    "export status",
    [
        Term(QUEUED, "Queued", "Waiting for a worker."),
        Term(RUNNING, "Running", "A worker is writing it."),
        Term(DONE, "Ready", "Written and signed: ready to download."),
        Term(FAILED, "Failed", "Not written; the reason is shown, and no file was left."),
    ],
)
EXPORT_FORMATS = ("csv", "json", "pdf", "oscal")  # oscal: OSCAL Assessment Results (JSON)
EXPORT_EXTENSIONS = {"oscal": "oscal.json"}  # a file name's ending where it is not the format

# --- who people are (Django groups) -----------------------------------------------------

OFFICER, AUDITOR, LEAD = "security-officer", "auditor", "team-lead"
ROLE = Vocabulary(
    "role",
    [
        Term(OFFICER, "Security officer", "Everything; manages clusters, scans and exceptions."),
        Term(AUDITOR, "Auditor", "Read-only, everything; exports evidence."),
        Term(LEAD, "Team lead", "Read-only, the namespaces granted; requests exceptions."),
    ],
)
ROLES = ROLE.values

# --- notification deliveries -------------------------------------------------------------

PENDING, SENDING, SENT = "pending", "sending", "sent"  # and FAILED
DELIVERY_STATUS = Vocabulary(
    "delivery status",
    [
        Term(PENDING, "Pending", "Waiting to be sent, or to be tried again."),
        Term(SENDING, "Sending", "A worker is sending it."),
        Term(SENT, "Sent"),
        Term(FAILED, "Failed", "Given up after its attempts; the last error is kept."),
    ],
)
