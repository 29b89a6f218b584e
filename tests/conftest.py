"""Shared fixtures: a fake API server over HTTPS, clusters registered against it."""

import pytest

from compliance import clusters, kube
from tests import podgen
from tests.fakekube import FakeKubeServer

FAST = kube.Policy(
    page_limit=50, connect_timeout=2, read_timeout=2, backoff=0.01, max_retry_after=0.2
)


@pytest.fixture(autouse=True)
def no_registry_lookups(request, settings):
    """Tests reach only registries they start themselves (mark: uses_registry)."""
    if "uses_registry" not in request.keywords:
        settings.WELKIN_REGISTRY_LOOKUPS = False


@pytest.fixture
def fake_kube():
    server = FakeKubeServer().start()
    yield server
    server.stop()


@pytest.fixture
def cluster(db, fake_kube):
    return clusters.add_cluster("prod-1", kubeconfig=fake_kube.kubeconfig_yaml())


def deployment(fake, ns, name, image, replicas=3, pod_sc=None, container_sc=None):
    """A Deployment's ReplicaSet and pods, put into the fake cluster."""
    rs = f"{name}-5c9d8f7b6"
    fake.state.put(podgen.replicaset(ns, rs, name, replicas, image, "5c9d8f7b6"))
    for i in range(replicas):
        p = podgen.pod(
            ns,
            f"{rs}-{i:05d}",
            image,
            pod_sc or {},
            container_sc or {},
            owner=podgen.owner_ref("ReplicaSet", rs, ns),
        )
        p["metadata"]["labels"]["pod-template-hash"] = "5c9d8f7b6"
        fake.state.put(p)
