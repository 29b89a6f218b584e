"""`manage.py rotate_credentials`: re-encrypt stored credentials with the first key."""

from django.core.management.base import BaseCommand
from django.db import transaction

from compliance import crypto
from compliance.models import Cluster


class Command(BaseCommand):
    help = "Re-encrypt every stored credential with the first key of WELKIN_FERNET_KEYS."

    def handle(self, *args, **options):
        n = 0
        with transaction.atomic():
            for c in Cluster.objects.select_for_update().exclude(credentials_encrypted=None):
                c.credentials_encrypted = crypto.rotate(c.credentials_encrypted)
                c.save(update_fields=["credentials_encrypted"])
                n += 1
        self.stdout.write(f"{n} credentials re-encrypted")
