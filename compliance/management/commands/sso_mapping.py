"""manage.py sso_mapping: list, add and remove single sign-on mapping rules."""

import getpass

from django.core.exceptions import ValidationError
from django.core.management.base import BaseCommand, CommandError

from compliance.audit import log
from compliance.models import Cluster
from compliance.models.identity import CLAIMS, ROLE_CHOICES, GroupMapping


class Command(BaseCommand):
    help = (
        "Single sign-on mapping rules: `list`; `add --claim groups --value platform "
        "--role security-officer`; `add --claim groups --value team-a --role team-lead "
        "--namespace 'team-a-*' [--cluster prod]`; `remove ID`."
    )

    def add_arguments(self, parser):
        sub = parser.add_subparsers(dest="action", required=True)
        sub.add_parser("list")
        add = sub.add_parser("add")
        add.add_argument("--claim", required=True, choices=[c for c, _ in CLAIMS])
        add.add_argument("--value", required=True)
        add.add_argument("--role", required=True, choices=[r for r, _ in ROLE_CHOICES])
        add.add_argument("--cluster", default="")
        add.add_argument("--namespace", default="")
        add.add_argument("--note", default="")
        remove = sub.add_parser("remove")
        remove.add_argument("id", type=int)

    def handle(self, *args, action, **options):
        if action == "list":
            for rule in GroupMapping.objects.select_related("cluster"):
                self.stdout.write(f"{rule.pk}\t{rule}")
        elif action == "add":
            cluster = None
            if options["cluster"]:
                cluster = Cluster.objects.filter(name=options["cluster"]).first()
                if cluster is None:
                    raise CommandError(f"no cluster {options['cluster']!r}")
            rule = GroupMapping(
                claim=options["claim"],
                value=options["value"],
                role=options["role"],
                cluster=cluster,
                namespace=options["namespace"],
                note=options["note"][:500],
            )
            try:
                rule.full_clean()
            except ValidationError as e:
                raise CommandError(
                    "; ".join(f"{k}: {', '.join(v)}" for k, v in e.message_dict.items())
                ) from None
            rule.save()
            _audit(rule.pk, "added", str(rule))
            self.stdout.write(f"{rule.pk}\t{rule}")
        else:
            deleted, _ = GroupMapping.objects.filter(pk=options["id"]).delete()
            if not deleted:
                raise CommandError(f"no rule {options['id']}")
            _audit(options["id"], "deleted", "")
            self.stdout.write(f"removed rule {options['id']}")


def _audit(pk: int, change: str, shown: str) -> None:
    """As the admin records it, by the command line's user."""
    log.record_change(
        None,
        "compliance.groupmapping",
        pk,
        change,
        (),
        shown,
        f"{getpass.getuser()} (command line)",
    )
