"""The exports folder: a file and its manifest written whole (temporary names renamed into
place), the TSA token beside them, and where each lives."""

from __future__ import annotations

import contextlib
import datetime as dt
import os
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

import orjson
from django.conf import settings
from django.utils import timezone

from compliance.audit import tsa
from compliance.evidence.reports import Report
from compliance.evidence.signed import manifest
from compliance.evidence.sink import ExportError, Progress
from compliance.evidence.writers import write
from compliance.vocabulary import EXPORT_EXTENSIONS


def export_to(
    report: Report,
    fmt: str,
    path: Path,
    filename: str | None = None,
    progress: Progress | None = None,
    hold: Callable[[], contextlib.AbstractContextManager] | None = None,
) -> dict[str, Any]:
    """Write the report to path and its manifest to path + .manifest.json. `filename` is
    the name the file is handed out under (signed into the manifest).

    Both are written to temporary files beside their targets and renamed into place only
    when complete, so a failure (a full disk, a bug, a killed process) never leaves a
    partial report, or a report without its manifest, under the final names. `hold`, when
    given, is entered around the two renames (an export job: a lock that raises if its
    attempt no longer holds the export, so two attempts never mix their files)."""
    mpath = manifest_path(path)
    part = path.with_name(f".{path.name}.{uuid.uuid4().hex}.part")
    manifest_part = mpath.with_name(f".{mpath.name}.{uuid.uuid4().hex}.part")
    moved = False
    try:
        with open(part, "wb") as f:
            written = write(report, fmt, f, progress)
        m = manifest(report, fmt, filename or path.name, written)
        manifest_part.write_bytes(orjson.dumps(m, option=orjson.OPT_INDENT_2))
        with hold() if hold else contextlib.nullcontext():
            os.replace(part, path)
            moved = True
            os.replace(manifest_part, mpath)
    except BaseException as e:  # interrupted too: nothing left behind
        with contextlib.suppress(OSError):  # e.g. the folder is not one: nothing was written
            for leftover in (part, manifest_part):
                leftover.unlink(missing_ok=True)
            if moved:  # this file, without its manifest (the path may be another's)
                path.unlink(missing_ok=True)
        if not isinstance(e, Exception):
            raise
        reason = e.strerror if isinstance(e, OSError) and e.strerror else str(e) or type(e).__name__
        reason = " ".join(reason.split())  # a driver's message spans lines
        raise ExportError(f"the {fmt.upper()} export failed, and left no file: {reason}") from e
    return m


def manifest_path(path: Path) -> Path:
    return Path(str(path) + ".manifest.json")


def token_path(path: Path) -> Path:
    """Where the TSA's token over the manifest is kept: FILE.manifest.json.tsr, so
    `openssl ts -verify -data FILE.manifest.json -in FILE.manifest.json.tsr` finds it."""
    return Path(str(manifest_path(path)) + ".tsr")


def add_timestamp(path: Path) -> tuple[bytes | None, str]:
    """Ask the TSA for a token over the manifest file's bytes and keep it beside them; the
    token, or None and why not (no TSA configured: None and ''). Never raises for a TSA
    that is down: the export stands, and the timestamp-pending task asks again."""
    if not tsa.configured():
        return None, ""
    try:
        data = manifest_path(path).read_bytes()
    except OSError as e:
        return None, f"the manifest cannot be read: {e.strerror or e}"
    token, error = tsa.stamp(data)
    if token is not None:
        target = token_path(path)
        part = target.with_name(f".{target.name}.{uuid.uuid4().hex}.part")
        try:
            part.write_bytes(token)
            os.replace(part, target)
        except OSError as e:
            part.unlink(missing_ok=True)
            return None, f"the token could not be written: {e.strerror or e}"
    return token, error


def file_path(record) -> Path:
    """Where an Export record's file lives (its manifest and token beside it)."""
    return (
        settings.EXPORTS_DIR / f"{record.id}.{EXPORT_EXTENSIONS.get(record.format, record.format)}"
    )


def write_export(record, doc, progress: Progress | None = None, hold=None) -> None:
    """Write an Export record's file and manifest and ask the TSA for a token; the
    record's fields are set for the caller to save (compliance/evidence/jobs.py: only if
    its attempt still holds the export). ExportError or OSError: nothing was written."""
    settings.EXPORTS_DIR.mkdir(parents=True, exist_ok=True)
    path = file_path(record)
    record.manifest = export_to(doc, record.format, path, record.filename, progress, hold)
    # Held too: a token is written over this attempt's manifest, or not at all.
    with hold() if hold else contextlib.nullcontext():
        record.timestamp, record.timestamp_error = add_timestamp(path)
    record.rows = record.manifest["rows"]
    record.finished_at = timezone.now()
    record.expires_at = record.finished_at + dt.timedelta(
        days=settings.WELKIN_EXPORT_RETENTION_DAYS
    )
