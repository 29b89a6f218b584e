"""`welkin-evaluate`: the runAs check for CI pipelines, pre-commit and offline review.

Runs without Django, a database or server secrets (only `--resolve` sets Django up, for
the registry settings and cache when there is a database). `manage.py evaluate` is the same
command. Exit status: 0 when no container is in a `--fail-on` state, 1 when some are,
2 on broken input (named, with the other documents still reported).

Formats: a table for people (default), JSON (documented in docs/ci-gate.md), SARIF 2.1.0 (code
scanning), JUnit XML (test reports) and GitHub workflow annotations.
"""

from __future__ import annotations

import argparse
import fnmatch
import os
import re
import stat
import sys
import tempfile
from collections import Counter
from collections.abc import Sequence
from typing import IO, Any
from urllib.parse import quote
from xml.etree import ElementTree as ET

import orjson

from compliance import __version__
from compliance.ci import offline
from compliance.rules import controls
from compliance.rules.gate import inert
from compliance.rules.manifests import read_input
from compliance.vocabulary import COMPLIANT, NONCOMPLIANT, STATE, STATES

FORMATS = ("table", "json", "sarif", "junit", "github")
TOOL = "welkin-evaluate"


class UsageError(Exception):
    """Bad options or an unwritable output: a message and exit 2."""


def build_parser(parser: argparse.ArgumentParser | None = None) -> argparse.ArgumentParser:
    """The options, on a new parser or on manage.py's (which has --version already)."""
    standalone = parser is None
    parser = parser or argparse.ArgumentParser(
        prog=TOOL,
        description="Evaluate Kubernetes manifests (JSON or YAML; Kustomize and Helm output "
        "on stdin) for each container's effective runAs state. Exit 0: no container in a "
        "--fail-on state; 1: some; 2: broken input.",
    )
    parser.add_argument(
        "files",
        nargs="*",
        metavar="FILE",
        help="files or folders (their .yaml, .yml and .json files); '-' (or none) reads stdin",
    )
    parser.add_argument(
        "--image-user",
        action="append",
        default=[],
        metavar="IMAGE=USER",
        help="the image's configured USER (IMAGE= for none); IMAGE may be a repository "
        "(nginx: every tag) or a pattern (ghcr.io/acme/*)",
    )
    parser.add_argument("--image-users", metavar="FILE", help="a JSON object {image: user}")
    parser.add_argument(
        "--exclude",
        action="append",
        default=[],
        metavar="GLOB",
        help="skip files whose path matches (repeatable; also read from .welkinignore in "
        "the current directory, one glob a line)",
    )
    parser.add_argument("--format", choices=FORMATS, default="table")
    parser.add_argument("-o", "--output", metavar="FILE", help="write there, not to stdout")
    parser.add_argument(
        "--fail-on",
        default=",".join(offline.DEFAULT_FAIL_ON),
        metavar="STATES",
        help=f"states that fail the gate (default root,blocked; any of {', '.join(STATES)})",
    )
    parser.add_argument(
        "--resolve",
        action="store_true",
        help="look image users up in their registries (public ones need no settings; "
        "pip install welkin-dash[resolve])",
    )
    parser.add_argument(
        "--cache",
        metavar="DIR",
        help="where --resolve keeps its answers (default $XDG_CACHE_HOME/welkin-dash); "
        "cache it between CI runs",
    )
    if standalone:
        parser.add_argument("--version", action="version", version=f"{TOOL} {__version__}")
    return parser


INTERNAL_ERROR = 3  # never 1: 1 means only that the gate found what --fail-on names


def main(argv: Sequence[str] | None = None) -> int:
    """The console script: parse, run, return the exit status."""
    args = build_parser().parse_args(argv)
    try:
        return run(vars(args), sys.stdout, sys.stderr)
    except BrokenPipeError:  # `| head` stopped reading: not a result, not a bug
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 2
    except Exception as e:  # a bug or a missing package: say so, and not as a failed gate
        sys.stderr.write(f"internal error: {type(e).__name__}: {inert(str(e), 2000)}\n")
        return INTERNAL_ERROR


