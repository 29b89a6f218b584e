"""`manage.py verify_audit_log`: is the audit log's hash chain unbroken, and does it match
every signed head? Names the first broken link; exits 1 when there is one."""

import sys

from django.core.management.base import BaseCommand

from compliance import audit


class Command(BaseCommand):
    help = "Check the audit log's hash chain and its signed heads; name the first broken link."

    def handle(self, *args, **options):
        result = audit.verify_chain()
        self.stdout.write(("OK: " if result.ok else "FAILED: ") + result.message)
        if not result.ok:
            sys.exit(1)
