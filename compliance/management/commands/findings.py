"""`manage.py findings`: open findings as a table or JSON."""

import orjson
from django.core.management.base import BaseCommand, CommandError

from compliance.evidence import reports
from compliance.vocabulary import NONCOMPLIANT


class Command(BaseCommand):
    help = "List open findings."

    def add_arguments(self, parser):
        parser.add_argument("--cluster")
        parser.add_argument("--namespace")
        parser.add_argument("--state", choices=NONCOMPLIANT)
        parser.add_argument("--format", choices=("table", "json"), default="table")

    def handle(self, *args, **options):
        try:
            rows = reports.open_findings(
                cluster=options["cluster"], namespace=options["namespace"], state=options["state"]
            )
        except reports.ReportError as e:
            raise CommandError(str(e)) from None
        if options["format"] == "json":
            self.stdout.write(orjson.dumps(list(rows), option=orjson.OPT_INDENT_2).decode())
            return
        n = 0
        for r in rows:
            n += 1
            self.stdout.write(
                f"{r['state']:<10} {r['cluster']}/{r['namespace']} "
                f"{r['workload_kind']}/{r['workload_name']} {r['container']} "
                f"({r['pods']} pods) {r['image']}"
            )
        self.stdout.write(f"{n} open findings")
