"""A point-in-time report's rows written by PostgreSQL's COPY, over several connections
that share one snapshot (as `pg_dump -j` does)."""

from __future__ import annotations

import contextlib
import itertools
import tempfile
import threading
from collections.abc import Callable
from typing import Any

import psycopg2.errors
from django.conf import settings
from django.db import connection, transaction

from compliance.evidence import reports
from compliance.evidence.reports import Report
from compliance.evidence.sink import ExportError, HashingWriter, Progress
from compliance.models import (
    Cluster,
    ClusterRollup,
    DailyRollup,
    ExceptionMatch,
    Finding,
    FindingEvent,
    RiskException,
)
from compliance.vocabulary import NONCOMPLIANT


def copyable(report) -> bool:
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

    def __init__(self, out: HashingWriter, progress: Progress, fmt: str):
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


def copy_rows(
    report: Report,
    fmt: str,
    out: HashingWriter,
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
