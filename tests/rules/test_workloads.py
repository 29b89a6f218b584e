"""Owner resolution, from pod JSON."""

from compliance.rules.workloads import OwnerIndex, controller_of
from tests import podgen


def index(*objs):
    idx = OwnerIndex()
    for kind, obj in objs:
        idx.add(kind, obj)
    return idx


def test_it_folds_replicaset_pods_onto_the_deployment():
    idx = index(("ReplicaSet", podgen.replicaset("ns", "web-abc", "web", 2)))
    pod = podgen.pod(
        "ns", "web-abc-1", "i", {}, {}, owner=podgen.owner_ref("ReplicaSet", "web-abc", "ns")
    )
    assert idx.workload_of(pod) == ("Deployment", "web")


def test_it_folds_job_pods_onto_the_cronjob():
    idx = index(("Job", podgen.job("ns", "nightly-1", "nightly")))
    pod = podgen.pod(
        "ns",
        "nightly-1-x",
        "i",
        {},
        {},
        owner=podgen.owner_ref("Job", "nightly-1", "ns", "batch/v1"),
    )
    assert idx.workload_of(pod) == ("CronJob", "nightly")


def test_it_keeps_a_bare_job_and_a_bare_replicaset():
    idx = index(("Job", podgen.job("ns", "once", None)))
    job_pod = podgen.pod(
        "ns", "once-x", "i", {}, {}, owner=podgen.owner_ref("Job", "once", "ns", "batch/v1")
    )
    assert idx.workload_of(job_pod) == ("Job", "once")
    rs_pod = podgen.pod(
        "ns", "lone-x", "i", {}, {}, owner=podgen.owner_ref("ReplicaSet", "lone", "ns")
    )
    assert idx.workload_of(rs_pod) == ("ReplicaSet", "lone")


def test_it_derives_the_deployment_of_a_replicaset_it_has_not_seen():
    pod = podgen.pod(
        "ns", "web-5d8-x", "i", {}, {}, owner=podgen.owner_ref("ReplicaSet", "web-5d8", "ns")
    )
    pod["metadata"]["labels"]["pod-template-hash"] = "5d8"
    assert OwnerIndex().workload_of(pod) == ("Deployment", "web")


def test_it_keeps_other_controllers_and_unknown_kinds():
    for kind in ("StatefulSet", "DaemonSet", "ReplicationController", "Rollout"):
        pod = podgen.pod("ns", "p", "i", {}, {}, owner=podgen.owner_ref(kind, "w", "ns"))
        assert OwnerIndex().workload_of(pod) == (kind, "w")


def test_a_bare_pod_is_its_own_workload():
    assert OwnerIndex().workload_of(podgen.pod("ns", "debug", "i", {}, {})) == ("Pod", "debug")


def test_it_does_not_cross_namespaces():
    idx = index(("ReplicaSet", podgen.replicaset("a", "web-abc", "web", 1)))
    pod = podgen.pod(
        "b", "web-abc-1", "i", {}, {}, owner=podgen.owner_ref("ReplicaSet", "web-abc", "b")
    )
    assert idx.workload_of(pod) == ("ReplicaSet", "web-abc")


def test_it_prefers_the_controller_reference():
    obj = {
        "metadata": {
            "ownerReferences": [
                {"kind": "ConfigMap", "name": "x"},
                {"kind": "StatefulSet", "name": "db", "controller": True},
            ]
        }
    }
    assert controller_of(obj) == ("StatefulSet", "db")
    assert controller_of({"metadata": {"ownerReferences": "junk"}}) is None
    assert controller_of({"metadata": {"ownerReferences": [{"kind": 1}]}}) is None
