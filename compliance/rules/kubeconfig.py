"""Kubeconfig safety, pure: a kubeconfig is reduced to the few inline fields a scan needs
(server, CA data, token or client certificate data). Exec credential plugins,
auth-providers and paths to local files are refused with the field and the reason: such
a kubeconfig can run code on, or read files from, the worker. No network, no Django:
kube.py connects with the Credentials this returns, models.py stores them encrypted.
"""

from __future__ import annotations

import base64
import binascii
from dataclasses import asdict, dataclass
from typing import Any

import orjson
import yaml

from compliance.rules.gate import show
from compliance.rules.manifests import ManifestError, load_yaml

MAX_KUBECONFIG_BYTES = 1 << 20

# Fields that make the client run a program or read a local file, and why each is refused.
REFUSED_USER_FIELDS = {
    "exec": "an exec credential plugin runs a program on the worker",
    "auth-provider": "an auth-provider runs a credential helper on the worker",
    "tokenFile": "a token file is a path on the worker's disk; use an inline token",
    "client-certificate": "a path on the worker's disk; use client-certificate-data",
    "client-key": "a path on the worker's disk; use client-key-data",
    "username": "basic authentication is not supported by Kubernetes; use a token",
    "password": "basic authentication is not supported by Kubernetes; use a token",
}
REFUSED_CLUSTER_FIELDS = {
    "certificate-authority": "a path on the worker's disk; use certificate-authority-data",
    "insecure-skip-tls-verify": "TLS verification cannot be turned off for a cluster",
    "proxy-url": "proxies are not supported",
}


class KubeconfigError(ValueError):
    """A kubeconfig that cannot be used, with the field and the reason."""


@dataclass(frozen=True)
class Credentials:
    """What a scan needs to reach one cluster. Stored encrypted as JSON."""

    server: str
    ca_data: str | None = None  # PEM
    token: str | None = None
    client_cert_data: str | None = None  # PEM
    client_key_data: str | None = None  # PEM
    tls_server_name: str | None = None

    def to_json(self) -> bytes:
        return orjson.dumps({k: v for k, v in asdict(self).items() if v is not None})

    @classmethod
    def from_json(cls, data: bytes) -> Credentials:
        return cls(**orjson.loads(data))


def _b64_pem(value: Any, field: str) -> str:
    if not isinstance(value, str):
        raise KubeconfigError(f"{field}: expected base64 text")
    try:
        pem = base64.b64decode(value, validate=True).decode()
    except (binascii.Error, UnicodeDecodeError):
        raise KubeconfigError(f"{field}: not valid base64 PEM data") from None
    if "-----BEGIN " not in pem:
        raise KubeconfigError(f"{field}: the decoded data is not PEM")
    return pem


def _named(entries: Any, kind: str, name: str, key: str) -> dict:
    if not isinstance(entries, list):
        raise KubeconfigError(f"{kind}: expected a list")
    for entry in entries:
        if isinstance(entry, dict) and entry.get("name") == name:
            value = entry.get(key)
            if not isinstance(value, dict):
                raise KubeconfigError(f"{kind}[{name}].{key}: expected an object")
            return value
    raise KubeconfigError(f"{kind}: no entry named {show(name)}")


def parse_kubeconfig(text: str | bytes, context: str | None = None) -> tuple[str, Credentials]:
    """(context name, credentials) from a kubeconfig; refuses anything unsafe."""
    if len(text) > MAX_KUBECONFIG_BYTES:
        raise KubeconfigError(f"the kubeconfig is larger than {MAX_KUBECONFIG_BYTES} bytes")
    try:
        doc = load_yaml(text, "the kubeconfig")
    except yaml.YAMLError as e:
        raise KubeconfigError(f"not valid YAML: {e}") from None
    except (ManifestError, UnicodeDecodeError) as e:  # an alias bomb, or not text
        raise KubeconfigError(str(e)) from None
    if not isinstance(doc, dict):
        raise KubeconfigError(
            "expected a kubeconfig (a YAML mapping with clusters, users and contexts)"
        )
    if doc.get("kind", "Config") != "Config":
        raise KubeconfigError(f"kind is {show(doc.get('kind'))}, expected Config")
    name = context or doc.get("current-context")
    if not name or not isinstance(name, str):
        raise KubeconfigError("no context given and no current-context set")
    ctx = _named(doc.get("contexts"), "contexts", name, "context")
    cluster_name, user_name = ctx.get("cluster"), ctx.get("user")
    cluster = _named(doc.get("clusters"), "clusters", cluster_name, "cluster")
    user = _named(doc.get("users"), "users", user_name, "user") if user_name else {}

    for key, why in REFUSED_USER_FIELDS.items():
        if user.get(key) not in (None, "", {}):
            raise KubeconfigError(f"users[{user_name}].user.{key} is refused: {why}")
    for key, why in REFUSED_CLUSTER_FIELDS.items():
        if cluster.get(key) not in (None, "", False):
            raise KubeconfigError(f"clusters[{cluster_name}].cluster.{key} is refused: {why}")

    server = cluster.get("server")
    if not isinstance(server, str) or not server.startswith("https://"):
        raise KubeconfigError(
            f"clusters[{cluster_name}].cluster.server: expected an https:// URL, got {server!r}"
        )
    where = f"clusters[{cluster_name}].cluster"
    ca = cluster.get("certificate-authority-data")
    creds = Credentials(
        server=server.rstrip("/"),
        ca_data=_b64_pem(ca, f"{where}.certificate-authority-data") if ca else None,
        tls_server_name=cluster.get("tls-server-name") or None,
        token=user.get("token") or None,
        client_cert_data=_b64_pem(
            user["client-certificate-data"], f"users[{user_name}].user.client-certificate-data"
        )
        if user.get("client-certificate-data")
        else None,
        client_key_data=_b64_pem(
            user["client-key-data"], f"users[{user_name}].user.client-key-data"
        )
        if user.get("client-key-data")
        else None,
    )
    if creds.token is not None and not isinstance(creds.token, str):
        raise KubeconfigError(f"users[{user_name}].user.token: expected a string")
    if bool(creds.client_cert_data) != bool(creds.client_key_data):
        raise KubeconfigError(
            f"users[{user_name}].user: client-certificate-data and client-key-data go together"
        )
    if not creds.token and not creds.client_cert_data:
        raise KubeconfigError(
            f"users[{user_name}].user: no credentials (expected token or "
            "client-certificate-data with client-key-data)"
        )
    return name, creds
