"""`manage.py verify_report FILE [MANIFEST]`: is the report unmodified, whose is it, what
did it cover, and (with the TSA's token) when did its manifest exist?"""

import sys
from pathlib import Path

from django.core.management.base import BaseCommand, CommandError

from compliance.evidence import signed


def _read(path: str, limit: int, what: str) -> bytes:
    with open(path, "rb") as f:
        data = f.read(limit + 1)
    if len(data) > limit:
        raise CommandError(f"{path}: larger than {limit} bytes; not a welkin-dash {what}")
    return data


class Command(BaseCommand):
    help = (
        "Check a report against its signed manifest (default: FILE.manifest.json) and the "
        "timestamp token beside it (FILE.manifest.json.tsr, when present)."
    )

    def add_arguments(self, parser):
        parser.add_argument("file")
        parser.add_argument("manifest", nargs="?")
        parser.add_argument(
            "--timestamp",
            metavar="TSR",
            help="the TSA's token (default: MANIFEST.tsr when it exists)",
        )
        parser.add_argument(
            "--tsa-ca",
            metavar="PEM",
            help="CA certificates the TSA must chain to (default: WELKIN_TSA_CA_BUNDLE)",
        )

    def handle(self, *args, **options):
        manifest = options["manifest"] or options["file"] + ".manifest.json"
        token_file = options["timestamp"] or (
            manifest + ".tsr" if Path(manifest + ".tsr").exists() else None
        )
        try:
            manifest_bytes = _read(manifest, signed.MANIFEST_MAX_BYTES, "manifest")
            token = _read(token_file, 1 << 20, "timestamp token") if token_file else None
            ca = _read(options["tsa_ca"], 1 << 20, "CA bundle") if options["tsa_ca"] else None
            with open(options["file"], "rb") as f:
                result = signed.verify(
                    iter(lambda: f.read(1 << 20), b""), manifest_bytes, token, ca
                )
        except OSError as e:
            raise CommandError(f"{e.filename}: {e.strerror or e}") from None
        self.stdout.write(("OK: " if result.ok else "FAILED: ") + result.message)
        if not result.ok:
            sys.exit(1)
