"""The scan service end to end: fake API server -> kubernetes client -> PostgreSQL."""

import dataclasses
import threading

import pytest
from django.db import connection

from compliance.collect import scanning
from compliance.models import Cluster, DailyRollup, Finding, FindingEvent, ScanRun
from tests import podgen
from tests.builders import FAST, deployment, mixed_fleet
from tests.fakekube import Fault

ROOT_SC = {"runAsUser": 0}
GOOD_SC = {"runAsNonRoot": True, "runAsUser": 1000}


# Small pages, so that a dozen pods make several pages and faults can hit page k.
PAGED = dataclasses.replace(FAST, page_limit=4)


def scan(cluster, **kw):
    return scanning.scan_cluster(cluster.pk, policy=PAGED, **kw)


def open_findings(cluster):
    return {
        (f.namespace, f.workload_kind, f.workload_name, f.container): f
        for f in Finding.objects.filter(cluster=cluster, resolved_at__isnull=True)
    }


@pytest.fixture
def fleet(fake_kube):
    mixed_fleet(fake_kube)
    # CronJob -> Job -> Pod
    ns = "data"
    fake_kube.state.put(podgen.job(ns, "nightly-29000000", "nightly"))
    fake_kube.state.put(
        podgen.pod(
            ns,
            "nightly-29000000-abcde",
            "etl",
            {},
            ROOT_SC,
            owner=podgen.owner_ref("Job", "nightly-29000000", ns, "batch/v1"),
        )
    )
    fake_kube.state.put(
        podgen.pod(ns, "db-0", "pg", {}, ROOT_SC, owner=podgen.owner_ref("StatefulSet", "db", ns))
    )
    return fake_kube


def test_it_turns_pods_into_workload_findings(cluster, fleet):
    r = scan(cluster)
    assert (r.status, r.pods, r.opened, r.changed, r.resolved) == ("succeeded", 14, 6, 0, 0)
    got = {k: (f.state, f.pods) for k, f in open_findings(cluster).items()}
    assert got == {
        ("shop", "Deployment", "web", "app"): ("root", 3),
        ("shop", "Deployment", "cart", "app"): ("blocked", 2),
        ("data", "Deployment", "etl", "app"): ("unenforced", 4),
        ("data", "Pod", "debug", "app"): ("root", 1),
        ("data", "CronJob", "nightly", "app"): ("root", 1),
        ("data", "StatefulSet", "db", "app"): ("root", 1),
    }
    cart = open_findings(cluster)[("shop", "Deployment", "cart", "app")]
    assert cart.kubelet_error.startswith("container's runAsUser breaks non-root policy")
    assert cart.detail["psa_violations"] == [
        'runAsUser=0 (container "app" must not set runAsUser=0)'
    ]
    assert FindingEvent.objects.filter(kind="opened").count() == 6
    s = ScanRun.objects.get(pk=r.scan_id)
    assert (s.status, s.pods, s.containers, s.findings_opened) == ("succeeded", 14, 14, 6)
    assert s.pages >= 3 and s.timings["total_s"] > 0
    cluster.refresh_from_db()
    assert cluster.last_scan_id == cluster.last_complete_scan_id == s.pk


def test_it_writes_daily_rollups_including_compliant(cluster, fleet):
    scan(cluster)
    rows = {
        (r.namespace, r.state): (r.containers, r.pods)
        for r in DailyRollup.objects.filter(cluster=cluster)
    }
    assert rows == {
        ("shop", "root"): (1, 3),
        ("shop", "compliant"): (1, 2),
        ("shop", "blocked"): (1, 2),
        ("data", "unenforced"): (1, 4),
        ("data", "root"): (3, 3),
    }


def test_cluster_rollups_are_the_namespace_rollups_summed(cluster, fleet):
    from django.db.models import Sum

    from compliance.models import ClusterRollup

    scan(cluster)
    deployment(fleet, "shop", "web", "nginx", 3, container_sc=GOOD_SC)
    scan(cluster)
    per_ns = dict(
        DailyRollup.objects.values("state").annotate(n=Sum("containers")).values_list("state", "n")
    )
    totals = dict(ClusterRollup.objects.exclude(containers=0).values_list("state", "containers"))
    assert per_ns == totals == {"compliant": 2, "blocked": 1, "unenforced": 1, "root": 3}


