"""Hostile data: what a cluster, a registry, a file or a user sends cannot hurt a user or
the data. Suggested commands run in a real bash against stub programs; CSV, PDF and
snapshots are the real writers and importers; the API server is the fake one over HTTPS."""

import csv
import datetime as dt
import io
import json
import os
import resource
import subprocess
import sys
import textwrap
from pathlib import Path
from types import SimpleNamespace

import pytest
from django.contrib.auth.models import User
from django.core.management import CommandError, call_command
from django.utils import timezone
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st
from pypdf import PdfReader

from compliance.collect import images, kube, registry, scanning
from compliance.evidence import reports, signed, store, writers
from compliance.identity import access
from compliance.models import AuditEvent, Cluster, Export, Finding, ScanRun
from compliance.rules import explain, gate, inert, kubeconfig, runas, shell, workloads
from tests import podgen
from tests.builders import FORMULAS, make_user, stored_finding

ROOT = Path(__file__).resolve().parent.parent
FLEET = access.Scope(None, access.AUDITOR)

# --- suggested commands, run in bash --------------------------------------------------------

# Export jobs run in the request here (tests/evidence/test_export_jobs.py runs them in a worker).
pytestmark = pytest.mark.usefixtures("exports_in_process")

STUB = """#!{python}
import json, os, sys

with open(os.environ["ARGV_LOG"], "a") as f:
    f.write(json.dumps([os.path.basename(sys.argv[0]), *sys.argv[1:]]) + "\\n")
"""


@pytest.fixture(scope="module")
def stubs(tmp_path_factory):
    bin_dir = tmp_path_factory.mktemp("bin")
    for name in ("kubectl", "docker"):
        p = bin_dir / name
        p.write_text(STUB.format(python=sys.executable))
        p.chmod(0o755)
    return bin_dir


def run_in_bash(command: str, stubs: Path, tmp: Path) -> list[list[str]]:
    """Run a pasted command in bash with only the stubs on PATH; what ran, and nothing
    else may appear in the working directory."""
    work = tmp / "work"
    work.mkdir(exist_ok=True)
    log = tmp / "argv.log"
    log.write_text("")
    before = set(os.listdir(work))
    subprocess.run(
        ["/bin/bash", "-c", command],
        cwd=work,
        timeout=20,
        check=False,
        env={"PATH": str(stubs), "ARGV_LOG": str(log), "HOME": str(tmp)},
    )
    assert set(os.listdir(work)) == before, f"the command created files: {command!r}"
    return [json.loads(line) for line in log.read_text().splitlines()]


def hostile_finding(namespace, workload, container, image_user, passwd=None, image="img"):
    return SimpleNamespace(
        state="blocked",
        detail={"run_as_non_root_from": "container", "passwd": passwd},
        image=image,
        image_user=image_user,
        uid=None,
        run_as_user=None,
        run_as_non_root=True,
        windows=False,
        namespace=namespace,
        workload_kind="Deployment",
        workload_name=workload,
        container=container,
        container_type="app",
    )


names = st.text(min_size=1, max_size=40)


