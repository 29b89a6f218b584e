"""deploy/: every overlay renders with `kubectl kustomize`, every pod template passes our
own guardrail (`manage.py evaluate`, all containers compliant) and Pod Security
"restricted", the objects validate against the Kubernetes OpenAPI schemas
(kubernetes-validate, strict), the alert rules load and behave in promtool, and every
metric the rules and the Grafana dashboard use is one /metrics serves."""

import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from compliance.evidence import store
from tests.processes import render

ROOT = Path(__file__).resolve().parent.parent
DEPLOY = ROOT / "deploy"
OVERLAYS = ("external", "trial")
WELKIN_IMAGE = "registry.example.com/welkin-dash:0.1.0"
# The images' own USER, as their Dockerfiles set it: ours is 10001; the official postgres
# and redis images set none (they start as root), so runAsUser 999 must decide.
IMAGE_USERS = {WELKIN_IMAGE: "10001", "postgres:17-bookworm": "", "redis:7.4-bookworm": ""}
WORKLOAD_KINDS = {"Pod", "Deployment", "StatefulSet", "DaemonSet", "ReplicaSet", "Job", "CronJob"}
APP = ("web", "worker", "beat", "migrate")


@pytest.fixture(scope="module", params=OVERLAYS)
def overlay(request):
    text = render(request.param)
    return request.param, text, [d for d in yaml.safe_load_all(text) if d]


def by_kind(docs, kind):
    return [d for d in docs if d["kind"] == kind]


def one(docs, kind, name):
    [d] = [d for d in docs if d["kind"] == kind and d["metadata"]["name"] == name]
    return d


def pod_spec(doc):
    spec = doc["spec"]
    if doc["kind"] == "CronJob":
        spec = spec["jobTemplate"]["spec"]
    return spec["template"]["spec"] if doc["kind"] != "Pod" else spec


def evaluate(text: str, *extra: str) -> subprocess.CompletedProcess:
    """`manage.py evaluate -` as CI runs it: an empty environment, no settings."""
    args = [sys.executable, "manage.py", "evaluate", "--format", "json", *extra]
    for image, user in IMAGE_USERS.items():
        args += ["--image-user", f"{image}={user}"]
    return subprocess.run(
        [*args, "-"],
        input=text,
        cwd=ROOT,
        env={"PATH": os.environ.get("PATH", "/usr/bin:/bin")},
        capture_output=True,
        text=True,
        timeout=120,
    )


def test_every_pod_template_passes_our_guardrail_and_psa_restricted(overlay):
    name, _, docs = overlay
    workloads = [d for d in docs if d["kind"] in WORKLOAD_KINDS]
    # Only the workload documents: the check is about pod templates.
    p = evaluate(yaml.safe_dump_all(workloads), "--fail-on", "unenforced,root,blocked,unverified")
    assert p.returncode == 0, p.stdout + p.stderr
    report = json.loads(p.stdout)
    assert report["errors"] == []
    seen = {(o["kind"], o["name"]) for o in report["objects"]}
    assert seen == {(d["kind"], d["metadata"]["name"]) for d in workloads}
    for o in report["objects"]:
        assert o["psa_restricted"] == {"allowed": True, "violations": []}, o["name"]
        for c in o["containers"]:
            assert c["state"] == "compliant", (o["name"], c["name"], c["state"])
    containers = sum(len(o["containers"]) for o in report["objects"])
    assert report["summary"]["compliant"] == containers
    # web, the worker's two (scans; exports and notifications), beat, migrate, and the
    # migration waits (web, worker); the trial adds PostgreSQL and Redis.
    assert containers == {"external": 7, "trial": 9}[name]


def test_the_whole_rendered_output_pipes_through_evaluate(overlay):
    """As docs/operating.md shows it: `kubectl kustomize ... | manage.py evaluate -`, exit 0."""
    _, text, docs = overlay
    p = evaluate(text, "--fail-on", "unenforced,root,blocked,unverified")
    assert p.returncode == 0, p.stdout + p.stderr
    assert len(json.loads(p.stdout)["objects"]) == len(
        [d for d in docs if d["kind"] in WORKLOAD_KINDS]
    )


def test_our_image_without_its_numeric_user_would_be_caught():
    """The check has teeth: were the image's USER a name (or unknown), the web pod would
    not pass."""
    text = render("external")
    args = [sys.executable, "manage.py", "evaluate", "--format", "json"]
    p = subprocess.run(
        [*args, "--image-user", f"{WELKIN_IMAGE}=welkin", "-"],
        input=text.replace("runAsUser: 10001", "runAsUser: null"),
        cwd=ROOT,
        env={"PATH": os.environ.get("PATH", "/usr/bin:/bin")},
        capture_output=True,
        text=True,
        timeout=120,
    )
    states = {c["state"] for o in json.loads(p.stdout)["objects"] for c in o["containers"]}
    assert states == {"blocked"}
    assert p.returncode == 1


