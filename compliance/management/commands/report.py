"""`manage.py report --format csv|json|pdf [--cluster C] [--namespace N] [--at T] -o FILE`."""

import getpass
from pathlib import Path

from django.core.management.base import BaseCommand, CommandError

from compliance import params, vocabulary
from compliance.audit import log
from compliance.evidence import reports, store
from compliance.identity import access
from compliance.models import AuditEvent


class Command(BaseCommand):
    help = (
        "Write a point-in-time report (what was open at T) with its signed manifest "
        "(FILE.manifest.json)."
    )

    def add_arguments(self, parser):
        parser.add_argument("--format", choices=vocabulary.EXPORT_FORMATS, required=True)
        parser.add_argument("--cluster")
        parser.add_argument("--namespace")
        parser.add_argument("--at", help="ISO 8601 time with zone (default: now)")
        parser.add_argument("-o", "--output", required=True, metavar="FILE")

    def handle(self, *args, **options):
        at = params.option_moment(options["at"])
        # The command line runs with the server's authority: the whole fleet.
        scope = access.Scope(None, access.AUDITOR)
        try:
            report = reports.point_in_time(
                scope,
                at,
                options["cluster"],
                options["namespace"],
                generated_by=f"{getpass.getuser()} (command line)",
            )
        except reports.ReportError as e:
            raise CommandError(str(e)) from None
        path = Path(options["output"])
        try:
            m = store.export_to(report, options["format"], path)
        except store.ExportError as e:
            raise CommandError(f"{path}: {e}") from None
        log.record(
            None,
            AuditEvent.Action.EXPORT,
            f"{options['format']} {path} (command line)",
            {**report.scope, "at": report.at.isoformat()},
            m["sha256"],
            username=report.generated_by[:150],
        )
        self.stdout.write(f"{path}: {m['rows']} findings, sha256 {m['sha256']}")
        self.stdout.write(f"{path}.manifest.json: signed manifest")
        cov = m["coverage"]
        self.stdout.write(
            "coverage: complete"
            if cov["complete"]
            else "coverage: NOT complete: " + "; ".join(cov["reasons"])
        )
        token, error = store.add_timestamp(path)
        if token is not None:
            self.stdout.write(f"{store.token_path(path)}: the TSA's timestamp token")
        elif error:
            self.stderr.write(f"not timestamped (the report stands): {error}")
