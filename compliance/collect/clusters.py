"""Registering clusters: the service behind `manage.py add_cluster` and the admin form."""

from __future__ import annotations

import re

from django.db import transaction

from compliance.models import Cluster, Source
from compliance.rules.kubeconfig import Credentials, KubeconfigError, parse_kubeconfig

NAME_RE = re.compile(r"^[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?$")


class ClusterError(ValueError):
    """A cluster that cannot be registered; nothing was stored."""


def check_name(name: str) -> str:
    if not NAME_RE.match(name or ""):
        raise ClusterError(
            f"cluster name {name!r}: use 1-63 lowercase letters, digits and "
            "'-', starting and ending with a letter or digit"
        )
    return name


def check_schedule(minutes: int | None) -> int | None:
    if minutes is not None and not 1 <= minutes <= 7 * 24 * 60:
        raise ClusterError("schedule: between 1 minute and 7 days")
    return minutes


def read_kubeconfig(text: str | bytes, context: str | None) -> tuple[str, Credentials]:
    """(context, credentials) from a kubeconfig, or ClusterError saying why it is refused."""
    try:
        return parse_kubeconfig(text, context)
    except KubeconfigError as e:
        raise ClusterError(f"kubeconfig refused: {e}") from None


def add_cluster(
    name: str,
    *,
    kubeconfig: str | bytes | None = None,
    context: str | None = None,
    in_cluster: bool = False,
    schedule_minutes: int | None = None,
    replace: bool = False,
) -> Cluster:
    """Create (or with replace=True, update) a cluster from a kubeconfig context or the
    in-cluster service account. The kubeconfig is checked before anything is stored."""
    check_name(name)
    check_schedule(schedule_minutes)
    if in_cluster == (kubeconfig is not None):
        raise ClusterError("give either a kubeconfig or in-cluster")
    creds = ctx = None
    if kubeconfig is not None:
        ctx, creds = read_kubeconfig(kubeconfig, context)
    with transaction.atomic():
        cluster = Cluster.objects.select_for_update().filter(name=name).first()
        if cluster is not None and not replace:
            raise ClusterError(f"cluster {name!r} exists (use --replace to update it)")
        cluster = cluster or Cluster(name=name)
        cluster.source = Source.IN_CLUSTER if in_cluster else Source.KUBECONFIG
        cluster.context = ctx or ""
        if creds is not None:
            cluster.set_credentials(creds)
        else:
            cluster.credentials_encrypted, cluster.server = None, "in-cluster"
        if schedule_minutes is not None:
            cluster.schedule_minutes = schedule_minutes
        cluster.save()
    return cluster