@settings(max_examples=40, deadline=None, suppress_health_check=list(HealthCheck))
@given(namespace=names, workload=names, container=names, user=names)
@example(
    namespace="ns$(touch pwned)",
    workload="d2 ; touch pwned #",
    container="c'$(touch pwned)'",
    user="$(touch pwned)",
)
@example(namespace="a\nb", workload="`touch pwned`", container="x", user="u;touch pwned")
@example(namespace="ns", workload="web", container="\u202eevil", user="node")
@example(namespace="-n", workload="--all", container="c", user="-n")
def test_suggested_commands_run_only_what_they_show(
    stubs, tmp_path_factory, namespace, workload, container, user
):
    tmp = tmp_path_factory.mktemp("sh")
    user = "x" + user  # non-numeric
    name = user.split(":", 1)[0]  # the name part of USER name:group
    # Its uid not known: the fix says how to look it up in the image (getent).
    unknown = explain.remediation(
        hostile_finding(namespace, workload, container, user, image=namespace)
    )
    assert unknown["kind"] == "uid-unknown" and unknown["kubectl"] is None
    lookup = shell.command(
        "docker",
        "run",
        "--rm",
        "--entrypoint",
        "getent",
        namespace,
        "passwd",
        name,
        values=(namespace, name),
    )
    assert unknown["commands"] == ([lookup.text] if lookup else [])
    # Its uid read from /etc/passwd: the kubectl patch, with a hostile context name too.
    entry = {"name": name, "uid": 1000, "gid": 1000, "layer": "sha256:" + "a" * 64, "line": 3}
    fix = explain.remediation(
        hostile_finding(namespace, workload, container, user, {"user": entry}), context=container
    )
    kubectl = {"text": fix["kubectl"], "withheld": fix["kubectl_withheld"]}
    # The container name travels inside the JSON patch, \u-escaped by json.dumps.
    patch = json.dumps(
        {
            "spec": {
                "template": {
                    "spec": {
                        "containers": [{"name": container, "securityContext": {"runAsUser": 1000}}]
                    }
                }
            }
        },
        separators=(",", ":"),
    )
    expected = {
        "kubectl": [
            "kubectl",
            "--context",
            container,
            "-n",
            namespace,
            "patch",
            "deployment",
            workload,
            "--type",
            "strategic",
            "-p",
            patch,
        ],
        "docker": ["docker", "run", "--rm", "--entrypoint", "getent", namespace, "passwd", name],
    }
    lookup = {"text": lookup.text, "withheld": lookup.withheld}
    for suggested, argv in ((kubectl, expected["kubectl"]), (lookup, expected["docker"])):
        if suggested["text"] is None:  # withheld: some value cannot be pasted safely
            if any(
                v.startswith("-") for v in argv[2:] if v in (namespace, workload, container, name)
            ):
                assert "would be read as an option" in suggested["withheld"]
            else:
                assert "cannot be pasted into a shell safely" in suggested["withheld"]
                assert any(not shell.command(a) for a in argv)
            continue
        assert run_in_bash(suggested["text"], stubs, tmp) == [argv]


def test_a_withheld_command_says_why_on_the_finding_page():
    entry = {"name": "node", "uid": 1000, "gid": 1000, "layer": "sha256:" + "a" * 64, "line": 3}
    fix = explain.remediation(hostile_finding("ns", "web\x1b[2J", "c", "node", {"user": entry}))
    assert fix["kubectl"] is None
    assert "U+001B" in fix["kubectl_withheld"]


# --- the gate: hostile API server, snapshots, pages -----------------------------------------

HOSTILE_PODS = [
    ("namespace with a slash", {"metadata": {"namespace": "a/b"}}),
    ("70-character namespace", {"metadata": {"namespace": "n" * 70}}),
    ("NUL in a name", {"metadata": {"name": "web\x00x"}}),
    ("container name a list", {"spec": {"containers": [{"name": ["x"], "image": "nginx"}]}}),
    ("status name a list", {"status": {"containerStatuses": [{"name": ["x"]}]}}),
    ("huge image", {"spec": {"containers": [{"name": "app", "image": "i" * 5000}]}}),
    (
        "owner name with a slash",
        {
            "metadata": {
                "ownerReferences": [{"kind": "ReplicaSet", "name": "../x", "controller": True}]
            }
        },
    ),
]


def hostile_pod(i, change):
    p = podgen.pod("shop", f"bad-{i}", "nginx", {}, {})
    for key, value in change.items():
        p.setdefault(key, {}).update(value)
    return p


@pytest.fixture
def hostile_cluster(cluster, fake_kube):
    podgen_ok = podgen.pod("shop", "good", "nginx", {}, {})
    fake_kube.state.put(podgen_ok)
    for i, (_, change) in enumerate(HOSTILE_PODS):
        fake_kube.state.put(hostile_pod(i, change))
    return cluster


