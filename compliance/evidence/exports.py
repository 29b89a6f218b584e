"""Writing reports as CSV, JSON or PDF, with a signed manifest an auditor can verify.

Every format is written from the same rows (reports.Report.rows), streamed to a file while
its SHA-256 is computed, so a million rows need little memory. The manifest records the
content hash, scope, report time, generator version, when and by whom; it is signed with
the server's Ed25519 key (WELKIN_SIGNING_KEY), whose public half anyone can use to verify.
"""

from __future__ import annotations

import base64
import contextlib
import csv
import datetime as dt
import hashlib
import io
import itertools
import json
import os
import tempfile
import threading
import uuid
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO
from xml.sax.saxutils import escape

import orjson
import psycopg2.errors
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey
from django.conf import settings
from django.db import connection, transaction
from django.utils import timezone

from compliance import __version__
from compliance.evidence.reports import REPORT_COLUMNS, Report
from compliance.vocabulary import NONCOMPLIANT, STATE

GENERATOR = f"welkin-dash {__version__}"
FORMATS = ("csv", "json", "pdf", "oscal")  # oscal: OSCAL Assessment Results (JSON)
EXTENSIONS = {"oscal": "oscal.json"}  # a file name's ending where it is not the format
PDF_MAX_ROWS = 10_000  # beyond this the PDF lists the first rows and points to CSV/JSON
# A manifest is about 2 KB, plus some 300 bytes per cluster of its coverage.
MANIFEST_MAX_BYTES = 8 << 20


class _HashingWriter:
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
    if fmt not in FORMATS:
        raise ValueError(f"unknown format {fmt!r}: expected one of {', '.join(FORMATS)}")
    out = _HashingWriter(f)
    writer = {"csv": _csv, "json": _json, "pdf": _pdf, "oscal": _oscal}[fmt]
    rows = writer(report, out, progress or _quiet, copy=copy and _copyable(report))
    return Written(out.sha.hexdigest(), out.size, rows)


def _copyable(report) -> bool:
    """Written by PostgreSQL's COPY: point-in-time reports, on PostgreSQL."""
    return isinstance(report, Report) and connection.vendor == "postgresql"


class _CopyOut:
    """COPY's output as a file psycopg2 writes to, row by row: gathered into 1 MB writes,
    with its line endings rewritten and counted.

    CSV: the ends of rows become CRLF (RFC 4180, as the csv module writes them); a line
    break inside a quoted field (stored before the gate checked names, say) is left as it
    is, as the csv module leaves it, and is not counted as a row. Quotes are tracked
    across chunks (a doubled quote inside a field toggles twice). JSON: one object a
    line, never quoted, no line break inside (row_to_json escapes them): the line ends
    become the commas between the findings, and the last one goes."""

    def __init__(self, out: _HashingWriter, progress: Progress, fmt: str):
        self.out, self.progress, self.fmt = out, progress, fmt
        self.buf: list[bytes] = []
        self.size = self.lines = 0
        self.quoted = False  # CSV: inside a quoted field at the end of the last chunk
        self.pending = False  # JSON: the last chunk ended a line: its comma comes later

    def write(self, data: bytes) -> int:
        self.buf.append(data)
        self.size += len(data)
        if self.size >= 1 << 20:
            self.flush()
        return len(data)

    def flush(self, last: bool = False) -> None:
        chunk = b"".join(self.buf)
        self.buf, self.size = [], 0
        self.out.write(self._csv(chunk) if self.fmt == "csv" else self._json(chunk, last))
        self.progress(self.lines)

    def _csv(self, chunk: bytes) -> bytes:
        if b'"' not in chunk and not self.quoted:
            self.lines += chunk.count(b"\n")
            return chunk.replace(b"\n", b"\r\n")
        parts = chunk.split(b'"')
        for i, part in enumerate(parts):
            if i:
                self.quoted = not self.quoted
            if not self.quoted:
                self.lines += part.count(b"\n")
                parts[i] = part.replace(b"\n", b"\r\n")
        return b'"'.join(parts)

    def _json(self, chunk: bytes, last: bool) -> bytes:
        self.lines += chunk.count(b"\n")
        body = b"," if self.pending and chunk else b""
        if chunk:
            self.pending = chunk.endswith(b"\n")
            body += (chunk[:-1] if self.pending else chunk).replace(b"\n", b",")
        return body


