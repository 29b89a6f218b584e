"""Which workload a pod belongs to, and pod verdicts grouped by workload container. Pure:
it only groups (the gate, image lookups and evaluation happen before, in scanning.py).

Pod -> ReplicaSet -> Deployment; Pod -> Job -> CronJob; StatefulSet, DaemonSet,
ReplicationController and any other controller kind are kept as they are; a pod without a
controller is its own workload.
"""

from __future__ import annotations

import re
import sys
from collections import Counter
from collections.abc import Mapping
from dataclasses import dataclass, field

from compliance.rules import runas
from compliance.vocabulary import STATE

# Kinds whose own controller we look through.
INTERMEDIATE = {"ReplicaSet", "Job"}


def controller_of(obj: dict) -> tuple[str, str] | None:
    """(kind, name) of the object's controlling owner reference, if any."""
    refs = (obj.get("metadata") or {}).get("ownerReferences")
    if not isinstance(refs, list):
        return None
    fallback = None
    for ref in refs:
        if not isinstance(ref, dict):
            continue
        kind, name = ref.get("kind"), ref.get("name")
        if not isinstance(kind, str) or not isinstance(name, str):
            continue
        if ref.get("controller") is True:
            return kind, name
        fallback = fallback or (kind, name)
    return fallback


class OwnerIndex:
    """ReplicaSet and Job owners, to fold pods onto their top-level workload.

    Holds only (namespace, kind, name) -> (owner kind, owner name) for ReplicaSets and Jobs
    that have a controller, with interned strings: about 150 bytes per entry.
    """

    def __init__(self) -> None:
        self._owners: dict[tuple[str, str, str], tuple[str, str]] = {}

    def __len__(self) -> int:
        return len(self._owners)

    def add(self, kind: str, obj: dict) -> None:
        owner = controller_of(obj)
        if owner is None:
            return
        meta = obj.get("metadata") or {}
        ns, name = meta.get("namespace") or "", meta.get("name")
        if isinstance(name, str):
            self._owners[(sys.intern(ns), kind, name)] = (sys.intern(owner[0]), owner[1])

    def workload_of(self, pod: dict) -> tuple[str, str]:
        """(kind, name) of the workload that owns the pod."""
        meta = pod.get("metadata") or {}
        ns = meta.get("namespace") or ""
        owner = controller_of(pod)
        if owner is None:
            return "Pod", meta.get("name") or ""
        kind, name = owner
        if kind not in INTERMEDIATE:
            return owner
        parent = self._owners.get((ns, kind, name))
        if parent is not None:
            return parent
        if kind == "ReplicaSet":
            # A ReplicaSet created after the list of ReplicaSets: its name is the
            # Deployment's plus "-<pod-template-hash>", which the pod carries as a label.
            hash_ = (meta.get("labels") or {}).get("pod-template-hash")
            if isinstance(hash_, str) and hash_ and name.endswith("-" + hash_):
                deployment = name[: -len(hash_) - 1]
                if _SUBDOMAIN_RE.match(deployment):  # else keep the ReplicaSet's name
                    return "Deployment", deployment
        return owner


GroupKey = tuple[str, str, str, str]  # namespace, workload kind, workload name, container
_SEVERITY = {t.value: t.severity for t in STATE}
_SUBDOMAIN_RE = re.compile(
    r"[a-z0-9](?:[-a-z0-9]*[a-z0-9])?(?:\.[a-z0-9](?:[-a-z0-9]*[a-z0-9])?)*\Z"
)


@dataclass(slots=True)
class WorkloadGroup:
    """One (namespace, workload kind, workload name, container) across its pods."""

    states: Counter = field(default_factory=Counter)
    pods: int = 0
    worst: runas.ContainerVerdict | None = None
    worst_pod: str = ""
    psa: list[str] = field(default_factory=list)
    note: str | None = None  # where the image user came from, or why it is unknown
    account: dict | None = None  # what the image's /etc/passwd says (fix.Account)
    image_ids: set[str] = field(default_factory=set)  # every pod's status imageID ("": none)

    @property
    def state(self) -> str:
        return self.worst.state  # type: ignore[union-attr]


class Grouping:
    """Pod verdicts folded onto workload containers; the worst pod decides each group."""

    def __init__(self) -> None:
        self.groups: dict[GroupKey, WorkloadGroup] = {}
        self.pods = 0
        self.containers = 0

    def add(
        self,
        kind: str,
        name: str,
        verdict: runas.PodVerdict,
        notes: Mapping[str, str],
        accounts: Mapping[str, dict] | None = None,
    ) -> None:
        """One pod's verdict, under its workload (kind, name); `notes` says, per image,
        where its user came from, `accounts` what its /etc/passwd says."""
        sev = _SEVERITY
        self.pods += 1
        ns = sys.intern(verdict.namespace)
        kind = sys.intern(kind)
        for c in verdict.containers:
            self.containers += 1
            key = (ns, kind, name, c.name)
            g = self.groups.get(key)
            if g is None:
                g = self.groups[key] = WorkloadGroup()
            g.pods += 1
            g.states[c.state] += 1
            g.image_ids.add(c.image_id or "")
            w = g.worst
            # The worst pod wins; among equals the first by name, so the sample (and its
            # kubelet message) does not flap between scans.
            if (
                w is None
                or sev[c.state] > sev[w.state]
                or (sev[c.state] == sev[w.state] and verdict.name < g.worst_pod)
            ):
                g.worst, g.worst_pod, g.psa = c, verdict.name, verdict.psa.violations
                g.note = notes.get(c.image)
                g.account = (
                    (accounts.get(c.image_id or "") or accounts.get(c.image)) if accounts else None
                )