def test_it_resolves_exactly_the_fixed_workloads(cluster, fleet):
    scan(cluster)
    deployment(fleet, "shop", "web", "nginx", 3, container_sc=GOOD_SC)  # fixed
    fleet.state.delete("Pod", "data", "debug")  # gone
    r = scan(cluster)
    assert (r.opened, r.changed, r.resolved) == (0, 0, 2)
    keys = set(open_findings(cluster))
    assert ("shop", "Deployment", "web", "app") not in keys
    assert ("data", "Pod", "debug", "app") not in keys
    assert len(keys) == 4
    resolved = FindingEvent.objects.filter(kind="resolved")
    assert sorted(e.finding.workload_name for e in resolved) == ["debug", "web"]
    assert {e.from_state for e in resolved} == {"root"}


def test_it_counts_daily_activity(cluster, fleet):
    from compliance.models import DailyActivity

    scan(cluster)
    deployment(fleet, "shop", "web", "nginx", 3, container_sc=GOOD_SC)
    scan(cluster)
    rows = {r.namespace: (r.opened, r.resolved) for r in DailyActivity.objects.all()}
    assert rows == {"shop": (2, 1), "data": (4, 0)}
    web = Finding.objects.get(workload_name="web")
    assert DailyActivity.objects.get(namespace="shop").remediation_seconds == int(
        (web.resolved_at - web.first_seen).total_seconds()
    )


def test_it_records_a_state_change_as_an_event(cluster, fleet):
    scan(cluster)
    deployment(
        fleet, "data", "etl", "etl", 4, pod_sc={"runAsNonRoot": True}, container_sc={"runAsUser": 0}
    )
    r = scan(cluster)
    assert (r.opened, r.changed, r.resolved) == (0, 1, 0)
    e = FindingEvent.objects.get(kind="changed")
    assert (e.from_state, e.to_state, e.finding.workload_name) == ("unenforced", "blocked", "etl")
    f = open_findings(cluster)[("data", "Deployment", "etl", "app")]
    assert f.last_changed == e.at and f.first_seen < f.last_changed


def test_it_takes_the_worst_state_of_a_rollout_and_says_so(cluster, fake_kube):
    deployment(fake_kube, "shop", "web", "nginx", 2, container_sc=GOOD_SC)
    p = podgen.pod(
        "shop",
        "web-5c9d8f7b6-zzzzz",
        "nginx",
        {},
        ROOT_SC,
        owner=podgen.owner_ref("ReplicaSet", "web-5c9d8f7b6", "shop"),
    )
    fake_kube.state.put(p)
    scan(cluster)
    f = open_findings(cluster)[("shop", "Deployment", "web", "app")]
    assert (f.state, f.pods, f.mixed) == ("root", 3, True)
    assert f.detail["states"] == {"compliant": 2, "root": 1}


@pytest.mark.parametrize("fault", ["500", "drop", "slow", "429"])
def test_a_fault_at_page_k_fails_the_scan_and_resolves_nothing(cluster, fleet, fault):
    scan(cluster)
    before = {(f.pk, f.state, f.resolved_at) for f in Finding.objects.all()}
    events = FindingEvent.objects.count()
    fleet.state.delete("Pod", "data", "debug")  # would be resolved by a complete scan
    fleet.state.faults.append(Fault("pods", 2, fault, times=99, delay=3))
    r = scan(cluster)
    assert r.status == "failed"
    assert r.reason.startswith("list pods: ")
    assert {(f.pk, f.state, f.resolved_at) for f in Finding.objects.all()} == before
    assert FindingEvent.objects.count() == events
    cluster.refresh_from_db()
    assert cluster.last_scan.status == "failed"
    assert cluster.last_complete_scan.status == "succeeded"


