"""The REST API: clusters, scans, findings, rollups, exceptions and reports, filtered by
access.py exactly like the pages, and exports (ask for one, then poll it). A finding says
whether it is open or accepted (an exception in force now) and by which exception. Token
or session authentication; cursor pagination; an OpenAPI schema at /api/schema/."""

from __future__ import annotations

from django.db.models import Exists, OuterRef
from django.urls import reverse
from django.utils import timezone
from drf_spectacular.utils import OpenApiParameter, extend_schema, extend_schema_view
from rest_framework import permissions, serializers, viewsets
from rest_framework.decorators import api_view, permission_classes
from rest_framework.exceptions import NotFound, ValidationError
from rest_framework.pagination import CursorPagination
from rest_framework.response import Response
from rest_framework.views import exception_handler as drf_exception_handler

from compliance import params, vocabulary
from compliance.audit import log
from compliance.evidence import jobs, reports
from compliance.identity import access
from compliance.models import (
    AuditEvent,
    Cluster,
    DailyRollup,
    Export,
    ExportStatus,
    Finding,
    RiskException,
    ScanRun,
    State,
)
from compliance.risk import acceptance, exceptions, register
from compliance.rules import controls, explain
from compliance.vocabulary import ACCEPTED, OPEN
from compliance.web.views import reports as pages

REPORT_ROWS = 1000


class HasRole(permissions.BasePermission):
    """A user with one of the three roles; what they see is then narrowed by access.py."""

    def has_permission(self, request, view) -> bool:
        return access.scope_for(request.user).role is not None


def exception_handler(exc, context):
    """DRF's, plus BadParameter (compliance/params.py) as a 400 naming the parameter, and
    Denied audited as on the pages (DRF answers it 404 before the middleware sees it)."""
    if isinstance(exc, params.BadParameter):
        return Response({exc.name: [exc.problem]}, status=400)
    if isinstance(exc, log.Denied):
        request = context["request"]
        log.record(request, AuditEvent.Action.DENIED, target=request.get_full_path())
    return drf_exception_handler(exc, context)


class ById(CursorPagination):
    ordering = "-pk"
    page_size = 100
    max_page_size = 1000
    page_size_query_param = "page_size"

    def decode_cursor(self, request):
        """DRF's cursor, with a position that must be an id: anything else is a 400
        (DRF would pass it to the query, a 500)."""
        cursor = super().decode_cursor(request)
        if (
            cursor is not None
            and cursor.position is not None
            and not (
                cursor.position.isascii()
                and cursor.position.isdigit()
                and int(cursor.position) < 2**63
            )
        ):
            raise params.BadParameter(self.cursor_query_param, "not a cursor from this list")
        return cursor

    def get_page_size(self, request):
        return params.integer(
            request.query_params,
            self.page_size_query_param,
            self.page_size,
            minimum=1,
            maximum=self.max_page_size,
        )


class ClusterSerializer(serializers.ModelSerializer):
    last_scan_status = serializers.CharField(source="last_scan.status", default=None)
    last_complete_scan_at = serializers.DateTimeField(
        source="last_complete_scan.observed_at", default=None
    )

    class Meta:
        model = Cluster
        fields = [
            "name",
            "source",
            "schedule_minutes",
            "enabled",
            "last_scan_status",
            "last_complete_scan_at",
        ]


class ScanSerializer(serializers.ModelSerializer):
    cluster = serializers.CharField(source="cluster.name")

    class Meta:
        model = ScanRun
        fields = [
            "id",
            "cluster",
            "status",
            "reason",
            "trigger",
            "started_at",
            "finished_at",
            "observed_at",
            "pages",
            "pods",
            "containers",
            "findings_opened",
            "findings_changed",
            "findings_resolved",
            "rejected",
            "rejections",
            "timings",
        ]


