"""Shared builders for tests: pod JSON for the evaluator, hypothesis strategies, a
Deployment in the fake API server, a history of snapshots, users in each role, stored
findings, webhook contacts and their receiver, /metrics read back, the production
environment. Fixtures live in conftest.py files; no test file imports another."""

import datetime as dt
import shutil
from pathlib import Path

import orjson
import requests
from django.contrib.auth.models import Group, User
from hypothesis import strategies as st
from prometheus_client.parser import text_string_to_metric_families

from compliance.collect import kube, scanning
from compliance.identity import access
from compliance.models import Contact, Finding, FindingEvent, NamespaceGrant
from compliance.rules import runas
from tests import podgen
from tests.processes import listener

PASSWORD = "test-pass"
# Persona -> role group (None: a user with no role).
ROLES = {
    "officer": access.OFFICER,
    "auditor": access.AUDITOR,
    "lead": access.LEAD,
    "outsider": None,
}
REF = "web_shop(u-1)"

FAST = kube.Policy(
    page_limit=50, connect_timeout=2, read_timeout=2, backoff=0.01, max_retry_after=0.2
)


# --- users --------------------------------------------------------------------------------


def make_user(persona: str, grants=(), username: str | None = None) -> User:
    """A user in a persona's role (password PASSWORD); a lead gets namespace grants."""
    user = User.objects.create_user(username or persona, password=PASSWORD)
    if ROLES[persona]:
        user.groups.add(Group.objects.get_or_create(name=ROLES[persona])[0])
    for ns in grants:
        NamespaceGrant.objects.create(user=user, namespace=ns)
    return user


# --- pods for the evaluator ---------------------------------------------------------------


def pod(
    containers=None, sc=None, init=None, ephemeral=None, os_name=None, status=None, host_users=None
):
    spec = {"containers": containers or [{"name": "app", "image": "img"}]}
    if sc is not None:
        spec["securityContext"] = sc
    if init:
        spec["initContainers"] = init
    if ephemeral:
        spec["ephemeralContainers"] = ephemeral
    if os_name:
        spec["os"] = {"name": os_name}
    if host_users is not None:
        spec["hostUsers"] = host_users
    p = {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": "web", "namespace": "shop", "uid": "u-1"},
        "spec": spec,
    }
    if status is not None:
        p["status"] = status
    return p


def c(name="app", image="img", **sc):
    out = {"name": name, "image": image}
    if sc:
        out["securityContext"] = sc
    return out


def one(p, users=None):
    return runas.evaluate_pod(p, users).containers[0]


# --- pods in the fake API server ----------------------------------------------------------


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


def mixed_fleet(fake) -> None:
    """Deployments in every state across two namespaces, and a bare root pod."""
    deployment(fake, "shop", "web", "nginx", 3, container_sc={"runAsUser": 0})
    deployment(
        fake, "shop", "api", "api", 2, container_sc={"runAsNonRoot": True, "runAsUser": 1000}
    )
    deployment(
        fake,
        "shop",
        "cart",
        "cart",
        2,
        pod_sc={"runAsNonRoot": True},
        container_sc={"runAsUser": 0},
    )
    deployment(fake, "data", "etl", "etl", 4, container_sc={"runAsUser": 1000})
    fake.state.put(podgen.pod("data", "debug", "busybox", {}, {"runAsUser": 0}))


# --- a history of snapshots ---------------------------------------------------------------

T0 = dt.datetime(2026, 11, 1, 10, 0, tzinfo=dt.UTC)
ROOT = {"runAsUser": 0}
NONROOT_ONLY = ({"runAsNonRoot": True}, {"runAsUser": 0})


def snapshot(at, workloads):
    """workloads: {(ns, name): container securityContext}; one bare pod each."""
    items = [podgen.pod(ns, name, "img", {}, sc) for (ns, name), sc in workloads.items()]
    data = orjson.dumps({"apiVersion": "v1", "kind": "List", "items": items})
    r = scanning.import_snapshot("airgap", data, "snap.json", at)
    assert r.status == "succeeded"


def record_history():
    """Three snapshots of cluster airgap, a day apart.

    t0: a root, b root, c compliant; t1: a fixed, b blocked, d root; t2: d gone."""
    snapshot(
        T0,
        {
            ("shop", "a"): ROOT,
            ("shop", "b"): ROOT,
            ("ops", "c"): {"runAsUser": 5, "runAsNonRoot": True},
        },
    )
    snapshot(
        T0 + dt.timedelta(days=1),
        {
            ("shop", "a"): {"runAsUser": 7, "runAsNonRoot": True},
            ("shop", "b"): {"runAsNonRoot": True, "runAsUser": 0},
            ("ops", "c"): {"runAsUser": 5, "runAsNonRoot": True},
            ("ops", "d"): ROOT,
        },
    )
    snapshot(
        T0 + dt.timedelta(days=2),
        {
            ("shop", "b"): {"runAsNonRoot": True, "runAsUser": 0},
            ("ops", "c"): {"runAsUser": 5, "runAsNonRoot": True},
        },
    )


# --- hypothesis strategies ----------------------------------------------------------------