def test_a_hostile_api_server_cannot_stop_a_scan_or_store_bad_names(hostile_cluster, login_as):
    r = scanning.scan_cluster(hostile_cluster.pk)
    assert r.status == "succeeded"
    assert r.rejected == len(HOSTILE_PODS)
    assert "objects rejected" in r.rejected_summary
    scan = ScanRun.objects.get(pk=r.scan_id)
    assert scan.rejections["count"] == len(HOSTILE_PODS)
    assert any("not a DNS-1123 label" in rule for rule in scan.rejections["by_reason"])
    assert set(Finding.objects.values_list("workload_name", flat=True)) == {"good"}
    # Everything stored routes: every page answers for an officer.
    client = login_as("officer")
    for url in [
        "/",
        "/clusters/prod-1/",
        "/clusters/prod-1/namespaces/shop/",
        "/scans/",
        f"/findings/{Finding.objects.get().pk}/",
        f"/api/v1/scans/{scan.pk}/",
    ]:
        assert client.get(url).status_code == 200, url
    page = client.get("/scans/").content.decode()
    assert f"{len(HOSTILE_PODS)} objects rejected" in page
    assert client.get(f"/api/v1/scans/{scan.pk}/").json()["rejected"] == len(HOSTILE_PODS)
    out = io.StringIO()
    call_command("scan", "prod-1", stdout=out)
    assert f"prod-1: {len(HOSTILE_PODS)} objects rejected" in out.getvalue()


def test_a_rejected_pod_keeps_its_workloads_findings_open(cluster, fake_kube):
    fake_kube.state.put(podgen.pod("shop", "web", "nginx", {}, {}))
    assert scanning.scan_cluster(cluster.pk).opened == 1
    broken = podgen.pod("shop", "web", "nginx", {}, {})
    broken["spec"]["containers"][0]["image"] = "i" * 5000
    fake_kube.state.put(broken)
    r = scanning.scan_cluster(cluster.pk)
    assert (r.status, r.rejected, r.resolved) == ("succeeded", 1, 0)
    assert Finding.objects.get().resolved_at is None


def snapshot_bytes(pods):
    return json.dumps(
        {"apiVersion": "v1", "kind": "List", "items": [{**p, "kind": "Pod"} for p in pods]}
    ).encode()


@pytest.mark.django_db
@pytest.mark.parametrize("what,change", HOSTILE_PODS, ids=[w for w, _ in HOSTILE_PODS])
def test_import_snapshot_rejects_hostile_objects_and_completes(what, change):
    data = snapshot_bytes([hostile_pod(0, change), podgen.pod("shop", "ok", "nginx", {}, {})])
    r = scanning.import_snapshot("airgap", data, "snap.json")
    assert (r.status, r.rejected, r.pods) == ("succeeded", 1, 1)
    assert not ScanRun.objects.filter(status="running").exists()


@pytest.mark.django_db
def test_a_failed_first_import_leaves_no_cluster_and_no_running_scan(monkeypatch):
    def broken(*args, **kwargs):
        raise RuntimeError("disk full")

    monkeypatch.setattr(scanning, "write_rollup", broken)
    with pytest.raises(RuntimeError):
        scanning.import_snapshot(
            "airgap", snapshot_bytes([podgen.pod("shop", "a", "x", {}, {})]), "snap.json"
        )
    assert not Cluster.objects.exists() and not ScanRun.objects.exists()


@pytest.mark.django_db
def test_import_snapshot_ends_every_failure_with_a_message(tmp_path, monkeypatch):
    f = tmp_path / "snap.json"
    f.write_bytes(snapshot_bytes([podgen.pod("shop", "a", "x", {}, {})]))
    with pytest.raises(CommandError, match="out of range|expected an ISO 8601 time"):
        call_command("import_snapshot", "airgap", str(f), "--at", "2026-02-30T10:00:00Z")
    monkeypatch.setattr(scanning, "write_rollup", lambda *a: 1 / 0)
    with pytest.raises(
        CommandError, match="the import failed and stored nothing: ZeroDivisionError"
    ):
        call_command("import_snapshot", "airgap", str(f))
    assert not Cluster.objects.exists()


def test_a_scan_that_fails_while_reconciling_ends_failed_not_running(
    cluster, fake_kube, monkeypatch
):
    fake_kube.state.put(podgen.pod("shop", "web", "nginx", {}, {}))
    monkeypatch.setattr(scanning, "write_rollup", lambda *a: 1 / 0)
    with pytest.raises(ZeroDivisionError):
        scanning.scan_cluster(cluster.pk)
    scan = ScanRun.objects.get()
    assert scan.status == "failed" and "ZeroDivisionError" in scan.reason
    assert not Finding.objects.exists()


# --- YAML alias bombs ------------------------------------------------------------------------


