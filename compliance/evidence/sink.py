"""What every writer of an export shares: the file it writes (hashed and counted), the
report's metadata stamped into every format, and the error that leaves no file behind."""

from __future__ import annotations

import hashlib
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, BinaryIO

from compliance import __version__

GENERATOR = f"welkin-dash {__version__}"


class HashingWriter:
    """A binary file that hashes and counts what is written to it."""

    def __init__(self, f: BinaryIO):
        self.f, self.sha, self.size = f, hashlib.sha256(), 0

    def write(self, data: bytes) -> int:
        self.sha.update(data)
        self.size += len(data)
        return self.f.write(data)


@dataclass
class Written:
    sha256: str
    size: int
    rows: int


Progress = Callable[[int], None]  # told the rows written so far, now and then


def report_meta(report) -> dict[str, Any]:
    return {
        "scope": report.scope,
        "scope_label": report.scope_label,
        "at": report.at.isoformat(),
        "generated_at": report.generated_at.isoformat(),
        "generated_by": report.generated_by,
        "generator": GENERATOR,
    }


class ExportError(Exception):
    """An export that could not be written; no file was left behind."""
