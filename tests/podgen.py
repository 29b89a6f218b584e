"""Realistic pod JSON, as the API server returns it, for tests and benchmarks.

A generated pod is about 5 KB of JSON like a real one: labels, annotations, owner
references, env, probes, volumes, resources, a full status. `fleet()` builds workloads
(Deployments with ReplicaSets, CronJobs with Jobs, StatefulSets, DaemonSets, bare pods)
with mixed runAs states.
"""

from __future__ import annotations

import hashlib
import random
from collections.abc import Iterator

# image -> the image config's User; the mix of states a fleet shows.
IMAGES = {
    "docker.io/library/node:22": "node",  # blocked when runAsNonRoot is set
    "docker.io/library/nginx:1.27": "",  # no USER: root
    "registry.example.com/shop/api:2.4.1": "1000:1000",
    "registry.example.com/shop/web:1.9.0": "101",
    "docker.io/library/redis:7.4": "",
    "ghcr.io/acme/worker:3.1": "65532",
    "quay.io/prometheus/node-exporter:v1.8.2": "nobody",
    "registry.example.com/data/etl:0.9": "0",
}
# (pod securityContext, container securityContext) profiles.
PROFILES = [
    ({"runAsNonRoot": True}, {}),
    ({"runAsNonRoot": True, "runAsUser": 1000, "fsGroup": 2000}, {}),
    ({}, {"allowPrivilegeEscalation": False}),
    ({"runAsNonRoot": True}, {"runAsUser": 0}),
    ({}, {"runAsNonRoot": True, "readOnlyRootFilesystem": True}),
    ({"seccompProfile": {"type": "RuntimeDefault"}}, {"runAsUser": 0}),
]


def uid_for(*parts: object) -> str:
    h = hashlib.sha1("/".join(map(str, parts)).encode()).hexdigest()
    return f"{h[:8]}-{h[8:12]}-{h[12:16]}-{h[16:20]}-{h[20:32]}"