def run(options: dict[str, Any], stdout: IO[str], stderr: IO[str]) -> int:
    try:
        fail_on = offline.parse_fail_on(options["fail_on"])
        given = {}
        from_file = {}
        if _repository_file(IMAGES_FILE):  # the repository's answers, written once
            from_file = offline.parse_image_users_file(_read(IMAGES_FILE), IMAGES_FILE)
            # Said in full every run: a pull request can change this file like the manifests.
            for image, user in from_file.items():
                stderr.write(f"note: {IMAGES_FILE}: {inert(image, 200)} = {inert(user, 60)!r}\n")
        if options.get("image_users"):
            path = options["image_users"]
            given.update(offline.parse_image_users_file(_read(path), path))
        given.update(offline.parse_image_user_args(options.get("image_user") or []))
        # The command line wins over the repository's file at every level (an exact image
        # in the file does not beat a repository or a pattern given by the pipeline).
        given = offline.ImageUsers(given, fallback=offline.ImageUsers(from_file))
    except (ValueError, OSError) as e:
        stderr.write(f"error: {getattr(e, 'strerror', None) or e}\n")
        return 2
    try:
        ignored = _welkinignore()
    except (OSError, ValueError) as e:
        stderr.write(f"error: .welkinignore: {getattr(e, 'strerror', None) or e}\n")
        return 2
    for glob in ignored:  # each said, every run (a pull request can change the file)
        stderr.write(f"note: {IGNORE_FILE}: skipping {inert(glob, 200)}\n")
    excludes = [*(options.get("exclude") or []), *ignored]
    read_errors: list[str] = []
    skipped: Counter = Counter()
    names = _expand(options.get("files") or ["-"], skipped)

    def inputs():  # read one at a time: a file's bytes go once it is judged
        for name in names:
            if name != "-" and _excluded(name, excludes):
                skipped[EXCLUDED] += 1
                continue
            if name != "-" and chart_template(name):
                skipped[offline.HELM_TEMPLATE] += 1
                continue
            # A file name is data too (a pull request chooses it): shown inert, never raw.
            shown = "<stdin>" if name == "-" else inert(name, 500)
            try:
                data = _read(name)
            except (OSError, ValueError) as e:
                read_errors.append(f"{shown}: cannot read: {getattr(e, 'strerror', None) or e}")
                continue
            yield shown, data

    try:
        out = _Output(options, stdout)
    except UsageError as e:
        stderr.write(f"error: {e}\n")
        return 2
    with out:
        stream = STREAMS[options.get("format") or "table"]
        colour = stdout.isatty() and not options.get("output")
        writer = stream(out, colour, fail_on)
        sink = writer.object
        if options.get("resolve"):
            try:
                report = _resolved(
                    inputs(), given, stderr, options.get("cache"), sink, options.get("dashboard")
                )
            except UsageError as e:
                stderr.write(f"error: {e}\n")
                return 2
        else:
            report = offline.evaluate_inputs(inputs(), given, sink=sink)
        report.errors[:0] = read_errors
        report.skipped.update(skipped)
        report.inputs = ["<stdin>" if n == "-" else inert(n, 500) for n in names]
        writer.finish(report, fail_on)
    for error in report.errors:
        stderr.write(f"error: {inert(error, 4000)}\n")
    if report.errors:
        return 2
    return 1 if report.failing(fail_on) else 0


def _resolved(
    inputs, given, stderr, cache: str | None, sink=None, dashboard: bool = False
) -> offline.OfflineReport:
    """Registry lookups: with the dashboard's settings and database under manage.py
    evaluate (`dashboard`: Django set up already), else without Django, cached on disk."""
    if dashboard:
        from compliance.collect import images  # local: manage.py evaluate has Django set up

        resolver: Any = images.offline_resolver({})
        if resolver.offline_note:
            stderr.write(f"note: {resolver.offline_note}\n")
    else:
        try:
            from compliance.ci import resolve  # local: needs the [resolve] extra (urllib3)
        except ImportError as e:
            raise UsageError(
                f"--resolve needs the registry client: pip install 'welkin-dash[resolve]' "
                f"({e.name} is missing)"
            ) from None
        try:
            disk = resolve.DiskCache(resolve.cache_dir(cache))
        except ValueError as e:
            raise UsageError(str(e)) from None
        resolver = resolve.PipResolver(disk)
    try:
        lookups = offline.Lookups(
            resolver.prepare, resolver.users_for, resolver.notes, resolver.accounts_for
        )
        return offline.evaluate_inputs(inputs, given, lookups, sink=sink)
    finally:
        resolver.close()


