"""Prometheus metrics (/metrics, served by compliance/ops/health.py).

Two kinds:

- What the database knows, read at scrape time by StateCollector: open findings by
  cluster, state and control; each cluster's last complete scan, its duration, rejected
  objects and registry lookups; the last failure; the schedule; the Celery queue depth.
  The database is the truth every web process shares, so any replica answers the same,
  and scans run in the worker (which takes no inbound connections) are seen here
  without the worker serving metrics of its own. A few grouped queries per scrape; the
  findings counts are cached until the next scan completes.
  Exports written or failed (and how long they took) are counted from the audit log,
  whose export_done and export_failed events the workers write: append-only, so the
  counters only grow; exports queued and running, from their records.
- What happens in a web process: exports asked for. Under gunicorn these are kept in
  prometheus_client's multiprocess mode (PROMETHEUS_MULTIPROC_DIR, set up by
  welkin_dash/gunicorn.py), so a scrape answered by any worker sums all of them.

Series stay few: one per cluster (and state, and control). A namespace label is added to
the findings metrics only with WELKIN_METRICS_NAMESPACES=true.
"""

from __future__ import annotations

import logging
import os
from datetime import timedelta

from django.conf import settings
from django.core.cache import cache
from django.db.models import Count, Max, OuterRef, Subquery, Sum
from django.utils import timezone
from prometheus_client import (
    CollectorRegistry,
    generate_latest,
    multiprocess,
)
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily
from prometheus_client.exposition import choose_encoder

from compliance.evidence.jobs import EXPORT_REQUESTS
from compliance.identity.access import OFFICER, Scope
from compliance.models import AuditEvent, Cluster, Export, Finding, ScanRun, ScanStatus, Source
from compliance.risk.acceptance import accepted_counts
from compliance.rules.controls import CONTROLS, MAPPING

log = logging.getLogger(__name__)

# --- process metrics (multiprocess-safe) ------------------------------------------------

EXPORT_BUCKETS = (0.1, 0.25, 0.5, 1, 2.5, 5, 10, 20, 30, 60, 120, 300, 600, 1800)


# --- what the database knows ------------------------------------------------------------

FAILURE_WINDOW = timedelta(days=7)  # how far back the last failure is looked for


def broker_connection():
    """A connection to the Celery broker with short timeouts (not the app's pool)."""
    from kombu import Connection

    timeout = settings.WELKIN_READYZ_TIMEOUT
    return Connection(
        settings.CELERY_BROKER_URL,
        connect_timeout=timeout,
        transport_options={"socket_timeout": timeout, "socket_connect_timeout": timeout},
    )


def _findings_counts(by_namespace: bool) -> list[tuple[tuple[str, ...], int, int]]:
    """[((cluster, [namespace,] state), containers, pods)] for open findings; cached until
    a scan completes (findings change only then)."""
    marker = Cluster.objects.aggregate(m=Max("last_complete_scan_id"), n=Count("id"))
    key = f"metrics:findings:{int(by_namespace)}:{marker['m'] or 0}:{marker['n']}"
    rows = cache.get(key)
    if rows is None:
        fields = (
            ["cluster__name", "namespace", "state"] if by_namespace else ["cluster__name", "state"]
        )
        rows = [
            (tuple(r[f] for f in fields), r["n"], r["pods"] or 0)
            for r in Finding.objects.filter(resolved_at__isnull=True)
            .values(*fields)
            .annotate(n=Count("id"), pods=Sum("pods"))
            .order_by(*fields)
        ]
        cache.set(key, rows, 3600)
    return rows


def _ts(dt) -> float:
    return dt.timestamp() if dt is not None else 0.0


def queue_lengths() -> dict[str, int] | None:
    """Messages waiting per Celery queue, from the broker (None when it does not answer)."""
    try:
        with broker_connection() as conn:
            out = {}
            for queue in settings.WELKIN_METRICS_QUEUES:
                try:
                    out[queue] = conn.default_channel.queue_declare(
                        queue, passive=True
                    ).message_count
                except conn.channel_errors:
                    out[queue] = 0  # not declared yet: nothing was ever queued
            return out
    except Exception as e:
        log.warning("metrics: the broker did not answer: %s: %s", type(e).__name__, e)
        return None


