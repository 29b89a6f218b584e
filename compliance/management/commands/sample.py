"""`manage.py sample --size N [--seed S] [--at T] [--cluster C [--namespace NS]]`: draw an
audit sample (or redraw one from its seed) and print the workloads and the population's
SHA-256, to compare with a stored or exported sample."""

import getpass

import orjson
from django.core.management.base import BaseCommand, CommandError

from compliance import params
from compliance.audit import log
from compliance.evidence import reports, samples
from compliance.identity import access
from compliance.models import AuditEvent


class Command(BaseCommand):
    help = "Draw (or redraw from its seed) an audit sample of workloads; prints JSON."

    def add_arguments(self, parser):
        parser.add_argument("--size", type=int, required=True)
        parser.add_argument("--seed", default="")
        parser.add_argument("--at", help="ISO 8601 time (default: now)")
        parser.add_argument("--cluster")
        parser.add_argument("--namespace")

    def handle(self, *args, **options):
        try:
            d = samples.draw(
                access.Scope(None, access.AUDITOR),  # the command line sees the fleet
                params.option_moment(options["at"]),
                options["size"],
                options["seed"],
                options["cluster"],
                options["namespace"],
            )
        except (samples.SampleError, reports.ReportError) as e:
            raise CommandError(str(e)) from None
        log.record(
            None,
            AuditEvent.Action.SAMPLE,
            "sample (command line)",
            {
                "cluster": options["cluster"],
                "namespace": options["namespace"],
                "at": d.report.at.isoformat(),
                "size": options["size"],
                "seed": d.seed,
            },
            d.population_sha256,
            username=f"{getpass.getuser()} (command line)"[:150],
        )
        self.stdout.write(
            orjson.dumps(
                {
                    "at": d.report.at.isoformat(),
                    "seed": d.seed,
                    "population": len(d.population),
                    "population_sha256": d.population_sha256,
                    "workloads": [
                        {"cluster": c, "namespace": ns, "workload_kind": k, "workload_name": n}
                        for c, ns, k, n in d.chosen
                    ],
                },
                option=orjson.OPT_INDENT_2,
            ).decode()
        )
