"""Scans through a real Celery worker (and beat) on real Redis and PostgreSQL."""

import signal
import time
from pathlib import Path

import pytest

from compliance import tasks, workers
from compliance.collect import clusters, scanning
from compliance.models import Finding, FindingEvent, ScanRun
from tests.builders import deployment
from tests.processes import Proc, start_worker, wait_for

ROOT = Path(__file__).resolve().parents[2]
ROOT_SC = {"runAsUser": 0}

pytestmark = pytest.mark.django_db(transaction=True)


@pytest.fixture
def worker(broker):
    w = start_worker()
    yield w
    w.kill()


@pytest.fixture
def cluster(cluster, fake_kube):
    """The shared cluster, running two Deployments (one of them as root)."""
    deployment(fake_kube, "shop", "web", "nginx", 3, container_sc=ROOT_SC)
    deployment(fake_kube, "shop", "api", "api", 2, container_sc={"runAsUser": 1000})
    return cluster


def finished(task_id):
    return lambda: ScanRun.objects.filter(task_id=task_id).exclude(status="running").first()


def test_a_worker_scans_a_cluster(worker, cluster):
    result = tasks.scan_cluster.apply_async((cluster.pk,))
    scan = wait_for(finished(result.id))
    assert (scan.status, scan.pods, scan.findings_opened) == ("succeeded", 5, 2)
    assert Finding.objects.filter(resolved_at__isnull=True).count() == 2


def test_the_same_task_delivered_twice_changes_nothing(worker, cluster):
    tasks.scan_cluster.apply_async((cluster.pk,), task_id="same-task")
    first = wait_for(finished("same-task"))
    findings = list(Finding.objects.order_by("pk").values())
    events = FindingEvent.objects.count()
    tasks.scan_cluster.apply_async((cluster.pk,), task_id="same-task")
    marker = tasks.scan_cluster.apply_async((cluster.pk,), task_id="after")
    wait_for(finished(marker.id))  # the worker has handled the redelivery before this
    assert ScanRun.objects.filter(task_id="same-task").count() == 1
    assert ScanRun.objects.get(task_id="same-task").pk == first.pk
    assert list(Finding.objects.order_by("pk").values()) == findings
    assert FindingEvent.objects.count() == events


def test_beat_fans_out_one_scan_per_due_cluster(broker, worker, cluster, fake_kube, tmp_path):
    other = clusters.add_cluster("prod-2", kubeconfig=fake_kube.kubeconfig_yaml())
    clusters.add_cluster("off", kubeconfig=fake_kube.kubeconfig_yaml()).__class__.objects.filter(
        name="off"
    ).update(enabled=False)
    beat = Proc(
        "beat", "--loglevel=INFO", f"--schedule={tmp_path / 'beat'}", WELKIN_FANOUT_SECONDS="5"
    )
    try:
        wait_for(lambda: ScanRun.objects.filter(status="succeeded").count() >= 2, 60)
        time.sleep(6)  # another fan-out: nothing is due again for 15 minutes
    finally:
        beat.kill()
    runs = ScanRun.objects.filter(trigger="schedule")
    assert sorted(runs.values_list("cluster__name", flat=True)) == ["prod-1", "prod-2"]
    assert {r.status for r in runs} == {"succeeded"}
    assert other.pk in runs.values_list("cluster_id", flat=True)


def test_a_worker_killed_mid_scan_leaves_consistent_data(worker, cluster, fake_kube):
    first = scanning.scan_cluster(cluster.pk)
    assert first.status == "succeeded"
    baseline = list(Finding.objects.order_by("pk").values("pk", "state", "resolved_at"))
    # Fix one workload, then make listing slow so the worker is killed mid-list.
    deployment(
        fake_kube, "shop", "web", "nginx", 3, container_sc={"runAsNonRoot": True, "runAsUser": 1000}
    )
    for i in range(40):
        deployment(fake_kube, f"ns-{i}", f"w-{i}", "img", 1, container_sc={"runAsUser": 1000})
    fake_kube.state.page_delay = 0.4
    result = tasks.scan_cluster.apply_async((cluster.pk,))
    running = wait_for(lambda: ScanRun.objects.filter(task_id=result.id, status="running").first())
    time.sleep(0.5)
    worker.kill(signal.SIGKILL)
    # Deterministic: the killed pool process is gone (or a zombie) before the next scan,
    # which then waits for PostgreSQL to end the dead session instead of being skipped.
    pid = int(running.worker.rpartition(":")[2])
    wait_for(lambda: workers.process_gone(pid), timeout=30, every=0.05)
    assert list(Finding.objects.order_by("pk").values("pk", "state", "resolved_at")) == baseline
    fake_kube.state.page_delay = 0
    after = scanning.scan_cluster(cluster.pk)
    assert after.status == "succeeded"
    running.refresh_from_db()
    assert running.status == "failed"
    assert running.reason.startswith("interrupted: the worker running this scan stopped")
    web = Finding.objects.get(workload_name="web")
    assert web.resolved_at is not None
    assert FindingEvent.objects.filter(finding=web, kind="resolved").count() == 1