def _copy(
    report: Report,
    fmt: str,
    out: _HashingWriter,
    progress: Progress,
    head: Callable[[], bytes] | None = None,
) -> int:
    """Stream the report's rows from PostgreSQL's COPY (reports.copy_sql) into `out`,
    after `head` (the bytes before the rows: a JSON's summary), both read in one snapshot
    (the coverage was read when the report was built).

    With WELKIN_EXPORT_PARALLEL > 1 the rows are cut into that many ranges of names
    (_parts), each written by its own COPY on its own connection, so that PostgreSQL works
    on them with as many processes. The ranges read one snapshot, as `pg_dump -j` does:
    this connection locks the tables the report reads (ACCESS SHARE: no schema change can
    rewrite them meanwhile), then exports its snapshot; each other connection imports it
    and locks the same tables without waiting (a migration queued for them fails the
    export at once instead of waiting on a cycle PostgreSQL cannot see). This connection
    then writes the head, and the first range unless there is a head (then the others
    write every range), and commits; the others' ranges, spooled to unnamed temporary
    files, are appended in order. So the file holds exactly what one COPY would, and the
    summary's counts are those of its rows."""
    from compliance.evidence import reports

    if fmt == "csv":
        body = "FORMAT csv"
        options, header = f"{body}, HEADER", 1
    else:  # one JSON text a line, never quoted: no field holds \x01, \x02 or a line break
        options = body = "FORMAT csv, QUOTE E'\\x01', DELIMITER E'\\x02'"
        header = 0
    # Inside a caller's transaction (tests): one COPY, in it. No other connection could
    # see its rows, nor can its isolation be set.
    own = not connection.in_atomic_block
    parts = _parts(report) if own else [None]
    helpers: list[_Part] = []
    sink = _CopyOut(
        out,
        lambda lines: progress(max(0, lines - header) + sum(h.lines for h in helpers if not h.fed)),
        fmt,
    )
    try:
        with transaction.atomic(), connection.cursor() as cursor:
            raw = cursor.cursor  # psycopg2's own, for copy_expert
            if own:
                cursor.execute("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ, READ ONLY")
            if len(parts) > 1:
                cursor.execute(f"LOCK TABLE {_read_tables()} IN ACCESS SHARE MODE")
                cursor.execute("SELECT pg_export_snapshot()")
                snapshot = cursor.fetchone()[0]
                for part in parts if head is not None else parts[1:]:
                    query = raw.mogrify(*reports.copy_sql(report, fmt, part))
                    helpers.append(_Part(snapshot, query))
                    helpers[-1].start(body)
                for h in helpers:  # each has imported the snapshot and locked (or failed)
                    if not h.ready.wait(_READY_SECONDS):
                        raise ExportError(
                            f"the export's other connections did not start within "
                            f"{_READY_SECONDS} s (is a connection pool full?): ask for it "
                            "again, or set WELKIN_EXPORT_PARALLEL=1"
                        )
                    if h.error is not None:
                        raise h.error
            if head is not None:
                out.write(head())
            if head is None or not helpers:
                _sort_in_memory(cursor)
                query = raw.mogrify(*reports.copy_sql(report, fmt, parts[0])).decode()
                raw.copy_expert(f"COPY ({query}) TO STDOUT WITH ({options})", sink, size=1 << 20)
        # Committed: the others hold their own snapshot and locks now; nothing of this
        # connection waits, idle in a transaction, while they finish.
        for h in helpers:
            h.join()
            if h.error is not None:
                raise h.error
            h.fed = True
            h.file.seek(0)
            while chunk := h.file.read(1 << 20):
                sink.write(chunk)
    except BaseException:
        for h in helpers:
            h.cancel()
        raise
    finally:
        for h in helpers:
            h.join()
            h.file.close()
    sink.flush(last=True)
    return sink.lines - header