def test_evaluate_refuses_a_yaml_alias_bomb_in_bounded_memory(tmp_path):
    f = tmp_path / "bomb.yaml"
    f.write_bytes(podgen.alias_bomb())
    assert f.stat().st_size < 200_000

    def limit():  # 1 GiB of address space: the bomb used to take 9 GB
        resource.setrlimit(resource.RLIMIT_AS, (1 << 30, 1 << 30))

    r = subprocess.run(
        [sys.executable, str(ROOT / "manage.py"), "evaluate", str(f)],
        capture_output=True,
        text=True,
        preexec_fn=limit,
        timeout=120,
        env={"PATH": os.environ["PATH"]},
    )
    assert r.returncode == 2, r.stderr[-2000:]
    assert "YAML aliases expand to more than 100,000 nodes" in r.stderr
    assert "refused as an alias bomb" in r.stderr


@pytest.mark.django_db
def test_import_snapshot_refuses_a_yaml_alias_bomb(tmp_path):
    f = tmp_path / "bomb.yaml"
    f.write_bytes(podgen.alias_bomb())
    with pytest.raises(CommandError, match="alias bomb"):
        call_command("import_snapshot", "airgap", str(f))
    assert not Cluster.objects.exists()


def test_yaml_with_a_few_aliases_still_reads(tmp_path):
    f = tmp_path / "ok.yaml"
    f.write_text(
        textwrap.dedent("""\
        kind: Pod
        metadata: {name: web, namespace: shop}
        spec:
          securityContext: &sc {runAsNonRoot: true, runAsUser: 1000}
          containers:
          - {name: a, image: nginx, securityContext: *sc}
        """)
    )
    r = subprocess.run(
        [sys.executable, str(ROOT / "manage.py"), "evaluate", str(f)],
        capture_output=True,
        text=True,
        env={"PATH": os.environ["PATH"]},
    )
    assert r.returncode == 0 and "compliant" in r.stdout


# --- evaluate stands alone -------------------------------------------------------------------


def test_evaluate_runs_with_an_empty_environment(tmp_path):
    f = tmp_path / "d.yaml"
    f.write_text(
        "kind: Pod\nmetadata: {name: w, namespace: s}\nspec:\n  securityContext: "
        "{runAsNonRoot: true}\n  containers:\n  - {name: a, image: 'node:22'}\n"
    )
    base = [sys.executable, str(ROOT / "manage.py"), "evaluate"]
    r = subprocess.run(
        [*base, "--image-user", "node:22=node", "--format", "json", str(f)],
        capture_output=True,
        text=True,
        env={},
        cwd=tmp_path,
    )
    assert r.returncode == 1, r.stderr
    assert json.loads(r.stdout)["summary"]["blocked"] == 1
    r = subprocess.run(
        [*base, "--image-user", "node:22=1000", str(f)],
        capture_output=True,
        text=True,
        env={},
        cwd=tmp_path,
    )
    assert r.returncode == 0 and "compliant" in r.stdout, r.stderr
    assert os.listdir(tmp_path) == ["d.yaml"]  # no database file, nothing written


# --- CSV and PDF -----------------------------------------------------------------------------


@pytest.fixture
def stored(db):
    """Rows as a hostile source could have left them (stored before the gate, or by any
    path that skips it): the writers must be safe on their own."""
    cluster = Cluster.objects.create(name="prod-1", source="snapshot")
    at = timezone.now() - timezone.timedelta(hours=1)
    scan = ScanRun.objects.create(cluster=cluster, status="succeeded", observed_at=at)
    Cluster.objects.filter(pk=cluster.pk).update(last_complete_scan=scan)

    def add(**fields):
        return stored_finding(cluster, scan, at, **fields)

    return add


def test_csv_cells_are_inert_and_the_file_verifies(stored, tmp_path, settings):
    for i, value in enumerate(FORMULAS):
        stored(workload_name=f"w{i}", image=value, container=value[:60])
    path = tmp_path / "r.csv"
    store.export_to(reports.point_in_time(FLEET), "csv", path)
    rows = list(csv.reader(path.open(newline="")))
    cells = [cell for row in rows[1:] for cell in row]
    assert not [c for c in cells if c.lstrip(" ").startswith(inert.FORMULA_STARTS)]
    assert {r[rows[0].index("image")] for r in rows[1:]} == {"'" + v for v in FORMULAS}
    content = path.read_bytes()
    assert signed.verify(content, Path(str(path) + ".manifest.json").read_bytes()).ok