def test_every_pod_is_locked_down(overlay):
    _, _, docs = overlay
    for doc in docs:
        if doc["kind"] not in WORKLOAD_KINDS:
            continue
        spec = pod_spec(doc)
        psc = spec["securityContext"]
        assert psc["runAsNonRoot"] is True and psc["runAsUser"] > 0
        assert psc["seccompProfile"] == {"type": "RuntimeDefault"}
        assert spec.get("hostNetwork") is not True and spec.get("hostPID") is not True
        for c in spec.get("initContainers", []) + spec["containers"]:
            sc = c["securityContext"]
            where = f"{doc['metadata']['name']}/{c['name']}"
            assert sc["allowPrivilegeEscalation"] is False, where
            assert sc["readOnlyRootFilesystem"] is True, where
            assert sc["capabilities"] == {"drop": ["ALL"]}, where
            assert "privileged" not in sc, where
            r = c["resources"]
            assert set(r["requests"]) == set(r["limits"]) == {"cpu", "memory"}, where
            # /tmp is writable (an emptyDir) wherever a process may write.
            mounts = {m["mountPath"] for m in c.get("volumeMounts", [])}
            if doc["metadata"]["name"].startswith("welkin-dash-") and "postgres" not in where:
                assert "/tmp" in mounts or "redis" in where, where
        # Only the worker mounts a service account token (in-cluster scanning).
        automount = spec.get("automountServiceAccountToken")
        is_worker = doc["metadata"]["name"] == "welkin-dash-worker"
        assert automount is is_worker, doc["metadata"]["name"]


def test_the_namespace_enforces_psa_restricted(overlay):
    _, _, docs = overlay
    [ns] = by_kind(docs, "Namespace")
    labels = ns["metadata"]["labels"]
    for mode in ("enforce", "audit", "warn"):
        assert labels[f"pod-security.kubernetes.io/{mode}"] == "restricted"
    assert {d["metadata"].get("namespace") for d in docs if d["kind"] in WORKLOAD_KINDS} == {
        "welkin-dash"
    }


def test_the_processes_probes_and_single_beat(overlay):
    name, _, docs = overlay
    web = one(docs, "Deployment", "welkin-dash-web")
    [c] = web["spec"]["template"]["spec"]["containers"]
    assert c["command"][:3] == ["gunicorn", "-c", "python:welkin_dash.gunicorn"]
    assert c["readinessProbe"]["httpGet"]["path"] == "/readyz"
    assert c["livenessProbe"]["httpGet"]["path"] == "/healthz"
    assert web["spec"]["replicas"] == {"external": 2, "trial": 1}[name]
    config = one(docs, "ConfigMap", by_kind(docs, "ConfigMap")[0]["metadata"]["name"])
    assert int(config["data"]["GUNICORN_TIMEOUT"]) > 0  # a request timeout

    pdb = one(docs, "PodDisruptionBudget", "welkin-dash-web")
    assert pdb["spec"]["selector"]["matchLabels"] == web["spec"]["selector"]["matchLabels"]

    beat = one(docs, "Deployment", "welkin-dash-beat")
    assert beat["spec"]["replicas"] == 1 and beat["spec"]["strategy"]["type"] == "Recreate"
    for d in (beat, one(docs, "Deployment", "welkin-dash-worker")):
        probe = d["spec"]["template"]["spec"]["containers"][0]["livenessProbe"]["exec"]
        assert probe["command"][:2] == ["python", "/app/welkin_dash/alive.py"]
    job = one(docs, "Job", "welkin-dash-migrate")
    assert job["spec"]["template"]["spec"]["containers"][0]["command"][-2:] == [
        "migrate",
        "--noinput",
    ]
    # Secrets are referred to, never committed.
    assert by_kind(docs, "Secret") == []
    refs = {
        e["secretRef"]["name"]
        for d in docs
        if d["kind"] in WORKLOAD_KINDS
        for c in pod_spec(d)["containers"]
        for e in c.get("envFrom", [])
        if "secretRef" in e
    }
    assert refs == {"welkin-dash"}


def test_the_scanner_may_only_list_pods_replicasets_and_jobs(overlay):
    _, _, docs = overlay
    [role] = by_kind(docs, "ClusterRole")
    rules = sorted((r["apiGroups"], r["resources"], r["verbs"]) for r in role["rules"])
    assert rules == [
        ([""], ["pods"], ["list"]),
        (["apps"], ["replicasets"], ["list"]),
        (["batch"], ["jobs"], ["list"]),
    ]
    [binding] = by_kind(docs, "ClusterRoleBinding")
    assert binding["roleRef"]["name"] == role["metadata"]["name"]
    assert binding["subjects"] == [
        {"kind": "ServiceAccount", "name": "welkin-dash-worker", "namespace": "welkin-dash"}
    ]
    assert by_kind(docs, "Role") == by_kind(docs, "RoleBinding") == []
    worker = one(docs, "Deployment", "welkin-dash-worker")
    assert worker["spec"]["template"]["spec"]["serviceAccountName"] == "welkin-dash-worker"


