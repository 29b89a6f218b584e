"""`manage.py evaluate`: the same command as `welkin-evaluate` (compliance/ci/cli.py)."""

import sys

from django.core.management.base import BaseCommand

from compliance.ci import cli


class Command(BaseCommand):
    help = (
        "Evaluate pods and workload manifests (JSON or YAML) for their effective runAs "
        "state. Exit 0: no container in a --fail-on state; 1: some; 2: broken input."
    )
    requires_system_checks: list = []
    requires_migrations_checks = False

    def add_arguments(self, parser):
        cli.build_parser(parser)

    def handle(self, *args, **options):
        # --resolve with the dashboard's registry credentials, overrides and cache
        code = cli.run({**options, "dashboard": True}, self.stdout, self.stderr)
        if code:
            sys.exit(code)
