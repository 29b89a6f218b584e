"""A report in one format (CSV, JSON, OSCAL or PDF), hashed and counted as it is written.

Every format is written from the same rows (reports.Report.rows), streamed to a file while
its SHA-256 is computed, so a million rows need little memory; on PostgreSQL a CSV or JSON
is written by COPY (compliance/evidence/pgcopy.py).
"""

from __future__ import annotations

import csv
import io
from typing import BinaryIO

import orjson

from compliance.evidence import oscal
from compliance.evidence.pdf import write_pdf
from compliance.evidence.pgcopy import copy_rows, copyable
from compliance.evidence.reports import REPORT_COLUMNS, Report, summary_rows
from compliance.evidence.sink import HashingWriter, Progress, Written, report_meta
from compliance.rules.inert import csv_row
from compliance.vocabulary import EXPORT_FORMATS


def _quiet(rows: int) -> None:
    pass


def write(
    report: Report,
    fmt: str,
    f: BinaryIO,
    progress: Progress | None = None,
    copy: bool = True,
) -> Written:
    """Write the report in one format to a binary file. copy=False writes a CSV or JSON
    row by row in Python even where PostgreSQL's COPY could (the same bytes, slower)."""
    if fmt not in EXPORT_FORMATS:
        raise ValueError(f"unknown format {fmt!r}: expected one of {', '.join(EXPORT_FORMATS)}")
    out = HashingWriter(f)
    writer = {"csv": _csv, "json": _json, "pdf": write_pdf, "oscal": _oscal}[fmt]
    rows = writer(report, out, progress or _quiet, copy=copy and copyable(report))
    return Written(out.sha.hexdigest(), out.size, rows)


def _csv(report: Report, out: HashingWriter, progress: Progress, copy: bool) -> int:
    if copy:
        return copy_rows(report, "csv", out, progress)
    text = io.StringIO()
    # CRLF (RFC 4180): with it the writer also quotes a field holding a lone \r, which
    # a reader would otherwise take for the end of the row.
    w = csv.writer(text, lineterminator="\r\n")
    columns = getattr(report, "columns", REPORT_COLUMNS)  # the exception register's own
    w.writerow(columns)
    n = 0
    for row in report.rows():
        w.writerow(csv_row(row[c] for c in columns))
        n += 1
        if n % 2000 == 0:
            out.write(text.getvalue().encode())
            text.seek(0)
            text.truncate()
            progress(n)
    out.write(text.getvalue().encode())
    return n


def _json(report: Report, out: HashingWriter, progress: Progress, copy: bool) -> int:
    def opening() -> bytes:
        if hasattr(report, "json_head"):  # the exception register
            head, key = report.json_head(report_meta(report)), b"exceptions"
        else:
            head = {
                "report": report_meta(report),
                "controls": report.control_summary(),
                "coverage": report.completeness(),
            }
            key = b"findings"
            if hasattr(progress, "total"):  # an export job's, shown as "rows of total"
                progress.total = summary_rows(report)
        return orjson.dumps(head)[:-1] + b',"' + key + b'":['

    if copy:
        # With several connections, the head (the report's summary) is read while the
        # rows are being written.
        n = copy_rows(report, "json", out, progress, opening)
        out.write(b"]}")
        return n
    out.write(opening())
    n = 0
    batch = []
    for row in report.rows():
        batch.append(orjson.dumps(row))
        n += 1
        if len(batch) == 2000:
            out.write((b"," if n > 2000 else b"") + b",".join(batch))
            batch = []
            progress(n)
    if batch:
        out.write((b"," if n > len(batch) else b"") + b",".join(batch))
    out.write(b"]}")
    return n


def _oscal(report: Report, out: HashingWriter, progress: Progress, copy: bool) -> int:

    if not hasattr(report, "completeness"):
        raise ValueError("OSCAL is written for point-in-time reports only")
    return oscal.write(report, report_meta(report), out, progress)
