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
        "timestamp token beside it (FILE.manifest.json.tsr): required when the manifest "
        "names a timestamp authority."
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
            "--no-require-timestamp",
            action="store_true",
            help="accept a manifest made for a TSA without its token (checks the file and "
            "the signature only; by default that is a failure: a token removed hides when "
            "the report existed)",
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
        authority = ((result.manifest or {}).get("timestamp") or {}).get("authority")
        required = authority and not options["no_require_timestamp"]
        if result.ok and required and result.stamp is None:
            # A token missing, or one that could not be checked (no TSA CA to check it
            # against): either way the report's time is not proven.
            why = (
                f"its token is missing ({manifest}.tsr): give it with --timestamp TSR"
                if token is None
                else "its token could not be checked: give the TSA's CA with --tsa-ca PEM "
                "(or WELKIN_TSA_CA_BUNDLE)"
            )
            self.stdout.write(
                f"FAILED: the manifest was made for the timestamp authority {authority}, and "
                f"{why}, or check the file and its signature alone with --no-require-timestamp"
            )
            sys.exit(1)
        self.stdout.write(("OK: " if result.ok else "FAILED: ") + result.message)
        if not result.ok:
            sys.exit(1)