json_values = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(min_value=-(2**70), max_value=2**70)
    | st.floats(allow_nan=False)
    | st.text(max_size=8),
    lambda children: (
        st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=8), children, max_size=4)
    ),
    max_leaves=20,
)
field_values = (
    st.none()
    | st.booleans()
    | st.integers(min_value=-(2**64), max_value=2**64)
    | st.text(max_size=6)
    | st.just({})
    | st.just([])
)
security_contexts = (
    st.fixed_dictionaries(
        {},
        optional={
            "runAsUser": field_values,
            "runAsNonRoot": field_values,
            "runAsGroup": field_values,
            "windowsOptions": st.fixed_dictionaries({}, optional={"runAsUserName": field_values})
            | field_values,
        },
    )
    | field_values
)
containers = st.fixed_dictionaries(
    {"name": st.text(min_size=1, max_size=4) | field_values},
    optional={
        "image": st.sampled_from(["a", "b", "c"]) | field_values,
        "securityContext": security_contexts,
    },
)
pods = st.fixed_dictionaries(
    {
        "metadata": st.fixed_dictionaries(
            {},
            optional={
                "name": st.text(max_size=5) | field_values,
                "namespace": st.text(max_size=5),
                "uid": st.text(max_size=5),
            },
        )
        | field_values,
        "spec": st.fixed_dictionaries(
            {},
            optional={
                "containers": st.lists(containers, max_size=3) | field_values,
                "initContainers": st.lists(containers, max_size=2) | field_values,
                "ephemeralContainers": st.lists(containers, max_size=2),
                "securityContext": security_contexts,
                "os": st.fixed_dictionaries({"name": st.sampled_from(["linux", "windows"])})
                | field_values,
                "hostUsers": field_values,
            },
        )
        | field_values,
        "status": json_values,
    }
)


# --- metrics, the production environment ----------------------------------------------

TOKEN = "a-metrics-token-for-tests-0123456789"
# The production settings docs/operating.md documents ("Running at scale"), with test values.
PRODUCTION_ENV = {
    "DEBUG": "false",
    "SECRET_KEY": "k" + "0123456789abcdefghijklmnopqrstuvwxyz-ABCDEFGHIJKLMNOP",
    "WELKIN_SIGNING_KEY": "A" * 43 + "=",
    "WELKIN_FERNET_KEYS": "B" * 43 + "=",
    "DATABASE_URL": "postgres://welkin@127.0.0.1:5432/welkin",
    "CELERY_BROKER_URL": "redis://127.0.0.1:6379/0",
    "ALLOWED_HOSTS": "welkin-dash.example.com",
    "CSRF_TRUSTED_ORIGINS": "https://welkin-dash.example.com",
    "SECURE_PROXY_SSL_HEADER": "X-Forwarded-Proto",
    "WELKIN_METRICS_TOKEN": TOKEN,
}


def scrape(client, **headers) -> dict:
    """{name: {frozenset(labels.items()): value}} from /metrics."""
    r = client.get("/metrics", HTTP_AUTHORIZATION=f"Bearer {TOKEN}", **headers)
    assert r.status_code == 200, r.content
    assert r["Content-Type"].startswith("text/plain")
    out: dict = {}
    for family in text_string_to_metric_families(r.content.decode()):
        for s in family.samples:
            out.setdefault(s.name, {})[frozenset(s.labels.items())] = s.value
    return out


def value(metrics, name, **labels):
    return metrics.get(name, {}).get(frozenset(labels.items()))


# --- stored findings, hostile cells ----------------------------------------------------

FORMULAS = [
    '=HYPERLINK("http://evil.example","x")',
    "@SUM(1+1)",
    "+1+1",
    "-2+3",
    "\tx",
    "\rx",
    " =1+1",
]


def stored_finding(cluster, scan, at, **fields):
    values = {
        "namespace": "shop",
        "workload_kind": "Deployment",
        "workload_name": "web",
        "container": "app",
        "container_type": "app",
        "image": "nginx",
        "state": "root",
        "evidence": "predicted",
        "first_seen": at,
        "last_changed": at,
        **fields,
    }
    f = Finding.objects.create(cluster=cluster, **values)
    FindingEvent.objects.create(finding=f, scan=scan, kind="opened", to_state=f.state, at=at)
    return f


# --- notifications ------------------------------------------------------------------

SECRET = "webhook-secret-for-tests"


def hook(receiver, fmt="json", namespace="*", name="hook") -> Contact:
    c = Contact(
        name=name,
        channel="webhook",
        url=receiver.url + "/" + name,
        webhook_format=fmt,
        namespace=namespace,
    )
    c.set_secret(SECRET)
    c.full_clean()
    c.save()
    return c


def fleet_snapshot(at, shop_roots=30, extra=None):
    """A snapshot of `shop_roots` root workloads in shop, and a root, a compliant and a
    dev root elsewhere (the notification tests' fleet)."""
    ok = {"runAsUser": 5, "runAsNonRoot": True}
    workloads = {("shop", f"w{i}"): ROOT for i in range(shop_roots)}
    workloads |= {("ops", "db"): ROOT, ("ops", "fine"): ok, ("dev", "x"): ROOT}
    workloads |= extra or {}
    snapshot(at, workloads)


class Receiver:
    """The webhook receiver (tests/webhook_receiver.py) in its own process, and what it got."""

    def __init__(self):
        self.p, self.url = listener("tests.webhook_receiver", SECRET)

    def set(self, answer="ok", delay=0.0, clear=False):
        requests.post(
            self.url + "/control",
            json={"answer": answer, "delay": delay, "clear": clear},
            timeout=5,
        ).raise_for_status()

    def received(self) -> list[dict]:
        return requests.get(self.url + "/received", timeout=5).json()

    def stop(self):
        self.p.terminate()
        self.p.wait(10)


# --- the browser ---------------------------------------------------------------------

CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
SHOTS = Path(__file__).resolve().parent.parent / "var" / "screenshots"
