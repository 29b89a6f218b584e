"""The only code that talks to Kubernetes clusters.

- Kubeconfig safety: a kubeconfig is reduced to the few inline fields a scan needs
  (server, CA data, token or client certificate data). Exec credential plugins,
  auth-providers and paths to local files are refused with the field and the reason:
  such a kubeconfig can run code on, or read files from, the worker.
- One kubernetes client Configuration per cluster, never the global default; urllib3's own
  retries are off (it would silently retry 429/503), a timeout on every request.
- Paginated LIST read as raw JSON (`_preload_content=False`), one page in memory at a
  time, with the fault policy of DESIGN.md: 410 restarts the list, 429 honours
  Retry-After, 5xx and timeouts retry with backoff, 401/403 fail with the reason.
"""

from __future__ import annotations

import base64
import binascii
import logging
import os
import random
import tempfile
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Protocol

import orjson
import urllib3
import yaml

from compliance import podjson

log = logging.getLogger(__name__)

MAX_KUBECONFIG_BYTES = 1 << 20
SERVICE_ACCOUNT_DIR = Path("/var/run/secrets/kubernetes.io/serviceaccount")

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
    raise KubeconfigError(f"{kind}: no entry named {name!r}")


def parse_kubeconfig(text: str | bytes, context: str | None = None) -> tuple[str, Credentials]:
    """(context name, credentials) from a kubeconfig; refuses anything unsafe."""
    if len(text) > MAX_KUBECONFIG_BYTES:
        raise KubeconfigError(f"the kubeconfig is larger than {MAX_KUBECONFIG_BYTES} bytes")
    try:
        doc = yaml.safe_load(text)
    except yaml.YAMLError as e:
        raise KubeconfigError(f"not valid YAML: {e}") from None
    if not isinstance(doc, dict):
        raise KubeconfigError("expected a kubeconfig (a YAML mapping with clusters, users "
                              "and contexts)")
    if doc.get("kind", "Config") != "Config":
        raise KubeconfigError(f"kind is {doc.get('kind')!r}, expected Config")
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
        raise KubeconfigError(f"clusters[{cluster_name}].cluster.server: expected an https:// "
                              f"URL, got {server!r}")
    where = f"clusters[{cluster_name}].cluster"
    ca = cluster.get("certificate-authority-data")
    creds = Credentials(
        server=server.rstrip("/"),
        ca_data=_b64_pem(ca, f"{where}.certificate-authority-data") if ca else None,
        tls_server_name=cluster.get("tls-server-name") or None,
        token=user.get("token") or None,
        client_cert_data=_b64_pem(user["client-certificate-data"],
                                  f"users[{user_name}].user.client-certificate-data")
        if user.get("client-certificate-data") else None,
        client_key_data=_b64_pem(user["client-key-data"],
                                 f"users[{user_name}].user.client-key-data")
        if user.get("client-key-data") else None,
    )
    if creds.token is not None and not isinstance(creds.token, str):
        raise KubeconfigError(f"users[{user_name}].user.token: expected a string")
    if bool(creds.client_cert_data) != bool(creds.client_key_data):
        raise KubeconfigError(f"users[{user_name}].user: client-certificate-data and "
                              "client-key-data go together")
    if not creds.token and not creds.client_cert_data:
        raise KubeconfigError(f"users[{user_name}].user: no credentials (expected token or "
                              "client-certificate-data with client-key-data)")
    return name, creds


def in_cluster_credentials() -> Credentials:
    """The pod's own service account (read at each scan: the token rotates)."""
    host = os.environ.get("KUBERNETES_SERVICE_HOST")
    port = os.environ.get("KUBERNETES_SERVICE_PORT", "443")
    if not host:
        raise ScanError("not running in a cluster: KUBERNETES_SERVICE_HOST is not set")
    try:
        token = (SERVICE_ACCOUNT_DIR / "token").read_text().strip()
        ca = (SERVICE_ACCOUNT_DIR / "ca.crt").read_text()
    except OSError as e:
        raise ScanError(f"service account files unreadable: {e}") from None
    if ":" in host:
        host = f"[{host}]"
    return Credentials(server=f"https://{host}:{port}", ca_data=ca, token=token)


# --- listing --------------------------------------------------------------------------

class ScanError(Exception):
    """A scan cannot complete; `reason` is shown to people, `transient` allows a retry."""

    def __init__(self, reason: str, transient: bool = False):
        super().__init__(reason)
        self.reason = reason
        self.transient = transient


class ListExpired(Exception):
    pass


class PageSink(Protocol):
    def reset(self) -> None: ...

    def add(self, items: list[dict]) -> None: ...


@dataclass(frozen=True)
class Policy:
    """Timeouts and retry bounds for one cluster's requests."""

    page_limit: int = 500
    connect_timeout: float = 5.0
    read_timeout: float = 60.0
    max_restarts: int = 3  # 410 Expired
    max_throttled: int = 5  # 429
    max_retry_after: float = 30.0
    max_errors: int = 3  # 5xx, timeouts, dropped connections
    backoff: float = 1.0  # seconds, doubled each time


# (resource, kubernetes client API class, its list-all method, API group for messages)
LISTS = {
    "pods": ("CoreV1Api", "list_pod_for_all_namespaces", ""),
    "replicasets": ("AppsV1Api", "list_replica_set_for_all_namespaces", "apps"),
    "jobs": ("BatchV1Api", "list_job_for_all_namespaces", "batch"),
}