def selects(policy, labels):
    sel = policy["spec"]["podSelector"]
    if any(labels.get(k) != v for k, v in sel.get("matchLabels", {}).items()):
        return False
    for e in sel.get("matchExpressions", []):
        assert e["operator"] == "In"
        if labels.get(e["key"]) not in e["values"]:
            return False
    return True


def test_network_policies(overlay):
    name, _, docs = overlay
    policies = by_kind(docs, "NetworkPolicy")
    deny = one(docs, "NetworkPolicy", "default-deny")
    assert deny["spec"] == {"podSelector": {}, "policyTypes": ["Ingress", "Egress"]}
    pods = {
        d["metadata"]["name"]: d["spec"]["template"]["metadata"]["labels"]
        for d in docs
        if d["kind"] in WORKLOAD_KINDS
    }

    def ingress(pod):
        return [
            rule
            for p in policies
            if "Ingress" in p["spec"]["policyTypes"] and selects(p, pods[pod])
            for rule in p["spec"].get("ingress", [])
        ]

    # Worker, beat and the migrate Job take no connection at all.
    for pod in ("welkin-dash-worker", "welkin-dash-beat", "welkin-dash-migrate"):
        assert ingress(pod) == [], pod
    # The web pods: from the ingress controller only (and Prometheus with monitoring).
    sources = [src for rule in ingress("welkin-dash-web") for src in rule["from"]]
    names = sorted(
        s["namespaceSelector"]["matchLabels"]["kubernetes.io/metadata.name"] for s in sources
    )
    assert names == (["ingress-nginx", "monitoring"] if name == "external" else ["ingress-nginx"])
    for rule in ingress("welkin-dash-web"):
        assert rule["ports"] == [{"protocol": "TCP", "port": 8000}]

    def egress_ports(pod):
        return {
            port["port"]
            for p in policies
            if "Egress" in p["spec"]["policyTypes"] and selects(p, pods[pod])
            for rule in p["spec"].get("egress", [])
            for port in rule.get("ports", [])
        }

    assert {5432, 6379, 53} <= egress_ports("welkin-dash-web")
    assert {5432, 6379, 53, 443, 6443} <= egress_ports("welkin-dash-worker")
    assert 443 not in egress_ports("welkin-dash-web")  # only the worker reaches out
    assert 443 not in egress_ports("welkin-dash-beat")
    if name == "trial":
        assert ingress("welkin-dash-postgres")[0]["ports"] == [{"protocol": "TCP", "port": 5432}]
        assert egress_ports("welkin-dash-postgres") == {53}


def test_the_rendered_objects_validate_against_the_kubernetes_schemas(overlay, tmp_path):
    """kubernetes-validate (OpenAPI schemas of Kubernetes 1.30 and 1.37, strict: unknown
    fields are errors). The Prometheus Operator's kinds have no schema there."""
    import kubernetes_validate

    _, _, docs = overlay
    crds = {"ServiceMonitor", "PrometheusRule"}
    for version in ("1.30.0", "1.37.0"):
        for d in docs:
            if d["kind"] in crds:
                continue
            kubernetes_validate.validate(d, version, strict=True)
    # ... and it does catch a mistake.
    web = json.loads(json.dumps(one(docs, "Deployment", "welkin-dash-web")))
    web["spec"]["template"]["spec"]["containers"][0]["securityContext"]["runAsNonroot"] = True
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(web, "1.37.0", strict=True)


# --- monitoring -------------------------------------------------------------------------


def monitoring_docs():
    return [d for d in yaml.safe_load_all(render("external")) if d]


def promtool() -> str:
    found = shutil.which("promtool")
    assert found, "promtool is needed (scripts/services.sh installs it)"
    return found


