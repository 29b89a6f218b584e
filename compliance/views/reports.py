"""Reports (every role, within their scope): preview, export with a signed manifest,
verify; the audit log (security officers and auditors)."""

import csv
import datetime as dt

from django.conf import settings
from django.http import FileResponse, JsonResponse, StreamingHttpResponse
from django.shortcuts import redirect, render
from django.utils import timezone
from django.utils.dateparse import parse_datetime
from django.views.decorators.http import require_POST

from compliance import access, audit, exports, reports
from compliance.models import AuditEvent, Export

PREVIEW_ROWS = 100


def _report_from(request, params) -> tuple[reports.Report | None, str | None]:
    scope = access.scope_for(request.user)
    at = None
    if params.get("at"):
        at = parse_datetime(params["at"])
        if at is not None and timezone.is_naive(at):
            at = at.replace(tzinfo=dt.UTC)  # the form's times are UTC
        if at is None:
            return None, f"Time {params['at']!r}: expected YYYY-MM-DDTHH:MM."
    try:
        return reports.point_in_time(scope, at, params.get("cluster") or None,
                                     params.get("namespace") or None,
                                     generated_by=request.user.get_username()), None
    except reports.ReportError as e:
        return None, str(e)


def report(request):
    scope = access.scope_for(request.user)
    context = {"scope": scope, "clusters": access.clusters(scope).only("name"),
               "formats": exports.FORMATS, "params": request.GET}
    if "preview" in request.GET:
        r, error = _report_from(request, request.GET)
        context["error"] = error
        if r is not None:
            rows = []
            for row in r.rows():
                rows.append(row)
                if len(rows) == PREVIEW_ROWS:
                    break
            audit.record(request, AuditEvent.Action.REPORT_VIEW, "report",
                         {**r.scope, "at": r.at.isoformat()})
            context.update(report=r, rows=rows, controls=r.control_summary())
    context["exports"] = Export.objects.filter(user=request.user).order_by("-created_at")[:20]
    return render(request, "compliance/reports.html", context)


@require_POST
def export(request):
    r, error = _report_from(request, request.POST)
    fmt = request.POST.get("format")
    if r is None or fmt not in exports.FORMATS:
        return render(request, "compliance/reports.html", {
            "scope": access.scope_for(request.user), "error": error or "Choose a format.",
            "formats": exports.FORMATS, "params": request.POST,
            "clusters": access.clusters(access.scope_for(request.user)).only("name")},
            status=400)
    e = Export(user=request.user, format=fmt, scope=r.scope, at=r.at)
    settings.EXPORTS_DIR.mkdir(parents=True, exist_ok=True)
    e.manifest = exports.export_to(r, fmt, _path(e), e.filename)
    e.save()
    audit.record(request, AuditEvent.Action.EXPORT, f"{fmt} {e.id}",
                 {**r.scope, "at": r.at.isoformat()}, e.manifest["sha256"])
    return redirect("compliance-reports")


def _path(e: Export):
    return settings.EXPORTS_DIR / f"{e.id}.{e.format}"


def _export_for(request, pk) -> Export:
    e = Export.objects.filter(pk=pk, user=request.user).first()
    if e is None:
        raise audit.Denied("No such export")
    return e


def download(request, pk):
    e = _export_for(request, pk)
    return FileResponse(open(_path(e), "rb"), as_attachment=True, filename=e.filename)


def manifest(request, pk):
    e = _export_for(request, pk)
    response = JsonResponse(e.manifest, json_dumps_params={"indent": 2})
    response["Content-Disposition"] = f'attachment; filename="{e.filename}.manifest.json"'
    return response


def verify(request):
    result = None
    if request.method == "POST":
        content, manifest_file = request.FILES.get("file"), request.FILES.get("manifest")
        if content is None or manifest_file is None:
            result = exports.Verification(False, "Choose the report file and its manifest.")
        else:
            result = exports.verify(content.read(), manifest_file.read())
            audit.record(request, AuditEvent.Action.VERIFY, content.name,
                         content_hash=(result.manifest or {}).get("sha256", "")
                         if result.ok else "")
    return render(request, "compliance/verify.html", {
        "result": result, "public_key": exports.public_key_b64()})


def _audit_scope(request):
    scope = access.scope_for(request.user)
    if not scope.can_export:
        raise audit.Denied("Not found")
    return scope


def audit_log(request):
    _audit_scope(request)
    qs = AuditEvent.objects.all()
    action = request.GET.get("action", "")
    if action in AuditEvent.Action.values:
        qs = qs.filter(action=action)
    before = request.GET.get("before")
    if before and before.isdigit():
        qs = qs.filter(pk__lt=int(before))
    events = list(qs.order_by("-pk")[:100])
    return render(request, "compliance/audit.html", {
        "events": events, "actions": AuditEvent.Action.choices, "action": action,
        "next": events[-1].pk if len(events) == 100 else None})


class _Echo:
    def write(self, value):
        return value


def audit_export(request):
    _audit_scope(request)
    audit.record(request, AuditEvent.Action.AUDIT_EXPORT, "audit log")
    writer = csv.writer(_Echo())

    def rows():
        yield writer.writerow(["at", "user", "action", "target", "scope", "content_hash",
                               "ip"])
        for e in AuditEvent.objects.order_by("pk").iterator(5000):
            yield writer.writerow([e.at.isoformat(), e.username, e.action, e.target,
                                   e.scope, e.content_hash, e.ip or ""])
    response = StreamingHttpResponse(rows(), content_type="text/csv")
    response["Content-Disposition"] = 'attachment; filename="welkin-audit-log.csv"'
    return response
