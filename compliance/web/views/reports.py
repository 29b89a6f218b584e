"""Reports (every role, within their scope): preview, export with a signed manifest,
verify; the audit log (security officers and auditors)."""

from django.conf import settings
from django.http import FileResponse, Http404, HttpResponse, StreamingHttpResponse
from django.shortcuts import redirect, render
from django.urls import reverse
from django.utils import timezone
from django.views.decorators.http import require_GET, require_POST

from compliance import params, vocabulary
from compliance.audit import log, signing
from compliance.evidence import jobs, reports, signed, store
from compliance.identity import access
from compliance.models import AuditEvent, AuditHead, Export, ExportStatus

PREVIEW_ROWS = 100


def _report_from(
    request, query, summarize: bool = True
) -> tuple[reports.Report | None, str | None]:
    try:
        scope, username = access.scope_for(request.user), request.user.get_username()
        return reports.from_query(scope, query, username, summarize=summarize), None
    except (reports.ReportError, params.BadParameter) as e:
        return None, str(e)


def report(request):
    scope = access.scope_for(request.user)
    context = {
        "scope": scope,
        "clusters": access.clusters(scope).only("name"),
        "formats": vocabulary.EXPORT_FORMATS,
        "params": request.GET,
    }
    if "preview" in request.GET:
        r, error = _report_from(request, request.GET)
        context["error"] = error
        if r is not None:
            rows = r.first_rows(PREVIEW_ROWS)
            log.record(
                request,
                AuditEvent.Action.REPORT_VIEW,
                "report",
                {**r.scope, "at": r.at.isoformat()},
            )
            context.update(report=r, rows=rows, controls=r.control_summary())
    context.update(_exports_context(request))
    return render(request, "compliance/reports.html", context)