class FindingSerializer(serializers.ModelSerializer):
    cluster = serializers.CharField(source="cluster.name")
    controls_2022 = serializers.SerializerMethodField()
    controls_2013 = serializers.SerializerMethodField()
    standing = serializers.SerializerMethodField()
    exception = serializers.SerializerMethodField()

    class Meta:
        model = Finding
        fields = [
            "id",
            "cluster",
            "namespace",
            "workload_kind",
            "workload_name",
            "container",
            "container_type",
            "image",
            "state",
            "runs_as_root",
            "kubelet_error",
            "evidence",
            "image_user",
            "image_user_source",
            "uid",
            "run_as_user",
            "run_as_non_root",
            "pods",
            "mixed",
            "first_seen",
            "last_changed",
            "resolved_at",
            "controls_2022",
            "controls_2013",
            "standing",
            "exception",
            "fix",
        ]

    def get_controls_2022(self, f) -> list[str]:
        """ISO/IEC 27001:2022 Annex A numbers."""
        return list(controls.ids_2022(f.state))

    def get_controls_2013(self, f) -> list[str]:
        """The same controls by their 2013 numbers."""
        return list(controls.controls_for(f.state))

    def get_standing(self, f) -> str | None:
        """open or accepted (None once resolved)."""
        if f.resolved_at is not None:
            return None
        return ACCEPTED if getattr(f, "acceptance", None) else OPEN

    def get_exception(self, f) -> dict | None:
        a = getattr(f, "acceptance", None)
        if a is None:
            return None
        return {"id": a.exception_id, "approved_by": a.approved_by, "ends_at": a.ends_at}


class FindingDetailSerializer(FindingSerializer):
    remediation = serializers.SerializerMethodField()
    psa_violations = serializers.JSONField(source="detail.psa_violations", default=list)

    class Meta(FindingSerializer.Meta):
        fields = [*FindingSerializer.Meta.fields, "remediation", "psa_violations"]

    def get_remediation(self, f) -> dict:
        """The proven fix as data: kind, summary, steps (text and code segments), the
        securityContext `change`, the strategic merge `patch`, the `dockerfile` lines, the
        uid and where it came from, the `proof` (state and PSA after the change), and the
        kubectl command with the cluster's context."""
        return explain.remediation(f)


class RollupSerializer(serializers.ModelSerializer):
    cluster = serializers.CharField(source="cluster.name")

    class Meta:
        model = DailyRollup
        # accepted: of the containers, those an exception in force accepted when that day's
        # scans ran (pages count accepted live).
        fields = ["cluster", "day", "namespace", "state", "containers", "pods", "accepted"]


class _Scoped(viewsets.ReadOnlyModelViewSet):
    permission_classes = [permissions.IsAuthenticated, HasRole]
    pagination_class = ById

    @property
    def scope(self) -> access.Scope:
        return access.scope_for(self.request.user)

    def filter_cluster(self, qs):
        name = params.text(self.request.query_params, "cluster", 63)
        return qs.filter(cluster__name=name) if name else qs


class ClusterViewSet(_Scoped):
    serializer_class = ClusterSerializer
    lookup_field = "name"

    def get_queryset(self):
        return access.clusters(self.scope).select_related("last_scan", "last_complete_scan")


class ScanViewSet(_Scoped):
    """Scans are cluster-wide records: security officers and auditors only."""

    serializer_class = ScanSerializer

    def get_queryset(self):
        qs = ScanRun.objects.select_related("cluster")
        return self.filter_cluster(qs if self.scope.fleet else qs.none())


@extend_schema(
    parameters=[
        OpenApiParameter("cluster", str),
        OpenApiParameter("namespace", str),
        OpenApiParameter("state", str),
        OpenApiParameter("open", bool),
        OpenApiParameter("standing", str, enum=[OPEN, ACCEPTED]),
    ]
)
class FindingViewSet(_Scoped):
    def get_serializer_class(self):
        return FindingDetailSerializer if self.action == "retrieve" else FindingSerializer

    def paginate_queryset(self, queryset):
        page = super().paginate_queryset(queryset)
        _with_acceptance(page or [])
        return page

    def get_queryset(self):
        qs = self.filter_cluster(access.findings(self.scope).select_related("cluster"))
        p = self.request.query_params
        if namespace := params.text(p, "namespace", 63):
            qs = qs.filter(namespace=namespace)
        if state := params.choice(p, "state", State.values):
            qs = qs.filter(state=state)
        if params.boolean(p, "open", True):
            qs = qs.filter(resolved_at__isnull=True)
        if standing := params.choice(p, "standing", (OPEN, ACCEPTED)):
            accepted = Exists(acceptance.accepting_now().filter(finding_id=OuterRef("pk")))
            qs = qs.filter(accepted if standing == ACCEPTED else ~accepted)
            qs = qs.filter(resolved_at__isnull=True)
        return qs

    def get_object(self):
        pk = self.kwargs["pk"]
        if not (pk.isascii() and pk.isdigit() and int(pk) < 2**63):
            raise NotFound()
        f = access.finding_or_404(self.scope, int(pk))
        _with_acceptance([f])
        return f


