"""A report as a PDF an auditor reads: summary, coverage, methodology and the rows (at most
PDF_MAX_ROWS; the CSV and JSON have them all). Every value is escaped for ReportLab."""

from __future__ import annotations

import io
import itertools
from typing import Any
from xml.sax.saxutils import escape

from compliance.evidence.reports import Report, summary_rows
from compliance.evidence.sink import GENERATOR, HashingWriter, Progress
from compliance.vocabulary import STATE

PDF_MAX_ROWS = 10_000  # beyond this the PDF lists the first rows and points to CSV/JSON


def write_pdf(report: Report, out: HashingWriter, progress: Progress, copy: bool) -> int:
    from reportlab.lib import colors
    from reportlab.lib.pagesizes import A4, landscape
    from reportlab.lib.styles import getSampleStyleSheet
    from reportlab.lib.units import mm
    from reportlab.platypus import (
        LongTable,
        PageBreak,
        Paragraph,
        SimpleDocTemplate,
        Spacer,
        Table,
        TableStyle,
    )

    styles = getSampleStyleSheet()
    small = styles["BodyText"].clone("small", fontSize=7, leading=8.5)
    # Paragraph text is ReportLab markup: every data string goes through _text (escaped,
    # control characters shown as code points), so no tag, image, link or font can come
    # from a cluster, a registry or a user name. Table cells that are plain strings are
    # drawn as text, never parsed; they still get _text for the control characters.
    story: list = [
        Paragraph("Container runAs compliance report", styles["Title"]),
        Paragraph(f"Scope: {_text(report.scope_label)}", styles["Heading2"]),
        Paragraph(f"State as of {report.at:%Y-%m-%d %H:%M:%S %Z}", styles["BodyText"]),
        Paragraph(
            f"Generated at {report.generated_at:%Y-%m-%d %H:%M:%S %Z} by "
            f"{_text(report.generated_by or 'unknown')} with {GENERATOR}",
            styles["BodyText"],
        ),
        Paragraph(
            "The file's SHA-256 and the server's signature are in the manifest that "
            "comes with it; verify with <i>manage.py verify_report</i> or the "
            "dashboard's verify page.",
            styles["BodyText"],
        ),
        Spacer(1, 8 * mm),
        Paragraph("Control summary", styles["Heading2"]),
    ]
    grid = TableStyle(
        [
            ("GRID", (0, 0), (-1, -1), 0.4, colors.grey),
            ("BACKGROUND", (0, 0), (-1, 0), colors.whitesmoke),
            ("FONTSIZE", (0, 0), (-1, -1), 8),
            ("VALIGN", (0, 0), (-1, -1), "TOP"),
        ]
    )
    summary = [["Control (2022)", "2013", "Title", "Workloads", "Open", "Accepted", "By state"]]
    for c in report.control_summary():
        summary.append(
            [
                c["control_2022"],
                c["control_2013"],
                c["title"],
                c["workloads"],
                c["open"],
                c["accepted"],
                ", ".join(f"{s}: {v['containers']}" for s, v in c["states"].items()) or "-",
            ]
        )
    story += [
        Table(summary, style=grid, hAlign="LEFT"),
        Spacer(1, 6 * mm),
        Paragraph("Coverage", styles["Heading2"]),
    ]
    completeness = report.completeness()
    story.append(
        Paragraph(
            (
                "Complete: every cluster in scope has a recent complete scan and every object "
                "listed was evaluated."
                if completeness["complete"]
                else "NOT complete: " + _text("; ".join(completeness["reasons"]))
            )
            + f" Population: {completeness['pods']:,} pods, {completeness['containers']:,} "
            f"containers in {completeness['clusters_scanned']} of {completeness['clusters']} "
            "clusters.",
            styles["BodyText"],
        )
    )
    cov = [
        [
            "Cluster",
            "Last complete scan before the report time",
            "Recent",
            "Pods",
            "Containers",
            "Objects rejected",
        ]
    ]
    for c in report.coverage:
        cov.append(
            [
                _text(c["cluster"]),
                c["last_complete_scan"] or "none",
                "yes" if c["recent"] else "NO - data may be out of date",
                c["pods"],
                c["containers"],
                Paragraph(
                    _text(
                        "; ".join(
                            f"{n} {rule}" for rule, n in c.get("rejected_by_reason", {}).items()
                        )
                        or "none"
                    ),
                    small,
                ),
            ]
        )
    story += [
        Table(cov, style=grid, hAlign="LEFT"),
        PageBreak(),
        Paragraph("Non-compliant findings", styles["Heading2"]),
    ]
    header = [
        "Cluster",
        "Namespace",
        "Workload",
        "Container",
        "Image",
        "State",
        "Controls (2022)",
        "Since",
    ]
    data = [header]
    # The rows past the cap are counted, not read: a report's summary has their number.
    total = summary_rows(report)
    rows = itertools.islice(report.rows(), PDF_MAX_ROWS) if total is not None else report.rows()
    n = 0
    for row in rows:
        n += 1
        if n % 2000 == 0:
            progress(n)
        if n <= PDF_MAX_ROWS:
            data.append(
                [
                    _text(row["cluster"]),
                    _text(row["namespace"]),
                    Paragraph(_text(f"{row['workload_kind']}/{row['workload_name']}"), small),
                    _text(row["container"]),
                    Paragraph(_text(row["image"]), small),
                    STATE.label(row["state"])
                    + (
                        f"\naccepted: #{row['exception']} until {row['exception_ends_at'][:10]}"
                        if row["exception"]
                        else ""
                    ),
                    row["controls_2022"] + "\n(2013: " + row["controls_2013"] + ")"
                    if row["controls_2013"]
                    else "",
                    row["first_seen"][:10],
                ]
            )
    if total is not None:
        n = total
    if len(data) > 1:
        story.append(
            LongTable(
                data,
                repeatRows=1,
                style=grid,
                hAlign="LEFT",
                colWidths=[28 * mm, 30 * mm, 52 * mm, 25 * mm, 66 * mm, 32 * mm, 32 * mm, 20 * mm],
            )
        )
    else:
        story.append(
            Paragraph("No non-compliant container at the report time.", styles["BodyText"])
        )
    if n > PDF_MAX_ROWS:
        story.append(
            Paragraph(
                f"{n - PDF_MAX_ROWS:,} more findings are not listed here; the "
                "CSV and JSON exports of the same report list all of them.",
                styles["BodyText"],
            )
        )
    story += [PageBreak(), Paragraph("Methodology", styles["Heading2"])]
    for text in METHODOLOGY:
        story.append(Paragraph(text, styles["BodyText"]))
    buf = io.BytesIO()
    SimpleDocTemplate(
        buf,
        pagesize=landscape(A4),
        title="runAs compliance report",
        author=GENERATOR,
        leftMargin=10 * mm,
        rightMargin=10 * mm,
        topMargin=10 * mm,
        bottomMargin=10 * mm,
        invariant=1,
    ).build(story)
    out.write(buf.getvalue())
    return n


