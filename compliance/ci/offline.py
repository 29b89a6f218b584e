"""Offline evaluation of manifest files: the service behind `welkin-evaluate` and
`manage.py evaluate`, the CI gate. No Django here (registry lookups come in through
`prepare` / `users_for` when the caller has them).

Reads files, evaluates every pod (or pod template) in them and returns one report: the
objects with each container's verdict and where it is (file, line, column), the documents
skipped because they are not ours to judge (a Service, a ConfigMap, a custom resource, a
Kustomize patch), and the errors of really broken input. Errors in one document never hide
the results of the others.
"""

from __future__ import annotations

import fnmatch
import re
from collections import Counter
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from compliance.rules import controls, fix, gate, reference, runas
from compliance.rules.manifests import (
    Located,
    ManifestError,
    PodSource,
    Skipped,
    gc_paused,
    iter_located,
    parse_documents,
    parse_located,
    pod_sources,
    position,
)
from compliance.rules.runas import CONTAINER_LISTS
from compliance.vocabulary import BLOCKED, ROOT, STATE, STATES, UNVERIFIED

DEFAULT_FAIL_ON = (ROOT, BLOCKED)
_SPEC_KEY = runas.SPEC_KEYS


def parse_fail_on(value: str) -> tuple[str, ...]:
    """`root,blocked` -> the states that fail the gate; ValueError naming an unknown one."""
    states = tuple(s.strip() for s in value.split(",") if s.strip())
    unknown = [s for s in states if s not in STATE]
    if unknown or not states:
        raise ValueError(
            f"--fail-on {value!r}: unknown state {', '.join(map(repr, unknown)) or '(none)'}; "
            f"expected some of {', '.join(STATES)}"
        )
    return states


@dataclass
class OfflineReport:
    """The evaluated objects, a count per state, what was skipped, and the input errors."""

    objects: list[dict[str, Any]] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)
    summary: dict[str, int] = field(default_factory=lambda: dict.fromkeys(STATES, 0))
    skipped: Counter = field(default_factory=Counter)  # kind -> documents
    inputs: list[str] = field(default_factory=list)  # the file names read, as shown
    unknown_users: int = 0  # unverified containers whose image user is unknown
    lookup_errors: dict[str, str] = field(default_factory=dict)  # image -> why not known
    sink: Callable[[dict], None] | None = None  # takes each object instead of `objects`
    evaluated: int = 0  # objects judged (handed to the sink or kept)

    def failing(self, fail_on: Iterable[str] = DEFAULT_FAIL_ON) -> int:
        """How many containers are in a state that fails the gate."""
        return sum(self.summary[s] for s in set(fail_on))

    @property
    def has_violations(self) -> bool:
        return bool(self.failing())

    def as_dict(self) -> dict[str, Any]:
        return {
            "objects": self.objects,
            "summary": self.summary,
            "skipped": dict(sorted(self.skipped.items())),
            "unknown_image_users": self.unknown_users,
            "lookup_errors": self.lookup_errors,
            "errors": self.errors,
        }


class ImageUsers:
    """Image users given on the command line: exact images, then patterns.

    An entry is an image as written in the pod (`nginx:1.27`), a repository without tag or
    digest (`nginx` matches every tag of nginx), or a shell-style pattern (`ghcr.io/acme/*`).
    Exact entries win; then repositories; then patterns in the order given. `rule_for`
    says which entry decided.
    """

    def __init__(
        self, entries: Mapping[str, str] | None = None, fallback: ImageUsers | None = None
    ):
        """`fallback`: asked only when no entry here matches (a repository's file under
        the pipeline's own entries)."""
        self.fallback = fallback
        self.exact: dict[str, tuple[str, str]] = {}  # normalised image -> (entry, user)
        self.repositories: dict[str, tuple[str, str]] = {}  # normalised repository -> ...
        self.patterns: list[tuple[str, str]] = []
        for key, user in (entries or {}).items():
            if any(ch in key for ch in "*?["):
                self.patterns.append((key, user))
                continue
            ref = reference.normalised(key)
            # Two spellings of one image: the later entry wins (the command line comes
            # after .welkin-images.yaml and --image-users).
            if ref is None:  # not a valid reference: matched as written
                self.exact[key] = (key, user)
            elif _has_version(key):
                self.exact[_key(ref)] = (key, user)
            else:  # `nginx`: every tag and digest of docker.io/library/nginx
                self.repositories[f"{ref.domain}/{ref.repository}"] = (key, user)

    def match(self, image: str) -> tuple[str, str] | None:
        """(entry, user) for an image, or None. Images and entries are compared as Docker
        reads them: `nginx`, `docker.io/nginx` and `docker.io/library/nginx:latest` are one
        image."""
        ref = reference.normalised(image)
        found = self.exact.get(_key(ref) if ref is not None else image)
        if found is None and ref is not None:
            found = self.repositories.get(f"{ref.domain}/{ref.repository}")
        if found is not None:
            return found
        for pattern, user in self.patterns:
            if fnmatch.fnmatchcase(image, pattern) or (
                ref is not None and fnmatch.fnmatchcase(str(ref), pattern)
            ):
                return pattern, user
        return self.fallback.match(image) if self.fallback is not None else None

    def resolved(self, pods: Iterable[dict]) -> tuple[dict[str, str], dict[str, str]]:
        """({image: user}, {image: the entry that decided}) for these pods' images."""
        users, rules = {}, {}
        for pod in pods:
            spec = pod.get("spec") if isinstance(pod, dict) else None
            for key, _, _ in CONTAINER_LISTS:
                for c in (spec.get(key) or []) if isinstance(spec, dict) else []:
                    image = c.get("image") if isinstance(c, dict) else None
                    if isinstance(image, str) and image not in users:
                        found = self.match(image)
                        if found is not None:
                            rules[image], users[image] = found
        return users, rules


