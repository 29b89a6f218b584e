"""The effective runAs state of every container in a pod.

A pure function of (pod, image users) that follows ../shared/reference/RUNAS.md, which in
turn follows the kubelet (pkg/kubelet/kuberuntime), containerd's CRI image-user parsing and
Pod Security Admission's `restricted` checks. Standard library only: no Django, no
kubernetes client, no I/O. Anything that is not a well-formed pod raises ValueError with
the path of the offending field.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from compliance.vocabulary import (
    COMPLIANT,
    OBSERVED,
    PREDICTED,
    SOURCE_RUNTIME,
    SOURCE_SUPPLIED,
    SOURCE_UNKNOWN,
    STATES,
    UNENFORCED,
)

INT64_MIN, INT64_MAX = -(2**63), 2**63 - 1
UID_MAX = 2147483647
WINDOWS_ROOT = "containeradministrator"

# (spec key, container type, status key) in the order the kubelet and PSA visit them.
CONTAINER_LISTS = (
    ("initContainers", "init", "initContainerStatuses"),
    ("containers", "app", "containerStatuses"),
    ("ephemeralContainers", "ephemeral", "ephemeralContainerStatuses"),
)
# Container type -> the pod spec list that holds it. A native sidecar (an init container
# with restartPolicy: Always, Kubernetes 1.29+) is its own type, in initContainers.
SPEC_KEYS = {
    **{ctype: key for key, ctype, _ in CONTAINER_LISTS},
    "sidecar": "initContainers",
}

__all__ = ["STATES", "SOURCE_SUPPLIED", "SOURCE_UNKNOWN", "evaluate_pod"]


# --- kubelet messages (RUNAS.md section 4 and 5) ---------------------------------------


def _suffix(pod_ref: str, container: str) -> str:
    return f' (pod: "{pod_ref}", container: {container})'


def msg_run_as_user_root(pod_ref: str, c: str) -> str:  # L1
    return "container's runAsUser breaks non-root policy" + _suffix(pod_ref, c)


def msg_non_numeric(user: str, pod_ref: str, c: str) -> str:  # L2
    return (
        f"container has runAsNonRoot and image has non-numeric user ({user}), "
        "cannot verify user is non-root" + _suffix(pod_ref, c)
    )


def msg_image_root(pod_ref: str, c: str) -> str:  # L3
    return "container has runAsNonRoot and image will run as root" + _suffix(pod_ref, c)


def msg_invalid_uid(uid: int, pod_ref: str, c: str) -> str:  # L4
    return (
        f"container has runAsNonRoot and image has an invalid user id ({uid}). "
        f"(Must be 1-({UID_MAX})): must be between 0 and {UID_MAX}, inclusive" + _suffix(pod_ref, c)
    )


def msg_windows_run_as_user_name(value: str, pod_ref: str, c: str) -> str:  # W1
    return (
        f"container's runAsUserName ({value}) which will be regarded as root identity "
        "and will break non-root policy" + _suffix(pod_ref, c)
    )


def msg_windows_image_user(value: str, pod_ref: str, c: str) -> str:  # W2
    return (
        f"container's runAsUser ({value}) which will be regarded as root identity "
        "and will break non-root policy" + _suffix(pod_ref, c)
    )


# Observed messages, in the current format or the pre-1.20 one without the suffix.
_SUFFIX_RE = r'(?: \(pod: ".*", container: [^)]*\))?$'
OBSERVED_PATTERNS = (
    ("L1", re.compile(r"^container's runAsUser breaks non-root policy" + _SUFFIX_RE, re.S)),
    (
        "L2",
        re.compile(
            r"^container has runAsNonRoot and image has non-numeric user \((?P<user>.*)\), "
            r"cannot verify user is non-root" + _SUFFIX_RE,
            re.S,
        ),
    ),
    (
        "L3",
        re.compile(r"^container has runAsNonRoot and image will run as root" + _SUFFIX_RE, re.S),
    ),
    (
        "L4",
        re.compile(
            r"^container has runAsNonRoot and image has an invalid user id "
            r"\((?P<uid>-?[0-9]{1,19})\)\..*" + _SUFFIX_RE,
            re.S,
        ),
    ),
    (
        "W1",
        re.compile(
            r"^container's runAsUserName \((?P<user>.*)\) which will be regarded as root identity"
            r" and will break non-root policy" + _SUFFIX_RE,
            re.S,
        ),
    ),
    (
        "W2",
        re.compile(
            r"^container's runAsUser \((?P<user>.*)\) which will be regarded as root identity"
            r" and will break non-root policy" + _SUFFIX_RE,
            re.S,
        ),
    ),
)


def parse_kubelet_message(message: str) -> tuple[str, dict[str, str]] | None:
    """Which runAs refusal an observed waiting message is, or None if it is another error."""
    for code, pattern in OBSERVED_PATTERNS:
        m = pattern.match(message)
        if m:
            return code, {k: v for k, v in m.groupdict().items() if v is not None}
    return None


# --- checked field access --------------------------------------------------------------


def _get(obj: Mapping, key: str, kind: type | tuple, path: str) -> Any:
    """obj[key] when present and not null, checked against kind; None otherwise."""
    value = obj.get(key)
    if value is None:
        return None
    if kind is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ValueError(f"{path}.{key}: expected an integer, got {_type_name(value)}")
        if not INT64_MIN <= value <= INT64_MAX:
            raise ValueError(f"{path}.{key}: {value} does not fit in int64")
        return value
    if not isinstance(value, kind):
        expected = {dict: "an object", list: "a list", str: "a string", bool: "a boolean"}
        raise ValueError(
            f"{path}.{key}: expected {expected.get(kind, kind)}, got {_type_name(value)}"
        )
    return value


def _type_name(value: Any) -> str:
    return {
        dict: "object",
        list: "list",
        str: "string",
        bool: "boolean",
        int: "integer",
        float: "number",
    }.get(type(value), type(value).__name__)


@dataclass(frozen=True, slots=True)
class SecurityContext:
    """The runAs-relevant part of a securityContext (pod or container level)."""

    run_as_user: int | None = None
    run_as_group: int | None = None
    run_as_non_root: bool | None = None
    run_as_user_name: str | None = None  # windowsOptions.runAsUserName

    @classmethod
    def parse(cls, raw: Any, path: str) -> SecurityContext:
        if raw is None:
            return cls()
        if not isinstance(raw, dict):
            raise ValueError(f"{path}: expected an object, got {_type_name(raw)}")
        win = _get(raw, "windowsOptions", dict, path) or {}
        return cls(
            run_as_user=_get(raw, "runAsUser", int, path),
            run_as_group=_get(raw, "runAsGroup", int, path),
            run_as_non_root=_get(raw, "runAsNonRoot", bool, path),
            run_as_user_name=_get(win, "runAsUserName", str, path + ".windowsOptions"),
        )

    def merged_over(self, pod: SecurityContext) -> SecurityContext:
        """Field by field, the container's value when set, else the pod's (RUNAS.md s2)."""
        return SecurityContext(
            run_as_user=_first(self.run_as_user, pod.run_as_user),
            run_as_group=_first(self.run_as_group, pod.run_as_group),
            run_as_non_root=_first(self.run_as_non_root, pod.run_as_non_root),
            run_as_user_name=_first(self.run_as_user_name, pod.run_as_user_name),
        )


def _first(a: Any, b: Any) -> Any:
    return a if a is not None else b


# --- the image's configured user (RUNAS.md section 3) ---------------------------------

_INT_RE = re.compile(r"[+-]?[0-9]+\Z")


@dataclass(frozen=True, slots=True)
class ImageUser:
    """The image config's User as the runtime reads it: a uid, a name, or neither."""

    raw: str
    uid: int | None
    name: str | None

    @classmethod
    def parse(cls, raw: str) -> ImageUser:
        if raw == "":
            return cls(raw, None, None)
        # Only the part before the first ':' reaches the kubelet (containerd's
        # getUserFromImage); the group part is dropped.
        user = raw.split(":", 1)[0]
        if _INT_RE.match(user):
            uid = int(user)
            if INT64_MIN <= uid <= INT64_MAX:
                return cls(raw, uid, None)
        # A user part that is empty (":1000") is a name of length zero, which the kubelet
        # treats like no USER at all: uid 0.
        return cls(raw, None, user or None)

    @property
    def is_root(self) -> bool:
        """No USER (and an empty user part) means uid 0 to the kubelet."""
        return self.name is None and (self.uid is None or self.uid == 0)


