"""add_cluster, scan, findings, import_snapshot and rotate_credentials from the command
line, against PostgreSQL and the fake API server."""

import json

import pytest
import yaml
from cryptography.fernet import Fernet
from django.core.management import CommandError, call_command

from compliance import crypto
from compliance.models import Cluster, Finding, ScanRun
from tests import podgen
from tests.builders import deployment

ROOT_SC = {"runAsUser": 0}


@pytest.fixture
def kubeconfig_file(fake_kube, tmp_path):
    path = tmp_path / "kubeconfig"
    path.write_text(fake_kube.kubeconfig_yaml())
    return path


def run(*args):
    from io import StringIO

    out = StringIO()
    call_command(*args, stdout=out)
    return out.getvalue()


@pytest.mark.django_db
def test_it_adds_a_cluster_with_encrypted_credentials(kubeconfig_file, fake_kube):
    out = run("add_cluster", "prod-1", "--kubeconfig", str(kubeconfig_file))
    assert f"cluster prod-1: {fake_kube.url} (Kubeconfig context, context fake)" in out
    c = Cluster.objects.get(name="prod-1")
    raw = bytes(c.credentials_encrypted)
    assert b"admin-token" not in raw and fake_kube.ca_pem not in raw
    assert c.credentials.token == "admin-token"


@pytest.mark.django_db
@pytest.mark.parametrize(
    "user,message",
    [
        ({"exec": {"command": "gke-gcloud-auth-plugin"}}, "user.exec is refused"),
        (
            {"client-key": "/root/.kube/key.pem", "client-certificate": "/root/c.pem"},
            "is refused: a path on the worker's disk",
        ),
    ],
)
def test_it_refuses_an_unsafe_kubeconfig_and_stores_nothing(fake_kube, tmp_path, user, message):
    cfg = fake_kube.kubeconfig()
    cfg["users"][0]["user"] = user
    path = tmp_path / "kubeconfig"
    path.write_text(yaml.safe_dump(cfg))
    with pytest.raises(CommandError, match=message):
        run("add_cluster", "prod-1", "--kubeconfig", str(path))
    assert not Cluster.objects.exists()


@pytest.mark.django_db
def test_it_keeps_an_existing_cluster_when_a_replacement_is_refused(
    kubeconfig_file, fake_kube, tmp_path
):
    run("add_cluster", "prod-1", "--kubeconfig", str(kubeconfig_file))
    cfg = fake_kube.kubeconfig()
    cfg["users"][0]["user"] = {"auth-provider": {"name": "oidc"}}
    bad = tmp_path / "bad"
    bad.write_text(yaml.safe_dump(cfg))
    with pytest.raises(CommandError, match="auth-provider is refused"):
        run("add_cluster", "prod-1", "--kubeconfig", str(bad), "--replace")
    assert Cluster.objects.get(name="prod-1").credentials.token == "admin-token"
    with pytest.raises(CommandError, match="exists"):
        run("add_cluster", "prod-1", "--kubeconfig", str(kubeconfig_file))


@pytest.mark.django_db
@pytest.mark.parametrize("name", ["Prod", "x-", "a_b", "a" * 64])
def test_it_rejects_bad_cluster_names(kubeconfig_file, name):
    with pytest.raises(CommandError, match="cluster name"):
        run("add_cluster", name, "--kubeconfig", str(kubeconfig_file))


@pytest.mark.django_db
def test_scan_prints_a_summary_and_findings_lists_them(kubeconfig_file, fake_kube):
    run("add_cluster", "prod-1", "--kubeconfig", str(kubeconfig_file))
    deployment(fake_kube, "shop", "web", "nginx", 3, container_sc=ROOT_SC)
    out = run("scan", "prod-1")
    assert out.startswith("prod-1: 3 pods, 1 opened, 0 changed, 0 resolved in ")
    rows = json.loads(run("findings", "--format", "json"))
    assert len(rows) == 1
    r = rows[0]
    assert {
        k: r[k]
        for k in (
            "cluster",
            "namespace",
            "workload_kind",
            "workload_name",
            "container",
            "container_type",
            "state",
            "runs_as_root",
            "kubelet_error",
            "controls_2022",
            "controls_2013",
            "pods",
        )
    } == {
        "cluster": "prod-1",
        "namespace": "shop",
        "workload_kind": "Deployment",
        "workload_name": "web",
        "container": "app",
        "container_type": "app",
        "state": "root",
        "runs_as_root": True,
        "kubelet_error": None,
        "controls_2022": ["8.18", "8.8", "8.27"],
        "controls_2013": ["A.9.4.4", "A.12.6.1", "A.14.2.5"],
        "pods": 3,
    }
    assert r["image"] == "nginx" and r["first_seen"] and r["last_changed"]
    assert json.loads(run("findings", "--format", "json", "--state", "blocked")) == []
    assert "1 open findings" in run("findings", "--cluster", "prod-1")
    with pytest.raises(CommandError, match="no such cluster: nope"):
        run("findings", "--cluster", "nope")


