"""`manage.py verify_audit_log [--tsa-ca PEM]`: is the audit log's hash chain unbroken,
does it match every signed head, and are the heads all there? Names the first broken
link; exits 1 when there is one."""

import sys

from django.core.management.base import BaseCommand, CommandError

from compliance.audit import log


class Command(BaseCommand):
    help = "Check the audit log's hash chain and its signed heads; name the first broken link."

    def add_arguments(self, parser):
        parser.add_argument(
            "--tsa-ca",
            metavar="PEM",
            help="CA the heads' timestamp tokens must chain to (default: WELKIN_TSA_CA_BUNDLE; "
            "without either the tokens are not checked)",
        )

    def handle(self, *args, **options):
        ca = None
        if options["tsa_ca"]:
            try:
                with open(options["tsa_ca"], "rb") as f:
                    ca = f.read(1 << 20)
            except OSError as e:
                raise CommandError(f"{e.filename}: {e.strerror or e}") from None
        result = log.verify_chain(tsa_ca=ca)
        self.stdout.write(("OK: " if result.ok else "FAILED: ") + result.message)
        if not result.ok:
            sys.exit(1)
