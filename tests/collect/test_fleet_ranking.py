"""The fleet page's namespace lists from the rankings stored with each cluster's rollups
(rollups.rank_cluster) are the lists ranked live from the rollups, before and after an
exception changes what is accepted (the changed cluster is then ranked live)."""

import pytest
from django.contrib.auth.models import User

from compliance import demo
from compliance.collect import rollups
from compliance.identity import access
from compliance.models import NamespaceRanking
from compliance.web import dashboards

DEMO_DAYS = 10  # a week before the latest day exists: "worse than a week ago" has rows


def lists(scope):
    data = dashboards._fleet_overview(scope, 0)
    return data["worse"], data["top_namespaces"]


def live(scope):
    stored = list(
        NamespaceRanking.objects.values_list("cluster_id", "day", "namespace", "now", "before")
    )
    NamespaceRanking.objects.all().delete()
    try:
        return lists(scope)
    finally:
        NamespaceRanking.objects.bulk_create(
            NamespaceRanking(cluster_id=c, day=d, namespace=n, now=now, before=b)
            for c, d, n, now, b in stored
        )


@pytest.mark.django_db
def test_stored_rankings_give_the_live_lists(demo_fleet):
    scope = access.scope_for(User.objects.get(username="officer"))
    # Every cluster's ranking was stored with its last rollups, at most 20 rows each.
    clusters = set(NamespaceRanking.objects.values_list("cluster_id", flat=True))
    assert len(clusters) >= 3
    assert max(NamespaceRanking.objects.filter(cluster_id=c).count() for c in clusters) <= 20
    worse, top = lists(scope)
    assert top
    assert (worse, top) == live(scope)
    # An approval changes what is accepted now: that cluster is ranked live, the rest read.
    demo.add_exceptions()
    assert lists(scope) == live(scope)


@pytest.mark.django_db
def test_a_week_ago_is_found_in_the_week_before_or_further_back():
    import datetime as dt

    from compliance.models import Cluster, ClusterRollup

    day = dt.date(2026, 11, 30)
    daily, gap, new = (Cluster.objects.create(name=n, source="snapshot") for n in "abc")
    for c, ago in ((daily, 0), (daily, 7), (daily, 8), (gap, 0), (gap, 3), (gap, 20), (new, 0)):
        ClusterRollup.objects.create(cluster=c, day=day - dt.timedelta(days=ago), state="root")
    today = {daily.pk: day, gap.pk: day, new.pk: day}
    assert dashboards._week_ago(ClusterRollup.objects.all(), today) == {
        daily.pk: day - dt.timedelta(days=7),  # in the week before: one query
        gap.pk: day - dt.timedelta(days=20),  # none there: found further back
    }


@pytest.mark.django_db
def test_ranking_again_writes_only_the_namespaces_that_changed(demo_fleet):
    from django.db import connection

    from compliance.models import Cluster, DailyRollup

    def written():  # rows this transaction inserted, updated and deleted in the table
        with connection.cursor() as cur:
            cur.execute(
                "SELECT pg_stat_get_xact_tuples_inserted(c.oid) "
                "+ pg_stat_get_xact_tuples_updated(c.oid) "
                "+ pg_stat_get_xact_tuples_deleted(c.oid) FROM pg_class c "
                "WHERE c.relname = 'compliance_namespaceranking'"
            )
            return cur.fetchone()[0]

    cluster = Cluster.objects.filter(pk__in=NamespaceRanking.objects.values("cluster_id")).first()
    day = dashboards._latest_days([cluster])[cluster.pk]
    before = list(NamespaceRanking.objects.filter(cluster=cluster).order_by("namespace"))
    start = written()
    rollups.rank_cluster(cluster.pk, day)  # nothing changed
    assert written() == start
    # One namespace gets worse: its row, and only its row, is written (or it enters).
    top = max(before, key=lambda k: k.now)
    DailyRollup.objects.filter(
        cluster=cluster, day=day, namespace=top.namespace, state="root"
    ).update(containers=10_000)
    rollups.rank_cluster(cluster.pk, day)
    assert written() == start + 1
    assert NamespaceRanking.objects.get(cluster=cluster, namespace=top.namespace).now > top.now
    assert NamespaceRanking.objects.filter(cluster=cluster).count() == len(before)