# --- results --------------------------------------------------------------------------


@dataclass(slots=True)
class ContainerVerdict:
    """What one container runs as, whether the kubelet refuses it, and its state."""

    name: str
    type: str  # init, app, ephemeral
    image: str
    run_as_user: int | None
    run_as_non_root: bool | None
    image_user: str | None
    uid: int | None
    runs_as_root: bool | None
    kubelet_error: str | None
    evidence: str  # predicted or observed
    state: str
    image_user_source: str = SOURCE_UNKNOWN
    windows: bool = False
    run_as_user_name: str | None = None
    # Where the effective runAsUser/runAsNonRoot came from: "pod", "container" or None.
    run_as_user_from: str | None = None
    run_as_non_root_from: str | None = None
    needs_root: str | None = None  # "is privileged", "adds capabilities SYS_ADMIN"
    image_id: str | None = None  # the status imageID: the image (by digest) that runs
    # The pod-level values, also when the container overrides them (the fix needs them:
    # removing a container's value exposes the pod's).
    pod_run_as_user: int | None = None
    pod_run_as_non_root: bool | None = None

    def as_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "type": self.type,
            "image": self.image,
            "run_as_user": self.run_as_user,
            "run_as_non_root": self.run_as_non_root,
            "image_user": self.image_user,
            "image_user_source": self.image_user_source,
            "uid": self.uid,
            "runs_as_root": self.runs_as_root,
            "kubelet_error": self.kubelet_error,
            "evidence": self.evidence,
            "state": self.state,
        }