@pytest.mark.django_db
def test_scan_exits_1_when_a_scan_fails(kubeconfig_file, fake_kube):
    run("add_cluster", "prod-1", "--kubeconfig", str(kubeconfig_file))
    fake_kube.state.tokens.clear()
    with pytest.raises(SystemExit) as e:
        run("scan", "--all")
    assert e.value.code == 1
    assert ScanRun.objects.get().reason == "credentials rejected (401 Unauthorized)"
    with pytest.raises(CommandError, match="no such cluster: x"):
        run("scan", "x")


def snapshot(items):
    return json.dumps({"apiVersion": "v1", "kind": "List", "items": list(items)})


@pytest.mark.django_db
def test_import_snapshot_records_a_complete_scan(tmp_path):
    rs = podgen.replicaset("shop", "web-abc", "web", 2)
    pods = [
        podgen.pod(
            "shop",
            f"web-abc-{i}",
            "nginx",
            {},
            ROOT_SC,
            owner=podgen.owner_ref("ReplicaSet", "web-abc", "shop"),
        )
        for i in range(2)
    ]
    f = tmp_path / "snap.json"
    f.write_text(snapshot([rs, *pods]))
    out = run("import_snapshot", "airgap-1", str(f), "--at", "2026-11-01T10:00:00Z")
    assert out.startswith("airgap-1: 2 pods, 1 opened")
    finding = Finding.objects.get()
    assert (finding.workload_kind, finding.workload_name, finding.pods) == ("Deployment", "web", 2)
    assert finding.first_seen.isoformat() == "2026-11-01T10:00:00+00:00"
    assert Cluster.objects.get(name="airgap-1").source == "snapshot"
    # A later snapshot without the workload resolves it.
    f.write_text(snapshot([]))
    assert "1 resolved" in run(
        "import_snapshot", "airgap-1", str(f), "--at", "2026-11-02T10:00:00Z"
    )
    # Out of order is refused, and nothing changes.
    f.write_text(snapshot(pods))
    with pytest.raises(CommandError, match="before the cluster's last complete scan"):
        run("import_snapshot", "airgap-1", str(f), "--at", "2026-11-01T12:00:00Z")
    assert Finding.objects.filter(resolved_at__isnull=True).count() == 0


@pytest.mark.django_db
@pytest.mark.parametrize(
    "text,message",
    [
        ("", "the file is empty"),
        ("{", "invalid JSON"),
        ('{"kind": "PodList", "items": []}', "expected one List"),
        ('{"kind": "List", "items": [{"kind": "Service"}]}', "items\\[0\\]: kind 'Service'"),
    ],
)
def test_import_snapshot_rejects_bad_files_and_stores_nothing(tmp_path, text, message):
    f = tmp_path / "snap.json"
    f.write_text(text)
    with pytest.raises(CommandError, match=message):
        run("import_snapshot", "airgap-1", str(f))
    assert not Cluster.objects.exists()


@pytest.mark.django_db
def test_import_snapshot_rejects_a_bad_time(tmp_path):
    f = tmp_path / "snap.json"
    f.write_text(snapshot([]))
    with pytest.raises(CommandError, match="expected an ISO 8601 time"):
        run("import_snapshot", "airgap-1", str(f), "--at", "yesterday")
    with pytest.raises(CommandError, match="needs a time zone"):
        run("import_snapshot", "airgap-1", str(f), "--at", "2026-11-01T10:00:00")


@pytest.mark.django_db
def test_rotate_credentials_re_encrypts_with_the_new_first_key(kubeconfig_file, settings):
    old = Fernet.generate_key().decode()
    settings.WELKIN_FERNET_KEYS = [old]
    run("add_cluster", "prod-1", "--kubeconfig", str(kubeconfig_file))
    new = Fernet.generate_key().decode()
    settings.WELKIN_FERNET_KEYS = [new, old]
    assert "1 credentials re-encrypted" in run("rotate_credentials")
    settings.WELKIN_FERNET_KEYS = [new]
    assert Cluster.objects.get().credentials.token == "admin-token"
    settings.WELKIN_FERNET_KEYS = [old]
    with pytest.raises(crypto.DecryptionError, match="cannot be decrypted"):
        Cluster.objects.get().credentials  # noqa: B018
