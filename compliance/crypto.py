"""Encryption at rest for cluster (and registry) credentials.

WELKIN_FERNET_KEYS is a comma-separated list of Fernet keys: the first encrypts, all
decrypt, so a key is rotated by putting the new one first and running
`manage.py rotate_credentials`. With DEBUG on and no keys set, a random key is generated
once into ./var/development-keys.json so a first look needs no set-up; without DEBUG the
variable is required, and every key is checked at start-up (settings.py).
"""

from __future__ import annotations

from functools import lru_cache

from cryptography.fernet import Fernet, InvalidToken, MultiFernet
from django.conf import settings
from django.core.exceptions import ImproperlyConfigured


class DecryptionError(Exception):
    """Stored credentials cannot be decrypted with any configured key."""


@lru_cache(maxsize=4)
def _fernet(keys: tuple[str, ...]) -> MultiFernet:
    fernets = []
    for i, key in enumerate(keys):
        try:
            fernets.append(Fernet(key))
        except (ValueError, TypeError):
            raise ImproperlyConfigured(
                f"WELKIN_FERNET_KEYS: key {i + 1} is not a valid Fernet key "
                "(32 url-safe base64-encoded bytes)"
            ) from None
    return MultiFernet(fernets)


def fernet() -> MultiFernet:
    return _fernet(tuple(settings.WELKIN_FERNET_KEYS))


def encrypt(data: bytes) -> bytes:
    return fernet().encrypt(data)


def decrypt(token: bytes) -> bytes:
    return _with_keys(fernet().decrypt, token)


def rotate(token: bytes) -> bytes:
    """Re-encrypt with the first key."""
    return _with_keys(fernet().rotate, token)


def _with_keys(operation, token: bytes) -> bytes:
    try:
        return operation(bytes(token))
    except InvalidToken:
        raise DecryptionError(
            "stored credentials cannot be decrypted with the configured "
            "WELKIN_FERNET_KEYS (was a key removed?)"
        ) from None
