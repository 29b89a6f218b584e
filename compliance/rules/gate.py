"""The gate where cluster data comes in: every field we store is checked against
Kubernetes' own rules before it is evaluated. Pure, standard library only.

A hostile (or broken) API server, snapshot file or manifest can send anything: a namespace
`a/b`, a 10,000-character image, a container name that is a list, a NUL in a name. Such
an object is *rejected*: not evaluated, not stored, and counted with its reason, so a scan
still completes and says what it left out. The rules are Kubernetes' own validation:

- namespaces and container names are DNS-1123 labels (at most 63 characters of a-z, 0-9
  and '-', starting and ending with a letter or digit);
- pod, ReplicaSet, Job and owner names are DNS-1123 subdomains (at most 253 characters,
  labels joined by '.');
- owner kinds are API kind names (a letter, then letters and digits, at most 63);
- image references, image IDs, kubelet messages and the other strings we keep have a
  length bound and no control characters.
Only the fields we read are checked; everything else in an object is ignored.
"""

from __future__ import annotations

import re
from collections import Counter
from typing import Any

LABEL_MAX = 63
SUBDOMAIN_MAX = 253
IMAGE_MAX = 1000  # what a finding stores
MESSAGE_MAX = 4096
SHORT_MAX = 128  # uids, reasons, label values we read
EXAMPLES_MAX = 20
RULES_MAX = 30  # rules counted apart; any more count together as "other rules"

_LABEL = r"[a-z0-9](?:[-a-z0-9]*[a-z0-9])?"
_LABEL_RE = re.compile(_LABEL + r"\Z")
_SUBDOMAIN_RE = re.compile(rf"{_LABEL}(?:\.{_LABEL})*\Z")
# A namespace grant: a DNS-1123 label in which * and ? may stand for characters.
NAMESPACE_GLOB_RE = re.compile(r"^[a-z0-9*?]([-a-z0-9*?]{0,61}[a-z0-9*?])?$")
_KIND_RE = re.compile(r"[A-Za-z][A-Za-z0-9]*\Z")
# Control characters, line/paragraph separators, bidirectional overrides and isolates,
# and lone surrogates (which PostgreSQL cannot store).
_CONTROL_RE = re.compile(r"[\x00-\x1f\x7f-\x9f\u2028\u2029\u202a-\u202e\u2066-\u2069\ud800-\udfff]")
_IMAGE_RE = re.compile(r"[\x21-\x7e]+\Z")  # an image reference is visible ASCII
# An image digest a person pins (an exception): the algorithms registries serve.
DIGEST_RE = re.compile(r"(?:sha256:[0-9a-f]{64}|sha512:[0-9a-f]{128})\Z")

_NO_VALUE = object()
_INDEX_RE = re.compile(r"\[\d+\]")

CONTAINER_KEYS = (
    ("initContainers", "initContainerStatuses"),
    ("containers", "containerStatuses"),
    ("ephemeralContainers", "ephemeralContainerStatuses"),
)


class Rejected(ValueError):
    """An object that breaks the rules; the message names the field, the value (inert and
    short) and the rule. `rule` is the same without the value, to count by."""

    def __init__(self, path: str, rule: str, value: Any = _NO_VALUE):
        shown = "" if value is _NO_VALUE else f" {show(value)}"
        super().__init__(f"{path}{shown}: {rule}")
        self.rule = f"{_INDEX_RE.sub('[]', path)}: {rule}"


def inert(text: str, limit: int = 1000) -> str:
    """Text from outside (a server's error message, a name) made safe to print, store and
    show: every control, format or separator character (NUL, escape sequences,
    bidirectional overrides) written as its escape, and the length bounded."""
    if not text.isprintable():
        text = "".join(
            ch if ch.isprintable() else ch.encode("unicode_escape").decode() for ch in text
        )
    return text if len(text) <= limit else text[: limit - 3] + "..."


def show(value: Any, limit: int = 60) -> str:
    """A short, inert rendering of a hostile value for a reason text."""
    text = repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _name(value: Any, path: str, limit: int, pattern: re.Pattern, rule: str) -> str:
    if value is None or value == "":
        raise Rejected(path, "required")
    if not isinstance(value, str):
        raise Rejected(path, f"expected a string, got {type(value).__name__}")
    if len(value) > limit:
        raise Rejected(path, f"longer than {limit} characters")
    if not pattern.match(value):
        raise Rejected(path, rule, value)
    return value