def test_the_audit_log_csv_is_inert(client, login_as):
    client.post(
        "/accounts/login/", {"username": '=HYPERLINK("http://evil","x")', "password": "nope"}
    )
    login_as("officer")
    assert client.head("/audit/export.csv").status_code == 405  # nothing to audit
    assert not AuditEvent.objects.filter(action="audit_export").exists()
    r = client.get("/audit/export.csv")
    assert r["Content-Type"] == "text/csv; charset=utf-8"
    body = b"".join(r.streaming_content).decode()
    rows = list(csv.reader(io.StringIO(body)))
    users = [r[2] for r in rows[1:]]  # seq, at, user, ...
    assert '\'=HYPERLINK("http://evil","x")' in users
    assert not [c for r in rows[1:] for c in r if c.startswith(inert.FORMULA_STARTS)]


PDF_HOSTILE = [
    '"><img src=x onerror=alert(1)>',
    '<img src="/etc/passwd" width="9">',
    '<a href="http://evil.example">click</a>',
    "<font name=Courier>x</font>",
    "&amp;",
    "a\x07b\x1b[2J",
    "</para><para>",
    "\u202eexe.txt",
]


def test_the_pdf_shows_hostile_text_as_text(stored, tmp_path):
    for i, value in enumerate(PDF_HOSTILE):
        stored(workload_name=value, image=value, container=f"c{i}", namespace=value[:63])
    path = tmp_path / "r.pdf"
    m = store.export_to(reports.point_in_time(FLEET), "pdf", path)
    assert m["rows"] == len(PDF_HOSTILE)
    pdf = PdfReader(path)
    text = "".join(page.extract_text() for page in pdf.pages)
    assert "onerror=alert(1)" in text and "click</a>" in text
    for page in pdf.pages:  # no link and no image came from the data
        assert "/Annots" not in page
        xobjects = page.get("/Resources", {}).get("/XObject", {})
        assert not xobjects
    assert signed.verify(path.read_bytes(), Path(str(path) + ".manifest.json").read_bytes()).ok


@settings(max_examples=25, deadline=None, suppress_health_check=list(HealthCheck))
# Any text PostgreSQL can store (no NUL, no lone surrogate): the gate refuses the rest.
@given(
    value=st.text(
        st.characters(blacklist_characters="\x00", blacklist_categories=("Cs",)),
        min_size=1,
        max_size=80,
    )
)
def test_any_string_builds_a_pdf_that_verifies(stored, tmp_path_factory, value):
    Finding.objects.all().delete()
    stored(workload_name=value, image=value, container=value[:60], namespace=value[:63])
    path = tmp_path_factory.mktemp("pdf") / "r.pdf"
    store.export_to(reports.point_in_time(FLEET), "pdf", path)
    assert signed.verify(path.read_bytes(), Path(str(path) + ".manifest.json").read_bytes()).ok


def test_a_failed_export_leaves_no_file_and_says_why(
    stored, tmp_path, monkeypatch, client, login_as, settings
):
    stored()

    def broken(report, out, progress, copy):
        out.write(b"%PDF-half")
        raise RuntimeError("renderer crashed")

    monkeypatch.setattr(writers, "write_pdf", broken)
    with pytest.raises(
        store.ExportError, match="the PDF export failed, and left no file: renderer crashed"
    ):
        store.export_to(reports.point_in_time(FLEET), "pdf", tmp_path / "r.pdf")
    assert os.listdir(tmp_path) == []
    with pytest.raises(CommandError, match="left no file: renderer crashed"):
        call_command("report", "--format", "pdf", "-o", str(tmp_path / "c.pdf"))
    with pytest.raises(CommandError, match="No such file or directory"):
        call_command("report", "--format", "csv", "-o", str(tmp_path / "no" / "c.csv"))
    assert os.listdir(tmp_path) == []
    settings.EXPORTS_DIR = tmp_path
    login_as("officer")
    r = client.post("/reports/export/", {"format": "pdf"})
    assert r.status_code == 302
    e = Export.objects.get()
    assert e.status == "failed" and e.error.endswith("left no file: renderer crashed")
    assert b"failed: the PDF export failed, and left no file: renderer crashed" in (
        client.get("/reports/").content
    )
    assert client.get(f"/reports/exports/{e.pk}/").status_code == 404
    assert os.listdir(tmp_path) == []


