"""The fleet page's namespace lists break ties the same way whether a cluster's rows
were stored with its rollups or ranked live (no demo here: only the tied clusters)."""

import datetime as dt

import pytest
from django.utils import timezone

from compliance.collect import rollups
from compliance.identity import access
from compliance.models import Cluster, ClusterRollup, DailyRollup, NamespaceRanking, ScanRun
from compliance.web import dashboards
from tests.builders import make_user


def lists(scope):
    data = dashboards._fleet_overview(scope, 0)
    return data["worse"], data["top_namespaces"]


@pytest.mark.django_db
def test_equal_namespaces_are_ranked_by_cluster_name_stored_or_live():
    """Twelve clusters with the same namespace and the same count: the ten shown are the
    first ten by cluster name, in that order, stored or live (before, the tie order
    followed the rows' arrival, and the two could disagree)."""
    now = timezone.now()
    day = timezone.localdate(now)
    names = [f"c{i:02d}" for i in range(12)]
    for name in reversed(names):  # ids in the reverse order of names
        c = Cluster.objects.create(name=name, source="snapshot")
        scan = ScanRun.objects.create(cluster=c, status="succeeded", observed_at=now)
        Cluster.objects.filter(pk=c.pk).update(last_complete_scan=scan, last_scan=scan)
        ClusterRollup.objects.create(cluster=c, day=day, state="root", containers=1)
        ClusterRollup.objects.create(cluster=c, day=day - dt.timedelta(days=7), state="root")
        DailyRollup.objects.create(cluster=c, day=day, namespace="data", state="root", containers=1)
        rollups.rank_cluster(c.pk, day)
    assert NamespaceRanking.objects.count() == 12
    scope = access.scope_for(make_user("officer"))
    stored = lists(scope)
    NamespaceRanking.objects.all().delete()
    live = lists(scope)
    for worse, top in (stored, live):
        assert [r["cluster__name"] for r in top] == names[:10]
        assert [r["cluster__name"] for r in worse] == names[:10]
    assert stored == live
