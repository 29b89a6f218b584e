"""The right fix for one container: the smallest change that makes it compliant, chosen
from where each value came from, and proven by evaluating the changed container again.

Causes, read from the verdict (RUNAS.md s2-s6):
- `runAsUser: 0` on an image whose own user is a non-root uid: remove runAsUser there and
  enforce runAsNonRoot. The Dockerfile needs nothing.
- A root image (no USER, `USER 0`, a name that /etc/passwd maps to uid 0): the Dockerfile
  gets `USER <uid>` of an existing non-root user of the image when it has a fitting one
  (read from its /etc/passwd), else a user created for the purpose; runAsUser with the
  same uid is the stopgap in the workload.
- A named USER (`USER node`): its uid from the image's own /etc/passwd.
- Not enforced (non-root by accident): runAsNonRoot only.
- Unverified: how to learn the image's user; no change is guessed.
- Privileged or added capabilities: the exception path. Windows: ContainerUser.

A uid is stated only when it is known (the image's USER, its /etc/passwd, a user created
for the purpose, which is a choice and says so). Every suggested change is applied to a
pod holding the container's securityContext in memory and evaluated again with
runas.evaluate_pod and PSA restricted; a change that does not come out compliant is not
offered. Standard library only.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from compliance.rules import passwd, runas, shell
from compliance.rules.runas import UID_MAX
from compliance.vocabulary import COMPLIANT, UNENFORCED

CREATED_UID = 10001  # the uid of a user created for the purpose (a convention, not a fact)
FIX_KINDS = (
    "none",  # compliant
    "remove-run-as-user",  # runAsUser: 0 over a non-root image
    "image-user",  # a root image: USER <uid> in the Dockerfile, runAsUser now
    "numeric-user",  # a named USER: its uid from /etc/passwd
    "enforce",  # not enforced: runAsNonRoot only
    "verify",  # the image's user is unknown: learn it first
    "uid-unknown",  # a change is needed but the uid cannot be known here
    "exception",  # built to need root
    "windows",
)

Step = list[tuple[str, str]]  # ("text", ...) and ("code", ...) segments, never markup


def t(*parts: str | tuple[str, str]) -> Step:
    """A step from plain strings and code(...) segments."""
    return [p if isinstance(p, tuple) else ("text", p) for p in parts]


def code(text: str) -> tuple[str, str]:
    return ("code", text)


def plain(step: Step) -> str:
    return "".join(s for _, s in step)


@dataclass(frozen=True)
class Account:
    """What the image's own /etc/passwd says, as the scan stored it (finding detail
    "passwd"): `user` is the entry of the image's USER name, `fit` an existing non-root
    user fit to run it; each {"name", "uid", "gid", "layer", "line"}. `error`: why the
    files could not be read; `missing`: why there is no entry."""

    user: dict | None = None
    fit: dict | None = None
    group: dict | None = None  # the group of `USER name:group`, from /etc/group
    family: str | None = None
    error: str | None = None
    missing: str | None = None
    read: bool = False  # the image's /etc/passwd was read (whether or not it helped)

    @classmethod
    def of(cls, raw: Any) -> Account:
        if not isinstance(raw, dict):
            return cls()

        def entry(v: Any) -> dict | None:
            ok = isinstance(v, dict) and isinstance(v.get("uid"), int)
            return v if ok and 0 <= v["uid"] <= UID_MAX else None

        def text(v: Any) -> str | None:
            return v[:300] if isinstance(v, str) and v else None

        error = text(raw.get("error"))
        group = raw.get("group")
        ok = isinstance(group, dict) and isinstance(group.get("gid"), int)
        return cls(
            entry(raw.get("user")),
            entry(raw.get("fit")),
            group if ok and 0 <= group["gid"] <= UID_MAX else None,
            raw.get("family") if raw.get("family") in ("alpine", "debian", "rhel") else None,
            error,
            text(raw.get("missing")),
            read=error is None,
        )


def source_of(entry: dict) -> str:
    """Where a uid came from, for the page: `/etc/passwd in layer sha256:..., line 12`."""
    layer = str(entry.get("layer") or "")[:80]
    return f"/etc/passwd in layer {layer}, line {entry.get('line')}"


def _image_user(v: Any) -> runas.ImageUser | None:
    return runas.ImageUser.parse(v.image_user) if v.image_user is not None else None


def plan(v: Any, account: Account | None = None) -> dict[str, Any]:
    """The fix for verdict `v` (a runas.ContainerVerdict or explain.verdict_of(finding)).

    Returns {kind, summary, steps, dockerfile, change, uid, uid_source, unknown,
    exception, proof}: `change` is the securityContext change {"level", "set", "remove"}
    proven by `proof` ({"workload": ..., "dockerfile": ...}, each the state and PSA
    outcome after that change alone, or None)."""
    account = account or Account()
    state = v.state
    if state == COMPLIANT:
        return _out("none", "Nothing to do.")
    if v.needs_root and state != UNENFORCED:
        return _out(
            "exception",
            f"This container {v.needs_root}: it is built to run as root, and a non-root "
            "uid would break it. Request an exception (risk acceptance) instead.",
            steps=[
                t(
                    "Keep it as it is and record the accepted risk: an exception with its "
                    "owner, the reason it needs root, a ticket and an end date, approved by "
                    "a security officer."
                ),
                t(
                    "Or remove the need: drop privileged and the added capabilities (a node "
                    "agent may do its work with a narrower grant), then run it as non-root."
                ),
            ],
            exception=True,
        )
    # Every change goes to this container's securityContext: a value set on the pod is
    # overridden there, never changed on the pod, where the other containers inherit it.
    level = "container"
    if v.windows:
        return _out(
            "windows",
            "Run the container as ContainerUser, not ContainerAdministrator.",
            steps=[
                t(
                    "Set ",
                    code("windowsOptions.runAsUserName: ContainerUser"),
                    " (or another non-admin user) and keep ",
                    code("runAsNonRoot: true"),
                    ".",
                )
            ],
            dockerfile=["USER ContainerUser"],
            change=_change(
                level, {"runAsNonRoot": True, "windowsOptions": {"runAsUserName": "ContainerUser"}}
            ),
        )

    image = _image_user(v)
    if state == UNENFORCED:
        return _out(
            "enforce",
            "Enforce the guardrail: add runAsNonRoot: true to this container. Nothing else "
            "changes.",
            steps=[
                t(
                    "Add ",
                    code("runAsNonRoot: true"),
                    f" to the {level} securityContext. It already runs as uid {v.uid}, so "
                    "it keeps starting, and the kubelet will refuse a root image from now on.",
                )
            ],
            change=_change(level, {"runAsNonRoot": True}, v=v),
            uid=v.uid,
        )

    pod_user, _ = pod_values(v)
    nr = (
        []
        if v.run_as_non_root is True
        else [t("Add ", code("runAsNonRoot: true"), " to the container securityContext.")]
    )
    nr_field = {} if v.run_as_non_root is True else {"runAsNonRoot": True}
    if (
        v.run_as_user == 0
        and v.run_as_user_from == "container"
        and pod_user is not None
        and 0 < pod_user <= UID_MAX
    ):
        # The pod already says a non-root uid; the container's 0 overrides it.
        return _out(
            "remove-run-as-user",
            f"Remove runAsUser: 0 from the container securityContext: the pod's "
            f"runAsUser: {pod_user} then applies. The Dockerfile needs nothing.",
            steps=[
                t("Delete ", code("runAsUser: 0"), " from the container securityContext."),
                *nr,
            ],
            change=_change(level, nr_field, ["runAsUser"], v),
            uid=pod_user,
            uid_source=f"the pod's runAsUser: {pod_user}",
        )
    if v.run_as_user == 0 and image is not None and image.name is None:
        uid = image.uid
        if uid is not None and 0 < uid <= UID_MAX:
            # The image already runs as a non-root uid: runAsUser: 0 is the only cause.
            if v.run_as_user_from == "container" and pod_user is None:
                summary = (
                    "Remove runAsUser: 0 from the container securityContext: the image "
                    f"already runs as uid {uid} (its USER {v.image_user}). The Dockerfile "
                    "needs nothing."
                )
                first = t(
                    "Delete ",
                    code("runAsUser: 0"),
                    " from the container securityContext (or set ",
                    code(f"runAsUser: {uid}"),
                    ", the image's own uid).",
                )
                change = _change(level, nr_field, ["runAsUser"], v)
            else:  # the pod sets it: the container says the image's own uid instead
                summary = (
                    f"Override the pod's runAsUser: 0 on this container with the image's own "
                    f"uid {uid} (its USER {v.image_user}). The Dockerfile needs nothing."
                )
                first = t(
                    "Set ",
                    code(f"runAsUser: {uid}"),
                    " in the container securityContext (the pod's ",
                    code("runAsUser: 0"),
                    " stays for the containers that inherit it).",
                )
                change = _change(level, {"runAsUser": uid, **nr_field}, v=v)
            return _out(
                "remove-run-as-user",
                summary,
                steps=[first, *nr],
                change=change,
                uid=uid,
                uid_source=f"the image's USER {v.image_user}",
            )

    if image is None:
        if v.run_as_user == 0:
            return _out(
                "uid-unknown",
                "runAsUser: 0 runs it as root, and which non-root uid it is built for "
                "cannot be known here: the image's user is not verified.",
                steps=_verify_steps(),
                unknown="the image's user is not known",
            )
        return _out(
            "verify",
            "The image's user is not known, so whether the kubelet lets it start is not "
            "known either: verify the image's user first.",
            steps=_verify_steps(),
            unknown="the image's user is not known",
        )

    # From here the image is root, a name, or an out-of-range uid: the image needs a user
    # (a Dockerfile change), and runAsUser on this container is the stopgap.
    if image.name is not None and (
        account.user is None or account.user.get("name") != image.name
    ):  # an entry for another name (a stale answer) says nothing about this one
        account = Account(
            fit=account.fit,
            family=account.family,
            error=account.error,
            missing=account.missing,
            read=account.read,
        )
        return _unknown_name(image.name, getattr(v, "image", "") or "<image>", account, level)
    uid, source, created = _target_uid(image, account)
    fields: dict[str, Any] = {"runAsUser": uid}
    if v.run_as_non_root is not True:
        fields["runAsNonRoot"] = True
    steps: list[Step] = []
    if v.run_as_user == 0:
        where = "container" if v.run_as_user_from == "container" else "pod"
        steps.append(
            t("Replace ", code("runAsUser: 0"), f" (set on the {where}) for this container:")
        )
    if image.name is not None and account.user["uid"] != 0:
        kind = "numeric-user"
        summary = (
            f"The image's USER is the name {_shown(image.name)}, which the kubelet cannot "
            f"check; its uid is {uid}, read from the image's /etc/passwd. Use the number."
        )
        numeric = f"{uid}:{account.group['gid']}" if account.group else str(uid)
        steps += [
            t(
                "In the Dockerfile replace ",
                code(f"USER {v.image_user}"),
                " with ",
                code(f"USER {numeric}"),
                (
                    f" (group {_shown(account.group['name'])} is gid {account.group['gid']}, "
                    f"/etc/group line {account.group['line']})."
                    if account.group
                    else "."
                ),
            ),
            t(
                "Or now, in the workload: set ",
                code(f"runAsUser: {uid}"),
                f" in the {level} securityContext.",
            ),
        ]
        dockerfile = [f"USER {numeric}"]
    else:
        kind = "image-user"
        if image.name is None and image.uid is not None and not 0 <= image.uid <= UID_MAX:
            what = f"The image's uid {image.uid} is outside 0..{UID_MAX}"
        elif image.name is None and image.uid not in (None, 0):
            what = (
                "It runs as root by what the cluster reports, although the image's recorded "
                f"USER is {v.image_user} (the record may be stale)"
            )
        else:
            what = "The image runs as root"
        if not created:
            why = (
                f"{what}; it already has the non-root user "
                f"{_shown(account.fit['name'])}, uid {uid} (read from its /etc/passwd)"
            )
        elif account.read:
            why = (
                f"{what}, and its /etc/passwd has no non-root user that fits: create one "
                f"for the purpose (uid {uid} is a choice, not read from the image)"
            )
        else:
            why = (
                f"{what}: create a user for the purpose (uid {uid} is a choice; the "
                "image's /etc/passwd was not read, so if it already has a non-root user "
                "for the application, use that user's uid instead)"
            )
        summary = why + ". Make it the image's USER."
        dockerfile = [
            *(passwd.create_user_line(account.family, uid) if created else []),
            f"USER {uid}",
        ]
        steps += [
            t(
                "In the Dockerfile, as the last USER line: ",
                code(f"USER {uid}"),
                " (after the lines that create the user, below)." if created else ".",
            ),
            t(
                "Now, in the workload: set ",
                code(f"runAsUser: {uid}"),
                f" in the {level} securityContext until the image is rebuilt"
                + (
                    "; files the application writes must be writable by that uid."
                    if created
                    else "."
                ),
            ),
        ]
    if "runAsNonRoot" in fields:
        steps.append(t("Add ", code("runAsNonRoot: true"), f" to the {level} securityContext."))
    return _out(
        kind,
        summary,
        steps=steps,
        dockerfile=dockerfile,
        change=_change(level, fields, v=v),
        uid=uid,
        uid_source=source,
        uid_name=(image.name if kind == "numeric-user" else (account.fit or {}).get("name"))
        if not created
        else None,
    )


def _target_uid(image: runas.ImageUser, account: Account) -> tuple[int, str, bool]:
    """(uid to use, where it comes from, whether the user must be created)."""
    if image.name is not None and account.user is not None and account.user["uid"] != 0:
        return account.user["uid"], source_of(account.user), False
    if account.fit is not None:
        return account.fit["uid"], source_of(account.fit), False
    return CREATED_UID, "a user created for the purpose", True


def _unknown_name(name: str, image: str, account: Account, level: str) -> dict[str, Any]:
    why = account.error or account.missing or "the image's /etc/passwd was not read"
    lookup = shell.command(
        "docker",
        "run",
        "--rm",
        "--entrypoint",
        "getent",
        image,
        "passwd",
        name,
        values=(image, name),
    )
    find = (
        t("Look the uid up in the image: ", code(lookup.text), " (the third field).")
        if lookup
        else t(f"Look the uid up in the image's /etc/passwd (the command is {lookup.withheld}).")
    )
    return _out(
        "uid-unknown",
        f"The image's USER is the name {_shown(name)}, and its uid is not known here "
        f"({why}). Find it, then use the number.",
        steps=[
            find,
            t(
                "Then in the Dockerfile: ",
                code("USER <that uid>"),
                ", or in the workload: ",
                code("runAsUser: <that uid>"),
                f" in the {level} securityContext.",
            ),
        ],
        commands=[lookup.text] if lookup else [],
        unknown=why,
    )


def _verify_steps() -> list[Step]:
    return [
        t(
            "Let the scan read the image: add its registry (and credentials) under "
            "Settings, or set an image user override for it."
        ),
        t(
            "In CI: ",
            code("welkin-evaluate --resolve"),
            " reads it from the registry, or give it with ",
            code("--image-user IMAGE=USER"),
            ".",
        ),
    ]


def _shown(value: str, limit: int = 80) -> str:
    text = repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _change(level: str, set_: dict, remove: list[str] = (), v: Any = None) -> dict[str, Any]:
    """The securityContext change at `level`. A pod-level `runAsNonRoot: false`, which PSA
    restricted rejects even when overridden, is removed from the pod too (`pod_remove`):
    that changes no other container (unset and false both leave it unchecked). A pod-level
    runAsUser: 0 stays: the containers that inherit it would change identity."""
    pod_remove = []
    if v is not None and level == "container" and pod_values(v)[1] is False:
        pod_remove.append("runAsNonRoot")
    return {"level": level, "set": set_, "remove": list(remove), "pod_remove": pod_remove}


def pod_values(v: Any) -> tuple[int | None, bool | None]:
    """(runAsUser, runAsNonRoot) of the pod's own securityContext."""
    return getattr(v, "pod_run_as_user", None), getattr(v, "pod_run_as_non_root", None)