def _exports_context(request) -> dict:
    mine = list(Export.objects.filter(user=request.user).order_by("-created_at")[:20])
    now = timezone.now()
    for e in mine:
        # A worker saves progress at least every HEARTBEAT seconds; silence for three
        # times that means it stalled or died, and the page says so (not a frozen count).
        last = e.heartbeat_at or e.started_at
        silent = (now - last).total_seconds() if e.status == "running" and last else 0
        e.silent_minutes = int(silent // 60) if silent > 3 * jobs.Progress.HEARTBEAT else None
    return {
        "exports": mine,
        "exports_active": any(e.status in jobs.ACTIVE for e in mine),
        "export_days": settings.WELKIN_EXPORT_RETENTION_DAYS,
        "export_stale_minutes": settings.WELKIN_EXPORT_STALE_SECONDS // 60,
    }


def exports_list(request):
    """The "Your exports" table alone: polled by the reports page while one is written."""
    return render(request, "compliance/_exports.html", _exports_context(request))


@require_POST
def export(request):
    """Ask for an export: the parameters are checked here (400 naming the wrong one), the
    file is written by a worker (compliance/evidence/jobs.py); the page shows its progress."""
    r, error = _report_from(request, request.POST, summarize=False)
    fmt = request.POST.get("format")
    if r is None or fmt not in vocabulary.EXPORT_FORMATS:
        return _report_page(request, error or "Choose a format.", 400)
    try:
        jobs.ask_report(request, fmt, r)
    except jobs.Busy as busy:
        return _report_page(request, str(busy), 429)
    return redirect(reverse("compliance-reports") + "#exports")


def _report_page(request, error: str, status: int):
    return render(
        request,
        "compliance/reports.html",
        {
            "scope": access.scope_for(request.user),
            "error": error,
            "formats": vocabulary.EXPORT_FORMATS,
            "params": request.POST,
            "clusters": access.clusters(access.scope_for(request.user)).only("name"),
        },
        status=status,
    )


def _path(e: Export):
    return store.file_path(e)


def _export_for(request, pk) -> Export:
    e = Export.objects.filter(pk=pk, user=request.user).first()
    if e is None or not jobs.may_download(e, request.user):
        raise log.Denied("No such export")
    if e.status != ExportStatus.DONE:
        raise Http404(
            f"The export is {e.get_status_display().lower()}"
            + (f": {e.error}" if e.error else "; its files are not ready")
        )
    return e


def download(request, pk):
    e = _export_for(request, pk)
    try:
        f = open(_path(e), "rb")
    except FileNotFoundError:
        raise Http404("The export's file is gone (deleted from the exports folder)") from None
    return FileResponse(f, as_attachment=True, filename=e.filename)


def manifest(request, pk):
    """The manifest file as written (its bytes are what the TSA's token covers)."""
    e = _export_for(request, pk)
    try:
        f = open(store.manifest_path(_path(e)), "rb")
    except FileNotFoundError:
        raise Http404("The export's manifest is gone (deleted from the exports folder)") from None
    return FileResponse(
        f,
        as_attachment=True,
        filename=f"{e.filename}.manifest.json",
        content_type="application/json",
    )


def timestamp(request, pk):
    """The TSA's token over the manifest (RFC 3161 TimeStampResp, DER)."""
    e = _export_for(request, pk)
    if not e.timestamp:
        raise Http404(
            "This export has no timestamp token"
            + (f": {e.timestamp_error}" if e.timestamp_error else "")
        )
    response = HttpResponse(bytes(e.timestamp), content_type="application/timestamp-reply")
    response["Content-Disposition"] = f'attachment; filename="{e.filename}.manifest.json.tsr"'
    return response


def verify(request):
    result = None
    limit = settings.WELKIN_VERIFY_MAX_BYTES
    if request.method == "POST" and params.content_length(request) > limit + (1 << 20):
        # Refused before the body is read: the report plus room for its manifest.
        return _verify_page(
            request,
            signed.Verification(
                False,
                f"the upload is larger than {limit:,} bytes (WELKIN_VERIFY_MAX_BYTES); "
                "verify a file that size with manage.py verify_report",
            ),
            413,
        )
    if request.method == "POST":
        content, manifest_file = request.FILES.get("file"), request.FILES.get("manifest")
        token_file = request.FILES.get("timestamp")
        if content is None or manifest_file is None:
            result = signed.Verification(False, "Choose the report file and its manifest.")
        elif manifest_file.size > signed.MANIFEST_MAX_BYTES:
            result = signed.Verification(
                False,
                "the manifest is larger than "
                f"{signed.MANIFEST_MAX_BYTES} bytes: not a "
                "welkin-dash manifest",
            )
        elif token_file is not None and token_file.size > signed.MANIFEST_MAX_BYTES:
            result = signed.Verification(False, "the timestamp token is too large to be one")
        else:
            result = signed.verify(
                content.chunks(),
                manifest_file.read(),
                token_file.read() if token_file is not None else None,
            )
            log.record(
                request,
                AuditEvent.Action.VERIFY,
                content.name,
                content_hash=(result.manifest or {}).get("sha256", "") if result.ok else "",
            )
    return _verify_page(request, result)


def _verify_page(request, result, status: int = 200):
    return render(
        request,
        "compliance/verify.html",
        {
            "result": result,
            "public_key": signing.public_key_b64(),
            "max_bytes": settings.WELKIN_VERIFY_MAX_BYTES,
        },
        status=status,
    )


def _audit_scope(request):
    scope = access.scope_for(request.user)
    if not scope.can_export:
        raise log.Denied("Not found")
    return scope


def audit_log(request):
    _audit_scope(request)
    action = params.choice(request.GET, "action", AuditEvent.Action.values)
    events = log.for_log_page(action, params.integer(request.GET, "before"))
    return render(
        request,
        "compliance/audit.html",
        {
            "events": events,
            "actions": AuditEvent.Action.choices,
            "action": action,
            "next": events[-1].pk if len(events) == log.PAGE_SIZE else None,
        },
    )


def audit_verify(request):
    """The auditors' page: the chain checked now, the signed heads, the first broken link."""
    _audit_scope(request)
    result = log.verify_chain()
    log.record(
        request,
        AuditEvent.Action.AUDIT_VERIFY,
        "audit log",
        {"ok": result.ok, "events": result.events, "broken": result.broken_seq},
    )
    return render(
        request,
        "compliance/audit_verify.html",
        {
            "result": result,
            "heads": AuditHead.objects.order_by("-at")[:30],
            "public_key": signing.public_key_b64(),
        },
    )


@require_GET  # not HEAD: it would be audited as an export with nothing downloaded
def audit_export(request):
    _audit_scope(request)
    log.record(request, AuditEvent.Action.AUDIT_EXPORT, "audit log")
    response = StreamingHttpResponse(log.csv_lines(), content_type="text/csv; charset=utf-8")
    response["Content-Disposition"] = 'attachment; filename="welkin-audit-log.csv"'
    return response