@dataclass(slots=True)
class PSAVerdict:
    """Pod Security Admission `restricted` (latest) for runAsNonRoot and runAsUser."""

    allowed: bool
    violations: list[str] = field(default_factory=list)

    def as_dict(self) -> dict[str, Any]:
        return {"allowed": self.allowed, "violations": list(self.violations)}

    def denial(self, pod_name: str) -> str | None:
        """The admission error as the API server returns it, or None when allowed."""
        if self.allowed:
            return None
        return (
            f'pods "{pod_name}" is forbidden: violates PodSecurity "restricted:latest": '
            + ", ".join(self.violations)
        )


@dataclass(slots=True)
class PodVerdict:
    """Every container's verdict plus the pod's PSA restricted verdict."""

    namespace: str
    name: str
    uid: str
    windows: bool
    containers: list[ContainerVerdict]
    psa: PSAVerdict


# --- the evaluator --------------------------------------------------------------------


@dataclass(slots=True)
class _Container:
    name: str
    type: str  # the spec list's: init, app, ephemeral (statuses are keyed by it)
    image: str
    sc: SecurityContext
    needs_root: str | None = None
    sidecar: bool = False  # an init container with restartPolicy: Always


def _containers(spec: Mapping, path: str) -> list[_Container]:
    out: list[_Container] = []
    for key, ctype, _ in CONTAINER_LISTS:
        items = _get(spec, key, list, path)
        for i, raw in enumerate(items or ()):
            cpath = f"{path}.{key}[{i}]"
            if not isinstance(raw, dict):
                raise ValueError(f"{cpath}: expected an object, got {_type_name(raw)}")
            name = _get(raw, "name", str, cpath)
            if not name:
                raise ValueError(f"{cpath}.name: required")
            image = _get(raw, "image", str, cpath) or ""
            sc = SecurityContext.parse(raw.get("securityContext"), cpath + ".securityContext")
            sidecar = ctype == "init" and raw.get("restartPolicy") == "Always"
            needs_root = _needs_root(raw.get("securityContext"))
            out.append(_Container(name, ctype, image, sc, needs_root, sidecar))
    return out