def label(value: Any, path: str) -> str:
    """A DNS-1123 label (namespace, container name)."""
    return _name(
        value,
        path,
        LABEL_MAX,
        _LABEL_RE,
        "not a DNS-1123 label (a-z, 0-9 and '-', starting and ending with a letter or digit)",
    )


def subdomain(value: Any, path: str) -> str:
    """A DNS-1123 subdomain (pod and workload names)."""
    return _name(
        value,
        path,
        SUBDOMAIN_MAX,
        _SUBDOMAIN_RE,
        "not a DNS-1123 subdomain (a-z, "
        "0-9, '-' and '.', starting and ending with a letter or digit)",
    )


def text(value: Any, path: str, limit: int = SHORT_MAX, optional: bool = True) -> None:
    """A string we keep or show: bounded, without control characters."""
    if value is None and optional:
        return
    if not isinstance(value, str):
        raise Rejected(path, f"expected a string, got {type(value).__name__}")
    if len(value) > limit:
        raise Rejected(path, f"longer than {limit} characters")
    if _CONTROL_RE.search(value):
        raise Rejected(path, "contains control characters", value)


def prose(value: str, path: str, limit: int) -> str:
    """Text a person writes (a reason, a comment): bounded; line breaks and tabs allowed,
    other control, separator and bidirectional characters not."""
    if len(value) > limit:
        raise Rejected(path, f"longer than {limit} characters")
    if _CONTROL_RE.search(value.replace("\n", "").replace("\t", "").replace("\r", "")):
        raise Rejected(path, "contains control characters")
    return value


def is_glob(value: str) -> bool:
    """A namespace glob (with * or ?) rather than a name."""
    return "*" in value or "?" in value


def image(value: Any, path: str) -> None:
    if value is None:
        return
    if not isinstance(value, str):
        raise Rejected(path, f"expected a string, got {type(value).__name__}")
    if len(value) > IMAGE_MAX:
        raise Rejected(path, f"longer than {IMAGE_MAX} characters")
    if value and not _IMAGE_RE.match(value):
        raise Rejected(
            path,
            "an image reference is visible ASCII: no spaces, no control or invisible characters",
            value,
        )


def _dict(value: Any, path: str) -> dict:
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise Rejected(path, f"expected an object, got {type(value).__name__}")
    return value


def _list(value: Any, path: str) -> list:
    if value is None:
        return []
    if not isinstance(value, list):
        raise Rejected(path, f"expected a list, got {type(value).__name__}")
    return value


def check_metadata(meta: Any, *, listed: bool) -> None:
    """Name, namespace and owners. `listed`: read from an API server or a snapshot, where
    every object has both; a manifest may leave them out (generateName, the default
    namespace)."""
    meta = _dict(meta, "metadata")
    name, namespace = meta.get("name"), meta.get("namespace")
    if listed or name not in (None, ""):
        subdomain(name, "metadata.name")
    if listed or namespace not in (None, ""):
        label(namespace, "metadata.namespace")
    if meta.get("generateName") not in (None, ""):
        text(meta["generateName"], "metadata.generateName", SUBDOMAIN_MAX)
    text(meta.get("uid"), "metadata.uid")
    labels = _dict(meta.get("labels"), "metadata.labels")
    text(labels.get("pod-template-hash"), "metadata.labels.pod-template-hash", LABEL_MAX)
    for i, ref in enumerate(_list(meta.get("ownerReferences"), "metadata.ownerReferences")):
        path = f"metadata.ownerReferences[{i}]"
        ref = _dict(ref, path)
        kind = ref.get("kind")
        if not isinstance(kind, str) or len(kind) > LABEL_MAX or not _KIND_RE.match(kind):
            raise Rejected(f"{path}.kind", "not an API kind name", kind)
        subdomain(ref.get("name"), f"{path}.name")