def _with_acceptance(findings: list[Finding]) -> None:
    """Each finding's accepting exception now, if any (one query for a page)."""
    by_id = acceptance.accepting([f.pk for f in findings if f.resolved_at is None])
    for f in findings:
        f.acceptance = by_id.get(f.pk)


class ExceptionSerializer(serializers.BaseSerializer):
    """An exception as the register shows it (status now, open findings covered)."""

    def to_representation(self, e):
        return register.row(e, self.context["now"], self.context["covered"].get(e.pk, 0))


@extend_schema_view(
    list=extend_schema(
        operation_id="v1_exceptions_list",
        parameters=[
            OpenApiParameter("status", str),
            OpenApiParameter("cluster", str),
            OpenApiParameter("namespace", str),
            OpenApiParameter("ending_within", int, description="days"),
        ],
        responses={200: dict},
    ),
    retrieve=extend_schema(operation_id="v1_exceptions_retrieve", responses={200: dict}),
)
class ExceptionViewSet(_Scoped):
    """The exception register, read-only: request and decide on the pages."""

    serializer_class = ExceptionSerializer

    def get_queryset(self):
        if not register.can_read(self.scope):
            return RiskException.objects.none()
        filters = register.Filters.from_query(self.request.query_params)
        return register.queryset(self.scope, filters, timezone.now()).select_related("revoked_by")

    def get_object(self):
        pk = self.kwargs["pk"]
        if not (pk.isascii() and pk.isdigit() and int(pk) < 2**63):
            raise NotFound()
        return exceptions.exception_or_404(self.scope, int(pk))

    def get_serializer(self, *args, **kwargs):
        items = args[0] if args else []
        items = items if isinstance(items, list) else [items]
        kwargs["context"] = {
            **self.get_serializer_context(),
            "now": timezone.now(),
            "covered": register.covered_counts(self.scope, [e.pk for e in items]),
        }
        return ExceptionSerializer(*args, **kwargs)


@extend_schema(
    parameters=[
        OpenApiParameter("cluster", str),
        OpenApiParameter("namespace", str),
        OpenApiParameter("since", str, description="YYYY-MM-DD"),
    ]
)
class RollupViewSet(_Scoped):
    serializer_class = RollupSerializer

    def get_queryset(self):
        qs = self.filter_cluster(
            DailyRollup.objects.filter(self.scope.q()).select_related("cluster")
        )
        p = self.request.query_params
        if namespace := params.text(p, "namespace", 63):
            qs = qs.filter(namespace=namespace)
        if since := params.date(p, "since"):
            qs = qs.filter(day__gte=since)
        return qs


@extend_schema(
    parameters=[
        OpenApiParameter("at", str, description="ISO 8601 with zone"),
        OpenApiParameter("cluster", str),
        OpenApiParameter("namespace", str),
    ],
    responses={200: dict},
)
@api_view(["GET"])
@permission_classes([permissions.IsAuthenticated, HasRole])
def report(request):
    """A point-in-time report: summary per control, coverage, and the first findings
    (export the report for all of them)."""
    p = request.query_params
    try:
        r = reports.from_query(
            access.scope_for(request.user), p, request.user.get_username(), naive_as_utc=False
        )
    except reports.ReportError as e:
        raise ValidationError({"detail": str(e)}) from None
    rows = r.first_rows(REPORT_ROWS)
    log.record(
        request, AuditEvent.Action.REPORT_VIEW, "api report", {**r.scope, "at": r.at.isoformat()}
    )
    return Response(
        {
            "scope": r.scope,
            "at": r.at,
            "controls": r.control_summary(),
            "coverage": r.coverage,
            "findings": rows,
            "truncated": len(rows) == REPORT_ROWS,
        }
    )