def _needs_root(sc: Any) -> str | None:
    """Why a container is built to run as uid 0, or None: privileged, or capabilities added
    that a non-root process does not get (all but NET_BIND_SERVICE, the one PSA restricted
    allows). Moving such a container to runAsUser 1000 would break it."""
    if not isinstance(sc, dict):
        return None
    if sc.get("privileged") is True:
        return "is privileged"
    caps = sc.get("capabilities")
    added = caps.get("add") if isinstance(caps, dict) else None
    if isinstance(added, list):
        names = sorted({c for c in added if isinstance(c, str)} - {"NET_BIND_SERVICE"})
        if names:
            # Names from the manifest, printed everywhere: escaped like every hostile string.
            return "adds capabilities " + ", ".join(_printable(n[:40]) for n in names[:8])
    return None


def _printable(value: str) -> str:
    """A value as it is when printable, else its repr (control characters escaped)."""
    return value if value.isprintable() else repr(value)


def _statuses(status: Any) -> dict[tuple[str, str], dict]:
    """(container type, name) -> its status entry; malformed status is ignored, not fatal,
    because status is evidence to use when present, never a requirement."""
    out: dict[tuple[str, str], dict] = {}
    if not isinstance(status, dict):
        return out
    for _, ctype, key in CONTAINER_LISTS:
        entries = status.get(key)
        if not isinstance(entries, list):
            continue
        for entry in entries:
            if isinstance(entry, dict) and isinstance(entry.get("name"), str):
                out[(ctype, entry["name"])] = entry
    return out


def _observed_uid(entry: dict) -> int | None:
    user = entry.get("user")
    linux = user.get("linux") if isinstance(user, dict) else None
    uid = linux.get("uid") if isinstance(linux, dict) else None
    if isinstance(uid, int) and not isinstance(uid, bool) and INT64_MIN <= uid <= INT64_MAX:
        return uid
    return None


def _observed_refusal(entry: dict) -> str | None:
    state = entry.get("state")
    waiting = state.get("waiting") if isinstance(state, dict) else None
    if not isinstance(waiting, dict) or waiting.get("reason") != "CreateContainerConfigError":
        return None
    message = waiting.get("message")
    if isinstance(message, str) and parse_kubelet_message(message):
        return message
    return None


def pod_spec_and_meta(pod: Any) -> tuple[dict, dict]:
    if not isinstance(pod, dict):
        raise ValueError(f"pod: expected an object, got {_type_name(pod)}")
    meta = _get(pod, "metadata", dict, "pod") or {}
    spec = _get(pod, "spec", dict, "pod")
    if spec is None:
        raise ValueError("spec: required")
    return spec, meta


def evaluate_pod(
    pod: Any,
    image_users: Mapping[str, str] | None = None,
    image_user_sources: Mapping[str, str] | None = None,
) -> PodVerdict:
    """Evaluate one pod (as the API returns it, with status when present).

    image_users maps an image reference (or the imageID digest reference from the pod's
    status) to the image config's User string; "" means the image has no USER, a missing
    image is unknown. image_user_sources optionally says where each came from.
    """
    spec, meta = pod_spec_and_meta(pod)
    image_users = image_users or {}
    name = _get(meta, "name", str, "metadata") or _get(meta, "generateName", str, "metadata") or ""
    namespace = _get(meta, "namespace", str, "metadata") or "default"
    uid = _get(meta, "uid", str, "metadata") or ""
    pod_ref = f"{name}_{namespace}({uid})"

    os_ = _get(spec, "os", dict, "spec") or {}
    windows = (_get(os_, "name", str, "spec.os") or "").lower() == "windows"
    pod_sc = SecurityContext.parse(spec.get("securityContext"), "spec.securityContext")
    containers = _containers(spec, "spec")
    if not any(c.type == "app" for c in containers):
        raise ValueError("spec.containers: a pod needs at least one container")
    host_users = _get(spec, "hostUsers", bool, "spec")
    statuses = _statuses(pod.get("status"))

    verdicts = []
    for c in containers:
        status = statuses.get((c.type, c.name))
        # The digest the status reports is what actually runs: it wins over the tag.
        image_key, raw_user = c.image, None
        image_id = status.get("imageID") if status is not None else None
        if isinstance(image_id, str) and image_id in image_users:
            image_key, raw_user = image_id, image_users[image_id]
        else:
            raw_user = image_users.get(c.image)
        if raw_user is not None and not isinstance(raw_user, str):
            raise ValueError(f"image user for {c.image!r}: expected a string")
        source = (
            SOURCE_UNKNOWN
            if raw_user is None
            else ((image_user_sources or {}).get(image_key, SOURCE_SUPPLIED))
        )
        verdicts.append(_evaluate_container(c, pod_sc, raw_user, source, windows, pod_ref, status))
    return PodVerdict(
        namespace, name, uid, windows, verdicts, psa_restricted(pod_sc, containers, host_users)
    )