def _out(kind: str, summary: str, **kw: Any) -> dict[str, Any]:
    out = {
        "kind": kind,
        "summary": summary,
        "steps": [],
        "dockerfile": None,
        "change": None,
        "uid": None,
        "uid_source": None,
        "uid_name": None,  # the user the uid belongs to, when read from /etc/passwd
        "unknown": None,
        "exception": False,
        "proof": None,
        "commands": [],  # shell commands in the steps, each quoted by shell.command
    }
    out.update(kw)
    return out


# --- the proof ---------------------------------------------------------------------------


def levels_of(v: Any) -> tuple[dict, dict]:
    """(pod, container) securityContexts as the verdict knows them: each field at the
    level it came from."""
    pod: dict[str, Any] = {}
    ctr: dict[str, Any] = {}
    for key, value, where in (
        ("runAsUser", v.run_as_user, v.run_as_user_from),
        ("runAsNonRoot", v.run_as_non_root, v.run_as_non_root_from),
    ):
        if value is not None and where in ("pod", "container"):
            (pod if where == "pod" else ctr)[key] = value
    pod_user, pod_non_root = pod_values(v)
    if pod_user is not None:
        pod["runAsUser"] = pod_user
    if pod_non_root is not None:
        pod["runAsNonRoot"] = pod_non_root
    name = getattr(v, "run_as_user_name", None)
    if v.windows and name is not None:
        ctr["windowsOptions"] = {"runAsUserName": name}
    return pod, ctr


