"""The server's Ed25519 key (WELKIN_SIGNING_KEY): it signs export manifests and the audit
chain's heads; anyone can verify with its public half."""

from __future__ import annotations

import base64
from typing import Any

import orjson
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from django.conf import settings


def signing_key() -> Ed25519PrivateKey:
    return Ed25519PrivateKey.from_private_bytes(base64.b64decode(settings.WELKIN_SIGNING_KEY))


def public_key_b64() -> str:
    from cryptography.hazmat.primitives import serialization

    return base64.b64encode(
        signing_key()
        .public_key()
        .public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    ).decode()


def canonical(manifest: dict[str, Any]) -> bytes:
    return orjson.dumps(
        {k: v for k, v in manifest.items() if k != "signature"}, option=orjson.OPT_SORT_KEYS
    )
