"""Why a finding is in its state, how other tools would see it, and how to fix it here.

Pure functions of a stored finding: the finding page renders them, exports can reuse them.
"""

from __future__ import annotations

import difflib
import json
from types import SimpleNamespace
from typing import Any

import yaml

from compliance.rules import controls, fix, shell
from compliance.rules.runas import SPEC_KEYS
from compliance.vocabulary import OBSERVED, STATE, WORKLOAD_KINDS

CONTAINER_KEYS = SPEC_KEYS


def verdict_of(f: Any) -> SimpleNamespace:
    """The fields controls.remediation reads, from a stored Finding."""
    d = f.detail or {}
    return SimpleNamespace(
        state=f.state,
        image=f.image,
        windows=d.get("windows", False),
        image_user=f.image_user,
        uid=f.uid,
        run_as_user=f.run_as_user,
        run_as_non_root=f.run_as_non_root,
        run_as_user_from=d.get("run_as_user_from"),
        run_as_non_root_from=d.get("run_as_non_root_from"),
        needs_root=d.get("needs_root"),
        run_as_user_name=d.get("run_as_user_name"),
        pod_run_as_user=_pod_value(d, "pod_run_as_user", int),
        pod_run_as_non_root=_pod_value(d, "pod_run_as_non_root", bool),
    )


def _pod_value(d: dict, key: str, kind: type) -> Any:
    """A pod-level value the scan stored; for findings stored before it did, what PSA's
    violations say of the pod (it names a pod-level runAsUser: 0 or runAsNonRoot: false)."""
    value = d.get(key)
    if isinstance(value, kind) and not (kind is int and isinstance(value, bool)):
        return value
    psa = " ".join(v for v in d.get("psa_violations") or [] if isinstance(v, str))
    if key == "pod_run_as_user" and ("(pod must not set runAsUser" in psa or "(pod and " in psa):
        return 0
    if key == "pod_run_as_non_root" and "(pod must not set securityContext.runAsNonRoot" in psa:
        return False
    return None


def _origin(where: str | None) -> str:
    return {
        "pod": "set on the pod (spec.securityContext)",
        "container": "set on the container",
    }.get(where or "", "not set anywhere")


def steps(f: Any) -> list[dict[str, str]]:
    """The evaluation, step by step, as the kubelet would do it."""
    d = f.detail or {}
    out = [
        {
            "title": "Which container",
            "text": (
                f"{f.container_type} container {f.container!r} of {f.workload_kind} "
                f"{f.workload_name}, {f.pods} pod{'s' if f.pods != 1 else ''}"
                + (
                    f"; its pods disagree ({_states_text(d.get('states'))}), the worst counts"
                    if f.mixed
                    else ""
                )
                + (f"; sample pod {d['pod']}" if d.get("pod") else "")
                + "."
            ),
        },
        {
            "title": "Merged securityContext",
            "text": (
                f"runAsNonRoot = {_val(f.run_as_non_root)} "
                f"({_origin(d.get('run_as_non_root_from'))}); runAsUser = "
                f"{_val(f.run_as_user)} ({_origin(d.get('run_as_user_from'))}). The "
                "container's value wins when set, else the pod's."
            ),
        },
    ]
    if f.image_user is None:
        image = "unknown"
    elif f.image_user == "":
        image = "no USER (the kubelet treats it as uid 0)"
    else:
        image = f"USER {f.image_user}"
    note = d.get("image_note")
    builds = d.get("digests") or []
    out.append(
        {
            "title": "The image's user",
            "text": f"{f.image}: {image}; source: {f.image_user_source}"
            + (f" ({note})" if note else "")
            + "."
            + (
                f" Its pods run {len(builds)} builds ({', '.join(builds)}): an exception pinned"
                " to one build accepts it only once every pod runs that build."
                if len(builds) > 1
                else ""
            ),
        }
    )
    if f.run_as_non_root is not True:
        kubelet = "runAsNonRoot is not true, so the kubelet does not check the user."
    elif f.kubelet_error:
        kubelet = f"The kubelet refuses to start it: {f.kubelet_error}"
    elif f.run_as_user is not None:
        kubelet = f"runAsUser {f.run_as_user} is not 0: the kubelet lets it start."
    elif f.state == "unverified":
        kubelet = "The kubelet's answer depends on the image's user, which is unknown here."
    else:
        kubelet = "The image's uid is not 0: the kubelet lets it start."
    out.append({"title": "The kubelet's check", "text": kubelet})
    if f.runs_as_root is True:
        who = "uid 0 (root)"
    elif f.runs_as_root is False:
        who = f"uid {f.uid}" if f.uid is not None else "a non-root user"
    else:
        who = "unknown"
    out.append(
        {
            "title": "Who it runs as",
            "text": f"{who}, {f.evidence}"
            + (
                " from the pod's status."
                if f.evidence == OBSERVED
                else " from the pod spec and the image."
            ),
        }
    )
    out.append({"title": "Result", "text": STATE[f.state].description})
    return out