def _evaluate_container(
    c: _Container,
    pod_sc: SecurityContext,
    raw_user: str | None,
    source: str,
    windows: bool,
    pod_ref: str,
    status: dict | None,
) -> ContainerVerdict:
    eff = c.sc.merged_over(pod_sc)
    image = ImageUser.parse(raw_user) if raw_user is not None else None
    non_root = eff.run_as_non_root is True

    if windows:
        runs_as_root, error = _windows(eff, image, non_root, pod_ref, c.name)
        uid = None
    else:
        runs_as_root, error, uid = _linux(eff, image, non_root, pod_ref, c.name)
    evidence = PREDICTED

    if status is not None:
        refusal = _observed_refusal(status)
        observed_uid = _observed_uid(status)
        if refusal is not None:
            evidence, error = OBSERVED, refusal
            runs_as_root, uid, learned = _from_refusal(refusal, eff, image)
            if learned is not None and image is None:
                image, source = learned, SOURCE_RUNTIME
        elif observed_uid is not None and not windows:
            evidence, error, uid, runs_as_root = OBSERVED, None, observed_uid, observed_uid == 0

    state = _state(error, runs_as_root, non_root)
    return ContainerVerdict(
        name=c.name,
        type="sidecar" if c.sidecar else c.type,
        image=c.image,
        run_as_user=eff.run_as_user,
        run_as_non_root=eff.run_as_non_root,
        image_user=image.raw if image is not None else None,
        uid=uid,
        runs_as_root=runs_as_root,
        kubelet_error=error,
        evidence=evidence,
        state=state,
        image_user_source=source if image is not None else SOURCE_UNKNOWN,
        windows=windows,
        run_as_user_name=eff.run_as_user_name,
        run_as_user_from=_origin(c.sc.run_as_user, pod_sc.run_as_user),
        run_as_non_root_from=_origin(c.sc.run_as_non_root, pod_sc.run_as_non_root),
        needs_root=c.needs_root,
        image_id=_image_id(status),
        pod_run_as_user=pod_sc.run_as_user,
        pod_run_as_non_root=pod_sc.run_as_non_root,
    )


def _image_id(status: dict | None) -> str | None:
    value = status.get("imageID") if status is not None else None
    return value if isinstance(value, str) and value else None


def _origin(container_value: Any, pod_value: Any) -> str | None:
    if container_value is not None:
        return "container"
    return "pod" if pod_value is not None else None


def _linux(
    eff: SecurityContext, image: ImageUser | None, non_root: bool, pod_ref: str, name: str
) -> tuple[bool | None, str | None, int | None]:
    """(runs as root, kubelet error, uid) for a Linux container (RUNAS.md s4 and s6)."""
    if eff.run_as_user is not None:
        uid = eff.run_as_user
        error = msg_run_as_user_root(pod_ref, name) if non_root and uid == 0 else None
        return uid == 0, error, uid
    if image is None:
        return None, None, None
    if image.name is not None:
        error = msg_non_numeric(image.name, pod_ref, name) if non_root else None
        return None, error, None
    uid = 0 if image.uid is None else image.uid
    error = None
    if non_root:
        if uid == 0:
            error = msg_image_root(pod_ref, name)
        elif not 0 <= uid <= UID_MAX:
            error = msg_invalid_uid(uid, pod_ref, name)
    return uid == 0, error, uid


