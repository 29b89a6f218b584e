"""Exports as jobs: asked for in a request, written by a Celery worker, kept for a while.

A request checks its parameters (a malformed one is refused there, with a 400) and saves
an Export record, queued; the task is sent once that transaction commits (in-process, as
under `make run` and in the tests, it runs at once). The worker claims the record (running,
with its host:pid), rebuilds the document with the asker's scope as it is now, writes the
file through store.write_export (temporary names, renamed into place only when complete,
the manifest last) and records rows written as it goes. It ends done (with the manifest's
SHA-256, audited) or failed with the reason, leaving no file.

A worker killed mid-export leaves the record running: Celery delivers the task again
(acks_late, reject_on_worker_lost) and the next attempt takes it over once the dead
worker's process is gone (same host) or its heartbeat is older than
WELKIN_EXPORT_STALE_SECONDS; after WELKIN_EXPORT_MAX_ATTEMPTS attempts it fails. Beat's
sweep (compliance.tasks.sweep_exports) fails exports nobody runs any more and deletes
exports older than WELKIN_EXPORT_RETENTION_DAYS (file, manifest, token and record; audited).
"""

from __future__ import annotations

import contextlib
import datetime as dt
import logging
import threading
import time
from typing import Any

from celery import shared_task
from django.conf import settings
from django.contrib.auth.models import User
from django.db import connection, transaction
from django.db.models import Q
from django.utils import timezone
from prometheus_client import Counter

from compliance import vocabulary, workers
from compliance.audit import log as audit
from compliance.evidence import reports, samples, store
from compliance.identity import access
from compliance.models import AuditEvent, Export, ExportStatus, Sample
from compliance.risk import register

log = logging.getLogger(__name__)

KINDS = ("report", "register", "sample")
ACTIVE = (ExportStatus.QUEUED, ExportStatus.RUNNING)


class JobError(Exception):
    """An export that cannot be written, with the reason the user is shown."""


# Counted in the process that takes the request; /metrics serves it (ops/metrics.py).
EXPORT_REQUESTS = Counter(
    "welkin_export_requests",
    "Exports asked for (the reports page, the register, samples, the API), by format.",
    ["format"],
)


class Busy(Exception):
    """The user has as many exports queued or running as they may (answered 429)."""


def ask(http_request, action: str, fmt: str, doc, kind: str, params: dict[str, Any]) -> Export:
    """An export asked for in a request: saved, audited (`action`), queued. Busy when the
    user already has WELKIN_EXPORT_MAX_ACTIVE exports queued or being written."""
    limit = settings.WELKIN_EXPORT_MAX_ACTIVE
    with transaction.atomic():
        # The user's row locked: parallel requests count and create one at a time (each
        # counted before any was saved, ten at once all got in).
        User.objects.select_for_update().filter(pk=http_request.user.pk).exists()
        active = Export.objects.filter(user=http_request.user, status__in=ACTIVE).count()
        if active >= limit:
            raise Busy(
                f"You have {active} exports queued or being written (at most {limit} at a "
                "time, WELKIN_EXPORT_MAX_ACTIVE): ask again when one is ready."
            )
        EXPORT_REQUESTS.labels(fmt).inc()
        e = create(http_request.user, fmt, doc, kind, params)
        audit.record(http_request, action, f"{fmt} {e.id}", {**doc.scope, "at": doc.at.isoformat()})
    queue(e)  # after the commit: written in-process (make run), it needs its own transactions
    return e


def ask_report(http_request, fmt: str, report) -> Export:
    """A point-in-time report's export asked for (the reports page, the API)."""
    return ask(
        http_request,
        AuditEvent.Action.EXPORT,
        fmt,
        report,
        "report",
        {"cluster": report.cluster or "", "namespace": report.namespace or ""},
    )


