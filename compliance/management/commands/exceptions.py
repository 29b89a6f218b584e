"""`manage.py exceptions list|expiring [--days N] [--status S] [--format table|json]`: the
exception register for scripts (all of it: this runs with the server's rights)."""

import sys

import orjson
from django.core.management.base import BaseCommand, CommandError
from django.utils import timezone

from compliance.identity import access
from compliance.risk import register
from compliance.vocabulary import EXCEPTION_STATUS

TABLE = ("id", "status", "ends_at", "open_findings_covered", "requested_by", "decided_by")


class Command(BaseCommand):
    help = (
        "List the exception register, or the exceptions ending within N days (default 14). "
        "Exit status 0; unused and ended exceptions are flagged in the output."
    )

    def add_arguments(self, parser):
        parser.add_argument("what", choices=["list", "expiring"])
        parser.add_argument("--days", type=int, default=14, help="expiring: within N days")
        parser.add_argument("--status", choices=EXCEPTION_STATUS.values, default="")
        parser.add_argument("--cluster", default="")
        parser.add_argument("--namespace", default="")
        parser.add_argument("--format", choices=["table", "json"], default="table")

    def handle(self, *args, **options):
        if not 0 <= options["days"] <= 3650:
            raise CommandError("--days: between 0 and 3650")
        filters = register.Filters(
            status=options["status"],
            cluster=options["cluster"],
            namespace=options["namespace"],
            ending_within=options["days"] if options["what"] == "expiring" else None,
        )
        doc = register.Register(
            access.Scope(None, access.OFFICER), filters, "manage.py exceptions", timezone.now()
        )
        rows = list(doc.rows())
        if options["format"] == "json":
            sys.stdout.buffer.write(orjson.dumps(rows, option=orjson.OPT_INDENT_2) + b"\n")
            return
        if not rows:
            self.stdout.write("No exceptions" + (" match." if filters.as_dict() else "."))
            return
        lines = []
        for r in rows:
            scope = f"{r['cluster']}/{r['namespace']}"
            if r["workload_kind"]:
                scope += f"/{r['workload_kind']}/{r['workload_name']}"
            if r["container"]:
                scope += f":{r['container']}"
            flags = (" (unused)" if r["unused"] else "") + (" (ended)" if r["ended"] else "")
            lines.append([str(r[c]) for c in TABLE] + [scope + flags])
        # Columns as wide as their widest cell (an end date is wider than a fixed width).
        header = [*TABLE, "scope"]
        widths = [max(len(x) for x in col) for col in zip(header, *lines, strict=True)]
        for line in (header, *lines):
            self.stdout.write(
                "  ".join(f"{x:<{w}}" for x, w in zip(line, widths, strict=True)).rstrip()
            )
