# Evidence: the audit log's hash chain and signed heads, timestamps on exports, samples.

import datetime
import hashlib
import uuid

import django.db.models.deletion
import django.utils.timezone
from django.conf import settings
from django.db import migrations, models


def chain(apps, schema_editor):
    """Chain the events recorded before the chain existed, in the order they were written.
    The same hash as compliance.audit.chain_hash (kept here as it was when this ran)."""
    import orjson

    AuditEvent = apps.get_model("compliance", "AuditEvent")
    seq, prev = 0, "0" * 64
    for e in AuditEvent.objects.order_by("pk").iterator(5000):
        seq += 1
        fields = [
            seq,
            e.at.astimezone(datetime.UTC).isoformat(timespec="microseconds"),
            e.username,
            e.action,
            e.target,
            e.scope,
            e.content_hash,
            e.ip or "",
            prev,
        ]
        e.seq, e.prev_hash = seq, prev
        e.hash = prev = hashlib.sha256(
            orjson.dumps(fields, option=orjson.OPT_SORT_KEYS)
        ).hexdigest()
        e.save(update_fields=["seq", "prev_hash", "hash"])


class Migration(migrations.Migration):
    dependencies = [
        ("compliance", "0008_risk_acceptance_identity_notifications"),
        migrations.swappable_dependency(settings.AUTH_USER_MODEL),
    ]

    operations = [
        migrations.CreateModel(
            name="AuditHead",
            fields=[
                (
                    "id",
                    models.BigAutoField(
                        auto_created=True, primary_key=True, serialize=False, verbose_name="ID"
                    ),
                ),
                ("seq", models.BigIntegerField()),
                ("hash", models.CharField(max_length=64)),
                ("at", models.DateTimeField(default=django.utils.timezone.now)),
                ("signature", models.CharField(max_length=200)),
                ("public_key", models.CharField(max_length=100)),
                ("timestamp", models.BinaryField(blank=True, null=True)),
                ("timestamp_error", models.TextField(blank=True)),
            ],
            options={
                "ordering": ["-at", "-pk"],
            },
        ),
        migrations.AddField(
            model_name="auditevent",
            name="hash",
            field=models.CharField(default="", max_length=64),
        ),
        migrations.AddField(
            model_name="auditevent",
            name="prev_hash",
            field=models.CharField(default="", max_length=64),
        ),
        migrations.AddField(
            model_name="auditevent",
            name="seq",
            field=models.BigIntegerField(null=True, unique=True),
        ),
        migrations.AddField(
            model_name="export",
            name="timestamp",
            field=models.BinaryField(blank=True, null=True),
        ),
        migrations.AddField(
            model_name="export",
            name="timestamp_error",
            field=models.TextField(blank=True),
        ),
        migrations.AlterField(
            model_name="auditevent",
            name="action",
            field=models.CharField(
                choices=[
                    ("login", "Logged in"),
                    ("login_failed", "Failed login"),
                    ("denied", "Denied access"),
                    ("report_view", "Viewed a report"),
                    ("export", "Exported a report"),
                    ("verify", "Verified a report"),
                    ("audit_export", "Exported the audit log"),
                    ("api", "API request"),
                    ("exception", "Risk acceptance"),
                    ("exception_export", "Exported the exception register"),
                    ("lockout", "Locked out"),
                    ("sso_denied", "Signed in, no access"),
                    ("sso_failed", "Failed sign-on"),
                    ("notify_test", "Sent a test notification"),
                    ("audit_head", "Signed the audit log's head"),
                    ("audit_verify", "Checked the audit log's chain"),
                    ("prune", "Pruned old data"),
                    ("sample", "Drew an audit sample"),
                    ("timestamp", "Timestamped evidence"),
                ],
                max_length=16,
            ),
        ),
        migrations.CreateModel(
            name="Sample",
            fields=[
                (
                    "id",
                    models.UUIDField(
                        default=uuid.uuid4, editable=False, primary_key=True, serialize=False
                    ),
                ),
                ("created_at", models.DateTimeField(default=django.utils.timezone.now)),
                ("cluster", models.CharField(blank=True, max_length=63)),
                ("namespace", models.CharField(blank=True, max_length=63)),
                ("at", models.DateTimeField()),
                ("size", models.PositiveIntegerField()),
                ("seed", models.CharField(max_length=64)),
                ("population", models.PositiveIntegerField()),
                ("population_sha256", models.CharField(max_length=64)),
                ("items", models.JSONField(default=list)),
                (
                    "user",
                    models.ForeignKey(
                        null=True,
                        on_delete=django.db.models.deletion.SET_NULL,
                        related_name="+",
                        to=settings.AUTH_USER_MODEL,
                    ),
                ),
            ],
            options={
                "ordering": ["-created_at"],
            },
        ),
        migrations.AlterField(
            model_name="export", name="format", field=models.CharField(max_length=8)
        ),
        migrations.RunPython(chain, migrations.RunPython.noop),
        migrations.AlterField(
            model_name="auditevent", name="seq", field=models.BigIntegerField(unique=True)
        ),
        migrations.AlterField(
            model_name="auditevent", name="prev_hash", field=models.CharField(max_length=64)
        ),
        migrations.AlterField(
            model_name="auditevent", name="hash", field=models.CharField(max_length=64)
        ),
    ]
