"""`manage.py load_demo [--password P] [--if-empty]`: a realistic demo fleet."""

from django.core.management.base import BaseCommand, CommandError

from compliance import demo
from compliance.models import Cluster


class Command(BaseCommand):
    help = (
        "Load three demo clusters with 90 days of history, and the users officer, "
        "auditor and lead (granted the payments and web namespaces)."
    )

    def add_arguments(self, parser):
        parser.add_argument(
            "--password",
            default="welkin-demo",
            help="password of the demo users (default: welkin-demo)",
        )
        parser.add_argument(
            "--if-empty", action="store_true", help="do nothing when clusters exist (for make run)"
        )

    def handle(self, *args, **options):
        if options["if_empty"] and Cluster.objects.exists():
            return
        try:
            result = demo.load(options["password"])
            risks = demo.add_exceptions()
        except ValueError as e:
            raise CommandError(str(e)) from None
        self.stdout.write(
            f"demo loaded: {result['clusters']} clusters, {result['snapshots']} daily snapshots, "
            f"{risks} exceptions (risk acceptance)"
        )
        self.stdout.write(
            f"log in at http://127.0.0.1:8000/ as officer, auditor or lead "
            f"(password: {options['password']})"
        )