def _key(ref: reference.ImageRef) -> str:
    """What names one image: the digest when there is one (a tag beside it is ignored,
    as the runtimes ignore it), else the tag."""
    name = f"{ref.domain}/{ref.repository}"
    return f"{name}@{ref.digest}" if ref.digest else f"{name}:{ref.tag}"


def _has_version(image: str) -> bool:
    """Whether a reference names a tag or a digest (`nginx:1.27`, `x@sha256:...`), not
    just a repository (`nginx`, `reg:5000/a/b`)."""
    return "@" in image or ":" in image.rsplit("/", 1)[-1]


def evaluate_object(
    pod: dict,
    image_users: Mapping[str, str],
    sources: Mapping[str, str] | None = None,
    notes: Mapping[str, str] | None = None,
    accounts: Mapping[str, dict] | None = None,
) -> dict[str, Any]:
    """One pod's verdicts in the JSON shape of `evaluate --format json` (kind/name aside);
    `accounts`: per image, what its /etc/passwd says (--resolve), for the fix."""
    verdict = runas.evaluate_pod(pod, image_users, sources)
    return {
        "psa_restricted": verdict.psa.as_dict(),
        "containers": [
            {
                **c.as_dict(),
                "image_user_note": (notes or {}).get(c.image),
                "needs_root": c.needs_root,
                "controls_2022": list(controls.ids_2022(c.state)),
                "controls_2013": list(controls.controls_for(c.state)),
                "remediation": _fix(
                    c, (accounts or {}).get(c.image_id or "") or (accounts or {}).get(c.image)
                ),
            }
            for c in verdict.containers
        ],
    }


def _fix(c: runas.ContainerVerdict, account: dict | None) -> dict[str, Any]:
    """The proven fix (rules/fix.py) as plain data: steps as text, and the fix in one line."""
    out = fix.remediation(c, fix.Account.of(account))
    return {**out, "steps": [fix.plain(s) for s in out["steps"]], "one_line": fix.one_line(out)}


UsersFor = Callable[[dict], tuple[Mapping[str, str], Mapping[str, str]]]


@dataclass
class Lookups:
    """Registry lookups for `--resolve`: filled per document by `prepare`, read per pod
    (for its platform) by `users_for`; `notes` says where each image's user came from or
    why it is unknown."""

    prepare: Callable[[list[dict]], None]
    users_for: UsersFor
    notes: Mapping[str, str]
    accounts_for: Callable[[dict], Mapping[str, dict]] = lambda pod: {}


def evaluate_inputs(
    inputs: Iterable[tuple[str, bytes]],
    image_users: Mapping[str, str] | ImageUsers,
    lookups: Lookups | None = None,
    sink: Callable[[dict], None] | None = None,
) -> OfflineReport:
    """Evaluate (filename, content) pairs into one report. With a `sink`, each object is
    handed to it as it is judged and not kept (the counts are)."""
    given = image_users if isinstance(image_users, ImageUsers) else ImageUsers(image_users)
    report = OfflineReport(sink=sink)
    # Everything built here is acyclic; without the pause, full collections rescan the
    # parsed files' tens of millions of objects again and again (4x slower at 100k pods).
    with gc_paused():
        for filename, data in inputs:
            _evaluate_file(report, filename, data, given, lookups)
    return report


HELM_TEMPLATE = "Helm template (render it: helm template ... | welkin-evaluate)"


def _evaluate_file(
    report: OfflineReport, filename: str, data: bytes, given: ImageUsers, lookups: Lookups | None
) -> None:
    """The file's documents, each evaluated as it is read and then let go."""
    if b"{{" in data:  # perhaps a chart template: read it whole, to skip it whole
        try:
            docs: Iterable[Located] = parse_located(data, filename)
        except ManifestError as e:
            if _near_template(data, str(e)):
                report.skipped[HELM_TEMPLATE] += 1  # Go template syntax, not a manifest
            else:  # broken for another reason (a duplicate key, a tag): an error still
                report.errors.append(str(e))
            return
    else:
        docs = iter_located(data, filename)
    previous: Located | None = None
    n = 0
    try:
        for doc in docs:  # one behind, to know whether the file holds several documents
            if previous is not None:
                _evaluate_doc(
                    report, f"{filename}: document {n}", filename, previous, given, lookups
                )
            previous, n = doc, n + 1
    except ManifestError as e:
        report.errors.append(str(e))
    if previous is not None:
        where = f"{filename}: document {n}" if n > 1 else filename
        _evaluate_doc(report, where, filename, previous, given, lookups)


