from django.apps import AppConfig


class ComplianceConfig(AppConfig):
    name = "compliance"
    verbose_name = "Compliance"

    def ready(self) -> None:
        from django.db.backends.signals import connection_created

        from compliance.audit import log  # noqa: F401 - connects the login hooks

        connection_created.connect(_session_settings)


def _session_settings(sender, connection, **kwargs) -> None:
    """PostgreSQL's JIT off for this app's connections (WELKIN_DB_JIT=1 leaves it on).

    Our page queries are short, but their cost estimates cross jit_above_cost on a large
    fleet, and compiling them took 25-30 ms of a 60 ms page (a team lead's trend data at
    5M findings). A SET on the new connection, not a startup option, so that PgBouncer,
    which refuses unknown startup parameters, still connects."""
    from django.conf import settings

    if connection.vendor != "postgresql" or settings.WELKIN_DB_JIT:
        return
    with connection.connection.cursor() as cur:  # the driver's own: not a counted query
        cur.execute("SET jit = off")