def _sort_in_memory(cursor) -> None:
    """A COPY's rows are sorted by name: in memory, not in temporary files, with this
    much (for the transaction)."""
    cursor.execute("SELECT set_config('work_mem', %s, true)", [settings.WELKIN_EXPORT_WORK_MEM])


# How long the first connection, holding its snapshot and locks, waits for the others to
# connect, import it and lock (a wait PostgreSQL cannot see: a pool with no connection
# left would otherwise hold it for good).
_READY_SECONDS = 30


def _read_tables() -> str:
    """The tables a point-in-time report's rows and summary read (seen in pg_locks)."""
    from django.contrib.auth.models import User

    from compliance.models import Cluster, ExceptionMatch, Finding, FindingEvent, RiskException

    models = (Finding, FindingEvent, Cluster, RiskException, ExceptionMatch, User)
    return ", ".join(connection.ops.quote_name(m._meta.db_table) for m in models)


def _parts(report: Report) -> list[tuple[str, list[Any]] | None]:
    """The report's rows cut into WELKIN_EXPORT_PARALLEL ranges, in the rows' own order:
    by cluster name for several clusters, by namespace within one (a namespace's report is
    one range). Each range is a condition on copy_sql's columns; [None] is all the rows.

    The cuts are chosen from the latest rollups' counts (within the report's scope) so that
    the ranges hold about as many rows (only the balance depends on them: the ranges are
    exact whatever the counts), in the database's order of names, the order of the rows."""
    n = settings.WELKIN_EXPORT_PARALLEL
    if n < 2 or report.namespace:
        return [None]
    from django.db.models import OuterRef, Subquery, Sum

    from compliance.models import ClusterRollup, DailyRollup

    noncompliant = tuple(NONCOMPLIANT)
    scope = report._scope
    if report.cluster or (scope is not None and not scope.fleet):
        # Per namespace, as far as the scope sees (a team lead's namespaces), on each
        # cluster's latest rollup day; summed by cluster for a report of several.
        latest = ClusterRollup.objects.filter(cluster=OuterRef("cluster")).order_by("-day")
        rows = DailyRollup.objects.filter(
            state__in=noncompliant, day=Subquery(latest.values("day")[:1])
        )
        if scope is not None:
            rows = rows.filter(scope.q())
        if report.cluster:
            column, key = "t.namespace", "namespace"
            rows = rows.filter(cluster__name=report.cluster)
        else:
            column, key = "t.cluster", "cluster__name"
        found = rows.values(key).annotate(w=Sum("containers")).order_by(key)
        weights = [(name, int(w or 0) + 1) for name, w in found.values_list(key, "w")]
    else:  # the whole fleet: per cluster, from its few rows a day
        column, table = "t.cluster", ClusterRollup._meta.db_table
        with connection.cursor() as cursor:
            cursor.execute(
                f"""SELECT c.name, (SELECT COALESCE(SUM(r.containers), 0) FROM {table} r
                                    WHERE r.cluster_id = c.id AND r.state IN %s
                                      AND r.day = (SELECT MAX(day) FROM {table}
                                                   WHERE cluster_id = c.id))
                    FROM compliance_cluster c ORDER BY c.name""",
                [noncompliant],
            )
            weights = [(name, int(w or 0) + 1) for name, w in cursor.fetchall()]
    total, seen, cuts = sum(w for _, w in weights), 0, []
    for name, w in weights:
        if seen and seen >= total * (len(cuts) + 1) / n and len(cuts) < n - 1:
            cuts.append(name)
        seen += w
    if not cuts:
        return [None]
    bounds = [None, *cuts, None]
    return [
        (
            " AND ".join(
                [f"{column} >= %s"] * (lo is not None) + [f"{column} < %s"] * (hi is not None)
            ),
            [b for b in (lo, hi) if b is not None],
        )
        for lo, hi in itertools.pairwise(bounds)
    ]