MANIFEST_SUFFIXES = (".yaml", ".yml", ".json")


SYMLINK = "(symbolic link: not followed)"


def _expand(names: Sequence[str], skipped: Counter) -> list[str]:
    """Files as given; a directory stands for its YAML and JSON files, recursively, not
    following symbolic links (they could lead out of the repository, or to a device):
    those are counted in `skipped`, never dropped unsaid."""
    out = []
    for name in names:
        if name != "-" and os.path.isdir(name):
            for folder, dirs, files in os.walk(name):
                dirs[:] = sorted(d for d in dirs if not d.startswith("."))
                for f in sorted(files):
                    path = os.path.join(folder, f)
                    if not f.endswith(MANIFEST_SUFFIXES):
                        continue
                    if os.path.islink(path):
                        skipped[SYMLINK] += 1
                    else:
                        out.append(path)
        else:
            out.append(name)
    return out


EXCLUDED = "(excluded by --exclude or .welkinignore)"
IGNORE_FILE = ".welkinignore"
IMAGES_FILE = ".welkin-images.yaml"  # {image or pattern: user}, read when present


def chart_template(path: str) -> bool:
    """A file under a Helm chart's templates/ (a Chart.yaml in the folder above it): Go
    templates, not manifests, until `helm template` renders them."""
    parts = os.path.normpath(path).split(os.sep)
    for i in range(len(parts) - 2, -1, -1):
        if parts[i] == "templates":
            chart = os.sep.join(parts[:i]) or "."
            if os.path.isfile(os.path.join(chart, "Chart.yaml")):
                return True
    return False


def _repository_file(name: str) -> bool:
    """Whether ./name is there as a regular file; a symbolic link is refused (it could
    point at the runner's secrets, which the notes would print)."""
    try:
        info = os.lstat(name)
    except FileNotFoundError:
        return False
    if stat.S_ISLNK(info.st_mode) or not stat.S_ISREG(info.st_mode):
        raise ValueError(f"{name}: not a regular file (a symbolic link is not followed)")
    return True


def _welkinignore() -> list[str]:
    """The globs of ./.welkinignore (the repository root, where CI runs): one a line,
    blank lines and # comments ignored."""
    if not _repository_file(IGNORE_FILE):
        return []
    text = read_input(IGNORE_FILE, 1 << 20).decode("utf-8")
    return [g.strip() for g in text.splitlines() if g.strip() and not g.lstrip().startswith("#")]


def _excluded(path: str, globs: list[str]) -> bool:
    """Whether a path (relative to the current directory when inside it, `/`-separated,
    without a leading ./) or its file name matches one of the globs."""
    rel = os.path.normpath(path)
    if os.path.isabs(rel):  # inside the current directory: relative to it, as globs are
        inside = os.path.relpath(rel)
        rel = inside if not inside.startswith("..") else rel
    rel = rel.replace(os.sep, "/").removeprefix("./")
    base = rel.rsplit("/", 1)[-1]
    return any(fnmatch.fnmatchcase(rel, g) or fnmatch.fnmatchcase(base, g) for g in globs)


INPUT_MAX_BYTES = 1 << 30  # a manifest file larger than 1 GiB is refused


def _read(name: str) -> bytes:
    return read_input(name, INPUT_MAX_BYTES)


class _Output:
    """Where the report goes: -o FILE (opened before anything is judged, so an unwritable
    path is said at once) or stdout; bytes are written as bytes where stdout has a buffer."""

    def __init__(self, options: dict, stdout: IO[str]):
        self.stdout, self.file = stdout, None
        if options.get("output"):
            try:
                self.file = open(options["output"], "wb")  # noqa: SIM115 - closed by __exit__
            except OSError as e:
                raise UsageError(f"{options['output']}: cannot write: {e.strerror or e}") from None

    def write(self, data: str | bytes) -> None:
        if self.file is not None:
            self.file.write(data if isinstance(data, bytes) else data.encode())
            return
        binary = getattr(self.stdout, "buffer", None)
        if isinstance(data, bytes) and binary is not None:
            self.stdout.flush()
            binary.write(data)
            binary.flush()
        else:
            self.stdout.write(data.decode() if isinstance(data, bytes) else data)

    def __enter__(self) -> _Output:
        return self

    def __exit__(self, *exc) -> None:
        if self.file is not None:
            self.file.close()