class ClusterClient:
    """A kubernetes client for one cluster, with its own configuration."""

    def __init__(self, creds: Credentials, policy: Policy | None = None,
                 sleep: Callable[[float], None] = time.sleep):
        from kubernetes import client

        self.policy = policy or Policy()
        self._sleep = sleep
        self._tmp = None
        config = client.Configuration()
        config.host = creds.server
        config.retries = False  # our policy decides; urllib3 would retry 429/503 silently
        config.verify_ssl = True
        config.ca_cert_data = creds.ca_data
        config.tls_server_name = creds.tls_server_name
        if creds.token:
            config.api_key = {"authorization": creds.token}
            config.api_key_prefix = {"authorization": "Bearer"}
        if creds.client_cert_data:
            # urllib3 loads client certificates from files only: a private directory for
            # this client's lifetime.
            self._tmp = tempfile.TemporaryDirectory(prefix="welkin-kube-")
            cert, key = Path(self._tmp.name, "client.crt"), Path(self._tmp.name, "client.key")
            for path, data in ((cert, creds.client_cert_data), (key, creds.client_key_data)):
                fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
                with os.fdopen(fd, "w") as f:
                    f.write(data)
            config.cert_file, config.key_file = str(cert), str(key)
        self.api_client = client.ApiClient(configuration=config)
        self._apis = {name: getattr(client, name)(self.api_client)
                      for name in {api for api, _, _ in LISTS.values()}}
        self.pages = 0

    def close(self) -> None:
        self.api_client.close()
        if self._tmp is not None:
            self._tmp.cleanup()

    def __enter__(self) -> ClusterClient:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def list_all(self, resource: str, sink: PageSink) -> None:
        """Feed every page of `resource` across all namespaces to sink, restarting the
        list (and the sink) on 410 Expired."""
        for attempt in range(self.policy.max_restarts + 1):
            sink.reset()
            try:
                self._list_once(resource, sink)
                return
            except ListExpired:
                log.info("list %s expired, restart %d", resource, attempt + 1)
        raise ScanError(f"list {resource}: the continue token expired "
                        f"{self.policy.max_restarts + 1} times (410 Expired); the cluster "
                        "changes faster than it can be listed", transient=True)

    def _list_once(self, resource: str, sink: PageSink) -> None:
        token = None
        while True:
            body = self._page(resource, token)
            try:
                items, token = podjson.decode_page(resource, body)
            except podjson.PageError as e:
                raise ScanError(f"list {resource}: {e}") from None
            del body  # one page in memory at a time
            self.pages += 1
            sink.add(items)
            del items
            if not token:
                return

    def _page(self, resource: str, token: str | None) -> bytes:
        from kubernetes.client.exceptions import ApiException

        api, method, group = LISTS[resource]
        call = getattr(self._apis[api], method)
        p = self.policy
        throttled = errors = 0
        while True:
            try:
                kwargs: dict[str, Any] = {"limit": p.page_limit, "_preload_content": False,
                                          "_request_timeout": (p.connect_timeout,
                                                               p.read_timeout)}
                if token:
                    kwargs["_continue"] = token
                response = call(**kwargs)
                try:
                    return response.data
                finally:
                    response.release_conn()
            except ApiException as e:
                status = e.status
                if not status:  # the client wraps urllib3's SSLError this way
                    raise ScanError(f"list {resource}: TLS verification failed: "
                                    f"{str(e.reason).splitlines()[-1]}") from None
                if status == 410:
                    raise ListExpired() from None
                if status == 401:
                    raise ScanError("credentials rejected (401 Unauthorized)") from None
                if status == 403:
                    raise ScanError(_forbidden(resource, group, e.body)) from None
                if status == 429:
                    throttled += 1
                    if throttled > p.max_throttled:
                        raise ScanError(f"list {resource}: still throttled (429) after "
                                        f"{p.max_throttled} waits", transient=True) from None
                    wait = min(_retry_after(e.headers), p.max_retry_after)
                    self._sleep(wait + random.uniform(0, min(1.0, wait / 4 + 0.1)))
                    continue
                errors += 1
                if errors > p.max_errors or not (status and status >= 500):
                    raise ScanError(f"list {resource}: {status} {_message(e.body) or e.reason}"
                                    + (f" (after {errors} attempts)" if errors > 1 else ""),
                                    transient=bool(status and status >= 500)) from None
            except (urllib3.exceptions.HTTPError, OSError) as e:
                errors += 1
                if errors > p.max_errors:
                    raise ScanError(f"list {resource}: {_network_reason(e)} "
                                    f"(after {errors} attempts)", transient=True) from None
            self._sleep(p.backoff * 2 ** (errors - 1) * random.uniform(0.8, 1.2))


def _retry_after(headers: Any) -> float:
    try:
        return max(0.0, float((headers or {}).get("Retry-After", 1)))
    except (TypeError, ValueError):
        return 1.0


def _message(body: Any) -> str | None:
    try:
        return orjson.loads(body).get("message")
    except Exception:
        return None


def _forbidden(resource: str, group: str, body: Any) -> str:
    detail = _message(body)
    api = f'"{group}"' if group else "core"
    return (f"forbidden (403): the scanner needs list on {resource} ({api} API group) across "
            f"all namespaces; it needs only list on pods, replicasets and jobs"
            + (f". The API server said: {detail}" if detail else ""))


def _network_reason(e: Exception) -> str:
    if isinstance(e, urllib3.exceptions.ReadTimeoutError):
        return "timed out waiting for the API server"
    if isinstance(e, urllib3.exceptions.ConnectTimeoutError):
        return "timed out connecting to the API server"
    if isinstance(e, urllib3.exceptions.SSLError):
        return f"TLS error: {e}"
    if isinstance(e, urllib3.exceptions.NewConnectionError):
        return "cannot connect to the API server"
    if isinstance(e, urllib3.exceptions.ProtocolError):
        return "the API server dropped the connection"
    return f"{type(e).__name__}: {e}"