def create(user, fmt: str, doc, kind: str, params: dict[str, Any]) -> Export:
    """Save a queued Export of `doc` (built in the request with summarize=False, so its
    parameters are known to be good); `params` rebuild it in the worker."""
    if kind not in KINDS:
        raise ValueError(f"unknown export kind {kind!r}")
    if fmt not in vocabulary.EXPORT_FORMATS:
        raise ValueError(f"unknown format {fmt!r}")
    return Export.objects.create(
        user=user,
        format=fmt,
        scope=doc.scope,
        at=doc.at,
        # What the asker saw (access.Scope.key): its files are theirs only while they
        # still see exactly that (may_download).
        request={"kind": kind, **params, "viewer": access.scope_for(user).key},
    )


def may_download(e: Export, user) -> bool:
    """Access is checked again at every download, on the page and through the API: the
    asker, still holding a role, seeing what they saw when they asked (a lead whose
    namespaces changed, or anyone whose role ended, asks again). Exports made before
    the viewer was recorded count as the fleet's."""
    scope = access.scope_for(user)
    if e.user_id is None or e.user_id != user.pk or scope.role is None:
        return False
    return e.request.get("viewer", "fleet") == scope.key


def queue(record: Export) -> None:
    if settings.WELKIN_EXPORTS_IN_PROCESS:
        # In-process (make run): written now, within the request.
        run(record.pk)
        record.refresh_from_db()
        return
    pk = str(record.pk)
    # robust: with the broker down the export stays saved and queued, and the request
    # answers with it; the sweep sends it again (WELKIN_EXPORT_STALE_SECONDS).
    transaction.on_commit(lambda: workers.send(export, pk), robust=True)


# --- the worker's side -------------------------------------------------------------------


def _abandoned(e: Export, now: dt.datetime) -> bool:
    """A running export whose worker is known dead, or silent for too long."""
    if workers.gone(e.worker):
        return True
    stale = now - dt.timedelta(seconds=settings.WELKIN_EXPORT_STALE_SECONDS)
    return e.heartbeat_at is None or e.heartbeat_at < stale


def claim(export_id) -> Export | None:
    """Take the export to run it: a queued one, or a running one whose worker is gone.
    None when it is done, failed, gone, or still being written by a live worker."""
    now = timezone.now()
    with transaction.atomic():
        e = Export.objects.select_for_update().filter(pk=export_id).first()
        if e is None or e.status in (ExportStatus.DONE, ExportStatus.FAILED):
            return None
        if e.status == ExportStatus.RUNNING and not _abandoned(e, now):
            return None
        if e.attempts >= settings.WELKIN_EXPORT_MAX_ATTEMPTS:
            _fail(
                e,
                f"the worker writing it stopped {e.attempts} times "
                f"(last progress {_when(e.heartbeat_at)}): ask for it again, or for a "
                "smaller scope",
            )
            return None
        e.status, e.worker, e.error = ExportStatus.RUNNING, workers.worker_id(), ""
        e.attempts += 1
        e.rows = 0
        e.started_at = e.heartbeat_at = now
        e.save(
            update_fields=[
                "status",
                "worker",
                "error",
                "attempts",
                "rows",
                "started_at",
                "heartbeat_at",
            ]
        )
    remove_files(e, leftovers_only=True)  # a dead attempt's temporary files
    return e


def _when(t: dt.datetime | None) -> str:
    return f"{t:%Y-%m-%d %H:%M:%S} UTC" if t else "none"


def run(export_id) -> str:
    """Claim and write one export; its status afterwards ('' when not claimed)."""
    e = claim(export_id)
    if e is None:
        return ""
    return attempt(e)


class TakenOver(JobError):
    """This attempt no longer holds the export (another took it over, or the sweep)."""


def _holding(e: Export):
    """The export, if this attempt (its worker and number) still holds it."""
    return Export.objects.filter(
        pk=e.pk, status=ExportStatus.RUNNING, worker=e.worker, attempts=e.attempts
    )


@contextlib.contextmanager
def _hold(e: Export):
    """The export's row locked for this attempt (a takeover waits), or TakenOver."""
    with transaction.atomic():
        if not _holding(e).select_for_update().exists():
            raise TakenOver("this attempt was taken over")
        yield