class _JsonStream:
    """--format json, written as objects are judged: the same bytes as one orjson.dumps of
    the whole report (OPT_INDENT_2), without holding the objects."""

    def __init__(self, out: _Output, colour: bool, fail_on):
        self.out, self.count = out, 0
        out.write(b'{\n  "objects": [')

    def object(self, obj: dict) -> None:
        body = orjson.dumps(obj, option=orjson.OPT_INDENT_2)
        self.out.write((b",\n" if self.count else b"\n") + b"    " + body.replace(b"\n", b"\n    "))
        self.count += 1

    def finish(self, report: offline.OfflineReport, fail_on) -> None:
        rest = {k: v for k, v in report.as_dict().items() if k != "objects"}
        rest.update(fail_on=list(fail_on), failed=report.failing(fail_on))
        tail = orjson.dumps(rest, option=orjson.OPT_INDENT_2 | orjson.OPT_APPEND_NEWLINE)
        self.out.write((b"\n  ]," if self.count else b"],") + tail[1:])


class _GithubStream:
    """--format github, an annotation per container as it is judged."""

    def __init__(self, out: _Output, colour: bool, fail_on):
        self.out, self.fail_on = out, fail_on

    def object(self, obj: dict) -> None:
        lines = _github_object(obj, self.fail_on)
        if lines:
            self.out.write("\n".join(lines) + "\n")

    def finish(self, report: offline.OfflineReport, fail_on) -> None:
        self.out.write(_github_tail(report))


class _Spill:
    """Lines kept in a temporary file until the end (memory stays flat at any size)."""

    def __init__(self):
        self.file = tempfile.TemporaryFile()  # noqa: SIM115 - closed by lines()

    def add(self, line: bytes) -> None:
        self.file.write(line)

    def lines(self):
        with self.file:
            self.file.seek(0)
            yield from self.file

    def chunks(self):
        with self.file:
            self.file.seek(0)
            while chunk := self.file.read(1 << 20):
                yield chunk


class _TableStream:
    """The table: each object's printed fields spilled to a temporary file, laid out at
    the end, when the columns' widths are known."""

    def __init__(self, out: _Output, colour: bool, fail_on):
        self.out, self.colour, self.spill, self.widths = out, colour, _Spill(), [4, 8]

    def object(self, obj: dict) -> None:
        header, rows = _table_object(obj)
        for r in rows:
            self.widths = [max(self.widths[0], len(r[2])), max(self.widths[1], len(r[3]))]
        self.spill.add(orjson.dumps([header, rows]) + b"\n")

    def finish(self, report: offline.OfflineReport, fail_on) -> None:
        objects = (orjson.loads(line) for line in self.spill.lines())
        for line in _table_lines(objects, tuple(self.widths), self.colour):
            self.out.write(line)
        self.out.write(_table_tail(report, fail_on))


class _SarifStream:
    """--format sarif, each result written as its container is judged; the invocation
    (whether every input was read) after the results."""

    def __init__(self, out: _Output, colour: bool, fail_on):
        self.out, self.fail_on, self.count = out, fail_on, 0
        head = orjson.dumps(
            _sarif_log("@@RESULTS@@", "@@INVOCATIONS@@"), option=orjson.OPT_INDENT_2
        )
        before, self.after = head.split(b'"@@RESULTS@@"')
        out.write(before + b"[")

    def object(self, obj: dict) -> None:
        for result in _sarif_results(obj, self.fail_on):
            body = orjson.dumps(result, option=orjson.OPT_INDENT_2).replace(b"\n", b"\n        ")
            self.out.write((b",\n" if self.count else b"\n") + b"        " + body)
            self.count += 1

    def finish(self, report: offline.OfflineReport, fail_on) -> None:
        invocations = orjson.dumps(_sarif_invocations(report), option=orjson.OPT_INDENT_2)
        tail = self.after.replace(b'"@@INVOCATIONS@@"', invocations.replace(b"\n", b"\n      "))
        self.out.write((b"\n      ]" if self.count else b"]") + tail + b"\n")