def pod(
    namespace: str,
    name: str,
    image: str,
    pod_sc: dict,
    container_sc: dict,
    owner: dict | None = None,
    labels: dict | None = None,
    node: str = "node-1",
    extra_containers: list | None = None,
) -> dict:
    """One pod with a full, realistic body."""
    labels = labels or {"app.kubernetes.io/name": name.rsplit("-", 2)[0]}
    container = {
        "name": "app",
        "image": image,
        "imagePullPolicy": "IfNotPresent",
        "ports": [{"name": "http", "containerPort": 8080, "protocol": "TCP"}],
        "env": [{"name": f"SETTING_{i}", "value": f"value-{i}-" + "x" * 24} for i in range(12)]
        + [
            {
                "name": "POD_NAME",
                "valueFrom": {"fieldRef": {"apiVersion": "v1", "fieldPath": "metadata.name"}},
            }
        ],
        "resources": {
            "limits": {"cpu": "500m", "memory": "256Mi"},
            "requests": {"cpu": "100m", "memory": "128Mi"},
        },
        "livenessProbe": {
            "httpGet": {"path": "/healthz", "port": 8080, "scheme": "HTTP"},
            "initialDelaySeconds": 10,
            "periodSeconds": 10,
            "timeoutSeconds": 1,
            "successThreshold": 1,
            "failureThreshold": 3,
        },
        "readinessProbe": {
            "httpGet": {"path": "/ready", "port": 8080, "scheme": "HTTP"},
            "periodSeconds": 5,
            "timeoutSeconds": 1,
            "successThreshold": 1,
            "failureThreshold": 3,
        },
        "volumeMounts": [
            {"name": "config", "mountPath": "/etc/app"},
            {
                "name": "kube-api-access",
                "readOnly": True,
                "mountPath": "/var/run/secrets/kubernetes.io/serviceaccount",
            },
        ],
        "terminationMessagePath": "/dev/termination-log",
        "terminationMessagePolicy": "File",
    }
    if container_sc:
        container["securityContext"] = dict(container_sc)
    uid = uid_for(namespace, name)
    meta = {
        "name": name,
        "namespace": namespace,
        "uid": uid,
        "resourceVersion": str(int(uid[:6], 16)),
        "creationTimestamp": "2026-11-20T08:15:42Z",
        "labels": {**labels, "pod-template-hash": "7d9f8c6b5"},
        "annotations": {
            "kubectl.kubernetes.io/restartedAt": "2026-11-20T08:15:00Z",
            "prometheus.io/scrape": "true",
            "prometheus.io/port": "9090",
        },
    }
    if owner:
        meta["ownerReferences"] = [{**owner, "controller": True, "blockOwnerDeletion": True}]
    spec = {
        "volumes": [
            {"name": "config", "configMap": {"name": "app-config", "defaultMode": 420}},
            {
                "name": "kube-api-access",
                "projected": {
                    "defaultMode": 420,
                    "sources": [
                        {"serviceAccountToken": {"expirationSeconds": 3607, "path": "token"}},
                        {
                            "configMap": {
                                "name": "kube-root-ca.crt",
                                "items": [{"key": "ca.crt", "path": "ca.crt"}],
                            }
                        },
                        {
                            "downwardAPI": {
                                "items": [
                                    {
                                        "path": "namespace",
                                        "fieldRef": {
                                            "apiVersion": "v1",
                                            "fieldPath": "metadata.namespace",
                                        },
                                    }
                                ]
                            }
                        },
                    ],
                },
            },
        ],
        "containers": [container, *(extra_containers or [])],
        "restartPolicy": "Always",
        "terminationGracePeriodSeconds": 30,
        "dnsPolicy": "ClusterFirst",
        "serviceAccountName": "default",
        "serviceAccount": "default",
        "nodeName": node,
        "securityContext": dict(pod_sc),
        "schedulerName": "default-scheduler",
        "tolerations": [
            {
                "key": "node.kubernetes.io/not-ready",
                "operator": "Exists",
                "effect": "NoExecute",
                "tolerationSeconds": 300,
            },
            {
                "key": "node.kubernetes.io/unreachable",
                "operator": "Exists",
                "effect": "NoExecute",
                "tolerationSeconds": 300,
            },
        ],
        "priority": 0,
        "enableServiceLinks": True,
        "preemptionPolicy": "PreemptLowerPriority",
    }
    status = {
        "phase": "Running",
        "conditions": [
            {
                "type": t,
                "status": "True",
                "lastProbeTime": None,
                "lastTransitionTime": "2026-11-20T08:15:50Z",
            }
            for t in (
                "PodReadyToStartContainers",
                "Initialized",
                "Ready",
                "ContainersReady",
                "PodScheduled",
            )
        ],
        "hostIP": "10.0.3.17",
        "hostIPs": [{"ip": "10.0.3.17"}],
        "podIP": "10.244.2.31",
        "podIPs": [{"ip": "10.244.2.31"}],
        "startTime": "2026-11-20T08:15:42Z",
        "containerStatuses": [
            {
                "name": "app",
                "ready": True,
                "restartCount": 0,
                "started": True,
                "state": {"running": {"startedAt": "2026-11-20T08:15:48Z"}},
                "lastState": {},
                "image": image,
                "imageID": _repository(image)
                + "@sha256:"
                + hashlib.sha256(image.encode()).hexdigest(),
                "containerID": "containerd://" + hashlib.sha256(uid.encode()).hexdigest(),
            }
        ],
        "qosClass": "Burstable",
    }
    return {"apiVersion": "v1", "kind": "Pod", "metadata": meta, "spec": spec, "status": status}


def _repository(image: str) -> str:
    """The image reference without its tag (a registry host may carry a port)."""
    head, _, last = image.rpartition("/")
    return (head + "/" if head else "") + last.split(":", 1)[0]


def owner_ref(kind: str, name: str, namespace: str, api_version: str = "apps/v1") -> dict:
    return {
        "apiVersion": api_version,
        "kind": kind,
        "name": name,
        "uid": uid_for(namespace, kind, name),
    }


def _template(labels: dict, image: str) -> dict:
    return {
        "metadata": {"labels": labels},
        "spec": {"containers": [{"name": "app", "image": image}]},
    }