def attempt(e: Export) -> str:
    """Write a claimed export. An attempt that was taken over (its worker stalled, then
    came back) changes nothing: not the files, which it renames into place only while
    it holds the export, nor the record."""
    progress = Progress(e)
    started = time.monotonic()
    try:
        doc = document(e)
        if e.format not in ("csv", "json"):
            # A PDF is laid out from its summary: its rows are counted first. A CSV needs
            # no summary; a JSON's is read while its rows are written (and then saved).
            e.total = reports.summary_rows(doc)
            _holding(e).update(total=e.total)
        store.write_export(e, doc, progress, hold=lambda: _hold(e))
        e.total = progress.total if progress.total is not None else e.total
    except Exception as failure:  # recorded for the user; the worker goes on
        reason = _reason(failure)
        if not _fail(e, reason, time.monotonic() - started, attempt=True):
            log.warning("export %s: this attempt was taken over; it stops (%s)", e.pk, reason)
            return ""
        log.warning("export %s failed: %s", e.pk, reason, exc_info=not _expected(failure))
        return ExportStatus.FAILED
    finally:
        progress.close()
    # Done only if this attempt still holds it (not taken over, nor failed by the sweep).
    if not _holding(e).update(
        status=ExportStatus.DONE,
        manifest=e.manifest,
        rows=e.rows,
        total=e.total,
        timestamp=e.timestamp,
        timestamp_error=e.timestamp_error,
        error="",
        finished_at=e.finished_at,
        heartbeat_at=e.finished_at,
        expires_at=e.expires_at,
    ):
        log.warning("export %s: this attempt was taken over; its result is not kept", e.pk)
        return ""
    e.status = ExportStatus.DONE
    audit.record(
        None,
        AuditEvent.Action.EXPORT_DONE,
        f"{e.format} {e.pk}",
        {
            **e.scope,
            "at": e.at.isoformat(),
            "format": e.format,
            "rows": e.rows,
            "bytes": e.manifest["bytes"],
            "seconds": round(time.monotonic() - started, 3),
        },
        e.manifest["sha256"],
        username=e.user.get_username() if e.user else "",
    )
    return ExportStatus.DONE


def _expected(failure: BaseException) -> bool:
    return isinstance(failure, JobError | store.ExportError | OSError)


def _reason(failure: BaseException) -> str:
    from celery.exceptions import SoftTimeLimitExceeded

    cause = failure  # the writer wraps what stopped it ("... and left no file: ...")
    while cause is not None and not isinstance(cause, SoftTimeLimitExceeded):
        cause = cause.__cause__
    if cause is not None:
        return (
            f"it took longer than the export time limit ({settings.WELKIN_EXPORT_TIME_LIMIT} s, "
            "WELKIN_EXPORT_TIME_LIMIT): ask for a smaller scope"
        )
    if isinstance(failure, JobError | store.ExportError):
        return str(failure)
    if isinstance(failure, OSError):
        return f"the file could not be written: {failure.strerror or failure}"
    return f"an internal error ({type(failure).__name__}); the worker's log has the details"


def _fail(e: Export, reason: str, seconds: float | None = None, attempt: bool = False) -> bool:
    """Fail the export: no file left, the reason kept and audited. attempt=True: only
    while this attempt holds it (False, and nothing touched, when it was taken over)."""
    now = timezone.now()
    with transaction.atomic():
        if attempt and not _holding(e).select_for_update().exists():
            return False
        remove_files(e)
        Export.objects.filter(pk=e.pk).update(
            status=ExportStatus.FAILED, error=reason, finished_at=now, expires_at=expiry(now)
        )
    e.status, e.error = ExportStatus.FAILED, reason
    audit.record(
        None,
        AuditEvent.Action.EXPORT_FAILED,
        f"{e.format} {e.pk}",
        {"format": e.format, "reason": reason[:500], "seconds": seconds},
        username=e.user.get_username() if e.user_id and e.user else "",
    )
    return True


