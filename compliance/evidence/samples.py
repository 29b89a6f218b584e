"""Audit samples: a reproducible random sample of workloads, with each one's evidence.

The population is the point-in-time report's workloads (those with a non-compliant
container at the time, in the scope), sorted by cluster, namespace, kind and name; its
SHA-256 is stored so anyone can confirm they start from the same list. The seed picks the
sample with Python's Mersenne Twister (random.Random(seed).sample over the positions), so
`manage.py sample --at T --size N --seed S` (or the same form) draws the same workloads
again. Only non-compliant workloads are stored one by one (compliant containers resolve
their findings), so the population is the report's, not every workload in the clusters:
the coverage figures in the signed export give the whole population's size.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import hashlib
import random
import secrets
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import orjson
from django.db.models import Q
from django.utils import timezone

from compliance.evidence import reports
from compliance.identity import access
from compliance.models import Finding, Sample
from compliance.rules import explain

MAX_SIZE = 500
SEED_CHARS = set("0123456789abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ-_")


class SampleError(ValueError):
    pass


@dataclass
class Draw:
    report: reports.Report
    seed: str
    population: list[tuple[str, str, str, str]]
    population_sha256: str
    chosen: list[tuple[str, str, str, str]]


def check_seed(seed: str) -> str:
    if not seed:
        return secrets.token_hex(8)
    if len(seed) > 64 or not set(seed) <= SEED_CHARS:
        raise SampleError(
            "the seed: at most 64 letters, digits, '-' or '_' (leave it empty for a random one)"
        )
    return seed


def population_of(report: reports.Report) -> list[tuple[str, str, str, str]]:
    """The report's workloads (cluster, namespace, kind, name), sorted, each once."""
    qs = report._queryset.order_by().values_list(
        "cluster__name", "namespace", "workload_kind", "workload_name"
    )
    return sorted(set(qs))


def digest(population: list[tuple[str, str, str, str]]) -> str:
    return hashlib.sha256(orjson.dumps([list(w) for w in population])).hexdigest()


def draw(
    scope: access.Scope,
    at: dt.datetime,
    size: int,
    seed: str = "",
    cluster: str | None = None,
    namespace: str | None = None,
    generated_by: str = "",
) -> Draw:
    """Draw (or redraw, with the seed) a sample; nothing is stored."""
    if not 1 <= size <= MAX_SIZE:
        raise SampleError(f"the sample size: from 1 to {MAX_SIZE}")
    seed = check_seed(seed)
    report = reports.point_in_time(scope, at, cluster, namespace, generated_by=generated_by)
    population = population_of(report)
    picks = random.Random(seed).sample(range(len(population)), min(size, len(population)))
    chosen = [population[i] for i in sorted(picks)]
    return Draw(report, seed, population, digest(population), chosen)


def evidence(scope: access.Scope, d: Draw) -> list[dict[str, Any]]:
    """Each drawn workload's containers at the sample time, with what decided each state:
    the pod spec fields, the image's user and its source, the kubelet's message."""
    rows: dict[tuple[str, str, str, str], list[dict[str, Any]]] = {w: [] for w in d.chosen}
    only = Q(pk__in=[])
    for c, ns, kind, name in d.chosen:
        only |= Q(cluster__name=c, namespace=ns, workload_kind=kind, workload_name=name)
    chosen_rows = dataclasses.replace(d.report, _queryset=d.report._queryset.filter(only))
    for row in chosen_rows.rows():
        key = (row["cluster"], row["namespace"], row["workload_kind"], row["workload_name"])
        if key in rows:
            rows[key].append(row)
    # The stored findings of every drawn workload, in one query (not one per workload).
    stored = {
        (f.cluster.name, f.namespace, f.workload_kind, f.workload_name, f.container): f
        for f in access.findings(scope).filter(only).select_related("cluster")
    }
    items = []
    for key, containers in rows.items():
        cluster, namespace, kind, name = key
        items.append(
            {
                "cluster": cluster,
                "namespace": namespace,
                "workload_kind": kind,
                "workload_name": name,
                "containers": [
                    _container(row, stored.get((*key, row["container"]))) for row in containers
                ],
            }
        )
    return items


