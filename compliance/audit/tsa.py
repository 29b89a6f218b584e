"""The configured timestamp authority (RFC 3161): ask it for a token, check a token.

WELKIN_TSA_URL names the TSA; WELKIN_TSA_CA_BUNDLE (a PEM file) holds the CA
certificates a token's signer must chain to, and WELKIN_TSA_CRLS (PEM or DER files, comma
separated) the revocation lists to check it against. Without a URL nothing is timestamped
and manifests say so. The work itself (ASN.1, signatures, chains) is in timestamps.py.
"""

from __future__ import annotations

from pathlib import Path

from django.conf import settings

from compliance.audit import timestamps
from compliance.audit.timestamps import Stamp, TimestampError, TimestampUnavailable

__all__ = [
    "NoTrustAnchor",
    "Stamp",
    "TimestampError",
    "TimestampUnavailable",
    "check",
    "configured",
    "stamp",
]


def configured() -> bool:
    return bool(settings.WELKIN_TSA_URL)


def describe() -> dict[str, str | None]:
    """What a manifest says of timestamping (signed into it)."""
    if not configured():
        return {
            "authority": None,
            "note": "no timestamp authority configured (WELKIN_TSA_URL): the times in this "
            "manifest are the server's own clock",
        }
    return {
        "authority": settings.WELKIN_TSA_URL,
        "note": "an RFC 3161 token over this manifest file's bytes is kept beside it "
        "(.tsr); its time is the TSA's, not the server's",
    }


class NoTrustAnchor(TimestampError):
    """No CA to check a token against: the token is not checked (and says so), not refused."""


def ca_bundle() -> bytes:
    path = settings.WELKIN_TSA_CA_BUNDLE
    if not path:
        raise NoTrustAnchor(
            "no CA bundle configured for the timestamp authority (WELKIN_TSA_CA_BUNDLE): "
            "a token cannot be checked without the CA its signer must chain to"
        )
    try:
        return Path(path).read_bytes()
    except OSError as e:
        raise TimestampError(f"WELKIN_TSA_CA_BUNDLE {path}: {e.strerror or e}") from None


def crls() -> list[bytes]:
    out = []
    for path in settings.WELKIN_TSA_CRLS:
        try:
            out.append(Path(path).read_bytes())
        except OSError as e:
            raise TimestampError(f"WELKIN_TSA_CRLS {path}: {e.strerror or e}") from None
    return out


def stamp(data: bytes) -> tuple[bytes | None, str]:
    """A token over the data's SHA-256, checked before it is kept; or None and why not
    (a TSA that is down never blocks the caller: a task asks again later)."""
    if not configured():
        return None, ""
    try:
        token = timestamps.request(
            data,
            settings.WELKIN_TSA_URL,
            timeout=settings.WELKIN_TSA_TIMEOUT,
        )
        timestamps.verify(token, data, ca_bundle=ca_bundle(), crls=crls())
    except TimestampError as e:
        return None, str(e)
    return token, ""


def check(token: bytes, data: bytes, ca: bytes | None = None) -> Stamp:
    """The token's time and authority, if it is a valid token over the data from a TSA
    this server trusts (or the CA given); TimestampError naming the reason otherwise."""
    return timestamps.verify(token, data, ca_bundle=ca or ca_bundle(), crls=crls())