def document(e: Export):
    """The export's document, rebuilt with the asker's scope as it is now."""
    if e.user is None or not e.user.is_active:
        raise JobError("the user who asked for it no longer has an account")
    scope = access.scope_for(e.user)
    username = e.user.get_username()
    kind = e.request.get("kind")
    try:
        if kind == "report":
            return reports.point_in_time(
                scope,
                e.at,
                e.request.get("cluster") or None,
                e.request.get("namespace") or None,
                generated_by=username,
            )
        if kind == "register":
            if not register.can_read(scope):
                raise JobError("you no longer have access to the exception register")
            return register.Register(
                scope, register.Filters.from_query(e.request.get("filters", {})), username, e.at
            )
        if kind == "sample":
            if not scope.can_export:
                raise JobError("you no longer have access to audit samples")
            sample = Sample.objects.filter(pk=e.request.get("sample")).first()
            if sample is None:
                raise JobError("the sample was deleted")
            return samples.SampleDoc(sample, username)
    except reports.ReportError as error:
        raise JobError(str(error)) from None
    raise JobError(f"unknown export kind {kind!r}")


class Progress:
    """Rows written so far, and a heartbeat that shows the attempt is alive even while no
    row moves (the summary, the sort before COPY's first row, a PDF's layout, the TSA).

    On PostgreSQL a thread with a connection of its own saves both (the export's COPY
    holds the main connection): the rows at most once a second, the heartbeat at least
    every HEARTBEAT seconds. Elsewhere (SQLite, `make run`) the rows are saved inline."""

    HEARTBEAT = 30.0

    def __init__(self, e: Export, every: float = 1.0):
        # Saved only while this attempt holds the export: one that was taken over (it
        # stalled, then came back) must not move the next attempt's count, nor make a
        # done export's rows jump, nor keep its own heartbeat looking alive.
        self.export, self.every = e, every
        self.last = time.monotonic()
        self.rows = 0
        self.total: int | None = None  # set by the writer once it knows (a JSON's summary)
        self.thread = None
        if connection.vendor == "postgresql":
            self.stop = threading.Event()
            self.thread = threading.Thread(target=self._beat, daemon=True)
            self.thread.start()

    def __call__(self, rows: int) -> None:
        self.rows = rows
        if self.thread is not None:
            return
        now = time.monotonic()
        if now - self.last >= self.every:
            self.last = now
            self._save(self.rows, self.total)

    def _save(self, rows: int, total: int | None) -> None:
        saved: dict[str, Any] = {"rows": rows, "heartbeat_at": timezone.now()}
        if total is not None:
            saved["total"] = total
        _holding(self.export).update(**saved)

    def _beat(self) -> None:
        # Django gives this thread a connection of its own, closed when the thread ends.
        try:
            saved, beat = (-1, None), time.monotonic()
            while not self.stop.wait(self.every):
                now = (self.rows, self.total)
                if now == saved and time.monotonic() - beat < self.HEARTBEAT:
                    continue
                saved, beat = now, time.monotonic()
                self._save(*saved)
        except Exception as e:  # the export goes on; its heartbeat stops
            log.warning("export %s: progress not saved: %s", self.export.pk, e)
        finally:
            connection.close()

    def close(self) -> None:
        if self.thread is not None:
            self.stop.set()
            self.thread.join(10)
            self.thread = None


# --- files, sweeping, expiry -------------------------------------------------------------


def remove_files(e: Export, leftovers_only: bool = False) -> None:
    """Delete an export's temporary files (a dead attempt's), and unless leftovers_only
    its file, manifest and timestamp token too."""
    folder = settings.EXPORTS_DIR
    with contextlib.suppress(OSError):
        for part in folder.glob(f".{e.pk}.*.part"):
            part.unlink(missing_ok=True)
    if leftovers_only:
        return
    path = store.file_path(e)
    for p in (store.token_path(path), store.manifest_path(path), path):
        with contextlib.suppress(OSError):
            p.unlink(missing_ok=True)


