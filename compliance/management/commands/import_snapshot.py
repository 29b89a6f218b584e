"""`manage.py import_snapshot NAME FILE [--at TIME]` for air-gapped clusters."""

import sys

from django.core.management.base import BaseCommand, CommandError
from django.utils.dateparse import parse_datetime

from compliance import clusters, scanning


class Command(BaseCommand):
    help = ("Record `kubectl get pods,replicasets,jobs -A -o json` output as a complete "
            "scan of NAME (created as a snapshot cluster if new).")

    def add_arguments(self, parser):
        parser.add_argument("name")
        parser.add_argument("file", help="'-' reads stdin")
        parser.add_argument("--at", help="when the snapshot was taken (ISO 8601 with zone)")

    def handle(self, *args, **o):
        try:
            clusters.check_name(o["name"])
        except clusters.ClusterError as e:
            raise CommandError(str(e)) from None
        at = None
        if o["at"]:
            at = parse_datetime(o["at"])
            if at is None:
                raise CommandError(f"--at {o['at']!r}: expected an ISO 8601 time, e.g. "
                                   "2026-11-28T10:00:00Z")
        try:
            data = sys.stdin.buffer.read() if o["file"] == "-" else open(o["file"], "rb").read()
        except OSError as e:
            raise CommandError(f"{o['file']}: {e.strerror}") from None
        try:
            result = scanning.import_snapshot(o["name"], data, o["file"], at)
        except scanning.SnapshotError as e:
            raise CommandError(str(e)) from None
        for line in scanning.summarize([result]):
            self.stdout.write(line)
        if result.status != "succeeded":
            sys.exit(1)