class _JunitStream:
    """--format junit: each testcase spilled as it is judged; the suite, whose attributes
    count them, written around them at the end."""

    def __init__(self, out: _Output, colour: bool, fail_on):
        self.out, self.fail_on, self.spill = out, fail_on, _Spill()
        self.tests = self.failures = 0

    def object(self, obj: dict) -> None:
        for case, failed in _junit_cases(obj, self.fail_on):
            self.spill.add(ET.tostring(case))
            self.tests += 1
            self.failures += failed

    def finish(self, report: offline.OfflineReport, fail_on) -> None:
        errors = [_junit_error(e) for e in report.errors]
        self.out.write(
            '<?xml version="1.0" encoding="UTF-8"?>\n'
            f'<testsuites name="{TOOL}"><testsuite name="{TOOL}" '
            f'tests="{self.tests + len(errors)}" failures="{self.failures}" '
            f'errors="{len(errors)}" skipped="0">'
        )
        for chunk in self.spill.chunks():
            self.out.write(chunk)
        for case in errors:
            self.out.write(ET.tostring(case))
        self.out.write("</testsuite></testsuites>\n")


STREAMS = {
    "json": _JsonStream,
    "github": _GithubStream,
    "table": _TableStream,
    "sarif": _SarifStream,
    "junit": _JunitStream,
}


# --- the table ----------------------------------------------------------------------------


def _identity(c: dict) -> str:
    if c["uid"] is not None:
        return f"uid {c['uid']} ({c['evidence']})"
    if c["image_user"] is not None:
        return f"user {c['image_user'] or '<none>'!s}"
    return "identity unknown"


def _where(c: dict) -> str:
    return f"{c['file']}:{c['line']}:{c['column']}" if c.get("line") else c.get("file", "")


def _table_object(obj: dict) -> tuple[str, list[tuple]]:
    """What the table prints of an object: its header and, per container, (state, type,
    name, identity, image, where, kubelet message, fix)."""
    psa = obj["psa_restricted"]
    verdict = "allowed" if psa["allowed"] else "denied: " + "; ".join(psa["violations"])
    header = f"{obj['kind']} {obj['namespace']}/{obj['name']}  [PSA restricted {verdict}]"
    rows = [
        (
            c["state"],
            c["type"],
            c["name"],
            _identity(c),
            c["image"],
            _where(c),
            c["kubelet_error"],
            c["remediation"]["one_line"] if c["state"] != COMPLIANT else None,
        )
        for c in obj["containers"]
    ]
    return header, rows


def _table_lines(objects, widths: tuple[int, int], colour: bool):
    """The table's lines (each with its newline) for (header, rows) objects."""
    w_name, w_who = widths
    for header, rs in objects:
        yield header + "\n"
        for state_name, ctype, name, who, image, where, kubelet, fix in rs:
            state = f"{state_name:<10}"
            if colour:
                state = f"\x1b[{STATE[state_name].ansi}m{state}\x1b[0m"
            yield f"  {state}  {ctype:<9} {name:<{w_name}}  {who:<{w_who}}  {image}  {where}\n"
            if kubelet:
                yield f"      kubelet: {kubelet}\n"
            if fix is not None:
                yield f"      fix: {fix}\n"


def _table_tail(report: offline.OfflineReport, fail_on) -> str:
    s = report.summary
    lines = ["", ", ".join(f"{s[k]} {k}" for k in s)]
    if report.skipped:
        lines.append(
            "skipped (not workloads): "
            + ", ".join(f"{n} {kind}" for kind, n in sorted(report.skipped.items()))
        )
    lines.extend(_advice(report))
    lines.append(verdict_line(report, fail_on))
    return "\n".join(lines) + "\n"


def verdict_line(report: offline.OfflineReport, fail_on) -> str:
    """The last line: the exit status and its reason, as run() decides it."""
    failing = report.failing(fail_on)
    gate = f"gate (--fail-on {','.join(fail_on)}): " + (
        f"FAILED, {failing} container{'s' if failing != 1 else ''}" if failing else "passed"
    )
    if report.errors:
        n = len(report.errors)
        return (
            f"exit 2: {n} input{'s' if n != 1 else ''} could not be read or judged (the "
            f"errors are on stderr); on the rest, {gate}"
        )
    if not report.evaluated:
        return f"exit 0: no workloads to check; {gate}"
    return f"exit {1 if failing else 0}: {gate}"


