"""Rows for findings listings and reports (exports render these)."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

from compliance import controls
from compliance.models import Cluster, Finding


class ReportError(ValueError):
    pass


def open_findings(cluster: str | None = None, namespace: str | None = None,
                  state: str | None = None) -> Iterator[dict[str, Any]]:
    """Open findings as plain rows, ordered by cluster, namespace, workload, container.
    Checks its arguments at once (not when iterated)."""
    qs = Finding.objects.filter(resolved_at__isnull=True)
    if cluster:
        if not Cluster.objects.filter(name=cluster).exists():
            raise ReportError(f"no such cluster: {cluster}")
        qs = qs.filter(cluster__name=cluster)
    if namespace:
        qs = qs.filter(namespace=namespace)
    if state:
        qs = qs.filter(state=state)
    qs = qs.order_by("cluster__name", "namespace", "workload_kind", "workload_name",
                     "container")
    return _rows(qs)


def _rows(qs) -> Iterator[dict[str, Any]]:
    for f in qs.values("cluster__name", "namespace", "workload_kind", "workload_name",
                       "container", "container_type", "image", "state", "runs_as_root",
                       "kubelet_error", "evidence", "image_user", "image_user_source", "uid",
                       "pods", "mixed", "first_seen", "last_changed").iterator(2000):
        yield {
            "cluster": f.pop("cluster__name"), **f,
            "kubelet_error": f["kubelet_error"] or None,
            "controls": list(controls.controls_for(f["state"])),
            "first_seen": f["first_seen"].isoformat(),
            "last_changed": f["last_changed"].isoformat(),
        }