def sweep(now: dt.datetime | None = None) -> dict[str, int]:
    """Beat: run again the exports nobody is writing any more (their worker or pod died:
    Redis would give the task back only after its visibility timeout), or fail them after
    WELKIN_EXPORT_MAX_ATTEMPTS; re-send those still queued long after they were asked for
    (a lost message); and delete the expired ones."""
    now = now or timezone.now()
    failed = requeued = rerun = 0
    for e in Export.objects.filter(status=ExportStatus.RUNNING):
        if not _abandoned(e, now):
            continue
        with transaction.atomic():
            locked = Export.objects.select_for_update().get(pk=e.pk)
            if locked.status != ExportStatus.RUNNING or not _abandoned(locked, now):
                continue
            stopped = f"the worker writing it stopped (last progress {_when(locked.heartbeat_at)})"
            if (
                settings.WELKIN_EXPORTS_IN_PROCESS
                or locked.attempts >= settings.WELKIN_EXPORT_MAX_ATTEMPTS
            ):
                _fail(locked, f"{stopped}: ask for it again")
                failed += 1
                continue
            # Queued again (the next attempt is a new claim; a late redelivery of the
            # first message finds it taken, or done).
            log.warning("export %s: %s; queued again", locked.pk, stopped)
            Export.objects.filter(pk=locked.pk).update(
                status=ExportStatus.QUEUED, worker="", heartbeat_at=now
            )
            remove_files(locked, leftovers_only=True)
            transaction.on_commit(lambda pk=str(locked.pk): workers.send(export, pk))
            rerun += 1
    # Queued long ago and not sent again since (heartbeat_at: when it last was): the
    # message may be lost (a broker restarted without persistence). Sent once more; a
    # duplicate is harmless (claim takes each export once).
    lost = now - dt.timedelta(seconds=settings.WELKIN_EXPORT_STALE_SECONDS)
    waiting = Export.objects.filter(status=ExportStatus.QUEUED, created_at__lt=lost).filter(
        Q(heartbeat_at__isnull=True) | Q(heartbeat_at__lt=lost)
    )
    for pk in waiting.values_list("pk", flat=True):
        if not settings.WELKIN_EXPORTS_IN_PROCESS and Export.objects.filter(
            pk=pk, status=ExportStatus.QUEUED
        ).update(heartbeat_at=now):
            workers.send(export, str(pk))
            requeued += 1
    return {"failed": failed, "rerun": rerun, "requeued": requeued, **expire(now)}


def expire(now: dt.datetime | None = None) -> dict[str, int]:
    """Delete the exports older than WELKIN_EXPORT_RETENTION_DAYS, files first (audited)."""
    now = now or timezone.now()
    cutoff = now - dt.timedelta(days=settings.WELKIN_EXPORT_RETENTION_DAYS)
    expired = list(
        Export.objects.filter(expires_at__lte=now)
        .exclude(status__in=ACTIVE)
        .only("pk", "format", "scope", "at")
    )
    if not expired:
        return {"expired": 0}
    for e in expired:
        remove_files(e)
    Export.objects.filter(pk__in=[e.pk for e in expired]).delete()
    audit.record(
        None,
        AuditEvent.Action.EXPORT_EXPIRED,
        "exports",
        {
            "exports": len(expired),
            "retention_days": settings.WELKIN_EXPORT_RETENTION_DAYS,
            "cutoff": cutoff.isoformat(),
            "ids": [str(e.pk) for e in expired[:1000]],
        },
    )
    return {"expired": len(expired)}


def expiry(finished: dt.datetime) -> dt.datetime:
    return finished + dt.timedelta(days=settings.WELKIN_EXPORT_RETENTION_DAYS)


# --- tasks (names pinned: routes, beat entries and messages already queued use them) -----


@shared_task(
    name="compliance.tasks.export",
    acks_late=True,
    time_limit=settings.WELKIN_EXPORT_TIME_LIMIT,
    soft_time_limit=settings.WELKIN_EXPORT_TIME_LIMIT - 5,
)
def export(export_id: str) -> str:
    """Write one export. Safe to deliver twice: a done, failed or live-running export is
    left alone; one whose worker died is taken over."""
    return run(export_id)


@shared_task(name="compliance.tasks.sweep_exports")
def sweep_exports() -> dict:
    """Beat, every 5 minutes: fail exports whose worker is gone, send again those whose
    message was lost, delete the expired ones."""
    return sweep()