def _advice(report: offline.OfflineReport) -> list[str]:
    out = []
    if report.unknown_users:
        out.append(
            f"{report.unknown_users} container{'s are' if report.unknown_users != 1 else ' is'} "
            "unverified because the image's user is unknown: --resolve looks it up in the "
            "image's registry (public registries need no settings), or give it with "
            "--image-user IMAGE=USER."
        )
    for image, why in sorted(report.lookup_errors.items()):
        out.append(f"could not look up {image}: {why}")
    return out


# --- SARIF 2.1.0 --------------------------------------------------------------------------


def _rule(state: str) -> dict[str, Any]:
    term = STATE[state]
    rows = [
        f"- {c.id_2022} {c.title_2022} (2013: {c.id}): {controls.rationale(state, c.id)}"
        for c in (controls.CONTROLS[i] for i in controls.controls_for(state))
    ]
    help_text = (
        f"{term.description}\n\nISO/IEC 27001 controls:\n" + "\n".join(rows) + "\n\n"
        "How to fix: each result's message gives the smallest change that makes that "
        "container compliant, checked by evaluating the changed container again: a "
        "runAsUser: 0 to remove, the image's own uid for a named USER, a Dockerfile USER for "
        "a root image, or runAsNonRoot: true where it is missing."
    )
    return {
        "id": f"welkin/{state}",
        "name": "".join(word[:1].upper() + word[1:] for word in term.label.split()),
        "shortDescription": {"text": term.label},
        "fullDescription": {"text": term.description},
        "help": {"text": help_text, "markdown": help_text},
        "defaultConfiguration": {"level": "error" if term.severity >= 3 else "warning"},
        "properties": {
            # GitHub code scanning ranks results by it (0-10; 7 and up is high).
            "security-severity": SECURITY_SEVERITY[state],
            "tags": [
                "security",
                "kubernetes",
                *(f"ISO27001:2022/{i}" for i in controls.ids_2022(state)),
                *controls.controls_for(state),
            ],
        },
    }


# Runs as root (a CVE in it is root in the container), refused by the kubelet (a root or
# unverifiable image under the guardrail), unknown, not enforced.
SECURITY_SEVERITY = {"root": "8.0", "blocked": "6.0", "unverified": "5.0", "unenforced": "3.0"}


def _control_pairs(c: dict) -> list[str]:
    """ISO/IEC 27001:2022 numbers first, the 2013 numbers beside them."""
    return [f"{a} (2013: {b})" for a, b in zip(c["controls_2022"], c["controls_2013"], strict=True)]


def _message(c: dict) -> str:
    text = f"{c['type']} container {c['name']} ({c['image']}): {STATE[c['state']].label}. "
    if c["kubelet_error"]:
        text += f"The kubelet says: {c['kubelet_error']}. "
    return text + c["remediation"]["one_line"]


RULES = [_rule(s) for s in NONCOMPLIANT]
RULE_INDEX = {r["id"]: i for i, r in enumerate(RULES)}


def _sarif_log(results: Any, invocations: Any) -> dict[str, Any]:
    return {
        "$schema": "https://json.schemastore.org/sarif-2.1.0.json",
        "version": "2.1.0",
        "runs": [
            {
                "tool": {"driver": {"name": TOOL, "version": __version__, "rules": RULES}},
                "results": results,
                "invocations": invocations,
            }
        ],
    }


def _sarif_invocations(report: offline.OfflineReport) -> list[dict[str, Any]]:
    notifications = [
        {"level": "error", "message": {"text": error}, "descriptor": {"id": "input"}}
        for error in report.errors
    ]
    return [
        {
            "executionSuccessful": not report.errors,
            "toolExecutionNotifications": notifications,
            "properties": {"skipped": dict(sorted(report.skipped.items()))},
        }
    ]


