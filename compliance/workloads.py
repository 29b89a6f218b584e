"""Which workload a pod belongs to, and pods folded onto workload containers. Pure.

Pod -> ReplicaSet -> Deployment; Pod -> Job -> CronJob; StatefulSet, DaemonSet,
ReplicationController and any other controller kind are kept as they are; a pod without a
controller is its own workload.
"""

from __future__ import annotations

import sys
from collections import Counter
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from compliance import gate, runas

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
                return "Deployment", name[: -len(hash_) - 1]
        return owner


class OwnerSink:
    """A kube.PageSink that records the owners of one kind of object; objects the gate
    refuses are counted in `rejections` and not indexed."""

    def __init__(self, index: OwnerIndex, kind: str):
        self.index, self.kind = index, kind
        self.rejections = gate.Rejections()

    def reset(self) -> None:
        # A restarted list re-adds the same objects; keeping earlier index entries is
        # harmless, but the rejections are counted again from the start.
        self.rejections = gate.Rejections()

    def add(self, items: list[dict]) -> None:
        for obj in items:
            try:
                gate.check_owner(obj)
            except gate.Rejected as e:
                self.rejections.add(self.kind, obj, e)
                continue
            self.index.add(self.kind, obj)


@dataclass(slots=True)
class Group:
    """One (namespace, workload kind, workload name, container) across its pods."""

    states: Counter = field(default_factory=Counter)
    pods: int = 0
    worst: runas.ContainerVerdict | None = None
    worst_pod: str = ""
    psa: list[str] = field(default_factory=list)
    note: str | None = None  # where the image user came from, or why it is unknown

    @property
    def state(self) -> str:
        return self.worst.state  # type: ignore[union-attr]


class PodAggregator:
    """A kube.PageSink for pods: evaluates each pod and folds it into groups."""

    def __init__(self, owners: OwnerIndex, image_users: Mapping[str, str],
                 sources: Mapping[str, str] | None = None,
                 notes: Mapping[str, str] | None = None,
                 prepare: Callable[[list[dict]], None] | None = None,
                 users_for: Callable[[dict], tuple[Mapping, Mapping]] | None = None):
        """image_users/sources/notes may be filled by `prepare`, which runs before each
        page is evaluated (the registry lookups of images.ImageResolver); `users_for`, when
        given, picks (image users, sources) per pod (per platform)."""
        self.owners = owners
        self.image_users = image_users
        self.sources = sources
        self.notes = notes if notes is not None else {}
        self.prepare = prepare
        self.users_for = users_for
        self.reset()

    def reset(self) -> None:
        self.groups: dict[tuple[str, str, str, str], Group] = {}
        self.pods = 0
        self.containers = 0
        self.rejections = gate.Rejections()
        # Workloads of rejected pods whose name and namespace are valid: their findings
        # are kept as they are (reconcile must not resolve what it could not see).
        self.kept: set[tuple[str, str, str]] = set()

    def _reject(self, pod: Any, error: ValueError) -> None:
        self.rejections.add("Pod", pod, error)
        try:
            gate.check_metadata(pod.get("metadata"), listed=True)
        except (gate.Rejected, AttributeError):
            return
        kind, name = self.owners.workload_of(pod)
        self.kept.add((pod["metadata"]["namespace"], kind, name))

    def add(self, items: list[dict]) -> None:
        sev = runas.SEVERITY
        valid = []
        for pod in items:
            try:
                gate.check_pod(pod)
            except gate.Rejected as e:
                self._reject(pod, e)
                continue
            valid.append(pod)
        if self.prepare is not None:
            self.prepare(valid)
        for pod in valid:
            users, sources = (self.users_for(pod) if self.users_for is not None
                              else (self.image_users, self.sources))
            try:
                verdict = runas.evaluate_pod(pod, users, sources)
            except ValueError as e:
                self._reject(pod, e)
                continue
            self.pods += 1
            kind, name = self.owners.workload_of(pod)
            ns = sys.intern(verdict.namespace)
            kind = sys.intern(kind)
            for c in verdict.containers:
                self.containers += 1
                key = (ns, kind, name, c.name)
                g = self.groups.get(key)
                if g is None:
                    g = self.groups[key] = Group()
                g.pods += 1
                g.states[c.state] += 1
                w = g.worst
                # The worst pod wins; among equals the first by name, so the sample (and
                # its kubelet message) does not flap between scans.
                if w is None or sev[c.state] > sev[w.state] or (
                        sev[c.state] == sev[w.state] and verdict.name < g.worst_pod):
                    g.worst, g.worst_pod, g.psa = c, verdict.name, verdict.psa.violations
                    g.note = self.notes.get(c.image)
