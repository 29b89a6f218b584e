"""`manage.py scan [NAME ...|--all]`: scan now, synchronously, and print a summary."""

import sys

from django.core.management.base import BaseCommand, CommandError

from compliance.collect import scanning
from compliance.models import Cluster, ScanStatus, Source, Trigger


class Command(BaseCommand):
    help = "Scan clusters now (the same service as the periodic task)."

    def add_arguments(self, parser):
        parser.add_argument("names", nargs="*", metavar="NAME")
        parser.add_argument("--all", action="store_true", help="every enabled cluster")

    def handle(self, *args, **options):
        if options["all"] == bool(options["names"]):
            raise CommandError("name clusters or give --all")
        if options["all"]:
            ids = list(
                Cluster.objects.filter(enabled=True)
                .exclude(source=Source.SNAPSHOT)
                .values_list("pk", flat=True)
            )
        else:
            found = dict(
                Cluster.objects.filter(name__in=options["names"]).values_list("name", "pk")
            )
            missing = sorted(set(options["names"]) - set(found))
            if missing:
                raise CommandError(f"no such cluster: {', '.join(missing)}")
            ids = [found[n] for n in options["names"]]
        results = [scanning.scan_cluster(pk, trigger=Trigger.MANUAL) for pk in ids]
        for line in scanning.summarize(results):
            self.stdout.write(line)
        if any(r.status == ScanStatus.FAILED for r in results):
            sys.exit(1)