# --- uploads ---------------------------------------------------------------------------------


def test_verify_refuses_an_upload_over_the_limit_before_reading_it(login_as, settings):
    settings.WELKIN_VERIFY_MAX_BYTES = 1000
    client = login_as("officer")
    big = io.BytesIO(b"x" * (3 << 20))
    big.name = "r.csv"
    manifest = io.BytesIO(b"{}")
    manifest.name = "r.csv.manifest.json"
    r = client.post("/reports/verify/", {"file": big, "manifest": manifest})
    assert r.status_code == 413
    assert b"larger than 1,000 bytes (WELKIN_VERIFY_MAX_BYTES)" in r.content
    assert not AuditEvent.objects.filter(action="verify").exists()


def test_gate_reasons_name_the_field_and_show_values_inertly():
    with pytest.raises(gate.Rejected) as e:
        gate.check_pod(hostile_pod(0, {"metadata": {"namespace": "a/b\x1b[2J"}}))
    assert str(e.value).startswith("metadata.namespace 'a/b\\x1b[2J': not a DNS-1123 label")


# --- found by an attack review -----------------------------------------------------------


@pytest.mark.parametrize(
    "config, reason",
    [
        ({"config": {"User": "x\x00y"}}, "holds control characters"),
        ({"config": {"User": "u" * 300}}, "longer than 255 characters"),
    ],
)
def test_a_registry_cannot_hand_back_a_user_we_cannot_store(config, reason):
    ref = registry.ImageRef.parse("evil.example/app:1")
    with pytest.raises(registry.RegistryError, match=reason):
        registry._config_user(json.dumps(config).encode(), ref)


@pytest.mark.parametrize("code", [5, "x\x00y" * 100, ["a"], None])
def test_a_registry_error_code_of_any_shape_gives_a_bounded_reason(code):
    ref = registry.ImageRef.parse("evil.example/app:1")
    reason = registry._status_reason(ref, 404, json.dumps({"errors": [{"code": code}]}).encode())
    assert reason.startswith("evil.example: 404 not found") and "\x00" not in reason
    assert len(reason) < 300


def test_server_text_in_a_failure_reason_is_inert():
    reason = kube.ScanError("forbidden: \x00\x1b]0;PWNED\x07" + "x" * 5000).reason
    assert "\x00" not in reason and "\x1b" not in reason and len(reason) <= 2000
    assert "\\x1b]0;PWNED\\x07" in reason
    assert registry.RegistryError("a\x00b").reason == "a\\x00b"


def test_an_image_cache_key_never_outgrows_its_column():
    ref = registry.ImageRef.parse("a" * 1000)
    key = images._cache_key(ref, registry.Platform("linux", "x" * 63))
    assert len(key) <= 1000 and key.startswith("sha256:")


def test_a_huge_uid_in_a_kubelet_message_is_not_believed():
    p = podgen.pod("shop", "web", "img", {"runAsNonRoot": True}, {})
    p["status"] = {
        "containerStatuses": [
            {
                "name": "app",
                "state": {
                    "waiting": {
                        "reason": "CreateContainerConfigError",
                        "message": "container has runAsNonRoot and image has an invalid user id "
                        f"({'9' * 30}). x",
                    }
                },
            }
        ]
    }
    verdict = runas.evaluate_pod(p).containers[0]
    assert verdict.uid is None
    p["status"]["containerStatuses"][0]["state"]["waiting"]["message"] = (
        "container has runAsNonRoot and image has an invalid user id (٣). x"
    )
    assert runas.evaluate_pod(p).containers[0].uid is None  # not ASCII digits: not a uid


@pytest.mark.parametrize(
    "where, value",
    [
        (("spec", "securityContext", "windowsOptions", "runAsUserName"), "a\x00b"),
        (("spec", "securityContext", "windowsOptions", "runAsUserName"), "u" * 1000),
        (("spec", "containers", 0, "image"), "nginx\u202e"),
        (("spec", "containers", 0, "image"), "nginx\x9b2J"),
        (("spec", "nodeSelector", "kubernetes.io/arch"), "a" * 200),
    ],
)
def test_the_gate_bounds_every_string_it_keeps(where, value):
    p = podgen.pod("shop", "web", "nginx", {}, {})
    node = p
    for key in where[:-1]:
        node = node.setdefault(key, {}) if isinstance(key, str) else node[key]
    node[where[-1]] = value
    with pytest.raises(gate.Rejected):
        gate.check_pod(p)