def _sarif_results(obj: dict, fail_on) -> list[dict[str, Any]]:
    results = []
    for c in obj["containers"]:
        if c["state"] == COMPLIANT:
            continue
        location: dict[str, Any] = {"artifactLocation": {"uri": _uri(c["file"])}}
        if c.get("line"):
            location["region"] = {"startLine": c["line"], "startColumn": c["column"]}
        rule = f"welkin/{c['state']}"
        results.append(
            {
                "ruleId": rule,
                "ruleIndex": RULE_INDEX[rule],
                "level": "error" if c["state"] in fail_on else "warning",
                "message": {"text": _message(c)},
                "locations": [
                    {
                        "physicalLocation": location,
                        "logicalLocations": [
                            {
                                "name": c["name"],
                                "fullyQualifiedName": f"{obj['kind']}/{obj['namespace']}/"
                                f"{obj['name']}/{c['name']}",
                                "kind": "object",
                            }
                        ],
                    }
                ],
                "properties": {
                    "controls_2022": c["controls_2022"],
                    "controls_2013": c["controls_2013"],
                    "steps": c["remediation"]["steps"],
                },
            }
        )
    return results


def _uri(path: str) -> str:
    """A relative URI for a file named on the command line (as code scanning expects)."""
    if path == "<stdin>":
        return "stdin"
    rel = os.path.relpath(path) if os.path.isabs(path) else path
    # Percent-encoded: a space, `#` or `?` in a file name is not a URI's syntax.
    return quote(rel.replace(os.sep, "/").removeprefix("./"), safe="/")


# --- JUnit XML ----------------------------------------------------------------------------


def _junit_cases(obj: dict, fail_on):
    """(testcase, whether it is a failure) for each container of an object."""
    for c in obj["containers"]:
        case = ET.Element(
            "testcase",
            classname=inert(f"{c['file']}.{obj['kind']}.{obj['namespace']}.{obj['name']}"),
            name=f"{c['type']} container {c['name']}",
            file=c["file"],
        )
        if c.get("line"):
            case.set("line", str(c["line"]))
        failed = c["state"] in fail_on
        if failed:
            failure = ET.SubElement(
                case, "failure", message=_message(c), type=STATE[c["state"]].label
            )
            failure.text = "\n".join([_where(c), *c["remediation"]["steps"], *_control_pairs(c)])
        elif c["state"] != COMPLIANT:
            ET.SubElement(case, "system-out").text = _message(c)
        yield case, failed


def _junit_error(error: str) -> ET.Element:
    case = ET.Element("testcase", classname="input", name=error[:200])
    ET.SubElement(case, "error", message=error, type="broken input")
    return case


# --- GitHub workflow commands --------------------------------------------------------------


def _gh_data(text: str) -> str:
    return text.replace("%", "%25").replace("\r", "%0D").replace("\n", "%0A")


def _gh_property(text: str) -> str:
    return _gh_data(text).replace(":", "%3A").replace(",", "%2C")


_AT_LINE = re.compile(r" at line (?P<line>\d+), column (?P<column>\d+)")


def _github_object(obj: dict, fail_on) -> list[str]:
    lines = []
    for c in obj["containers"]:
        if c["state"] == COMPLIANT:
            continue
        level = "error" if c["state"] in fail_on else "warning"
        props = [f"file={_gh_property(c['file'])}"]
        if c.get("line"):
            props += [f"line={c['line']}", f"col={c['column']}"]
        title = f"{STATE[c['state']].label}: {obj['kind']} {obj['name']}/{c['name']}"
        props.append(f"title={_gh_property(title)}")
        lines.append(f"::{level} {','.join(props)}::{_gh_data(_message(c))}")
    return lines


def _github_tail(report: offline.OfflineReport) -> str:
    lines = []
    for error in report.errors:
        props = []
        file = max((n for n in report.inputs if error.startswith(n + ":")), key=len, default=None)
        if file is not None:
            props.append(f"file={_gh_property(file)}")
            at = _AT_LINE.search(error)
            if at:
                props += [f"line={at['line']}", f"col={at['column']}"]
        props.append("title=broken input")
        lines.append(f"::error {','.join(props)}::{_gh_data(error)}")
    s = report.summary
    counts = ", ".join(f"{s[k]} {k}" for k in s)
    if report.skipped:  # excluded, templates, links: said, so nothing is skipped unseen
        counts += "; skipped: " + ", ".join(f"{n} {k}" for k, n in sorted(report.skipped.items()))
    lines.append(f"::notice title={TOOL}::" + _gh_data(counts))
    return "\n".join(lines) + "\n"


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
