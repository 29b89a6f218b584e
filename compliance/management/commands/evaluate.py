"""`manage.py evaluate`: the runAs check for CI pipelines and offline review."""

import sys

import orjson
from django.core.management.base import BaseCommand, CommandError

from compliance import offline
from compliance.vocabulary import COMPLIANT, STATE


class Command(BaseCommand):
    help = (
        "Evaluate pods and workload manifests (JSON or YAML) for their effective runAs "
        "state. Exit 0: no root or blocked container; 1: some; 2: bad input."
    )
    requires_system_checks: list = []
    requires_migrations_checks = False

    def add_arguments(self, parser):
        parser.add_argument("files", nargs="+", metavar="FILE", help="'-' reads stdin")
        parser.add_argument(
            "--image-user",
            action="append",
            default=[],
            metavar="IMAGE=USER",
            help="the image's configured USER; IMAGE= for none",
        )
        parser.add_argument("--image-users", metavar="FILE", help="a JSON object {image: user}")
        parser.add_argument("--format", choices=("table", "json"), default="table")
        parser.add_argument(
            "--resolve",
            action="store_true",
            help="look image users up in their registries (the stored "
            "registry settings and cache when the database is set up)",
        )

    def handle(self, *args, **opts):
        try:
            image_users = {}
            if opts["image_users"]:
                image_users.update(
                    offline.parse_image_users_file(_read(opts["image_users"]), opts["image_users"])
                )
            image_users.update(offline.parse_image_user_args(opts["image_user"]))
        except (ValueError, OSError) as e:
            raise CommandError(str(e), returncode=2) from None

        inputs, read_errors = [], []
        for name in opts["files"]:
            try:
                inputs.append((name if name != "-" else "<stdin>", _read(name)))
            except OSError as e:
                read_errors.append(f"{name}: cannot read: {e.strerror or e}")
        if opts["resolve"]:
            from compliance import images

            resolver = images.offline_resolver(image_users)
            if resolver.offline_note:
                self.stderr.write(f"note: {resolver.offline_note}")
            try:
                report = offline.evaluate_inputs(
                    inputs,
                    resolver.users,
                    resolver.sources,
                    prepare=resolver.prepare,
                    users_for=resolver.users_for,
                )
            finally:
                resolver.close()
        else:
            report = offline.evaluate_inputs(inputs, image_users)
        report.errors[:0] = read_errors

        if opts["format"] == "json":
            self.stdout.write(orjson.dumps(report.as_dict(), option=orjson.OPT_INDENT_2).decode())
        else:
            self._table(report)
        for error in report.errors:
            self.stderr.write(f"error: {error}")
        if report.errors:
            sys.exit(2)
        if report.has_violations:
            sys.exit(1)

    def _table(self, report: offline.OfflineReport) -> None:
        colour = self.stdout.isatty()
        for obj in report.objects:
            verdict = (
                "allowed"
                if obj["psa_restricted"]["allowed"]
                else "denied: " + "; ".join(obj["psa_restricted"]["violations"])
            )
            self.stdout.write(
                f"{obj['kind']} {obj['namespace']}/{obj['name']}  [PSA restricted {verdict}]"
            )
            for c in obj["containers"]:
                state = f"{c['state']:<10}"
                if colour:
                    state = f"\x1b[{STATE[c['state']].ansi}m{state}\x1b[0m"
                who = _identity(c)
                line = f"  {state}  {c['type']:<9} {c['name']:<20} {who:<28} {c['image']}"
                self.stdout.write(line)
                if c["kubelet_error"]:
                    self.stdout.write(f"      kubelet: {c['kubelet_error']}")
                if c["state"] != COMPLIANT:
                    self.stdout.write(f"      fix: {c['remediation']['summary']}")
        s = report.summary
        self.stdout.write("\n" + ", ".join(f"{s[k]} {k}" for k in s))


def _identity(c: dict) -> str:
    if c["uid"] is not None:
        return f"uid {c['uid']} ({c['evidence']})"
    if c["image_user"] is not None:
        return f"user {c['image_user'] or '<none>'!s}"
    return "identity unknown"


def _read(name: str) -> bytes:
    if name == "-":
        return sys.stdin.buffer.read()
    with open(name, "rb") as f:
        return f.read()
