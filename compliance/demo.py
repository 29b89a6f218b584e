"""A realistic demo fleet for a first look (`manage.py load_demo`, `make run`).

Three clusters, namespaces owned by teams, 90 days of daily snapshots imported through the
real scan service (so findings, events, rollups and trends are what scans would make):
prod-eu improves, prod-us regresses in the last weeks, staging is mixed. Among the
workloads are Welkin's two CreateContainerConfigError cases, observed in the pods' status:
`image has non-numeric user (node)` and `image will run as root`.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import random

import orjson
from django.conf import settings
from django.contrib.auth.models import Group, User
from django.db import transaction
from django.utils import timezone

from compliance import demo_images
from compliance.collect import images, scanning
from compliance.identity import access
from compliance.models import (
    Cluster,
    ExceptionEvent,
    ImageUserOverride,
    NamespaceGrant,
    RiskException,
)
from compliance.risk import acceptance, exceptions
from compliance.rules import controls

REGISTRY = "registry.demo.internal"
# image -> its USER (operator-supplied for the demo: the demo registry is not reachable).
IMAGES = {
    f"{REGISTRY}/payments/api:3.4.1": "10001",
    f"{REGISTRY}/payments/worker:3.4.1": "node",
    f"{REGISTRY}/search/indexer:1.12": "",
    f"{REGISTRY}/search/query:1.12": "1000:1000",
    f"{REGISTRY}/web/frontend:8.0": "101",
    f"{REGISTRY}/web/nginx:1.27": "",
    f"{REGISTRY}/data/etl:2.0": "0",
    f"{REGISTRY}/data/postgres:16": "postgres",
    f"{REGISTRY}/platform/exporter:1.8": "65534",
}
UNKNOWN_IMAGE = "quay.io/vendor/agent:5.2"  # no override: stays unverified
NAMESPACES = ["payments", "search", "web", "data", "monitoring"]
WORKLOADS = {  # namespace -> [(kind, name, image, replicas)]
    "payments": [
        ("Deployment", "api", "payments/api:3.4.1", 4),
        ("Deployment", "worker", "payments/worker:3.4.1", 3),
        ("CronJob", "settle", "payments/api:3.4.1", 1),
    ],
    "search": [
        ("Deployment", "query", "search/query:1.12", 6),
        ("StatefulSet", "indexer", "search/indexer:1.12", 3),
    ],
    "web": [
        ("Deployment", "frontend", "web/frontend:8.0", 8),
        ("Deployment", "edge", "web/nginx:1.27", 3),
    ],
    "data": [
        ("StatefulSet", "postgres", "data/postgres:16", 2),
        ("CronJob", "nightly-etl", "data/etl:2.0", 1),
    ],
    "monitoring": [
        ("DaemonSet", "node-exporter", "platform/exporter:1.8", 5),
        ("DaemonSet", "vendor-agent", UNKNOWN_IMAGE, 5),
    ],
}
# A vendor's node agent: privileged, so its fix is the exception path, not a uid.
PRIVILEGED = {"vendor-agent"}
GOOD = ({"runAsNonRoot": True}, {"runAsUser": 10001, "allowPrivilegeEscalation": False})
BAD = [({}, {}), ({"runAsNonRoot": True}, {}), ({}, {"runAsUser": 0})]


def _uid(*parts: object) -> str:
    h = hashlib.sha1("/".join(map(str, parts)).encode()).hexdigest()
    return f"{h[:8]}-{h[8:12]}-{h[12:16]}-{h[16:20]}-{h[20:32]}"


def _image(short: str) -> str:
    return short if "/" in short and "." in short.split("/")[0] else f"{REGISTRY}/{short}"


def _owner(kind: str, name: str, ns: str, api: str = "apps/v1") -> dict:
    return {
        "apiVersion": api,
        "kind": kind,
        "name": name,
        "uid": _uid(ns, kind, name),
        "controller": True,
    }


def _pods(
    cluster: str,
    ns: str,
    kind: str,
    name: str,
    image: str,
    replicas: int,
    fixed: bool,
    bad: tuple[dict, dict],
) -> list[dict]:
    """The objects of one workload on one day: its ReplicaSet/Job and pods."""
    pod_sc, c_sc = GOOD if fixed else bad
    objs, owner = [], None
    labels = {"app.kubernetes.io/name": name}
    if kind == "Deployment":
        rs = f"{name}-{'6d5f' if fixed else '7c9b'}8c"
        objs.append(
            {
                "apiVersion": "apps/v1",
                "kind": "ReplicaSet",
                "metadata": {
                    "name": rs,
                    "namespace": ns,
                    "uid": _uid(cluster, ns, rs),
                    "ownerReferences": [_owner("Deployment", name, ns)],
                },
            }
        )
        owner, base = _owner("ReplicaSet", rs, ns), rs
    elif kind == "CronJob":
        job = f"{name}-29{int(hashlib.sha1(name.encode()).hexdigest()[:8], 16) % 100000:05d}"
        objs.append(
            {
                "apiVersion": "batch/v1",
                "kind": "Job",
                "metadata": {
                    "name": job,
                    "namespace": ns,
                    "uid": _uid(cluster, ns, job),
                    "ownerReferences": [_owner("CronJob", name, ns, "batch/v1")],
                },
            }
        )
        owner, base = _owner("Job", job, ns, "batch/v1"), job
    else:
        owner, base = _owner(kind, name, ns), name
    for i in range(replicas):
        pod_name = f"{base}-{i}" if kind == "StatefulSet" else f"{base}-{_uid(base, i)[:5]}"
        uid = _uid(cluster, ns, pod_name)
        status = {
            "name": "app",
            "image": image,
            "ready": True,
            "imageID": image.rsplit(":", 1)[0]
            + "@sha256:"
            + hashlib.sha256(image.encode()).hexdigest(),
            "state": {"running": {"startedAt": "2026-11-01T00:00:00Z"}},
        }
        user = IMAGES.get(image)
        if not fixed and pod_sc.get("runAsNonRoot") and "runAsUser" not in c_sc:
            # What the kubelet reports for the Welkin page's two cases.
            if user == "node":
                status["state"] = {
                    "waiting": {
                        "reason": "CreateContainerConfigError",
                        "message": (
                            "container has runAsNonRoot and image has non-numeric user (node), "
                            f'cannot verify user is non-root (pod: "{pod_name}_{ns}({uid})", '
                            "container: app)"
                        ),
                    }
                }
            elif user in ("", "0"):
                status["state"] = {
                    "waiting": {
                        "reason": "CreateContainerConfigError",
                        "message": (
                            "container has runAsNonRoot and image will run as root "
                            f'(pod: "{pod_name}_{ns}({uid})", container: app)'
                        ),
                    }
                }
        container = {"name": "app", "image": image}
        if c_sc:
            container["securityContext"] = dict(c_sc)
        if name in PRIVILEGED:
            container["securityContext"] = {**dict(c_sc), "privileged": True}
        objs.append(
            {
                "apiVersion": "v1",
                "kind": "Pod",
                "metadata": {
                    "name": pod_name,
                    "namespace": ns,
                    "uid": uid,
                    "labels": labels,
                    "ownerReferences": [owner],
                },
                "spec": {"securityContext": dict(pod_sc), "containers": [container]},
                "status": {"phase": "Running", "containerStatuses": [status]},
            }
        )
    return objs


# cluster -> function(day index 0..89, workload index) -> fixed?
def _improving(rng: random.Random):
    fix_day = {}
    return lambda day, w: day >= fix_day.setdefault(w, rng.randrange(10, 120))


def _regressing(rng: random.Random):
    fix_day, break_day = {}, {}

    def fixed(day, w):
        if day >= break_day.setdefault(w, rng.choice([70, 76, 82, 200, 200, 200])):
            return False
        return day >= fix_day.setdefault(w, rng.randrange(0, 40))

    return fixed


def _mixed(rng: random.Random):
    flips = {}

    def fixed(day, w):
        points = flips.setdefault(w, sorted(rng.sample(range(90), 3)))
        return sum(day >= p for p in points) % 2 == 1

    return fixed


CLUSTERS = [("prod-eu", _improving), ("prod-us", _regressing), ("staging", _mixed)]
# The Welkin page's two cases, kept open: (cluster, namespace, workload) -> broken from day.
WELKIN_CASES = {
    ("prod-eu", "payments", "worker"): 0,  # USER node
    ("prod-us", "web", "edge"): 60,
}  # no USER (nginx), a regression


def load(password: str, days: int = 90, now: dt.datetime | None = None) -> dict[str, int]:
    """Load the demo fleet, users and grants. Refuses when clusters already exist."""
    if Cluster.objects.exists():
        raise ValueError(
            "there are clusters already: the demo is loaded into an empty database only"
        )
    now = now or timezone.now()
    old_lookups = settings.WELKIN_REGISTRY_LOOKUPS
    settings.WELKIN_REGISTRY_LOOKUPS = False  # the demo registry does not exist
    # ... but its images' layers do, in memory: the fixes read /etc/passwd from them.
    images.LOCAL_IMAGES = demo_images.DemoImages(REGISTRY)
    try:
        with transaction.atomic():
            for image, user in IMAGES.items():
                ImageUserOverride.objects.update_or_create(
                    pattern=image, defaults={"user": user, "note": "demo: operator-supplied"}
                )
            _users(password)
        imports = 0
        for cname, shape in CLUSTERS:
            rng = random.Random(cname)
            is_fixed = shape(rng)
            bad = {}
            for day in range(days):
                at = now - dt.timedelta(days=days - 1 - day, hours=rng.randrange(1, 5))
                items = []
                w = 0
                for ns in NAMESPACES:
                    for kind, name, short, replicas in WORKLOADS[ns]:
                        bad_profile = bad.setdefault(w, BAD[rng.randrange(len(BAD))])
                        fixed = is_fixed(day, w)
                        since = WELKIN_CASES.get((cname, ns, name))
                        if since is not None:
                            # runAsNonRoot only: the kubelet refuses the image's user.
                            bad_profile, fixed = BAD[1], day < since
                        items += _pods(
                            cname, ns, kind, name, _image(short), replicas, fixed, bad_profile
                        )
                        w += 1
                data = orjson.dumps({"apiVersion": "v1", "kind": "List", "items": items})
                scanning.import_snapshot(cname, data, f"demo-{cname}-{day}", at)
                imports += 1
        grants = Cluster.objects.count()
    finally:
        settings.WELKIN_REGISTRY_LOOKUPS = old_lookups
        images.LOCAL_IMAGES = None
    return {"clusters": grants, "snapshots": imports}


def _users(password: str) -> None:
    groups = {r: Group.objects.get_or_create(name=r)[0] for r in access.ROLES}
    for username, role, staff in (
        ("officer", access.OFFICER, True),
        ("auditor", access.AUDITOR, False),
        ("lead", access.LEAD, False),
    ):
        user, _ = User.objects.get_or_create(username=username)
        user.set_password(password)
        user.is_staff = staff
        user.save()
        user.groups.set([groups[role]])
        if role == access.OFFICER:
            from django.contrib.auth.models import Permission

            user.user_permissions.set(
                Permission.objects.filter(content_type__app_label="compliance")
            )
    lead = User.objects.get(username="lead")
    for ns in ("payments", "web"):
        NamespaceGrant.objects.get_or_create(user=lead, cluster=None, namespace=ns)


def add_exceptions(now: dt.datetime | None = None) -> int:
    """Demo risk acceptance: one approved (prod-us web/edge, the nginx image without a
    USER), one waiting for an officer, one that ended. Requested by lead, decided by
    officer (four eyes)."""
    now = now or timezone.now()
    lead, officer = User.objects.get(username="lead"), User.objects.get(username="officer")
    lead_scope, officer_scope = access.scope_for(lead), access.scope_for(officer)
    every = tuple(controls.CONTROLS)

    def ask(cluster, ns, kind, name, reason, ticket, days):
        r = exceptions.Request(
            cluster, ns, kind, name, "", "", every, reason, ticket, now + dt.timedelta(days=days)
        )
        return exceptions.request(lead_scope, lead, r).exception

    edge = ask(
        "prod-us", "web", "Deployment", "edge",
        "The vendor's nginx image has no USER; a rebuild on nginx-unprivileged is planned.",
        "WEB-311", 45,
    )  # fmt: skip
    exceptions.decide(officer_scope, officer, edge.pk, "approve", "Until the rebuild ships.")
    ask(
        "prod-eu", "payments", "CronJob", "settle",
        "The settlement job writes to a host path owned by root; moving it to a PVC.",
        "PAY-88", 30,
    )  # fmt: skip
    # One that ran its course: approved seven weeks ago for 30 days.
    with transaction.atomic():
        start = now - dt.timedelta(days=49)
        ended = RiskException.objects.create(
            cluster=Cluster.objects.get(name="prod-us"),
            namespace="web",
            workload_kind="Deployment",
            workload_name="frontend",
            states="," + ",".join(exceptions.states_for(every)) + ",",
            controls=list(every),
            reason="Migration of the frontend image to a numeric USER.",
            ticket="WEB-207",
            requested_by=lead,
            requested_at=start,
            decision="approved",
            decided_by=officer,
            decided_at=start + dt.timedelta(hours=3),
            approved_at=start + dt.timedelta(hours=3),
            decision_comment="30 days.",
            ends_at=start + dt.timedelta(days=30),
        )
        for at, user, action, comment in (
            (start, lead, "requested", ""),
            (start + dt.timedelta(hours=3), officer, "approved", "30 days."),
        ):
            ExceptionEvent.objects.create(
                exception=ended, cluster=ended.cluster, at=at, user=user,
                username=user.username, action=action, comment=comment,
            )  # fmt: skip
        acceptance.match_exception(ended)
    return RiskException.objects.count()
