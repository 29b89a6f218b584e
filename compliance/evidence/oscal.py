"""A point-in-time report as OSCAL Assessment Results (JSON, NIST OSCAL 1.1), the format
GRC tools import.

One result for the report: its time, the controls reviewed (ISO/IEC 27001:2022 Annex A
8.18, 8.8, 8.27 as control ids a.8.18, a.8.8, a.8.27; the 2013 numbers in props beside
them), the coverage signed into the manifest as props, then per non-compliant container
an observation (what was seen, where, how: an automated test) and per control it touches
a finding (target: the control's statement, not satisfied) pointing at the observation.
UUIDs are derived (UUID 5) from the report time and the finding's identity, so the same
report gives the same document. Written as a stream: the rows are never held in memory.
"""

from __future__ import annotations

import itertools
import tempfile
import uuid
from typing import Any

import orjson

from compliance.rules import controls
from compliance.vocabulary import STATE

OSCAL_VERSION = "1.1.2"
NS = "urn:welkin-dash:oscal"  # the namespace of this tool's own props
ROOT = uuid.UUID("5d0c6b1e-3a47-4f55-9d2c-7a7b8e2f0a11")


def control_id(id_2022: str) -> str:
    """ISO/IEC 27001:2022 Annex A 8.18 -> a.8.18 (an OSCAL token starts with a letter)."""
    return f"a.{id_2022}"


def _uuid(*parts: Any) -> str:
    return str(uuid.uuid5(ROOT, "\x1f".join(str(p) for p in parts)))


def _prop(name: str, value: Any) -> dict[str, str]:
    return {"name": name, "ns": NS, "value": str(value)}


def head(report, meta: dict[str, Any]) -> dict[str, Any]:
    """The document up to the result's observations (writers.py streams the rest)."""
    completeness = report.completeness()
    at = report.at.isoformat()
    reviewed = [{"control-id": control_id(c.id_2022)} for c in controls.CONTROLS.values()]
    selection = {
        "props": [
            _prop(f"iso27001-2013-{control_id(c.id_2022)}", c.id)
            for c in controls.CONTROLS.values()
        ],
        "include-controls": reviewed,
        "remarks": "; ".join(
            f"ISO/IEC 27001:2022 A.{c.id_2022} {c.title_2022} (2013: {c.id})"
            for c in controls.CONTROLS.values()
        ),
    }
    return {
        "uuid": _uuid("assessment-results", meta["scope_label"], at, meta["generated_at"]),
        "metadata": {
            "title": f"Container runAs compliance: {meta['scope_label']} as of {at}",
            "last-modified": meta["generated_at"],
            "version": meta["generator"],
            "oscal-version": OSCAL_VERSION,
            "props": [
                _prop("generated-by", meta["generated_by"] or "unknown"),
                _prop("scope", meta["scope_label"]),
            ],
        },
        "import-ap": {"href": "urn:welkin-dash:assessment-plan:runas-guardrail"},
        "results": [
            {
                "uuid": _uuid("result", meta["scope_label"], at),
                "title": f"Effective runAs state of every container, as of {at}",
                "description": (
                    "Each container's effective user as the kubelet decides it (pod and "
                    "container securityContext, the image's USER), against the 'Preventing "
                    "forgotten roots' guardrail (runAsNonRoot with a numeric non-root user). "
                    + (
                        "Coverage complete."
                        if completeness["complete"]
                        else "Coverage NOT complete: " + "; ".join(completeness["reasons"])
                    )
                ),
                "start": at,
                "end": at,
                "props": [
                    _prop("coverage-complete", str(completeness["complete"]).lower()),
                    _prop("population-pods", completeness["pods"]),
                    _prop("population-containers", completeness["containers"]),
                    _prop("clusters-scanned", completeness["clusters_scanned"]),
                    _prop("clusters-in-scope", completeness["clusters"]),
                    _prop("objects-rejected", completeness["rejected"]),
                ],
                "reviewed-controls": {"control-selections": [selection]},
            }
        ],
    }


def observation(row: dict[str, Any], at: str) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """A report row as an observation and its findings (one per control it touches)."""
    where = (
        f"{row['cluster']}/{row['namespace']}/{row['workload_kind']}/"
        f"{row['workload_name']}/{row['container']}"
    )
    obs_id = _uuid("observation", at, where)
    state = STATE[row["state"]]
    accepted = row["standing"] == "accepted"
    props = [
        _prop("cluster", row["cluster"]),
        _prop("namespace", row["namespace"]),
        _prop("workload-kind", row["workload_kind"]),
        _prop("workload-name", row["workload_name"]),
        _prop("container", row["container"]),
        _prop("container-type", row["container_type"]),
        _prop("image", row["image"]),
        _prop("state", row["state"]),
        _prop("standing", row["standing"]),
    ]
    if accepted:
        props += [
            _prop("exception", row["exception"]),
            _prop("exception-approved-by", row["exception_approved_by"]),
            _prop("exception-ends-at", row["exception_ends_at"]),
        ]
    obs = {
        "uuid": obs_id,
        "title": f"{state.label}: {where}",
        "description": f"{state.description} Image {row['image']}; since {row['state_since']}.",
        "props": props,
        "methods": ["TEST"],
        "types": ["finding"],
        "subjects": [
            {
                "subject-uuid": _uuid("workload", where.rsplit("/", 1)[0]),
                "type": "resource",
                "title": f"{row['workload_kind']} {row['namespace']}/{row['workload_name']} "
                f"in {row['cluster']}",
            }
        ],
        "collected": at,
    }
    findings = []
    for id_2013, id_2022 in zip(
        row["controls_2013"].split(), row["controls_2022"].split(), strict=True
    ):
        findings.append(
            {
                "uuid": _uuid("finding", at, where, id_2013),
                "title": f"{control_id(id_2022)} not satisfied: {where}",
                "description": controls.rationale(row["state"], id_2013),
                "props": [_prop("iso27001-2013", id_2013)]
                + ([_prop("risk-accepted", "true")] if accepted else []),
                "target": {
                    "type": "statement-id",
                    "target-id": f"{control_id(id_2022)}_smt",
                    "status": {"state": "not-satisfied"},
                },
                "related-observations": [{"observation-uuid": obs_id}],
            }
        )
    return obs, findings


def write(report, meta: dict[str, Any], out, progress=None) -> int:
    """Stream the document to `out` (a binary writer); returns the rows written. The
    findings are spooled to a temporary file while the observations are written, then
    appended: one pass over the rows, little memory. OSCAL wants no empty arrays, so a
    report with no row has neither."""
    at = report.at.isoformat()
    doc = {"assessment-results": head(report, meta)}
    rows = report.rows()
    first = next(rows, None)
    if first is None:
        out.write(orjson.dumps(doc))
        return 0
    closing = b"}]}}"  # the result}, the results], the document}, the root}
    head_bytes = orjson.dumps(doc)
    assert head_bytes.endswith(b"}" + closing)  # the result's last value is an object
    out.write(head_bytes[: -len(closing)] + b',"observations":[')
    n = 0
    with tempfile.TemporaryFile() as spool:
        for row in itertools.chain([first], rows):
            obs, findings = observation(row, at)
            out.write((b"," if n else b"") + orjson.dumps(obs))
            spool.write((b"," if n else b"") + b",".join(orjson.dumps(f) for f in findings))
            n += 1
            if progress is not None and n % 2000 == 0:
                progress(n)
        out.write(b'],"findings":[')
        spool.seek(0)
        while chunk := spool.read(1 << 20):
            out.write(chunk)
    out.write(b"]" + closing)
    return n