class _Part:
    """One range of an export's rows, written by COPY on a connection of its own that
    imports the exporting transaction's snapshot, into an unnamed temporary file (in the
    exports folder when there is one: no name left behind by a killed worker)."""

    def __init__(self, snapshot: str, query: bytes):
        self.snapshot, self.query = snapshot, query.decode()
        folder = settings.EXPORTS_DIR if settings.EXPORTS_DIR.is_dir() else None
        self.file = tempfile.TemporaryFile(dir=folder)
        self.ready = threading.Event()
        self.error: BaseException | None = None
        self.lines = 0
        self.fed = False
        self.raw = None
        self.cancelled = threading.Event()
        self.thread: threading.Thread | None = None

    def start(self, options: str) -> None:
        self.thread = threading.Thread(target=self._run, args=(options,), daemon=True)
        self.thread.start()

    def _run(self, options: str) -> None:
        conn = connection.copy()  # created in this thread, which alone uses it
        conn.settings_dict["OPTIONS"].setdefault("connect_timeout", 10)
        try:
            conn.ensure_connection()
            self.raw = conn.connection
            with self.raw.cursor() as cur:  # autocommit: the transaction is ours to open
                cur.execute("BEGIN ISOLATION LEVEL REPEATABLE READ, READ ONLY")
                cur.execute("SET TRANSACTION SNAPSHOT %s", [self.snapshot])
                try:
                    cur.execute(f"LOCK TABLE {_read_tables()} IN ACCESS SHARE MODE NOWAIT")
                except psycopg2.errors.LockNotAvailable:
                    raise ExportError(
                        "a schema change (a migration?) is waiting for the tables the report "
                        "reads: ask for it again once it is done"
                    ) from None
                _sort_in_memory(cur)
                self.ready.set()
                if self.cancelled.is_set():  # the export failed before this range began
                    raise ExportError("cancelled")
                cur.copy_expert(f"COPY ({self.query}) TO STDOUT WITH ({options})", self, 1 << 20)
                cur.execute("COMMIT")
        except BaseException as e:  # raised by the exporting thread
            self.error = e
        finally:
            self.ready.set()
            conn.close()

    def write(self, data: bytes) -> int:
        self.lines += data.count(b"\n")
        return self.file.write(data)

    def cancel(self) -> None:
        self.cancelled.set()
        with contextlib.suppress(Exception):
            if self.raw is not None:
                self.raw.cancel()

    def join(self) -> None:
        if self.thread is not None:
            self.thread.join()


# A spreadsheet reads a cell that starts with one of these as a formula (OWASP, "CSV
# Injection"); names and images come from clusters, user names from the login form.
FORMULA_STARTS = ("=", "+", "-", "@", "\t", "\r")


def inert(value: Any) -> Any:
    """A CSV cell that no spreadsheet evaluates: text starting (after spaces) with a
    formula character gets a leading apostrophe, which spreadsheets show as text."""
    if isinstance(value, str) and value.lstrip(" ").startswith(FORMULA_STARTS):
        return "'" + value
    return value


def inert_row(values: Iterable[Any]) -> list[Any]:
    return [inert(v) for v in values]


def _csv(report: Report, out: _HashingWriter, progress: Progress, copy: bool) -> int:
    if copy:
        return _copy(report, "csv", out, progress)
    text = io.StringIO()
    # CRLF (RFC 4180): with it the writer also quotes a field holding a lone \r, which
    # a reader would otherwise take for the end of the row.
    w = csv.writer(text, lineterminator="\r\n")
    columns = getattr(report, "columns", REPORT_COLUMNS)  # the exception register's own
    w.writerow(columns)
    n = 0
    for row in report.rows():
        w.writerow(inert_row(row[c] for c in columns))
        n += 1
        if n % 2000 == 0:
            out.write(text.getvalue().encode())
            text.seek(0)
            text.truncate()
            progress(n)
    out.write(text.getvalue().encode())
    return n