@pytest.mark.django_db
def test_rejection_rules_stay_few_however_many_values_differ(tmp_path):
    pods = []
    for i in range(200):
        p = podgen.pod("shop", f"p{i}", "nginx", {}, {})
        p["spec"]["containers"][0]["securityContext"] = {"runAsUser": 2**63 + i}
        pods.append(p)
    r = scanning.import_snapshot("airgap", snapshot_bytes(pods), "snap.json")
    scan = ScanRun.objects.get(pk=r.scan_id)
    assert scan.rejected == 200
    assert len(scan.rejections["by_reason"]) == 1
    path = tmp_path / "r.pdf"
    store.export_to(reports.point_in_time(FLEET), "pdf", path)  # the coverage table fits


def test_evaluate_keeps_escape_sequences_off_the_terminal(tmp_path):
    f = tmp_path / "esc.json"
    f.write_text(
        json.dumps(
            {"kind": "Pod", "metadata": {"name": "x\x1b]0;PWNED\x07", "namespace": "n"}, "spec": {}}
        )
    )
    r = subprocess.run(
        [sys.executable, str(ROOT / "manage.py"), "evaluate", str(f)],
        capture_output=True,
        text=True,
        env={"PATH": os.environ["PATH"]},
    )
    assert r.returncode == 2
    assert "\x1b" not in r.stderr + r.stdout and "\\x1b]0;PWNED" in r.stderr


RUN_AS_USER_YAML = "kind: Pod\nmetadata: {{name: p}}\nspec:\n  securityContext: {{runAsUser: {}}}\n"


@pytest.mark.parametrize(
    "text, message",
    [
        (RUN_AS_USER_YAML.format("1" * 5000), "a number longer than 100 characters"),
        # Base 60 is YAML 1.1's, not kubectl's: a string at once (no quadratic parse).
        (RUN_AS_USER_YAML.format("1" + ":59" * 50000), "expected an integer, got string"),
    ],
)
def test_evaluate_refuses_numbers_too_long_to_read(tmp_path, text, message):
    f = tmp_path / "n.yaml"
    f.write_text(text)
    r = subprocess.run(
        [sys.executable, str(ROOT / "manage.py"), "evaluate", str(f)],
        capture_output=True,
        text=True,
        env={"PATH": os.environ["PATH"]},
        timeout=60,
    )
    assert r.returncode == 2 and message in r.stderr, r.stderr[-1000:]


def test_evaluate_names_a_bad_setting_without_a_traceback(tmp_path):
    f = tmp_path / "p.yaml"
    f.write_text("kind: Pod\nmetadata: {name: p}\nspec:\n  containers: [{name: a, image: x}]\n")
    r = subprocess.run(
        [sys.executable, str(ROOT / "manage.py"), "evaluate", str(f)],
        capture_output=True,
        text=True,
        env={"PATH": os.environ["PATH"], "DEBUG": "maybe"},
    )
    assert r.returncode == 2 and r.stderr.startswith("error: DEBUG='maybe'")
    assert "Traceback" not in r.stderr


def test_a_kubeconfig_alias_bomb_is_refused():
    bomb = (
        "a0: &a0 [x, x, x, x, x, x, x, x, x, x]\n"
        + "".join(
            f"a{i}: &a{i} [*a{i - 1}, *a{i - 1}, *a{i - 1}, *a{i - 1}, *a{i - 1}, *a{i - 1}, "
            f"*a{i - 1}, *a{i - 1}, *a{i - 1}, *a{i - 1}]\n"
            for i in range(1, 9)
        )
        + "kind: *a8\n"
    )
    with pytest.raises(kubeconfig.KubeconfigError, match="alias bomb"):
        kubeconfig.parse_kubeconfig(bomb)


@pytest.mark.django_db
def test_a_snapshot_time_before_kubernetes_is_refused():
    data = snapshot_bytes([podgen.pod("shop", "a", "x", {}, {})])
    at = dt.datetime(1, 1, 1, tzinfo=dt.UTC)
    with pytest.raises(scanning.SnapshotError, match="a snapshot is from between 2014-06-01"):
        scanning.import_snapshot("airgap", data, "snap.json", at)
    assert not Cluster.objects.exists()


