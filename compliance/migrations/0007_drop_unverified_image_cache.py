"""Image cache rows written before registry answers were verified against their digests
may hold a wrong answer, kept for good for a digest: drop them all (it is a cache; the
next scans look the images up again, verified)."""

from django.db import migrations


def drop_cache(apps, schema_editor):
    apps.get_model("compliance", "ImageCache").objects.all().delete()


class Migration(migrations.Migration):
    dependencies = [("compliance", "0006_image_cache_digests")]

    operations = [migrations.RunPython(drop_cache, migrations.RunPython.noop)]