def apply(sc: dict, change: dict) -> dict:
    """A securityContext with the change applied (strategic merge: null removes)."""
    out = {k: v for k, v in sc.items() if k not in change["remove"]}
    for key, value in change["set"].items():
        if isinstance(value, dict):
            out[key] = {**(out.get(key) or {}), **value}
        else:
            out[key] = value
    return out


def evaluate(v: Any, pod_sc: dict, ctr_sc: dict, image_user: str | None) -> dict[str, Any]:
    """The container's state and PSA restricted for a pod holding only it."""
    pod: dict[str, Any] = {
        "metadata": {"name": "proof", "namespace": "proof"},
        "spec": {
            "securityContext": pod_sc,
            "containers": [{"name": "c", "image": "image", "securityContext": ctr_sc}],
        },
    }
    if v.windows:
        pod["spec"]["os"] = {"name": "windows"}
    users = {"image": image_user} if image_user is not None else {}
    verdict = runas.evaluate_pod(pod, users)
    return {
        "state": verdict.containers[0].state,
        "psa": "allowed" if verdict.psa.allowed else "; ".join(verdict.psa.violations),
    }


def applied(pod_sc: dict, ctr_sc: dict, change: dict) -> tuple[dict, dict]:
    """(pod, container) securityContexts after the change."""
    if change["level"] == "pod":
        return apply(pod_sc, change), ctr_sc
    cleanup = {"set": {}, "remove": change.get("pod_remove") or []}
    return apply(pod_sc, cleanup), apply(ctr_sc, change)