def test_the_alert_rules_load_and_fire_as_their_unit_tests_say(tmp_path):
    [rule] = by_kind(monitoring_docs(), "PrometheusRule")
    rules = tmp_path / "welkin-dash.rules.yaml"
    rules.write_text(yaml.safe_dump({"groups": rule["spec"]["groups"]}, sort_keys=False))
    p = subprocess.run([promtool(), "check", "rules", str(rules)], capture_output=True, text=True)
    assert p.returncode == 0, p.stdout + p.stderr
    assert "SUCCESS: 6 rules found" in p.stdout
    shutil.copy(DEPLOY / "components" / "monitoring" / "rules.test.yaml", tmp_path)
    p = subprocess.run(
        [promtool(), "test", "rules", "rules.test.yaml"],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert p.returncode == 0, p.stdout + p.stderr
    assert "SUCCESS" in p.stdout


def test_the_service_monitor_scrapes_the_web_service_with_the_token():
    docs = monitoring_docs()
    [sm] = by_kind(docs, "ServiceMonitor")
    service = one(docs, "Service", "welkin-dash-web")
    assert sm["spec"]["selector"]["matchLabels"].items() <= service["metadata"]["labels"].items()
    [endpoint] = sm["spec"]["endpoints"]
    assert endpoint["port"] == service["spec"]["ports"][0]["name"]
    assert endpoint["path"] == "/metrics"
    assert endpoint["authorization"]["credentials"] == {
        "name": "welkin-dash-metrics",
        "key": "token",
    }
    web = one(docs, "Deployment", "welkin-dash-web")
    env = {e["name"]: e for e in web["spec"]["template"]["spec"]["containers"][0]["env"]}
    assert env["WELKIN_METRICS_TOKEN"]["valueFrom"]["secretKeyRef"] == {
        "name": "welkin-dash-metrics",
        "key": "token",
    }
    [dashboard] = [
        d
        for d in by_kind(docs, "ConfigMap")
        if "grafana_dashboard" in d["metadata"].get("labels", {})
    ]
    json.loads(dashboard["data"]["welkin-dash.json"])


def metric_names(expr: str) -> set[str]:
    names = set(re.findall(r"\b(welkin_[a-z0-9_]+)", expr))
    # a histogram's series
    return {
        re.sub(r"_(bucket|count|sum)$", "", n) if n.startswith("welkin_export_duration") else n
        for n in names
    }


@pytest.mark.django_db
def test_every_metric_the_rules_and_dashboard_use_is_served(
    client, settings, cluster, fake_kube, tmp_path
):
    from compliance.collect import scanning
    from compliance.evidence import reports
    from compliance.identity.access import OFFICER, Scope
    from tests.builders import FAST, deployment

    docs = monitoring_docs()
    [rule] = by_kind(docs, "PrometheusRule")
    used = set()
    for group in rule["spec"]["groups"]:
        for r in group["rules"]:
            used |= metric_names(r["expr"])
    [dashboard] = [
        d
        for d in by_kind(docs, "ConfigMap")
        if "grafana_dashboard" in d["metadata"].get("labels", {})
    ]
    dash = json.loads(dashboard["data"]["welkin-dash.json"])
    for panel in dash["panels"]:
        for target in panel["targets"]:
            used |= metric_names(target["expr"])
    for var in dash["templating"]["list"]:
        used |= metric_names(str(var.get("query", "")))
    assert len(used) >= 15

    # What a real deployment serves after a scan and an export.
    settings.WELKIN_METRICS_ALLOWED_NETWORKS = []
    settings.WELKIN_METRICS_TOKEN = "t" * 32
    settings.CELERY_TASK_ALWAYS_EAGER = False
    deployment(fake_kube, "shop", "web", "nginx", 2, container_sc={"runAsUser": 0})
    assert scanning.scan_cluster(cluster.pk, policy=FAST).status == "succeeded"
    report = reports.point_in_time(Scope(None, OFFICER))
    store.export_to(report, "csv", tmp_path / "r.csv")
    r = client.get("/metrics", HTTP_AUTHORIZATION="Bearer " + "t" * 32)
    assert r.status_code == 200
    from prometheus_client.parser import text_string_to_metric_families

    served = {f.name for f in text_string_to_metric_families(r.content.decode())}
    # The text format names a counter's family without _total.
    served |= {n + "_total" for n in served}
    assert used - served == set()


def test_docker_compose_runs_the_image_locked_down_and_local():
    compose = yaml.safe_load((ROOT / "docker-compose.yml").read_text())
    services = compose["services"]
    assert set(services) == {"postgres", "redis", "migrate", "web", "worker", "beat"}
    for name in ("migrate", "web", "worker", "beat"):
        s = services[name]
        assert s["user"] == "10001:10001" and s["read_only"] is True, name
        assert s["cap_drop"] == ["ALL"] and s["security_opt"] == ["no-new-privileges:true"]
        assert s["environment"]["DEBUG"] == "0"
        if name != "migrate":
            assert s["depends_on"]["migrate"] == {"condition": "service_completed_successfully"}
            assert s["restart"] == "unless-stopped" and "healthcheck" in s, name
    assert services["web"]["ports"] == ["127.0.0.1:8000:8000"]  # this machine only
    assert "--pidfile=/tmp/celerybeat.pid" in services["beat"]["command"]
    assert "--scheduler=welkin_dash.celery:HeartbeatScheduler" in services["beat"]["command"]
