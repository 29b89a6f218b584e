"""`manage.py verify_audit_log [--tsa-ca PEM] [--manifests DIR]`: is the audit log's hash
chain unbroken, does it match every signed head, are the heads all there and chained, and
(with --manifests) does the log still hold the head each export's manifest carries? Names
the first broken link; exits 1 when there is one."""

import sys
from pathlib import Path

from django.core.management.base import BaseCommand, CommandError

from compliance.audit import log
from compliance.evidence import signed
from compliance.models import AuditEvent, AuditHead

MANIFESTS_MAX = 100_000  # files read from --manifests, at most


class Command(BaseCommand):
    help = "Check the audit log's hash chain and its signed heads; name the first broken link."

    def add_arguments(self, parser):
        parser.add_argument(
            "--tsa-ca",
            metavar="PEM",
            help="CA the heads' timestamp tokens must chain to (default: WELKIN_TSA_CA_BUNDLE; "
            "without either the tokens are not checked)",
        )
        parser.add_argument(
            "--manifests",
            metavar="DIR",
            help="a folder of export manifests (*.manifest.json, kept outside the database): "
            "the signed head each one carries must still be in the log",
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
        message, ok = result.message, result.ok
        if ok and options["manifests"]:
            ok, message = self._manifests(Path(options["manifests"]), message)
        self.stdout.write(("OK: " if ok else "FAILED: ") + message)
        if not ok:
            sys.exit(1)

    def _manifests(self, folder: Path, message: str) -> tuple[bool, str]:
        if not folder.is_dir():
            raise CommandError(f"{folder}: not a folder")
        paths = sorted(folder.glob("*.manifest.json"))[:MANIFESTS_MAX]
        checked, others = 0, 0
        for path in paths:
            try:
                with open(path, "rb") as f:
                    data = f.read(signed.MANIFEST_MAX_BYTES + 1)
            except OSError:
                others += 1  # a folder, unreadable: not a manifest
                continue
            manifest = signed.check_manifest(data)
            if not manifest.ok:
                others += 1  # not one of ours (another key), or edited: verify_report says
                continue
            head = (manifest.manifest or {}).get("audit_head")
            if not isinstance(head, dict) or not isinstance(head.get("seq"), int):
                continue  # made before any head was signed
            seq, hash_ = head["seq"], head.get("hash")
            held = AuditHead.objects.filter(seq=seq, hash=hash_).exists()
            event = AuditEvent.objects.filter(seq=seq).values_list("hash", flat=True).first()
            if not held or event != hash_:
                return False, (
                    f"{path.name} carries the head signed at {head.get('at')} over event "
                    f"{seq}, which the log no longer holds: the log was rewritten or heads "
                    "were deleted"
                )
            checked += 1
        skipped = (
            f"; {others:,} file{'s' if others != 1 else ''} in the folder "
            f"{'are' if others != 1 else 'is'} not a manifest this server's key signed "
            "(another key, edited, or not a manifest: verify_report names which)"
            if others
            else ""
        )
        return True, f"{message}; the heads of {checked:,} export manifests are all in it{skipped}"