def test_it_records_401_as_credentials_rejected(cluster, fleet):
    fleet.state.tokens.clear()
    fleet.state.tokens["other"] = None
    r = scan(cluster)
    assert (r.status, r.reason, r.transient) == (
        "failed",
        "credentials rejected (401 Unauthorized)",
        False,
    )


def test_a_rescan_with_nothing_changed_writes_nothing_to_findings(cluster, fleet):
    scan(cluster)
    snapshot = list(Finding.objects.order_by("pk").values())
    events = FindingEvent.objects.count()
    rollups = list(DailyRollup.objects.order_by("pk").values())
    with connection.cursor() as cur:
        cur.execute("SELECT pg_stat_force_next_flush()")
    r = scan(cluster)
    assert (r.opened, r.changed, r.resolved) == (0, 0, 0)
    assert list(Finding.objects.order_by("pk").values()) == snapshot
    assert FindingEvent.objects.count() == events
    assert list(DailyRollup.objects.order_by("pk").values()) == rollups


def test_a_rescan_with_nothing_changed_writes_a_constant_number_of_rows(cluster, fake_kube):
    written = []
    for size in (5, 40):
        fake_kube.state.clear()
        for i in range(size):
            deployment(fake_kube, f"ns-{i % 7}", f"w-{i}", "nginx", 2, container_sc=ROOT_SC)
        scan(cluster)
        before = rows_written()
        scan(cluster)
        written.append(rows_written() - before)
    assert written[0] == written[1]
    assert written[0] <= 6


def rows_written():
    with connection.cursor() as cur:
        cur.execute("SELECT pg_stat_force_next_flush()")
        cur.execute("SELECT pg_stat_clear_snapshot()")
        cur.execute(
            "SELECT coalesce(sum(n_tup_ins + n_tup_upd + n_tup_del), 0) "
            "FROM pg_stat_user_tables WHERE relname LIKE 'compliance_%%'"
        )
        return cur.fetchone()[0]


def test_the_same_task_id_twice_changes_nothing(cluster, fleet):
    first = scan(cluster, task_id="task-1")
    rows = ScanRun.objects.count()
    again = scan(cluster, task_id="task-1")
    assert again.scan_id == first.scan_id
    assert ScanRun.objects.count() == rows