def _container(row: dict[str, Any], f: Finding | None) -> dict[str, Any]:
    out = {
        "container": row["container"],
        "container_type": row["container_type"],
        "image": row["image"],
        "state": row["state"],
        "state_since": row["state_since"],
        "controls_2022": row["controls_2022"],
        "controls_2013": row["controls_2013"],
        "standing": row["standing"],
        "exception": row["exception"],
    }
    if f is None:
        return out
    d = f.detail or {}
    out.update(
        {
            "run_as_user": f.run_as_user,
            "run_as_user_from": d.get("run_as_user_from"),
            "run_as_non_root": f.run_as_non_root,
            "run_as_non_root_from": d.get("run_as_non_root_from"),
            "image_user": f.image_user,
            "image_user_source": f.image_user_source,
            "uid": f.uid,
            "evidence": f.evidence,
            "kubelet_error": f.kubelet_error or None,
            "sample_pod": d.get("pod"),
            "steps": [f"{s['title']}: {s['text']}" for s in explain.steps(f)],
            # The stored record is the latest scan's; its state may have moved on since.
            "evidence_as_of": f.last_changed.isoformat(),
        }
    )
    return out


def create(scope: access.Scope, user, at, size, seed="", cluster=None, namespace=None) -> Sample:
    """Draw and keep a sample. The drawer's seed is joined with a nonce of the server's,
    made now: a seed tried offline until it gave a liked sample picks nothing (the drawn
    seed, stored and audited, redraws it: `manage.py sample --seed`)."""
    nonce = secrets.token_hex(16)
    seed = f"{check_seed(seed)[:31]}-{nonce}"
    d = draw(scope, at, size, seed, cluster, namespace, user.get_username())
    return Sample.objects.create(
        user=user,
        cluster=cluster or "",
        namespace=namespace or "",
        at=d.report.at,
        size=size,
        seed=d.seed,
        population=len(d.population),
        population_sha256=d.population_sha256,
        items=evidence(scope, d),
    )


COLUMNS = [
    "cluster",
    "namespace",
    "workload_kind",
    "workload_name",
    "container",
    "image",
    "state",
    "controls_2022",
    "controls_2013",
    "run_as_user",
    "run_as_user_from",
    "run_as_non_root",
    "run_as_non_root_from",
    "image_user",
    "image_user_source",
    "kubelet_error",
    "evidence",
]


@dataclass
class SampleDoc:
    """A stored sample as a document compliance/evidence/writers.py writes (CSV, JSON) and signs."""

    sample: Sample
    generated_by: str
    generated_at: dt.datetime = field(default_factory=timezone.now)
    columns: list[str] = field(default_factory=lambda: list(COLUMNS))

    @property
    def at(self) -> dt.datetime:
        return self.sample.at

    @property
    def scope(self) -> dict[str, Any]:
        return {
            "sample": str(self.sample.pk),
            "cluster": self.sample.cluster or None,
            "namespace": self.sample.namespace or None,
        }

    @property
    def scope_label(self) -> str:
        where = (
            f"namespace {self.sample.cluster}/{self.sample.namespace}"
            if self.sample.namespace
            else f"cluster {self.sample.cluster}"
            if self.sample.cluster
            else "the whole fleet"
        )
        return f"sample of {self.sample.size} workloads of {where}"

    def json_head(self, meta: dict[str, Any]) -> dict[str, Any]:
        s = self.sample
        return {
            "sample": {
                **meta,
                "seed": s.seed,
                "size": s.size,
                "drawn": len(s.items),
                "population": s.population,
                "population_sha256": s.population_sha256,
                "method": "random.Random(seed).sample(range(population), size) over the "
                "point-in-time report's workloads sorted by cluster, namespace, kind, name",
                "redraw": f"manage.py sample --at {s.at.isoformat()} --size {s.size} "
                f"--seed {s.seed}"
                + (f" --cluster {s.cluster}" if s.cluster else "")
                + (f" --namespace {s.namespace}" if s.namespace else ""),
            },
            "columns": self.columns,
        }

    def rows(self) -> Iterator[dict[str, Any]]:
        for w in self.sample.items:
            for c in w["containers"]:
                yield {
                    "cluster": w["cluster"],
                    "namespace": w["namespace"],
                    "workload_kind": w["workload_kind"],
                    "workload_name": w["workload_name"],
                    **{k: c.get(k) for k in COLUMNS[4:]},
                    "steps": c.get("steps", []),
                }
