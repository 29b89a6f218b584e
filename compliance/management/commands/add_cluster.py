"""`manage.py add_cluster NAME --kubeconfig FILE [--context CTX]`."""

from django.core.management.base import BaseCommand, CommandError

from compliance.collect import clusters


class Command(BaseCommand):
    help = (
        "Register a cluster from a kubeconfig context (inline credentials only) or the "
        "in-cluster service account."
    )

    def add_arguments(self, parser):
        parser.add_argument("name")
        src = parser.add_mutually_exclusive_group(required=True)
        src.add_argument("--kubeconfig", metavar="FILE")
        src.add_argument("--in-cluster", action="store_true")
        parser.add_argument("--context")
        parser.add_argument("--schedule", type=int, metavar="MINUTES")
        parser.add_argument("--replace", action="store_true", help="update an existing cluster")

    def handle(self, *args, **options):
        text = None
        if options["kubeconfig"]:
            try:
                with open(options["kubeconfig"], "rb") as f:
                    text = f.read()
            except OSError as e:
                raise CommandError(f"{options['kubeconfig']}: {e.strerror}") from None
        try:
            cluster = clusters.add_cluster(
                options["name"],
                kubeconfig=text,
                context=options["context"],
                in_cluster=options["in_cluster"],
                schedule_minutes=options["schedule"],
                replace=options["replace"],
            )
        except clusters.ClusterError as e:
            raise CommandError(str(e)) from None
        self.stdout.write(
            f"cluster {cluster.name}: {cluster.server} "
            f"({cluster.get_source_display()}"
            f"{', context ' + cluster.context if cluster.context else ''}), "
            f"every {cluster.schedule_minutes} min"
        )
