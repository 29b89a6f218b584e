"""States -> ISO/IEC 27001 controls and remediation, kept as data an auditor can read.

Each container state (see DESIGN.md's vocabulary) maps to the Annex A controls it touches
and a one-line rationale per (state, control) pair. Data is keyed by the 2013 number (what
earlier exports and stored exceptions hold); everything shown or exported puts the 2022
number first and the 2013 number beside it (the 2013 transition ended in October 2025).
Remediation is rules/fix.py. Standard library only.
"""

from __future__ import annotations

from dataclasses import dataclass

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


def controls_for(state: str) -> tuple[str, ...]:
    """The 2013 control ids a state is evidence against, in a stable order."""
    return tuple(MAPPING[state])


def ids_2022(state: str) -> tuple[str, ...]:
    """The same controls by their ISO/IEC 27001:2022 numbers, in the same order."""
    return tuple(CONTROLS[c].id_2022 for c in MAPPING[state])


def rationale(state: str, control_id: str) -> str:
    return MAPPING[state][control_id]
