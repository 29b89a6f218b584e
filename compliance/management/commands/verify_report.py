"""`manage.py verify_report FILE [MANIFEST]`: is the report unmodified, and whose is it?"""

import sys

from django.core.management.base import BaseCommand, CommandError

from compliance import exports


class Command(BaseCommand):
    help = "Check a report against its signed manifest (default: FILE.manifest.json)."

    def add_arguments(self, parser):
        parser.add_argument("file")
        parser.add_argument("manifest", nargs="?")

    def handle(self, *args, **options):
        manifest = options["manifest"] or options["file"] + ".manifest.json"
        try:
            with open(manifest, "rb") as f:
                manifest_bytes = f.read(exports.MANIFEST_MAX_BYTES + 1)
            if len(manifest_bytes) > exports.MANIFEST_MAX_BYTES:
                raise CommandError(
                    f"{manifest}: larger than {exports.MANIFEST_MAX_BYTES} "
                    "bytes; not a welkin-dash manifest"
                )
            with open(options["file"], "rb") as f:
                result = exports.verify(iter(lambda: f.read(1 << 20), b""), manifest_bytes)
        except OSError as e:
            raise CommandError(f"{e.filename}: {e.strerror or e}") from None
        self.stdout.write(("OK: " if result.ok else "FAILED: ") + result.message)
        if not result.ok:
            sys.exit(1)