_AT_LINE = re.compile(r"invalid (?:YAML|JSON) at line (\d+)")


def _near_template(data: bytes, error: str) -> bool:
    """Whether a parse error is at template syntax: `{{` on its line or the two before."""
    m = _AT_LINE.search(error)
    if m is None:
        return False
    line = int(m.group(1))
    lines = data.split(b"\n", line)[max(0, line - 3) : line]
    return any(b"{{" in x for x in lines)


def _evaluate_doc(
    report: OfflineReport,
    where: str,
    filename: str,
    doc: Located,
    given: ImageUsers,
    lookups: Lookups | None,
) -> None:
    items = [_checked(item) for item in pod_sources(doc.data, where)]
    pods = [i.pod for i in items if isinstance(i, PodSource)]
    supplied, rules = given.resolved(pods)
    if lookups is not None:
        lookups.prepare(pods)
    for item in items:
        if isinstance(item, Skipped):
            report.skipped[item.kind] += 1
        elif isinstance(item, ManifestError):
            report.errors.append(str(item))
        else:
            _evaluate_item(report, filename, doc, item, supplied, rules, lookups)


def _evaluate_item(
    report: OfflineReport,
    filename: str,
    doc: Located,
    item: PodSource,
    supplied: dict[str, str],
    rules: dict[str, str],
    lookups: Lookups | None,
) -> None:
    users: Mapping[str, str] = supplied
    sources: Mapping[str, str] | None = None
    notes: dict[str, str] = {image: f"supplied ({rule})" for image, rule in rules.items()}
    if lookups is not None:
        found, found_sources = lookups.users_for(item.pod)
        # What the command line gives wins over what a registry says.
        users, sources = {**found, **supplied}, {**found_sources}
        notes = {**lookups.notes, **notes}
    accounts = lookups.accounts_for(item.pod) if lookups is not None else None
    try:
        result = evaluate_object(item.pod, users, sources, notes, accounts)
    except ValueError as e:
        report.errors.append(f"{item.where}: {e}")
        return
    # The object's first line (where its document or List item starts), not its spec's.
    line = position(doc.node, item.path) if item.path else None
    if line is None and doc.node is not None:
        line = (doc.node.start_mark.line + 1, doc.node.start_mark.column + 1)
    obj = {
        "kind": item.kind,
        "namespace": item.namespace,
        "name": item.name,
        "file": filename,
        "line": line[0] if line else None,
        **result,
    }
    counters: Counter = Counter()
    for c in result["containers"]:
        key = _SPEC_KEY[c["type"]]
        c["file"] = filename
        c["line"], c["column"] = position(doc.node, (*item.spec_path, key, counters[key])) or (
            None,
            None,
        )
        counters[key] += 1
        report.summary[c["state"]] += 1
        if c["state"] == UNVERIFIED and c["image_user"] is None:
            report.unknown_users += 1
            note = notes.get(c["image"])
            if lookups is not None and note:  # the user is unknown: the note says why
                report.lookup_errors[c["image"]] = note
    report.evaluated += 1
    if report.sink is not None:
        report.sink(obj)
    else:
        report.objects.append(obj)


def _checked(item: PodSource | Skipped | ManifestError) -> PodSource | Skipped | ManifestError:
    """The gate's rules (compliance/rules/gate.py) for a manifest's names, images and strings."""
    if not isinstance(item, PodSource):
        return item
    try:
        gate.check_pod(item.pod, listed=False)
    except gate.Rejected as e:
        return ManifestError(f"{item.where}: {e}")
    return item


def parse_image_user_args(values: Iterable[str]) -> dict[str, str]:
    """`IMAGE=USER` pairs; `IMAGE=` means the image has no USER; IMAGE may be a pattern."""
    out = {}
    for value in values:
        image, sep, user = value.partition("=")
        if not sep or not image:
            raise ValueError(
                f"--image-user {value!r}: expected IMAGE=USER (IMAGE= for an image without USER)"
            )
        out[image] = user
    return out


def parse_image_users_file(data: bytes, filename: str) -> dict[str, str]:
    """A JSON or YAML mapping {image or pattern: user} with string values (YAML reads
    `1000` as a number: quote it, or it is refused by name)."""
    try:
        docs = parse_documents(data, filename)
    except ManifestError as e:
        raise ValueError(str(e)) from None
    obj = docs[0] if len(docs) == 1 else None
    if not isinstance(obj, dict):
        raise ValueError(f"{filename}: expected one mapping {{image: user}}")
    for image, user in obj.items():
        if not isinstance(user, str):
            raise ValueError(
                f'{filename}: the user of {image!r} must be a string ("" for an image without '
                'USER; quote numbers: "1000")'
            )
    return obj
