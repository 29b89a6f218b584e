"""Audit samples (security officers and auditors): draw one, see each workload's evidence,
export it signed."""

from django.shortcuts import redirect, render
from django.urls import reverse
from django.views.decorators.http import require_POST

from compliance import params
from compliance.audit import log
from compliance.evidence import jobs, reports, samples
from compliance.identity import access
from compliance.models import AuditEvent, Sample

FORMATS = ("csv", "json")


def _scope(request) -> access.Scope:
    scope = access.scope_for(request.user)
    if not scope.can_export:
        raise log.Denied("Not found")
    return scope


def _sample_or_404(pk) -> Sample:
    s = Sample.objects.filter(pk=pk).first()
    if s is None:
        raise log.Denied("No such sample")
    return s


def sample_list(request):
    """The form, and the samples drawn so far (newest first)."""
    scope = _scope(request)
    context = {
        "clusters": access.clusters(scope).only("name"),
        "samples": Sample.objects.order_by("-created_at")[:50],
        "max_size": samples.MAX_SIZE,
        "form": request.POST or {},
    }
    if request.method != "POST":
        return render(request, "compliance/samples.html", context)
    try:
        s = samples.create(
            scope,
            request.user,
            params.moment(request.POST, "at"),
            params.integer(request.POST, "size", 25, minimum=1, maximum=samples.MAX_SIZE),
            params.text(request.POST, "seed", 64).strip(),
            params.text(request.POST, "cluster", 63) or None,
            params.text(request.POST, "namespace", 63) or None,
        )
    except (samples.SampleError, reports.ReportError, params.BadParameter) as e:
        return render(request, "compliance/samples.html", {**context, "error": str(e)}, status=400)
    log.record(
        request,
        AuditEvent.Action.SAMPLE,
        f"sample {s.pk}",
        {
            "cluster": s.cluster or None,
            "namespace": s.namespace or None,
            "at": s.at.isoformat(),
            "size": s.size,
            "seed": s.seed,
        },
        s.population_sha256,
    )
    return redirect("compliance-sample", pk=s.pk)


def sample_detail(request, pk):
    _scope(request)
    s = _sample_or_404(pk)
    return render(request, "compliance/sample.html", {"sample": s, "formats": FORMATS})


@require_POST
def sample_export(request, pk):
    _scope(request)
    s = _sample_or_404(pk)
    fmt = params.choice(request.POST, "format", FORMATS, "json")
    doc = samples.SampleDoc(s, request.user.get_username())
    try:
        jobs.ask(request, AuditEvent.Action.EXPORT, fmt, doc, "sample", {"sample": str(s.pk)})
    except jobs.Busy as busy:
        context = {"sample": s, "formats": FORMATS, "error": str(busy)}
        return render(request, "compliance/sample.html", context, status=429)
    return redirect(reverse("compliance-reports") + "#exports")