def _export_body(request, e: Export) -> dict:
    # What it holds is shown only while its asker may still download it (jobs.may_download).
    done = e.status == ExportStatus.DONE and jobs.may_download(e, request.user)
    body = {
        "id": str(e.pk),
        "status": e.status,
        "format": e.format,
        "scope": e.scope,
        "at": e.at,
        "created_at": e.created_at,
        "started_at": e.started_at,
        "finished_at": e.finished_at,
        "expires_at": e.expires_at,
        "rows": e.manifest.get("rows", e.rows) if done else e.rows,
        "total": e.total,
        "error": e.error or None,
        "sha256": e.manifest.get("sha256") if done else None,
        "downloadable": done,
        "url": request.build_absolute_uri(reverse("api-export", args=[e.pk])),
        "files": None,
    }
    if done:
        body["files"] = {
            part: request.build_absolute_uri(reverse(f"api-export-{part}", args=[e.pk]))
            for part in ("file", "manifest", "timestamp")
            if part != "timestamp" or e.timestamp
        }
    return body


@extend_schema(
    methods=["GET"],
    operation_id="v1_exports_list",
    responses={200: dict},
    description=("Your 20 latest exports."),
)
@extend_schema(
    methods=["POST"],
    operation_id="v1_exports_create",
    request=dict,
    responses={202: dict},
    description="Ask for a point-in-time report export: {format, at, cluster, namespace}; "
    "answered 202 with the export to poll (its url).",
)
@api_view(["GET", "POST"])
@permission_classes([permissions.IsAuthenticated, HasRole])
def export_list(request):
    if request.method == "GET":
        mine = Export.objects.filter(user=request.user).order_by("-created_at")[:20]
        return Response({"results": [_export_body(request, e) for e in mine]})
    data = params.strings(request.data, ("format", "at", "cluster", "namespace"))
    fmt = params.choice(data, "format", vocabulary.EXPORT_FORMATS)
    if not fmt:
        raise params.BadParameter(
            "format", f"required: one of {', '.join(vocabulary.EXPORT_FORMATS)}"
        )
    try:
        r = reports.from_query(
            access.scope_for(request.user),
            data,
            request.user.get_username(),
            naive_as_utc=False,
            summarize=False,
        )
    except reports.ReportError as e:
        raise ValidationError({"detail": str(e)}) from None
    try:
        e = jobs.ask_report(request, fmt, r)
    except jobs.Busy as busy:
        return Response({"detail": str(busy)}, status=429)
    body = _export_body(request, e)
    return Response(body, status=202, headers={"Location": body["url"]})


@extend_schema(responses={200: dict})
@api_view(["GET"])
@permission_classes([permissions.IsAuthenticated, HasRole])
def export_detail(request, pk):
    """One of your exports: queued, running (rows so far of total), done (its files) or
    failed (why)."""
    e = Export.objects.filter(pk=pk, user=request.user).first()
    if e is None:
        raise log.Denied("No such export")
    return Response(_export_body(request, e))


def _export_part(part: str):
    @extend_schema(responses={(200, "application/octet-stream"): bytes})
    @api_view(["GET"])
    @permission_classes([permissions.IsAuthenticated, HasRole])
    def view(request, pk):
        """A done export's file, its manifest, or the TSA's token over the manifest: the
        same bytes as the reports page's links."""
        return {"file": pages.download, "manifest": pages.manifest, "timestamp": pages.timestamp}[
            part
        ](request, pk)

    view.__name__ = f"export_{part}"
    return view


export_file = _export_part("file")
export_manifest = _export_part("manifest")
export_timestamp = _export_part("timestamp")
