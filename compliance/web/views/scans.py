"""Scan management (security officers): scan now with live progress, enable, schedule."""

from django.contrib import messages
from django.db import transaction
from django.shortcuts import get_object_or_404, redirect, render
from django.views.decorators.http import require_POST

from compliance import params, workers
from compliance.audit import log
from compliance.collect import scanning
from compliance.identity import access
from compliance.models import AuditEvent, Cluster, ScanRun, ScanStatus, Source, Trigger
from compliance.web import dashboards


def _officer(request):
    scope = access.scope_for(request.user)
    access.require_manage(scope)
    return scope


def scans(request):
    scope = _officer(request)
    return render(
        request, "compliance/scans.html", {"scope": scope, "rows": dashboards.scans_overview()}
    )


def progress(request, name):
    _officer(request)
    c = get_object_or_404(Cluster.objects.select_related("last_scan"), name=name)
    running = ScanRun.objects.filter(cluster=c, status=ScanStatus.RUNNING).first()
    return render(request, "compliance/_scan_progress.html", {"cluster": c, "running": running})


@require_POST
def scan_now(request, name):
    _officer(request)
    c = get_object_or_404(Cluster, name=name)
    if c.source == Source.SNAPSHOT:
        messages.error(
            request,
            f"{c.name} is a snapshot cluster: import a new snapshot "
            "with manage.py import_snapshot.",
        )
    else:
        log.record(request, AuditEvent.Action.SCAN_NOW, c.name, {"cluster": c.name})
        transaction.on_commit(
            lambda: workers.send(scanning.scan_cluster_task, c.pk, Trigger.MANUAL)
        )
        messages.success(request, f"Scan of {c.name} queued.")
    return redirect("compliance-scans")


@require_POST
def schedule(request, name):
    _officer(request)
    c = get_object_or_404(Cluster, name=name)
    try:
        minutes = params.integer(
            request.POST, "schedule_minutes", c.schedule_minutes, minimum=1, maximum=7 * 24 * 60
        )
    except params.BadParameter:
        messages.error(request, "Schedule: a whole number of minutes from 1 to 10080.")
        return redirect("compliance-scans")
    before = {"enabled": c.enabled, "schedule_minutes": c.schedule_minutes}
    c.schedule_minutes = minutes
    c.enabled = request.POST.get("enabled") == "on"
    with transaction.atomic():
        c.save(update_fields=["schedule_minutes", "enabled"])
        # Turning a cluster's scans off stops its evidence: who did it, and when, is kept.
        log.record(
            request,
            AuditEvent.Action.SCAN_SETTINGS,
            c.name,
            {
                "cluster": c.name,
                "before": before,
                "after": {"enabled": c.enabled, "schedule_minutes": c.schedule_minutes},
            },
        )
    messages.success(
        request, f"{c.name}: {'enabled' if c.enabled else 'disabled'}, every {minutes} minutes."
    )
    return redirect("compliance-scans")
