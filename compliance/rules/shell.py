"""Every command line welkin-dash suggests is built here, and only here.

Names, images and image users come from clusters and registries that other people
control: a Deployment named `d2 ; touch pwned #` or an image whose USER is `$(curl ...)`
must never become a command that runs the attacker's code when a team lead pastes it.
Each argument is quoted for a POSIX shell with shlex.quote, the JSON patch included.
An argument that no quoting makes safe to paste -- control characters (a newline runs
the rest as a second command in some terminals' paste, an escape sequence rewrites the
screen) or invisible formatting characters (bidirectional overrides make the text shown
differ from the text run) -- withholds the whole command, with the reason.
Standard library only.
"""

from __future__ import annotations

import shlex
import unicodedata
from dataclasses import dataclass


@dataclass(frozen=True)
class Suggested:
    """A command to paste (`text`), or why there is none (`withheld`)."""

    text: str | None
    withheld: str | None = None

    def __bool__(self) -> bool:
        return self.text is not None


def _unsafe(arg: str) -> str | None:
    for ch in arg:
        if ch == " ":
            continue
        category = unicodedata.category(ch)
        if category[0] in ("C", "Z"):  # control, format, unassigned, separators
            return f"U+{ord(ch):04X} ({unicodedata.name(ch, category)})"
    return None


def command(*args: str, values: tuple[str, ...] = ()) -> Suggested:
    """The command line for argv `args`, every argument quoted; or withheld, naming the
    character that cannot be pasted safely. `values` are the arguments that came from data:
    one starting with '-' would be read as an option, so it withholds the command too."""
    for value in values:
        if value.startswith("-"):
            return Suggested(
                None,
                f"not shown: {value[:40]!r} starts with '-' and would be "
                "read as an option; run the step by hand",
            )
    for arg in args:
        bad = _unsafe(arg)
        if bad is not None:
            return Suggested(
                None,
                f"not shown: a value in it holds {bad}, which cannot be "
                "pasted into a shell safely; run the step by hand",
            )
    return Suggested(" ".join(shlex.quote(a) for a in args))