class StateCollector:
    """Gauges read from the database (and the broker) at scrape time."""

    def collect(self):
        yield from self._findings()
        yield from self._clusters()
        yield from self._exports()
        if not settings.CELERY_TASK_ALWAYS_EAGER:
            yield from self._queues()

    def _findings(self):
        by_ns = settings.WELKIN_METRICS_NAMESPACES
        # Not "namespace": Prometheus gives that label to the scraped pod's own namespace.
        labels = ["cluster", "workload_namespace", "state"] if by_ns else ["cluster", "state"]
        findings = GaugeMetricFamily(
            "welkin_findings",
            "Open findings (workload containers not compliant) by cluster and state.",
            labels=labels,
        )
        pods = GaugeMetricFamily(
            "welkin_finding_pods",
            "Pods of the open findings by cluster and state.",
            labels=labels,
        )
        control = GaugeMetricFamily(
            "welkin_control_findings",
            "Open findings by ISO/IEC 27001 control (2013 number; 2022 in control_2022), "
            "cluster and state. A finding counts once under each control its state touches.",
            labels=[*labels[:-1], "control", "control_2022", "state"],
        )
        accepted = GaugeMetricFamily(
            "welkin_findings_accepted",
            "Of the open findings, those an approved exception in force accepts now (risk "
            "accepted; still counted in welkin_findings), by cluster and state.",
            labels=labels,
        )
        for key, n, p in _findings_counts(by_ns):
            findings.add_metric(list(key), n)
            pods.add_metric(list(key), p)
            for cid in MAPPING.get(key[-1], {}):
                control.add_metric([*key[:-1], cid, CONTROLS[cid].id_2022, key[-1]], n)
        names = dict(Cluster.objects.values_list("pk", "name"))
        counted: dict[tuple[str, ...], int] = {}
        live = accepted_counts(Scope(None, OFFICER)).counts.items()
        for (cluster_id, ns, state), n in live:
            key = (names[cluster_id], ns, state) if by_ns else (names[cluster_id], state)
            counted[key] = counted.get(key, 0) + n
        for key, n in sorted(counted.items()):
            accepted.add_metric(list(key), n)
        yield from (findings, pods, control, accepted)

    def _clusters(self):
        since = timezone.now() - FAILURE_WINDOW
        last_failure = (
            ScanRun.objects.filter(
                cluster=OuterRef("pk"), status=ScanStatus.FAILED, started_at__gte=since
            )
            .order_by("-started_at")
            .values("finished_at")[:1]
        )
        clusters = (
            Cluster.objects.select_related("last_scan", "last_complete_scan")
            .annotate(last_failure_at=Subquery(last_failure))
            .order_by("name")
        )
        g = {
            name: GaugeMetricFamily(name, doc, labels=["cluster"])
            for name, doc in (
                ("welkin_cluster_enabled", "1 when the cluster is scanned (enabled), else 0."),
                (
                    "welkin_cluster_scan_interval_seconds",
                    "The cluster's scan schedule (clusters scanned on a schedule only).",
                ),
                (
                    "welkin_cluster_last_complete_scan_timestamp_seconds",
                    "When the last complete scan observed the cluster (0: never).",
                ),
                ("welkin_cluster_last_scan_failed", "1 when the cluster's latest scan failed."),
                (
                    "welkin_cluster_last_failure_timestamp_seconds",
                    "When the cluster's last failed scan (in the last 7 days) ended.",
                ),
                ("welkin_scan_duration_seconds", "Duration of the last complete scan."),
                ("welkin_scan_pods", "Pods listed by the last complete scan."),
                (
                    "welkin_scan_rejected_objects",
                    "Objects the gate rejected in the last complete scan (not evaluated).",
                ),
                (
                    "welkin_scan_registry_lookups",
                    "Images looked up in registries during the last complete scan.",
                ),
                (
                    "welkin_scan_registry_failures",
                    "Registry lookups that failed during the last complete scan.",
                ),
                (
                    "welkin_scan_image_cache_hits",
                    "Image users answered from the cache during the last complete scan.",
                ),
            )
        }
        for c in clusters:
            name = [c.name]
            scheduled = c.enabled and c.source != Source.SNAPSHOT
            g["welkin_cluster_enabled"].add_metric(name, 1 if c.enabled else 0)
            if scheduled:
                g["welkin_cluster_scan_interval_seconds"].add_metric(name, c.schedule_minutes * 60)
            done = c.last_complete_scan
            g["welkin_cluster_last_complete_scan_timestamp_seconds"].add_metric(
                name, _ts(done.observed_at) if done else 0.0
            )
            g["welkin_cluster_last_scan_failed"].add_metric(
                name, 1 if c.last_scan and c.last_scan.status == ScanStatus.FAILED else 0
            )
            if c.last_failure_at is not None:
                g["welkin_cluster_last_failure_timestamp_seconds"].add_metric(
                    name, _ts(c.last_failure_at)
                )
            if done is not None:
                timings = done.timings or {}
                if done.finished_at:
                    g["welkin_scan_duration_seconds"].add_metric(
                        name, (done.finished_at - done.started_at).total_seconds()
                    )
                g["welkin_scan_pods"].add_metric(name, done.pods)
                g["welkin_scan_rejected_objects"].add_metric(name, done.rejected)
                g["welkin_scan_registry_lookups"].add_metric(
                    name, timings.get("images_looked_up", 0)
                )
                g["welkin_scan_registry_failures"].add_metric(
                    name, timings.get("registry_failures", 0)
                )
                g["welkin_scan_image_cache_hits"].add_metric(
                    name, timings.get("image_cache_hits", 0)
                )
        yield from g.values()

    def _exports(self):
        from django.db.models import Count, FloatField, Q
        from django.db.models.fields.json import KeyTextTransform
        from django.db.models.functions import Cast

        done, failed = AuditEvent.Action.EXPORT_DONE, AuditEvent.Action.EXPORT_FAILED
        total = CounterMetricFamily(
            "welkin_exports",
            "Exports written by the workers, by format and result (ok, failed).",
            labels=["format", "result"],
        )
        seconds = Cast(KeyTextTransform("seconds", "scope"), FloatField())
        rows = (
            AuditEvent.objects.filter(action__in=[done, failed])
            .annotate(fmt=KeyTextTransform("format", "scope"), s=seconds)
            .values("fmt", "action")
            .annotate(
                n=Count("pk"),
                total=Sum("s"),
                **{f"le{i}": Count("pk", filter=Q(s__lte=b)) for i, b in enumerate(EXPORT_BUCKETS)},
            )
            .order_by("fmt", "action")
        )
        histogram = HistogramMetricFamily(
            "welkin_export_duration_seconds",
            "Time to write one export and its signed manifest (exports written).",
            labels=["format"],
        )
        for r in rows:
            fmt = r["fmt"] or "unknown"
            total.add_metric([fmt, "ok" if r["action"] == done else "failed"], r["n"])
            if r["action"] == done:
                buckets = [(str(b), r[f"le{i}"]) for i, b in enumerate(EXPORT_BUCKETS)]
                histogram.add_metric([fmt], [*buckets, ("+Inf", r["n"])], r["total"] or 0.0)
        yield total
        yield histogram
        active = GaugeMetricFamily(
            "welkin_exports_active", "Exports queued or being written.", labels=["status"]
        )
        counts = dict(
            Export.objects.filter(status__in=["queued", "running"])
            .values_list("status")
            .annotate(n=Count("pk"))
        )
        for status in ("queued", "running"):
            active.add_metric([status], counts.get(status, 0))
        yield active

    def _queues(self):
        lengths = queue_lengths()
        up = GaugeMetricFamily("welkin_broker_up", "1 when the Celery broker answered the scrape.")
        up.add_metric([], 0 if lengths is None else 1)
        yield up
        depth = GaugeMetricFamily(
            "welkin_celery_queue_length", "Tasks waiting in the Celery queue.", labels=["queue"]
        )
        for queue, n in (lengths or {}).items():
            depth.add_metric([queue], n)
        yield depth


def registry() -> CollectorRegistry:
    """A registry for one scrape: this process's metrics (or, under gunicorn, every
    worker's, from PROMETHEUS_MULTIPROC_DIR) and the database's."""
    reg = CollectorRegistry(auto_describe=False)
    if os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
        multiprocess.MultiProcessCollector(reg)
    else:
        for metric in (EXPORT_REQUESTS,):
            reg.register(metric)
    reg.register(StateCollector())
    return reg


def exposition(accept: str = "") -> tuple[bytes, str]:
    encoder, content_type = choose_encoder(accept)
    reg = registry()
    if encoder is generate_latest:
        return generate_latest(reg), content_type
    return encoder(reg), content_type