def _text(value: Any) -> str:
    """Data as ReportLab paragraph text: markup escaped, control characters as <U+XXXX>."""
    out = escape(str(value))
    if any(ord(ch) < 32 or 127 <= ord(ch) < 160 for ch in out):
        out = "".join(
            f"&lt;U+{ord(ch):04X}&gt;" if ord(ch) < 32 or 127 <= ord(ch) < 160 else ch for ch in out
        )
    return out


METHODOLOGY = [
    "Each container's effective runAs state follows the kubelet, not the policy tools: the "
    "pod and container securityContext are merged field by field (the container's value "
    "wins); with runAsNonRoot in force the kubelet refuses runAsUser 0, an image whose USER "
    "is empty or 0, a non-numeric USER (it cannot verify a name), and a uid outside "
    "0..2147483647.",
    "The image's USER comes from its registry (the config blob of the digest the pod's "
    "status reports), from operator-supplied values, or from the kubelet's own refusal "
    "message; where none is available the container is 'unverified'. Runtime evidence "
    "(status user.linux.uid and CreateContainerConfigError messages) overrides predictions.",
    "States: compliant (runAsNonRoot in force, non-zero uid known); unenforced (non-zero uid "
    "but no runAsNonRoot); root (runs or would run as uid 0); blocked (refused by the "
    "kubelet); unverified (identity undeterminable). Each non-compliant state maps to "
    "ISO/IEC 27001:2022 8.18, 8.8 and/or 8.27 (2013: A.9.4.4, A.12.6.1, A.14.2.5) as listed.",
    "The state at the report time is rebuilt from the append-only history of each finding: "
    "findings are opened, changed and resolved only after complete scans, so a failed or "
    "partial scan never makes a finding disappear. Coverage shows each cluster's last "
    "complete scan before the report time; a cluster without a recent one may have changed "
    "since.",
    "Limits: a user name in an image (e.g. USER node) maps to a uid only through the image's "
    "/etc/passwd, which is not read, so such containers are reported by the kubelet's rule "
    "(refused under runAsNonRoot) rather than by uid; Windows containers are judged by "
    "ContainerAdministrator; pods are grouped per workload, the worst pod deciding.",
    "Hostile data: every name, image and message is checked against Kubernetes' own rules "
    "where it enters (DNS-1123 names, length bounds, no control characters); an object that "
    "breaks them is rejected, not evaluated, and counted per cluster in the coverage table. "
    "In CSV exports a cell that begins with =, +, -, @, a tab or a carriage return is "
    "prefixed with an apostrophe (OWASP's advice), so no spreadsheet runs it as a formula; "
    "the manifest's SHA-256 covers the file as written, apostrophes included.",
]