@pytest.mark.django_db(transaction=True)
def test_two_concurrent_scans_of_one_cluster_run_once(fake_kube):
    from compliance.collect import clusters

    c = clusters.add_cluster("prod-2", kubeconfig=fake_kube.kubeconfig_yaml())
    deployment(fake_kube, "shop", "web", "nginx", 120, container_sc=ROOT_SC)
    fake_kube.state.page_delay = 0.3
    results = []

    def run():
        try:
            results.append(scan(c))
        finally:
            connection.close()

    threads = [threading.Thread(target=run) for _ in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sorted(r.status for r in results) == ["skipped", "succeeded"]
    skipped = ScanRun.objects.get(status="skipped")
    assert skipped.reason.startswith("another scan of this cluster is running")
    assert Finding.objects.filter(resolved_at__isnull=True).count() == 1


def test_the_database_refuses_a_second_running_scan(cluster):
    from django.db import IntegrityError, transaction

    ScanRun.objects.create(cluster=cluster)
    with pytest.raises(IntegrityError), transaction.atomic():
        ScanRun.objects.create(cluster=cluster)


def test_it_marks_an_abandoned_running_scan_failed(cluster, fleet):
    orphan = ScanRun.objects.create(cluster=cluster)  # its worker died, lock released
    r = scan(cluster)
    assert r.status == "succeeded"
    orphan.refresh_from_db()
    assert orphan.status == "failed"
    assert orphan.reason.startswith("interrupted: the worker running this scan stopped")


def test_it_rejects_malformed_pods_and_counts_them(cluster, fleet):
    bad = podgen.pod("shop", "broken", "x", {}, {})
    bad["spec"]["containers"][0]["securityContext"] = {"runAsUser": "zero"}
    fleet.state.put(bad)
    r = scan(cluster)
    assert r.status == "succeeded"
    assert r.rejected == 1
    s = ScanRun.objects.get(pk=r.scan_id)
    assert s.rejected == 1
    assert (
        "Pod shop/broken: spec.containers[0].securityContext.runAsUser"
        in s.rejections["examples"][0]
    )


def test_it_claims_due_clusters_once(cluster):
    from django.utils import timezone

    assert [pk for pk, _ in scanning.claim_due_clusters()] == [cluster.pk]
    assert scanning.claim_due_clusters() == []
    cluster.refresh_from_db()
    assert cluster.next_scan_at > timezone.now()
    Cluster.objects.filter(pk=cluster.pk).update(next_scan_at=timezone.now(), enabled=False)
    assert scanning.claim_due_clusters() == []


def test_it_scans_with_the_in_cluster_service_account(db, fake_kube, fleet, tmp_path, monkeypatch):
    from compliance.collect import clusters, kube

    (tmp_path / "token").write_text("sa-token\n")
    (tmp_path / "ca.crt").write_bytes(fake_kube.ca_pem)
    fake_kube.state.tokens["sa-token"] = {"pods", "replicasets", "jobs"}
    monkeypatch.setattr(kube, "SERVICE_ACCOUNT_DIR", tmp_path)
    monkeypatch.setenv("KUBERNETES_SERVICE_HOST", "127.0.0.1")
    monkeypatch.setenv("KUBERNETES_SERVICE_PORT", str(fake_kube.port))
    c = clusters.add_cluster("self", in_cluster=True)
    assert c.credentials is None
    r = scan(c)
    assert (r.status, r.pods) == ("succeeded", 14)
    monkeypatch.delenv("KUBERNETES_SERVICE_HOST")
    r = scan(c)
    assert (r.status, r.reason) == (
        "failed",
        "not running in a cluster: KUBERNETES_SERVICE_HOST is not set",
    )


@pytest.mark.parametrize(
    "misbehaviour,reason",
    [
        (
            {"repeat_continue": True},
            "list pods: the API server sent a continue token it had "
            "already sent in this list (after page 2); the list would never end",
        ),
        (
            {"ignore_limit": True},
            "list pods: the API server sent 13 items in one page, but at "
            "most 4 were asked for (limit=4); it ignores the page limit",
        ),
        (
            {"invalid_utf8": True},
            "list pods: the API server's answer is not UTF-8: a string in it holds the byte 0xff",
        ),
        (
            {"drip_bytes_per_second": 200},
            "list pods: the API server did not send a whole page "
            "within 2 s (WELKIN_KUBE_REQUEST_DEADLINE); ",
        ),
    ],
)
def test_a_hostile_api_server_fails_the_scan_quickly_and_resolves_nothing(
    cluster, fleet, misbehaviour, reason
):
    import time

    scan(cluster)
    before = {(f.pk, f.state, f.resolved_at) for f in Finding.objects.all()}
    fleet.state.delete("Pod", "data", "debug")  # would be resolved by a complete scan
    for name, value in misbehaviour.items():
        setattr(fleet.state, name, value)
    start = time.monotonic()
    r = scanning.scan_cluster(cluster.pk, policy=dataclasses.replace(PAGED, request_deadline=2))
    assert time.monotonic() - start < 20
    assert (r.status, r.transient) == ("failed", False)
    assert r.reason.startswith(reason), r.reason
    assert {(f.pk, f.state, f.resolved_at) for f in Finding.objects.all()} == before
    cluster.refresh_from_db()
    assert cluster.last_scan.reason == r.reason


def test_the_collector_bounds_come_from_the_settings(cluster, fleet, settings):
    settings.WELKIN_SCAN_MAX_PODS = 5
    r = scanning.scan_cluster(cluster.pk)
    assert (r.status, r.reason) == (
        "failed",
        "list pods: more than 5 pods in the cluster, the "
        "most one scan takes (WELKIN_SCAN_MAX_PODS)",
    )
