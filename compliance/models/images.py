"""Registries and image users: operator overrides and the cache of looked-up users."""

from __future__ import annotations

from django.db import models

from compliance import crypto


class Registry(models.Model):
    """How to reach one container registry: credentials (encrypted), CA, plain HTTP."""

    host = models.CharField(
        max_length=255,
        unique=True,
        help_text="As in image references: ghcr.io, registry.example.com:5000"
        " (docker.io for Docker Hub)",
    )
    username = models.CharField(max_length=255, blank=True)
    password_encrypted = models.BinaryField(null=True, blank=True, editable=False)
    ca_pem = models.TextField(blank=True, help_text="PEM CA certificates to trust (optional)")
    plain_http = models.BooleanField(
        default=False, help_text="Only for registries without TLS on a trusted network"
    )

    class Meta:
        ordering = ["host"]
        verbose_name_plural = "registries"

    def __str__(self) -> str:
        return self.host

    @property
    def password(self) -> str | None:
        if not self.password_encrypted:
            return None
        return crypto.decrypt(self.password_encrypted).decode()

    def set_password(self, value: str | None) -> None:
        self.password_encrypted = crypto.encrypt(value.encode()) if value else None


class ImageUserOverride(models.Model):
    """An operator-supplied image user, for images the dashboard cannot look up.

    `pattern` is a glob over the image reference as written in the pod (`registry.internal/
    team/*`, `*:legacy-*`); `user` is the image config's User ("" for no USER)."""

    pattern = models.CharField(max_length=500, unique=True)
    user = models.CharField(max_length=255, blank=True)
    note = models.CharField(max_length=500, blank=True)
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        ordering = ["pattern"]

    def __str__(self) -> str:
        return f"{self.pattern} -> {self.user!r}"


class ImageCache(models.Model):
    """A registry lookup: reference (+platform) -> config User, or the failure.

    Digest references never expire (an image config never changes); tags and failures
    expire after a short time."""

    key = models.CharField(max_length=1100, unique=True)  # normalised reference | platform
    user = models.CharField(max_length=255, null=True, blank=True)  # noqa: DJ001 - None=unknown
    digest = models.CharField(max_length=200, blank=True)  # sha512 digests are 135
    config_digest = models.CharField(max_length=200, blank=True)
    error = models.TextField(blank=True)
    resolved_at = models.DateTimeField()
    expires_at = models.DateTimeField(null=True, blank=True)  # None: for good
    # What the image's /etc/passwd says for the fix (finding detail "passwd"), read once per
    # image: None when not read (or when the read failed, which is retried next scan).
    passwd = models.JSONField(null=True, blank=True)

    def __str__(self) -> str:
        return f"{self.key} -> {self.user!r}{' ' + self.error if self.error else ''}"


class ImageLayer(models.Model):
    """What one image layer says about /etc/passwd, /etc/group and os-release (collect/
    layers.py): the files it holds, deletes or hides. A layer is named by the digest of its
    bytes, which were verified, so a row never expires; failures are never stored."""

    digest = models.CharField(max_length=200, unique=True)
    facts = models.JSONField()  # layers.LayerFacts.to_json()
    read_at = models.DateTimeField()

    def __str__(self) -> str:
        return self.digest
