"""`manage.py import_snapshot NAME FILE [--at TIME]` for air-gapped clusters."""

import sys

from django.conf import settings
from django.core.management.base import BaseCommand, CommandError

from compliance import params
from compliance.collect import clusters, scanning
from compliance.models import ScanStatus
from compliance.rules.manifests import read_input


class Command(BaseCommand):
    help = (
        "Record `kubectl get pods,replicasets,jobs -A -o json` output as a complete "
        "scan of NAME (created as a snapshot cluster if new)."
    )

    def add_arguments(self, parser):
        parser.add_argument("name")
        parser.add_argument("file", help="'-' reads stdin")
        parser.add_argument("--at", help="when the snapshot was taken (ISO 8601 with zone)")

    def handle(self, *args, **options):
        try:
            clusters.check_name(options["name"])
        except clusters.ClusterError as e:
            raise CommandError(str(e)) from None
        at = params.option_moment(options["at"])
        try:
            data = read_input(options["file"], settings.WELKIN_SNAPSHOT_MAX_BYTES)
        except ValueError as e:
            raise CommandError(f"{options['file']}: {e} (WELKIN_SNAPSHOT_MAX_BYTES)") from None
        except OSError as e:
            raise CommandError(f"{options['file']}: {e.strerror or e}") from None
        try:
            result = scanning.import_snapshot(options["name"], data, options["file"], at)
        except scanning.SnapshotError as e:
            raise CommandError(str(e)) from None
        except Exception as e:  # nothing was stored (one transaction); say why, briefly
            raise CommandError(
                f"{options['file']}: the import failed and stored nothing: "
                f"{type(e).__name__}: {str(e)[:500]}"
            ) from None
        for line in scanning.summarize([result]):
            self.stdout.write(line)
        if result.status != ScanStatus.SUCCEEDED:
            sys.exit(1)