def check_pod(pod: Any, *, listed: bool = True) -> None:
    """Raise Rejected when a pod (or a workload's pod template, listed=False) breaks the
    rules for any field we read."""
    if not isinstance(pod, dict):
        raise Rejected("object", f"expected an object, got {type(pod).__name__}")
    check_metadata(pod.get("metadata"), listed=listed)
    spec = _dict(pod.get("spec"), "spec")
    selector = _dict(spec.get("nodeSelector"), "spec.nodeSelector")
    text(selector.get("kubernetes.io/arch"), "spec.nodeSelector.kubernetes.io/arch", LABEL_MAX)
    text(_dict(spec.get("os"), "spec.os").get("name"), "spec.os.name", LABEL_MAX)
    pod_windows = _dict(
        _dict(spec.get("securityContext"), "spec.securityContext").get("windowsOptions"),
        "spec.securityContext.windowsOptions",
    )
    text(pod_windows.get("runAsUserName"), "spec.securityContext.windowsOptions.runAsUserName", 256)
    status = _dict(pod.get("status"), "status")
    for spec_key, status_key in CONTAINER_KEYS:
        for i, c in enumerate(_list(spec.get(spec_key), f"spec.{spec_key}")):
            path = f"spec.{spec_key}[{i}]"
            c = _dict(c, path)
            label(c.get("name"), f"{path}.name")
            image(c.get("image"), f"{path}.image")
            windows = _dict(
                _dict(c.get("securityContext"), f"{path}.securityContext").get("windowsOptions"),
                f"{path}.securityContext.windowsOptions",
            )
            text(
                windows.get("runAsUserName"),
                f"{path}.securityContext.windowsOptions.runAsUserName",
                256,
            )
        for i, s in enumerate(_list(status.get(status_key), f"status.{status_key}")):
            path = f"status.{status_key}[{i}]"
            s = _dict(s, path)
            label(s.get("name"), f"{path}.name")
            image(s.get("imageID"), f"{path}.imageID")
            waiting = _dict(
                _dict(s.get("state"), f"{path}.state").get("waiting"), f"{path}.state.waiting"
            )
            text(waiting.get("reason"), f"{path}.state.waiting.reason")
            text(waiting.get("message"), f"{path}.state.waiting.message", MESSAGE_MAX)


def check_owner(obj: Any) -> None:
    """A ReplicaSet or Job read to find a pod's workload."""
    if not isinstance(obj, dict):
        raise Rejected("object", f"expected an object, got {type(obj).__name__}")
    check_metadata(obj.get("metadata"), listed=True)


def describe(kind: str, obj: Any) -> str:
    """`Pod ns/name`, with hostile parts rendered inert."""
    meta = obj.get("metadata") if isinstance(obj, dict) else None
    meta = meta if isinstance(meta, dict) else {}
    parts = []
    for key in ("namespace", "name"):
        value = meta.get(key)
        ok = isinstance(value, str) and _SUBDOMAIN_RE.match(value) and len(value) <= 253
        parts.append(value if ok else show(value, 40))
    return f"{kind} {parts[0]}/{parts[1]}"


def top_rules(by_reason: dict[str, int], most: int = 10) -> dict[str, int]:
    """The `most` most frequent rules, the rest counted together (for pages and PDFs)."""
    ranked = sorted(by_reason.items(), key=lambda kv: -kv[1])
    top = dict(ranked[:most])
    rest = sum(n for _, n in ranked[most:])
    if rest:
        top[f"{len(ranked) - most} other rules"] = rest
    return top


class Rejections:
    """Rejected objects of one scan: a count, a count per rule, and the first examples."""

    def __init__(self) -> None:
        self.count = 0
        self.by_reason: Counter[str] = Counter()
        self.examples: list[str] = []

    def add(self, kind: str, obj: Any, error: ValueError) -> None:
        """Count one rejected object; `error` is a Rejected or the evaluator's ValueError."""
        self.count += 1
        if isinstance(error, Rejected):
            rule = error.rule
        else:  # the evaluator's message quotes the value: count by the field alone
            path = str(error).split(":", 1)[0]
            rule = f"{_INDEX_RE.sub('[]', inert(path, 120))}: refused by the evaluator"
        key = f"{kind} {rule}"
        if key not in self.by_reason and len(self.by_reason) >= RULES_MAX:
            key = f"{kind}: other rules"
        self.by_reason[key] += 1
        if len(self.examples) < EXAMPLES_MAX:
            self.examples.append(f"{describe(kind, obj)}: {inert(str(error), 300)}")

    def merge(self, other: Rejections) -> Rejections:
        self.count += other.count
        self.by_reason.update(other.by_reason)
        self.examples = (self.examples + other.examples)[:EXAMPLES_MAX]
        return self

    def summary(self, most: int = 3) -> str:
        """`3 objects rejected (2 Pod metadata.namespace: ...; 1 ...)`, or ''."""
        if not self.count:
            return ""
        top = "; ".join(f"{n} {rule}" for rule, n in self.by_reason.most_common(most))
        more = len(self.by_reason) - most
        return (
            f"{self.count} object{'s' if self.count != 1 else ''} rejected ({top}"
            + (f"; {more} more rules" if more > 0 else "")
            + ")"
        )

    def as_dict(self) -> dict[str, Any]:
        return {
            "count": self.count,
            "by_reason": dict(self.by_reason.most_common()),
            "examples": self.examples,
        }