def prove(v: Any, fix: dict[str, Any]) -> dict[str, Any]:
    """The fix with its proof; a change that does not make the container compliant is
    withdrawn (kind `uid-unknown` names why)."""
    change = fix.get("change")
    if not change:
        return fix
    pod_sc, ctr_sc = levels_of(v)
    proof = {
        "workload": evaluate(v, *applied(pod_sc, ctr_sc, change), v.image_user),
        "dockerfile": None,
    }
    if fix.get("dockerfile") and not v.windows:
        # The image rebuilt with the new USER, and the workload's stopgap runAsUser gone
        # (kept while the pod sets a runAsUser of its own, which would win over the image).
        rebuilt = change
        proof["keeps_run_as_user"] = pod_values(v)[0] is not None
        if pod_values(v)[0] is None:
            keep = {k: x for k, x in change["set"].items() if k != "runAsUser"}
            rebuilt = {**change, "set": keep, "remove": ["runAsUser"]}
        user = fix["dockerfile"][-1].removeprefix("USER ")
        proof["dockerfile"] = evaluate(v, *applied(pod_sc, ctr_sc, rebuilt), user)
    results = [p for p in (proof["workload"], proof["dockerfile"]) if p]
    if all(p["state"] == COMPLIANT for p in results):
        return {**fix, "proof": proof}
    failed = next(p for p in results if p["state"] != COMPLIANT)
    return _out(
        "uid-unknown",
        f"No change to this container alone makes it compliant (after the change it "
        f"would be {failed['state']}): fix it by hand and check it again.",
        steps=fix["steps"],
        unknown=f"the suggested change leaves it {failed['state']}",
    )