@pytest.mark.django_db
def test_a_snapshot_over_the_size_limit_is_refused(settings):
    settings.WELKIN_SNAPSHOT_MAX_BYTES = 100
    with pytest.raises(scanning.SnapshotError, match="larger than 100 bytes"):
        scanning.import_snapshot(
            "airgap", snapshot_bytes([podgen.pod("shop", "a", "x", {}, {})]), "snap.json"
        )


def test_findings_are_read_only_in_the_admin(stored, admin_client):
    f = stored()
    r = admin_client.post(f"/admin/compliance/finding/{f.pk}/change/", {"namespace": "a/b"})
    assert r.status_code == 403
    f.refresh_from_db()
    assert f.namespace == "shop"


@pytest.mark.django_db
def test_a_registry_ca_that_is_not_ascii_is_a_form_error(admin_client):
    r = admin_client.post(
        "/admin/compliance/registry/add/",
        {"host": "r.example", "username": "", "ca_pem": "ü-not-pem"},
    )
    assert r.status_code == 200 and b"not a usable PEM CA certificate" in r.content


def test_a_derived_deployment_name_must_be_valid():
    owners = workloads.OwnerIndex()
    p = podgen.pod(
        "shop", "a--b-x", "img", {}, {}, owner=podgen.owner_ref("ReplicaSet", "a--b", "shop")
    )
    p["metadata"]["labels"]["pod-template-hash"] = "b"
    assert owners.workload_of(p) == ("ReplicaSet", "a--b")


@pytest.mark.django_db
def test_nul_in_a_token_or_a_cookie_is_a_400(client):
    assert client.get("/api/v1/findings/", HTTP_AUTHORIZATION="Token a\x00b").status_code == 400
    client.cookies["sessionid"] = "a\x00b"
    assert client.get("/").status_code == 400


def test_a_missing_export_file_is_a_404(stored, login_as, settings, tmp_path):
    from compliance.models import Export

    settings.EXPORTS_DIR = tmp_path
    client = login_as("auditor")
    assert client.post("/reports/export/", {"format": "csv"}).status_code == 302
    e = Export.objects.get()
    (tmp_path / f"{e.id}.csv").unlink()
    assert client.get(f"/reports/exports/{e.pk}/").status_code == 404


def test_a_token_realm_must_be_https_for_an_https_registry():
    client = registry.RegistryClient()
    ref = registry.ImageRef.parse("evil.example/app:1")
    cfg = registry.RegistryConfig("evil.example")
    with pytest.raises(registry.RegistryError, match="https:// expected"):
        client._authenticate(
            "evil.example",
            "repository:app:pull",
            cfg,
            'Bearer realm="http://169.254.169.254/latest"',
            ref,
        )


storable = st.text(
    st.characters(blacklist_characters="\x00", blacklist_categories=("Cs",)),
    min_size=1,
    max_size=60,
)


@settings(max_examples=25, deadline=None, suppress_health_check=list(HealthCheck))
@given(
    namespace=st.from_regex(r"\A[a-z0-9]([-a-z0-9]{0,20}[a-z0-9])?\Z"),
    workload=storable,
    container=storable,
    image=storable,
    message=storable,
)
def test_any_stored_string_renders_and_exports_inertly(
    stored, client, namespace, workload, container, image, message
):
    """Whatever reached the database (the gate keeps names valid): pages answer, and every
    CSV cell is inert."""
    Finding.objects.all().delete()
    f = stored(
        namespace=namespace,
        workload_name=workload,
        container=container,
        image=image,
        kubelet_error=message,
        state="blocked",
        image_user="x" + container,
    )
    client.force_login(User.objects.filter(username="officer").first() or make_user("officer"))
    for url in ["/", f"/clusters/prod-1/namespaces/{namespace}/", f"/findings/{f.pk}/"]:
        assert client.get(url).status_code == 200, url
    buf = io.BytesIO()
    writers.write(reports.point_in_time(FLEET), "csv", buf)
    rows = list(csv.reader(io.StringIO(buf.getvalue().decode(), newline="")))
    assert not [c for r in rows[1:] for c in r if c.lstrip(" ").startswith(inert.FORMULA_STARTS)]