def replicaset(
    namespace: str,
    name: str,
    deployment: str,
    replicas: int,
    image: str = "img",
    hash_: str = "7d9f8c6b5",
) -> dict:
    """A ReplicaSet owned by a Deployment, complete enough for the typed models."""
    labels = {"app.kubernetes.io/name": deployment, "pod-template-hash": hash_}
    return {
        "apiVersion": "apps/v1",
        "kind": "ReplicaSet",
        "metadata": {
            "name": name,
            "namespace": namespace,
            "uid": uid_for(namespace, "ReplicaSet", name),
            "labels": labels,
            "ownerReferences": [
                {
                    **owner_ref("Deployment", deployment, namespace),
                    "controller": True,
                    "blockOwnerDeletion": True,
                }
            ],
        },
        "spec": {
            "replicas": replicas,
            "selector": {"matchLabels": labels},
            "template": _template(labels, image),
        },
        "status": {"replicas": replicas, "readyReplicas": replicas},
    }


def job(
    namespace: str, name: str, cronjob: str | None, parallelism: int = 1, image: str = "img"
) -> dict:
    """A Job, owned by a CronJob when cronjob is given."""
    labels = {"batch.kubernetes.io/job-name": name}
    meta = {
        "name": name,
        "namespace": namespace,
        "uid": uid_for(namespace, "Job", name),
        "labels": labels,
    }
    if cronjob:
        meta["ownerReferences"] = [
            {
                **owner_ref("CronJob", cronjob, namespace, "batch/v1"),
                "controller": True,
                "blockOwnerDeletion": True,
            }
        ]
    tmpl = _template(labels, image)
    tmpl["spec"]["restartPolicy"] = "Never"
    return {
        "apiVersion": "batch/v1",
        "kind": "Job",
        "metadata": meta,
        "spec": {
            "parallelism": parallelism,
            "completions": parallelism,
            "backoffLimit": 6,
            "selector": {"matchLabels": labels},
            "template": tmpl,
        },
        "status": {"active": parallelism},
    }


def fleet(
    total_pods: int, namespaces: int = 20, replicas: int = 10, seed: int = 7
) -> Iterator[tuple[str, dict]]:
    """(kind, object) for a synthetic cluster: pods with their ReplicaSets and Jobs.

    Deterministic for a seed. Workloads have `replicas` pods each, so findings are about
    total_pods / replicas; states are mixed through the images and profiles above.
    """
    rng = random.Random(seed)
    images = list(IMAGES)
    made = 0
    w = 0
    while made < total_pods:
        ns = f"team-{w % namespaces:02d}"
        image = images[rng.randrange(len(images))]
        pod_sc, c_sc = PROFILES[rng.randrange(len(PROFILES))]
        shape = w % 10
        count = min(replicas, total_pods - made)
        if shape < 6:  # Deployment -> ReplicaSet -> Pod
            deploy = f"svc-{w}"
            rs = f"{deploy}-7d9f8c6b5"
            yield "ReplicaSet", replicaset(ns, rs, deploy, count, image)
            owner = owner_ref("ReplicaSet", rs, ns)
            base = rs
        elif shape == 6:  # CronJob -> Job -> Pod
            cron = f"cron-{w}"
            job_name = f"{cron}-29123456"
            yield "Job", job(ns, job_name, cron, count, image)
            owner = owner_ref("Job", job_name, ns, "batch/v1")
            base = job_name
        elif shape == 7:
            base = f"db-{w}"
            owner = owner_ref("StatefulSet", base, ns)
        elif shape == 8:
            base = f"agent-{w}"
            owner = owner_ref("DaemonSet", base, ns)
        else:
            base, owner, count = f"debug-{w}", None, 1
        for i in range(count):
            name = f"{base}-{i}" if owner is None or shape == 7 else f"{base}-{uid_for(w, i)[:5]}"
            if owner is None:
                name = base
            yield (
                "Pod",
                pod(ns, name, image, pod_sc, c_sc, owner=owner, node=f"node-{(made + i) % 50}"),
            )
        made += count
        w += 1


def alias_bomb(containers: int = 1000, refs: int = 20000) -> bytes:
    """YAML of one pod with 1,000 containers referenced 20,000 times: about 100 KB that
    stands for 20 million containers."""
    lines = [
        "kind: List",
        "items:",
        "- &pod",
        "  kind: Pod",
        "  metadata: {name: p}",
        "  spec:",
        "    containers:",
        *(f"    - {{name: c{i}, image: nginx}}" for i in range(containers)),
    ]
    lines += ["- *pod" for _ in range(refs)]
    return ("\n".join(lines) + "\n").encode()
