"""Offline evaluation of manifest files: the service behind `manage.py evaluate`.

Reads files, evaluates every pod (or pod template) in them and returns one report plus the
errors found on the way; errors in one document never hide the results of the others.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

import orjson

from compliance import controls, gate, runas
from compliance.manifests import (
    ManifestError,
    PodSource,
    gc_paused,
    parse_documents,
    pod_sources,
)
from compliance.vocabulary import STATES


@dataclass
class OfflineReport:
    """The evaluated objects, a count per state, and the input errors."""

    objects: list[dict[str, Any]] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)
    summary: dict[str, int] = field(default_factory=lambda: dict.fromkeys(STATES, 0))

    @property
    def has_violations(self) -> bool:
        return bool(self.summary["root"] or self.summary["blocked"])

    def as_dict(self) -> dict[str, Any]:
        return {"objects": self.objects, "summary": self.summary, "errors": self.errors}


def evaluate_object(
    pod: dict, image_users: Mapping[str, str], sources: Mapping[str, str] | None = None
) -> dict[str, Any]:
    """One pod's verdicts in the JSON shape of `evaluate --format json` (kind/name aside)."""
    verdict = runas.evaluate_pod(pod, image_users, sources)
    return {
        "psa_restricted": verdict.psa.as_dict(),
        "containers": [
            {
                **c.as_dict(),
                "controls": list(controls.controls_for(c.state)),
                "remediation": controls.remediation(c),
            }
            for c in verdict.containers
        ],
    }


UsersFor = Callable[[dict], tuple[Mapping[str, str], Mapping[str, str]]]


def evaluate_inputs(
    inputs: Iterable[tuple[str, bytes]],
    image_users: Mapping[str, str],
    sources: Mapping[str, str] | None = None,
    prepare: Callable[[list[dict]], None] | None = None,
    users_for: UsersFor | None = None,
) -> OfflineReport:
    """Evaluate (filename, content) pairs into one report. `prepare`, when given, sees each
    document's pods before they are evaluated (registry lookups fill image_users);
    `users_for`, when given, picks (image users, sources) per pod, for its platform (an
    image index can run a different USER per architecture), as a scan does."""
    report = OfflineReport()
    # Everything built here is acyclic; without the pause, full collections rescan the
    # parsed files' tens of millions of objects again and again (4x slower at 100k pods).
    with gc_paused():
        for filename, data in inputs:
            _evaluate_file(report, filename, data, image_users, sources, prepare, users_for)
    return report


def _evaluate_file(
    report: OfflineReport,
    filename: str,
    data: bytes,
    image_users: Mapping[str, str],
    sources: Mapping[str, str] | None,
    prepare: Callable[[list[dict]], None] | None,
    users_for: UsersFor | None,
) -> None:
    try:
        docs = parse_documents(data, filename)
    except ManifestError as e:
        report.errors.append(str(e))
        return
    for n, doc in enumerate(docs, 1):
        where = f"{filename}: document {n}" if len(docs) > 1 else filename
        items = [_checked(item) for item in pod_sources(doc, where)]
        if prepare is not None:
            prepare([i.pod for i in items if not isinstance(i, ManifestError)])
        for item in items:
            if isinstance(item, ManifestError):
                report.errors.append(str(item))
                continue
            users, srcs = users_for(item.pod) if users_for else (image_users, sources)
            try:
                result = evaluate_object(item.pod, users, srcs)
            except ValueError as e:
                report.errors.append(f"{item.where}: {e}")
                continue
            report.objects.append(
                {"kind": item.kind, "namespace": item.namespace, "name": item.name, **result}
            )
            for c in result["containers"]:
                report.summary[c["state"]] += 1


def _checked(item: PodSource | ManifestError) -> PodSource | ManifestError:
    """The gate's rules (compliance/gate.py) for a manifest's names, images and strings."""
    if isinstance(item, ManifestError):
        return item
    try:
        gate.check_pod(item.pod, listed=False)
    except gate.Rejected as e:
        return ManifestError(f"{item.where}: {e}")
    return item


def parse_image_user_args(values: Iterable[str]) -> dict[str, str]:
    """`IMAGE=USER` pairs; `IMAGE=` means the image has no USER."""
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
    """A JSON object {image: user} with string values."""
    try:
        obj = orjson.loads(data)
    except orjson.JSONDecodeError as e:
        raise ValueError(f"{filename}: invalid JSON: {e}") from None
    if not isinstance(obj, dict):
        raise ValueError(f"{filename}: expected a JSON object {{image: user}}")
    for image, user in obj.items():
        if not isinstance(user, str):
            raise ValueError(
                f'{filename}: the user of {image!r} must be a string ("" for an image without USER)'
            )
    return obj
