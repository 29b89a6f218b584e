"""Model choices, each from a vocabulary (compliance/vocabulary.py, the one source)."""

from __future__ import annotations

from django.db import models

from compliance import vocabulary


def text_choices(name: str, words: vocabulary.Vocabulary) -> type[models.TextChoices]:
    """Model choices from a vocabulary (compliance/vocabulary.py, the one source)."""
    return models.TextChoices(name, [(t.value.upper(), (t.value, t.label)) for t in words])


State = text_choices("State", vocabulary.STATE)  # a container's effective runAs state
Source = text_choices("Source", vocabulary.CLUSTER_SOURCE)
ScanStatus = text_choices("ScanStatus", vocabulary.SCAN_STATUS)
Trigger = text_choices("Trigger", vocabulary.TRIGGER)
Evidence = text_choices("Evidence", vocabulary.EVIDENCE)
ImageUserSource = text_choices("ImageUserSource", vocabulary.IMAGE_USER_SOURCE)
ContainerType = text_choices("ContainerType", vocabulary.CONTAINER_TYPE)
Decision = text_choices("Decision", vocabulary.EXCEPTION_STATUS)
ExportStatus = text_choices("ExportStatus", vocabulary.EXPORT_STATUS)