def _windows(
    eff: SecurityContext, image: ImageUser | None, non_root: bool, pod_ref: str, name: str
) -> tuple[bool | None, str | None]:
    """(runs as root, kubelet error) for a Windows container (RUNAS.md s5)."""
    if eff.run_as_user_name is not None:
        admin = eff.run_as_user_name.lower() == WINDOWS_ROOT
        error = (
            msg_windows_run_as_user_name(eff.run_as_user_name, pod_ref, name)
            if non_root and admin
            else None
        )
        return admin, error
    if image is None:
        return None, None
    user = (
        image.name if image.name is not None else (str(image.uid) if image.uid is not None else "")
    )
    if user == "":
        return None, None
    admin = user.lower() == WINDOWS_ROOT
    error = msg_windows_image_user(user, pod_ref, name) if non_root and admin else None
    return admin, error


def _from_refusal(
    message: str, eff: SecurityContext, image: ImageUser | None
) -> tuple[bool | None, int | None, ImageUser | None]:
    """What the kubelet's own refusal tells: (runs as root, uid, image user learned)."""
    code, groups = parse_kubelet_message(message)  # type: ignore[misc]
    if code == "L1":
        return True, eff.run_as_user if eff.run_as_user is not None else 0, None
    if code == "L2":
        learned = ImageUser.parse(groups["user"])
        return None, None, learned
    if code == "L3":
        return True, 0, image if image is not None and image.is_root else None
    if code == "L4":
        uid = int(groups["uid"])  # at most 19 ASCII digits: the pattern says so
        if not INT64_MIN <= uid <= INT64_MAX:
            return None, None, None
        return uid == 0, uid, ImageUser.parse(groups["uid"])
    return True, None, None  # W1, W2: ContainerAdministrator


def _state(error: str | None, runs_as_root: bool | None, non_root: bool) -> str:
    if error is not None:
        return "blocked"
    if runs_as_root is True:
        return "root"
    if runs_as_root is None:
        return "unverified"
    return COMPLIANT if non_root else UNENFORCED


# --- Pod Security Admission, restricted (RUNAS.md section 7) ---------------------------


def _join_quote(names: list[str]) -> str:
    return '"' + '", "'.join(names) + '"'


def _plural(names: list[str]) -> str:
    return ("container " if len(names) == 1 else "containers ") + _join_quote(names)


def psa_restricted(
    pod_sc: SecurityContext, containers: list[_Container], host_users: bool | None
) -> PSAVerdict:
    """The runAsNonRoot and runAsUser checks of PSA restricted, policy version latest."""
    if host_users is False:
        return PSAVerdict(True)
    violations = []

    bad_setters, explicit, implicit = [], [], []
    pod_non_root = False
    if pod_sc.run_as_non_root is not None:
        if pod_sc.run_as_non_root:
            pod_non_root = True
        else:
            bad_setters.append("pod")
    for c in containers:
        if c.sc.run_as_non_root is not None:
            if not c.sc.run_as_non_root:
                explicit.append(c.name)
        elif not pod_non_root:
            implicit.append(c.name)
    if explicit:
        bad_setters.append(_plural(explicit))
    if bad_setters:
        violations.append(
            "runAsNonRoot != true ("
            + " and ".join(bad_setters)
            + " must not set securityContext.runAsNonRoot=false)"
        )
    elif implicit:
        violations.append(
            f"runAsNonRoot != true (pod or {_plural(implicit)} must set "
            "securityContext.runAsNonRoot=true)"
        )

    bad_setters = ["pod"] if pod_sc.run_as_user == 0 else []
    zero = [c.name for c in containers if c.sc.run_as_user == 0]
    if zero:
        bad_setters.append(_plural(zero))
    if bad_setters:
        violations.append(
            "runAsUser=0 (" + " and ".join(bad_setters) + " must not set runAsUser=0)"
        )
    return PSAVerdict(not violations, violations)
