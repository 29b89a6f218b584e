"""`manage.py link_identity PROVIDER_USER LOCAL_USER` (or `--unlink PROVIDER_USER`): record
that a single sign-on account and a local account are one person, so four eyes count them
as one and the exception register names the person. Audited like the admin's changes."""

import getpass

from django.contrib.auth.models import User
from django.core.management.base import BaseCommand, CommandError

from compliance.audit import log
from compliance.models.identity import OidcIdentity


class Command(BaseCommand):
    help = "Link a single sign-on account to the local account of the same person."

    def add_arguments(self, parser):
        parser.add_argument("provider_user", help="the user name of the single sign-on account")
        parser.add_argument("local_user", nargs="?", help="the local account of that person")
        parser.add_argument("--unlink", action="store_true", help="remove the link")

    def handle(self, *args, provider_user, local_user, unlink, **options):
        identity = OidcIdentity.objects.filter(user__username=provider_user).first()
        if identity is None:
            raise CommandError(f"{provider_user!r} is not a single sign-on account")
        if unlink:
            person = None
        else:
            if not local_user:
                raise CommandError("name the local account (or give --unlink)")
            person = User.objects.filter(username=local_user).first()
            if person is None:
                raise CommandError(f"no user {local_user!r}")
            if person.pk == identity.user_id or hasattr(person, "oidc"):
                raise CommandError(f"{local_user!r} is not a local account")
        identity.person = person
        identity.save(update_fields=["person"])
        log.record_change(
            None,
            "compliance.oidcidentity",
            identity.pk,
            "changed",
            ["person"],
            str(identity),
            f"{getpass.getuser()} (command line)",
        )
        self.stdout.write(
            f"{provider_user} is {'linked to ' + person.username if person else 'not linked'}"
        )