def _val(v: Any) -> str:
    return "unset" if v is None else json.dumps(v)


def _states_text(states: dict | None) -> str:
    return ", ".join(f"{n} {s}" for s, n in sorted((states or {}).items()))


def other_tools(f: Any) -> list[str]:
    """Where policy tools disagree with the kubelet about this container (RUNAS.md s8)."""
    d = f.detail or {}
    notes = []
    if f.state == "blocked" and f.run_as_user is None and not d.get("windows"):
        notes.append(
            "PSA restricted, Gatekeeper, Kyverno, Polaris, Kubescape and checkov "
            "all pass this container: none of them can see the image's USER. The "
            "kubelet refuses it."
        )
    if f.run_as_non_root is True and f.run_as_user == 0:
        notes.append(
            "Polaris, checkov CKV_K8S_23 and Kubescape's user check pass "
            "runAsNonRoot: true with runAsUser: 0; the kubelet refuses it."
        )
    if f.run_as_user is not None and f.run_as_user >= 1 and f.run_as_non_root is not True:
        notes.append(
            f"It runs as uid {f.run_as_user}, yet PSA restricted and Kyverno's "
            "require-run-as-nonroot reject it for lacking runAsNonRoot: true."
        )
    if any(
        "pod must not set runAsUser=0" in v or "pod and container" in v
        for v in d.get("psa_violations") or []
    ) and f.run_as_user not in (None, 0):
        notes.append(
            "PSA rejects the pod-level runAsUser: 0 even though this container overrides it."
        )
    if f.container_type == "ephemeral":
        notes.append("Polaris skips ephemeral containers; checkov looks only at spec.containers.")
    elif f.container_type in ("init", "sidecar"):
        notes.append("checkov looks only at spec.containers, not at init containers.")
    return notes


