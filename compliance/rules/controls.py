"""States -> ISO/IEC 27001 controls and remediation, kept as data an auditor can read.

Each container state (see DESIGN.md's vocabulary) maps to the Annex A controls it touches
and a one-line rationale per (state, control) pair. Data is keyed by the 2013 number (what
earlier exports and stored exceptions hold); everything shown or exported puts the 2022
number first and the 2013 number beside it (the 2013 transition ended in October 2025).
Remediation text is built from the verdict's own facts (which user, which level set what)
so that a team lead can paste it. Standard library only.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Protocol

from compliance.rules import shell
from compliance.rules.runas import UID_MAX
from compliance.vocabulary import BLOCKED, COMPLIANT, ROOT, UNENFORCED, UNVERIFIED


@dataclass(frozen=True)
class Control:
    """One ISO/IEC 27001 Annex A control, by its 2013 and 2022 numbers."""

    id: str  # 2013 number, the one used in data and exports
    id_2022: str
    title: str
    title_2022: str

    @property
    def label(self) -> str:
        return f"{self.id_2022} (2013: {self.id})"


CONTROLS: dict[str, Control] = {
    "A.9.4.4": Control(
        "A.9.4.4",
        "8.18",
        "Use of privileged utility programs",
        "Use of privileged utility programs",
    ),
    "A.12.6.1": Control(
        "A.12.6.1",
        "8.8",
        "Management of technical vulnerabilities",
        "Management of technical vulnerabilities",
    ),
    "A.14.2.5": Control(
        "A.14.2.5",
        "8.27",
        "Secure system engineering principles",
        "Secure system architecture and engineering principles",
    ),
}

# (state, control) -> why the state is evidence against the control.
MAPPING: dict[str, dict[str, str]] = {
    COMPLIANT: {},
    UNENFORCED: {
        "A.14.2.5": "Least privilege is not enforced by the platform; it holds only by "
        "the image's current USER.",
    },
    ROOT: {
        "A.9.4.4": "A process running as uid 0 holds privileged rights that can override "
        "system and application controls.",
        "A.12.6.1": "Any vulnerability exploited in a root container gains root in the "
        "container and a shorter path to the node.",
        "A.14.2.5": "The workload is not engineered for least privilege.",
    },
    BLOCKED: {
        "A.14.2.5": "The image or manifest was built without a verifiable non-root user, so "
        "the guardrail stops the workload from starting.",
    },
    UNVERIFIED: {
        "A.12.6.1": "The exposure of the workload cannot be assessed while its identity is "
        "unknown.",
        "A.14.2.5": "The workload does not declare a verifiable numeric user.",
    },
}

# Users of well-known official images, so a blocked `USER <name>` gets its numeric form.
WELL_KNOWN_UIDS = {
    "node": 1000,  # node images
    "nobody": 65534,
    "nginx": 101,  # nginx images
    "www-data": 33,
    "postgres": 999,  # postgres images
    "redis": 999,  # redis images
    "mysql": 999,
    "elasticsearch": 1000,
    "grafana": 472,
    "nonroot": 65532,  # distroless
    "app": 1000,
}

DEFAULT_UID = 1000


def controls_for(state: str) -> tuple[str, ...]:
    """The 2013 control ids a state is evidence against, in a stable order."""
    return tuple(MAPPING[state])


def ids_2022(state: str) -> tuple[str, ...]:
    """The same controls by their ISO/IEC 27001:2022 numbers, in the same order."""
    return tuple(CONTROLS[c].id_2022 for c in MAPPING[state])


def rationale(state: str, control_id: str) -> str:
    return MAPPING[state][control_id]


def numeric_user(name: str | None) -> int:
    """A numeric uid to suggest for a user name (its usual uid in official images)."""
    return WELL_KNOWN_UIDS.get(name or "", DEFAULT_UID)


class Verdict(Protocol):
    """What remediation reads of a verdict: a runas.ContainerVerdict, or a stored finding
    seen through explain.verdict_of."""

    state: str
    windows: bool
    image_user: str | None
    uid: int | None
    run_as_user: int | None
    run_as_non_root: bool | None
    run_as_user_from: str | None
    run_as_non_root_from: str | None
    needs_root: str | None  # "is privileged", "adds capabilities ..."


def remediation(v: Verdict) -> dict[str, Any]:
    """Steps that fix one container verdict (a runas.ContainerVerdict).

    Returns {"summary", "dockerfile", "security_context": {"level", "fields"}, "steps"}.
    The securityContext goes where the offending value was set: a container-level value
    can only be overridden at container level; an unset one is set on the container so
    the change touches only this container.
    """
    state = v.state
    if state == COMPLIANT:
        return {
            "summary": "Nothing to do.",
            "dockerfile": None,
            "security_context": None,
            "steps": [],
            "commands": [],
            "exception": False,
        }

    if v.needs_root and state != UNENFORCED:
        return {
            "summary": f"This container {v.needs_root}: it is built to run as uid 0, and "
            f"runAsUser: {DEFAULT_UID} would break it. Request an exception (risk acceptance) "
            "instead of a fix that breaks it.",
            "dockerfile": None,
            "security_context": None,
            "steps": [
                "Keep it as it is, and record the accepted risk: an exception with its owner, "
                "the reason it needs root, a ticket and an end date, approved by a security "
                "officer.",
                "Or remove the need: drop privileged and the added capabilities (a node agent "
                "may do its work from a DaemonSet with a narrower grant), then give the image "
                f"a numeric non-root USER ({DEFAULT_UID}).",
            ],
            "commands": [],
            "exception": True,
        }

    if v.windows:
        fields = {"runAsNonRoot": True, "windowsOptions": {"runAsUserName": "ContainerUser"}}
        level = v.run_as_non_root_from or "container"
        return _result(
            "Run the container as ContainerUser, not ContainerAdministrator.",
            "USER ContainerUser",
            level,
            fields,
            [
                "Set windowsOptions.runAsUserName to ContainerUser (or another non-admin "
                "user) and keep runAsNonRoot: true."
            ],
        )

    uid = DEFAULT_UID
    image_name = None
    if v.image_user is not None:
        image_name = v.image_user.split(":", 1)[0]
        if image_name and not image_name.lstrip("+-").isdigit():
            uid = numeric_user(image_name)
        else:
            image_name = None

    if state == "unenforced":
        level = v.run_as_non_root_from or "container"
        return _result(
            "Enforce the guardrail: add runAsNonRoot: true.",
            None,
            level,
            {"runAsNonRoot": True},
            [
                f"Add runAsNonRoot: true to the {level} securityContext; the container already "
                f"runs as uid {v.uid}, so it keeps starting."
            ],
        )

    # Pick the level: wherever runAsUser (or runAsNonRoot) was set, else the container.
    level = v.run_as_user_from or v.run_as_non_root_from or "container"
    if v.run_as_non_root_from == "container" or v.run_as_user_from == "container":
        level = "container"
    fields = {"runAsNonRoot": True, "runAsUser": uid}
    dockerfile = f"USER {uid}"
    steps: list[str] = []
    commands: list[shell.Suggested] = []
    if v.run_as_user == 0:
        summary = f"runAsUser is 0 at {v.run_as_user_from} level: set it to {uid}."
        steps.append(
            f"Change runAsUser: 0 to runAsUser: {uid} in the {v.run_as_user_from} securityContext."
        )
    elif image_name is not None:
        summary = (
            f"The image's USER is the name {quoted(image_name)}, which the kubelet cannot "
            f"verify: use its numeric uid {uid}."
        )
        check = shell.command("id", "-u", "--", image_name)
        commands.append(check)
        steps.append(
            f"In the Dockerfile replace `USER {shown(image_name)}` with `USER {uid}` "
            + (
                f"(check with `{check.text}` inside the image)."
                if check
                else f"(look the user up in the image's /etc/passwd; the check command is "
                f"{check.withheld})."
            )
        )
        steps.append(f"Or set runAsUser: {uid} in the {level} securityContext.")
    elif v.uid is not None and not 0 <= v.uid <= UID_MAX:
        summary = f"The image's uid {v.uid} is out of range: use a uid from 1 to 2147483647."
        steps.append(f"In the Dockerfile set `USER {uid}`, or set runAsUser: {uid}.")
    elif state == "unverified":
        summary = "The image's USER is unknown: declare the user explicitly so it can be verified."
        steps.append(
            f"Set runAsUser: {uid} and runAsNonRoot: true in the {level} "
            "securityContext, or put a numeric `USER` in the Dockerfile."
        )
    else:
        summary = (
            "The image has no USER (or USER 0) and runs as root: give it a numeric non-root user."
        )
        steps.append(
            f"Add `USER {uid}` as the last USER line of the Dockerfile (create the "
            "user if the image needs a home directory)."
        )
        steps.append(f"Or set runAsUser: {uid} in the {level} securityContext.")
    if v.run_as_non_root is not True:
        steps.append(
            f"Add runAsNonRoot: true to the {level} securityContext so the kubelet "
            "refuses any root image in the future."
        )
    return _result(summary, dockerfile, level, fields, steps, commands)


def shown(value: str, limit: int = 80) -> str:
    """A hostile value inside prose: as it is when plain, else quoted and escaped (repr
    never holds a raw control character), and bounded."""
    if value.isprintable() and len(value) <= limit and not set(value) & set("`'\"\\"):
        return value
    return quoted(value, limit)


def quoted(value: str, limit: int = 80) -> str:
    """repr, bounded: quoted, with every control character escaped."""
    text = repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _result(
    summary: str,
    dockerfile: str | None,
    level: str,
    fields: dict,
    steps: list[str],
    commands: list[shell.Suggested] = (),
) -> dict[str, Any]:
    """`commands`: the shell commands the steps suggest, each quoted by shell.command
    (`text` None when withheld, with the reason)."""
    return {
        "summary": summary,
        "dockerfile": dockerfile,
        "security_context": {"level": level, "fields": fields},
        "steps": steps,
        "commands": [{"text": c.text, "withheld": c.withheld} for c in commands],
        "exception": False,
    }