def remediation(v: Any, account: Account | None = None) -> dict[str, Any]:
    """plan(), proven."""
    return prove(v, plan(v, account))


def one_line(fix: dict[str, Any]) -> str:
    """The fix in one line of plain text: exports, notifications, the CLI."""
    parts = [fix["summary"]]
    if (fix.get("uid_source") or "").startswith("/etc/passwd"):
        parts.append(f"uid {fix['uid']} from {fix['uid_source']}")
    change = fix.get("change")
    if change:
        sets = ", ".join(f"{k}: {_yamlish(x)}" for k, x in change["set"].items())
        removes = ", ".join(f"remove {k}" for k in change["remove"])
        parts.append(
            f"{change['level']} securityContext: " + "; ".join(p for p in (removes, sets) if p)
        )
    if fix.get("dockerfile"):
        lines = [x for x in fix["dockerfile"] if not x.startswith("#")]
        if len(lines) > 2:  # both families' ways to create the user: the page shows them
            lines = ["(create the user: see the finding page)", lines[-1]]
        parts.append("Dockerfile: " + "; ".join(lines))
    return " | ".join(parts)


def _yamlish(value: Any) -> str:
    if value is True:
        return "true"
    if value is False:
        return "false"
    if isinstance(value, dict):
        return "{" + ", ".join(f"{k}: {_yamlish(x)}" for k, x in value.items()) + "}"
    return str(value)


def apply_to_pod(pod: dict, container_key: str, name: str, change: dict) -> dict:
    """A copy of a pod (or a pod template: {"spec": ...}) with the change applied: to the
    pod's securityContext, or to that of the container `name` in `container_key`
    (containers, initContainers, ephemeralContainers) with the pod's cleanup."""
    spec = dict(pod.get("spec") or {})
    sc = spec.get("securityContext")
    pod_sc = sc if isinstance(sc, dict) else {}
    if change["level"] == "pod":
        spec["securityContext"] = apply(pod_sc, change)
    else:
        if change.get("pod_remove"):
            spec["securityContext"] = apply(pod_sc, {"set": {}, "remove": change["pod_remove"]})
        items = []
        for item in spec.get(container_key) or []:
            if isinstance(item, dict) and item.get("name") == name:
                sc = item.get("securityContext")
                sc = apply(sc if isinstance(sc, dict) else {}, change)
                item = {**item, "securityContext": sc}
            items.append(item)
        spec[container_key] = items
    return {**pod, "spec": spec}