def _json(report: Report, out: _HashingWriter, progress: Progress, copy: bool) -> int:
    def opening() -> bytes:
        if hasattr(report, "json_head"):  # the exception register
            head, key = report.json_head(_meta(report)), b"exceptions"
        else:
            head = {
                "report": _meta(report),
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
        n = _copy(report, "json", out, progress, opening)
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


def _oscal(report: Report, out: _HashingWriter, progress: Progress, copy: bool) -> int:
    from compliance.evidence import oscal

    if not hasattr(report, "completeness"):
        raise ValueError("OSCAL is written for point-in-time reports only")
    return oscal.write(report, _meta(report), out, progress)


def _meta(report: Report) -> dict[str, Any]:
    return {
        "scope": report.scope,
        "scope_label": report.scope_label,
        "at": report.at.isoformat(),
        "generated_at": report.generated_at.isoformat(),
        "generated_by": report.generated_by,
        "generator": GENERATOR,
    }


def _pdf(report: Report, out: _HashingWriter, progress: Progress, copy: bool) -> int:
    from reportlab.lib import colors
    from reportlab.lib.pagesizes import A4, landscape
    from reportlab.lib.styles import getSampleStyleSheet
    from reportlab.lib.units import mm
    from reportlab.platypus import (
        LongTable,
        PageBreak,
        Paragraph,
        SimpleDocTemplate,
        Spacer,
        Table,
        TableStyle,
    )

    styles = getSampleStyleSheet()
    small = styles["BodyText"].clone("small", fontSize=7, leading=8.5)
    # Paragraph text is ReportLab markup: every data string goes through _text (escaped,
    # control characters shown as code points), so no tag, image, link or font can come
    # from a cluster, a registry or a user name. Table cells that are plain strings are
    # drawn as text, never parsed; they still get _text for the control characters.
    story: list = [
        Paragraph("Container runAs compliance report", styles["Title"]),
        Paragraph(f"Scope: {_text(report.scope_label)}", styles["Heading2"]),
        Paragraph(f"State as of {report.at:%Y-%m-%d %H:%M:%S %Z}", styles["BodyText"]),
        Paragraph(
            f"Generated at {report.generated_at:%Y-%m-%d %H:%M:%S %Z} by "
            f"{_text(report.generated_by or 'unknown')} with {GENERATOR}",
            styles["BodyText"],
        ),
        Paragraph(
            "The file's SHA-256 and the server's signature are in the manifest that "
            "comes with it; verify with <i>manage.py verify_report</i> or the "
            "dashboard's verify page.",
            styles["BodyText"],
        ),
        Spacer(1, 8 * mm),
        Paragraph("Control summary", styles["Heading2"]),
    ]
    grid = TableStyle(
        [
            ("GRID", (0, 0), (-1, -1), 0.4, colors.grey),
            ("BACKGROUND", (0, 0), (-1, 0), colors.whitesmoke),
            ("FONTSIZE", (0, 0), (-1, -1), 8),
            ("VALIGN", (0, 0), (-1, -1), "TOP"),
        ]
    )
    summary = [["Control (2022)", "2013", "Title", "Workloads", "Open", "Accepted", "By state"]]
    for c in report.control_summary():
        summary.append(
            [
                c["control_2022"],
                c["control_2013"],
                c["title"],
                c["workloads"],
                c["open"],
                c["accepted"],
                ", ".join(f"{s}: {v['containers']}" for s, v in c["states"].items()) or "-",
            ]
        )
    story += [
        Table(summary, style=grid, hAlign="LEFT"),
        Spacer(1, 6 * mm),
        Paragraph("Coverage", styles["Heading2"]),
    ]
    completeness = report.completeness()
    story.append(
        Paragraph(
            (
                "Complete: every cluster in scope has a recent complete scan and every object "
                "listed was evaluated."
                if completeness["complete"]
                else "NOT complete: " + _text("; ".join(completeness["reasons"]))
            )
            + f" Population: {completeness['pods']:,} pods, {completeness['containers']:,} "
            f"containers in {completeness['clusters_scanned']} of {completeness['clusters']} "
            "clusters.",
            styles["BodyText"],
        )
    )
    cov = [
        [
            "Cluster",
            "Last complete scan before the report time",
            "Recent",
            "Pods",
            "Containers",
            "Objects rejected",
        ]
    ]
    for c in report.coverage:
        cov.append(
            [
                _text(c["cluster"]),
                c["last_complete_scan"] or "none",
                "yes" if c["recent"] else "NO - data may be out of date",
                c["pods"],
                c["containers"],
                Paragraph(
                    _text(
                        "; ".join(
                            f"{n} {rule}" for rule, n in c.get("rejected_by_reason", {}).items()
                        )
                        or "none"
                    ),
                    small,
                ),
            ]
        )
    story += [
        Table(cov, style=grid, hAlign="LEFT"),
        PageBreak(),
        Paragraph("Non-compliant findings", styles["Heading2"]),
    ]
    header = [
        "Cluster",
        "Namespace",
        "Workload",
        "Container",
        "Image",
        "State",
        "Controls (2022)",
        "Since",
    ]
    data = [header]
    # The rows past the cap are counted, not read: a report's summary has their number.
    total = summary_rows(report)
    rows = itertools.islice(report.rows(), PDF_MAX_ROWS) if total is not None else report.rows()
    n = 0
    for row in rows:
        n += 1
        if n % 2000 == 0:
            progress(n)
        if n <= PDF_MAX_ROWS:
            data.append(
                [
                    _text(row["cluster"]),
                    _text(row["namespace"]),
                    Paragraph(_text(f"{row['workload_kind']}/{row['workload_name']}"), small),
                    _text(row["container"]),
                    Paragraph(_text(row["image"]), small),
                    STATE.label(row["state"])
                    + (
                        f"\naccepted: #{row['exception']} until {row['exception_ends_at'][:10]}"
                        if row["exception"]
                        else ""
                    ),
                    row["controls_2022"] + "\n(2013: " + row["controls_2013"] + ")"
                    if row["controls_2013"]
                    else "",
                    row["first_seen"][:10],
                ]
            )
    if total is not None:
        n = total
    if len(data) > 1:
        story.append(
            LongTable(
                data,
                repeatRows=1,
                style=grid,
                hAlign="LEFT",
                colWidths=[28 * mm, 30 * mm, 52 * mm, 25 * mm, 66 * mm, 32 * mm, 32 * mm, 20 * mm],
            )
        )
    else:
        story.append(
            Paragraph("No non-compliant container at the report time.", styles["BodyText"])
        )
    if n > PDF_MAX_ROWS:
        story.append(
            Paragraph(
                f"{n - PDF_MAX_ROWS:,} more findings are not listed here; the "
                "CSV and JSON exports of the same report list all of them.",
                styles["BodyText"],
            )
        )
    story += [PageBreak(), Paragraph("Methodology", styles["Heading2"])]
    for text in METHODOLOGY:
        story.append(Paragraph(text, styles["BodyText"]))
    buf = io.BytesIO()
    SimpleDocTemplate(
        buf,
        pagesize=landscape(A4),
        title="runAs compliance report",
        author=GENERATOR,
        leftMargin=10 * mm,
        rightMargin=10 * mm,
        topMargin=10 * mm,
        bottomMargin=10 * mm,
        invariant=1,
    ).build(story)
    out.write(buf.getvalue())
    return n


def summary_rows(report) -> int | None:
    """The rows a point-in-time report has, from its summary (None for other documents)."""
    summary = getattr(report, "summary", None)
    if isinstance(report, Report) and isinstance(summary, dict):
        return sum(v["containers"] for v in summary.values())
    return None


def _text(value: Any) -> str:
    """Data as ReportLab paragraph text: markup escaped, control characters as <U+XXXX>."""
    out = escape(str(value))
    if any(ord(ch) < 32 or 127 <= ord(ch) < 160 for ch in out):
        out = "".join(
            f"&lt;U+{ord(ch):04X}&gt;" if ord(ch) < 32 or 127 <= ord(ch) < 160 else ch for ch in out
        )
    return out


METHODOLOGY = [
    "Each container's effective runAs state follows the kubelet, not the policy tools: the "
    "pod and container securityContext are merged field by field (the container's value "
    "wins); with runAsNonRoot in force the kubelet refuses runAsUser 0, an image whose USER "
    "is empty or 0, a non-numeric USER (it cannot verify a name), and a uid outside "
    "0..2147483647.",
    "The image's USER comes from its registry (the config blob of the digest the pod's "
    "status reports), from operator-supplied values, or from the kubelet's own refusal "
    "message; where none is available the container is 'unverified'. Runtime evidence "
    "(status user.linux.uid and CreateContainerConfigError messages) overrides predictions.",
    "States: compliant (runAsNonRoot in force, non-zero uid known); unenforced (non-zero uid "
    "but no runAsNonRoot); root (runs or would run as uid 0); blocked (refused by the "
    "kubelet); unverified (identity undeterminable). Each non-compliant state maps to "
    "ISO/IEC 27001:2022 8.18, 8.8 and/or 8.27 (2013: A.9.4.4, A.12.6.1, A.14.2.5) as listed.",
    "The state at the report time is rebuilt from the append-only history of each finding: "
    "findings are opened, changed and resolved only after complete scans, so a failed or "
    "partial scan never makes a finding disappear. Coverage shows each cluster's last "
    "complete scan before the report time; a cluster without a recent one may have changed "
    "since.",
    "Limits: a user name in an image (e.g. USER node) maps to a uid only through the image's "
    "/etc/passwd, which is not read, so such containers are reported by the kubelet's rule "
    "(refused under runAsNonRoot) rather than by uid; Windows containers are judged by "
    "ContainerAdministrator; pods are grouped per workload, the worst pod deciding.",
    "Hostile data: every name, image and message is checked against Kubernetes' own rules "
    "where it enters (DNS-1123 names, length bounds, no control characters); an object that "
    "breaks them is rejected, not evaluated, and counted per cluster in the coverage table. "
    "In CSV exports a cell that begins with =, +, -, @, a tab or a carriage return is "
    "prefixed with an apostrophe (OWASP's advice), so no spreadsheet runs it as a formula; "
    "the manifest's SHA-256 covers the file as written, apostrophes included.",
]


# --- manifests --------------------------------------------------------------------------


def signing_key() -> Ed25519PrivateKey:
    return Ed25519PrivateKey.from_private_bytes(base64.b64decode(settings.WELKIN_SIGNING_KEY))


def public_key_b64() -> str:
    from cryptography.hazmat.primitives import serialization

    return base64.b64encode(
        signing_key()
        .public_key()
        .public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    ).decode()


def _canonical(manifest: dict[str, Any]) -> bytes:
    return orjson.dumps(
        {k: v for k, v in manifest.items() if k != "signature"}, option=orjson.OPT_SORT_KEYS
    )


def manifest(report: Report, fmt: str, filename: str, written: Written) -> dict[str, Any]:
    from compliance.audit import heads, tsa

    m = {
        "file": filename,
        "format": fmt,
        "sha256": written.sha256,
        "bytes": written.size,
        "rows": written.rows,
        **_meta(report),
        "manifest_version": 2,
        "signed_at": timezone.now().isoformat(),
        "public_key": public_key_b64(),
        "timestamp": tsa.describe(),
        # The audit log's newest signed head: verify_audit_log's state, kept off-database.
        "audit_head": heads.latest(),
    }
    if hasattr(report, "completeness"):  # reports (the exception register has none)
        m["coverage"] = report.completeness()
    if settings.WELKIN_DEVELOPMENT_SIGNING_KEY:
        # Signed into the manifest: a first look's key (make run) is no evidence of anything.
        m["development_key"] = True
    m["signature"] = base64.b64encode(signing_key().sign(_canonical(m))).decode()
    return m


@dataclass
class Verification:
    ok: bool
    message: str
    manifest: dict[str, Any] | None = None
    stamp: Any = None  # tsa.Stamp when a valid token came with the manifest


def sha256_of(content: bytes | Iterable[bytes]) -> str:
    """The SHA-256 of bytes, or of chunks read as a stream (an upload, a file)."""
    if isinstance(content, bytes | bytearray):
        return hashlib.sha256(content).hexdigest()
    sha = hashlib.sha256()
    for chunk in content:
        sha.update(chunk)
    return sha.hexdigest()


class DuplicateKey(Exception):
    pass


def unique_keys(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    seen: dict[str, Any] = {}
    for key, value in pairs:
        if key in seen:
            raise DuplicateKey(repr(key))
        seen[key] = value
    return seen


def verify(
    content: bytes | Iterable[bytes],
    manifest_bytes: bytes,
    token: bytes | None = None,
    tsa_ca: bytes | None = None,
) -> Verification:
    """Is the file unmodified, did this server sign its manifest, and (given the TSA's
    token, kept beside the manifest as .tsr) when did the manifest exist, by the TSA's
    clock? `content` is the file's bytes or its chunks (hashed as a stream)."""
    try:
        m = orjson.loads(manifest_bytes)
        sig = base64.b64decode(m["signature"], validate=True)
        # A key given twice would show one reader other figures than the signature covers.
        json.loads(manifest_bytes, object_pairs_hook=unique_keys)
    except DuplicateKey as e:
        return Verification(False, f"the manifest gives the key {e} twice: it was edited")
    except (orjson.JSONDecodeError, KeyError, TypeError, ValueError):
        return Verification(False, "the manifest is not a welkin-dash manifest")
    if m.get("public_key") != public_key_b64():
        return Verification(False, "the manifest was not signed by this server's key", m)
    try:
        Ed25519PublicKey.from_public_bytes(base64.b64decode(m["public_key"])).verify(
            sig, _canonical(m)
        )
    except (InvalidSignature, ValueError):
        return Verification(
            False, "the manifest's signature is not valid: the manifest was changed", m
        )
    digest = sha256_of(content)
    if digest != m.get("sha256"):
        return Verification(
            False,
            f"the file was modified: its SHA-256 is {digest}, the manifest says {m.get('sha256')}",
            m,
        )
    development = (
        "; signed with a development key (generated by `make run` into ./var), "
        "not a production key: not evidence"
        if m.get("development_key") or settings.WELKIN_DEVELOPMENT_SIGNING_KEY
        else ""
    )
    from compliance.audit import tsa

    stamp, timestamp = None, _timestamp_note(m)
    if token is not None:
        try:
            stamp = tsa.check(token, manifest_bytes, tsa_ca)
        except tsa.NoTrustAnchor:
            timestamp = (
                "; the timestamp token was NOT checked: give the CA of the TSA "
                "(verify_report --tsa-ca PEM, or WELKIN_TSA_CA_BUNDLE)"
            )
        except tsa.TimestampError as e:
            return Verification(False, f"the timestamp token does not prove this manifest: {e}", m)
        if stamp is not None:
            timestamp = (
                f"; timestamped by {stamp.tsa} at {stamp.time.isoformat()} (the TSA's clock)"
                + (f"; {stamp.warning}" if stamp.warning else "")
            )
    return Verification(
        True,
        f"unmodified: {m['format'].upper()} report of "
        f"{m['scope_label']} as of {m['at']}, generated at "
        f"{m['generated_at']} by {m['generated_by'] or 'unknown'}{development}"
        f"{_coverage_note(m)}{timestamp}",
        m,
        stamp,
    )


def _coverage_note(m: dict[str, Any]) -> str:
    cov = m.get("coverage")
    if not isinstance(cov, dict):
        return ""
    population = (
        f"{cov.get('pods', 0):,} pods, {cov.get('containers', 0):,} containers in "
        f"{cov.get('clusters_scanned', 0)} of {cov.get('clusters', 0)} clusters"
    )
    if cov.get("complete"):
        return f"; coverage complete: {population}"
    return f"; coverage NOT complete ({population}): " + "; ".join(map(str, cov.get("reasons", [])))


def _timestamp_note(m: dict[str, Any]) -> str:
    ts = m.get("timestamp")
    if not isinstance(ts, dict):
        return ""
    if ts.get("authority"):
        return (
            f"; not checked against a timestamp: the manifest was made for the TSA "
            f"{ts['authority']}, give its token (.tsr) to prove when it existed"
        )
    return "; not timestamped (no timestamp authority was configured)"


class ExportError(Exception):
    """An export that could not be written; no file was left behind."""


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
    from compliance.audit import tsa

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
    return settings.EXPORTS_DIR / f"{record.id}.{EXTENSIONS.get(record.format, record.format)}"


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