def remediation(f: Any, context: str | None = None) -> dict[str, Any]:
    """The proven fix for a stored finding (rules/fix.py), with what the page, the API and
    the exports show: the securityContext before and after, the strategic merge patch,
    `kubectl --context <context> -n <ns> patch ...`, and the fix in one line."""
    d = f.detail or {}
    v = verdict_of(f)
    out = fix.remediation(v, fix.Account.of(d.get("passwd")))
    out.update(yaml=None, diff=None, patch=None, kubectl=None, kubectl_withheld=None, note=None)
    out["one_line"] = fix.one_line(out)
    out["dockerfile_text"] = "\n".join(out["dockerfile"] or [])
    change = out["change"]
    if not change:
        return out
    kind = WORKLOAD_KINDS.get(f.workload_kind)
    if f.container_type == "ephemeral":
        out["note"] = (
            "An ephemeral container (kubectl debug) cannot be changed in place, nor is it in "
            "a pod template: start the next one with this securityContext."
        )
    elif kind is None or kind.resource is None:
        out["note"] = (
            f"{f.workload_kind} {f.workload_name} cannot be patched in place: change "
            "the manifest that creates it and recreate it."
            if f.workload_kind == "Pod"
            else f"{f.workload_kind} is not a kind this page knows how to patch; apply "
            "the securityContext below to its pod template."
        )
    key = CONTAINER_KEYS.get(f.container_type, "containers")
    pod_sc, ctr_sc = fix.levels_of(v)
    pod_after, ctr_after = fix.applied(pod_sc, ctr_sc, change)
    out["diff"] = _diff(pod_sc, pod_after, ctr_sc, ctr_after, key, f.container)
    spec: dict[str, Any] = {}
    nulls = dict.fromkeys(change["remove"])  # strategic merge: null deletes the field
    if change["level"] == "pod":
        spec["securityContext"] = {**nulls, **change["set"]}
    else:
        spec[key] = [{"name": f.container, "securityContext": {**nulls, **change["set"]}}]
        if change.get("pod_remove"):
            spec["securityContext"] = dict.fromkeys(change["pod_remove"])
    if f.container_type == "ephemeral":
        return out  # the diff shows the securityContext; there is no template to patch
    if kind is not None and kind.kind == "Pod":
        path: tuple[str, ...] = ("spec",)
    else:
        path = kind.pod_spec if kind and kind.pod_spec else ("spec", "template", "spec")
    patch: dict[str, Any] = spec
    for part in reversed(path):
        patch = {part: patch}
    out["patch"] = patch
    out["yaml"] = yaml.safe_dump(patch, sort_keys=False)
    if kind and kind.resource and f.container_type != "ephemeral":
        cluster = getattr(f, "cluster", None)
        ctx = context or getattr(cluster, "context", "") or getattr(cluster, "name", "")
        kubectl = shell.command(
            "kubectl",
            *(("--context", ctx) if ctx else ()),
            "-n",
            f.namespace,
            "patch",
            kind.resource,
            f.workload_name,
            "--type",
            "strategic",
            "-p",
            json.dumps(patch, separators=(",", ":")),
            values=(ctx, f.namespace, f.workload_name) if ctx else (f.namespace, f.workload_name),
        )
        out["kubectl"], out["kubectl_withheld"] = kubectl.text, kubectl.withheld
        if kubectl:
            out["commands"] = [*out["commands"], kubectl.text]
    return out


def _diff(pod_sc, pod_after, ctr_sc, ctr_after, key: str, container: str) -> list[tuple[str, str]]:
    """The securityContexts before and after, as (sign, line) pairs of a unified diff."""
    lines: list[tuple[str, str]] = []

    def block(title: str, before: dict, after: dict, indent: str) -> None:
        if before == after:
            return
        lines.extend((" ", line) for line in title.splitlines())
        before_lines = _yaml_lines(before, indent)
        after_lines = _yaml_lines(after, indent)
        for sign, line in _difflines(before_lines, after_lines):
            lines.append((sign, line))

    block("securityContext:", pod_sc, pod_after, "  ")
    block(f"{key}:\n- name: {container}\n  securityContext:", ctr_sc, ctr_after, "    ")
    return lines


def _yaml_lines(sc: dict, indent: str) -> list[str]:
    if not sc:
        return [indent + "{}"]
    return [indent + line for line in yaml.safe_dump(sc, sort_keys=True).splitlines()]


def _difflines(a: list[str], b: list[str]) -> list[tuple[str, str]]:
    out = []
    for line in difflib.ndiff(a, b):
        if line[:1] in ("-", "+", " "):
            out.append((line[:1], line[2:]))
    return out


def control_rows(f: Any) -> list[dict[str, Any]]:
    return [
        {"control": controls.CONTROLS[c], "why": controls.rationale(f.state, c)}
        for c in controls.controls_for(f.state)
    ]
