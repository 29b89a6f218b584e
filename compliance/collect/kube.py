"""The only code that talks to Kubernetes clusters.

- It connects with the Credentials that kubeconfig.py (pure) made safe.
- One kubernetes client Configuration per cluster, never the global default; urllib3's own
  retries are off (it would silently retry 429/503), a timeout on every request.
- Paginated LIST read as raw JSON, one page in memory at a time, with the fault policy of
  DESIGN.md: 410 restarts the list, 429 honours Retry-After, 5xx and timeouts retry with
  backoff, 401/403 fail with the reason.
- Bounds against a hostile (or broken) API server, each failing the scan with a reason a
  person can act on: every response body (pages and error answers alike) is read by
  bounded.py with a byte cap and a total deadline per request; a page with more items
  than the limit asked for, a continue token seen before in the same list, or one longer
  than 8 KiB ends the list; and per scan, a deadline and a budget of objects per list.
"""

from __future__ import annotations

import hashlib
import logging
import os
import random
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import orjson
import urllib3

from compliance import bounded
from compliance.rules import gate, podjson
from compliance.rules.kubeconfig import Credentials

log = logging.getLogger(__name__)

SERVICE_ACCOUNT_DIR = Path("/var/run/secrets/kubernetes.io/serviceaccount")


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
        reason = gate.inert(reason, 2000)  # it may quote the API server
        super().__init__(reason)
        self.reason = reason
        self.transient = transient


class ListExpired(Exception):
    pass


class Restart:
    """Yielded by ClusterClient.list_pages when a list starts over after 410 Expired: what the
    earlier pages gave is to be discarded."""

    def __repr__(self) -> str:
        return "RESTART"


RESTART = Restart()


@dataclass(frozen=True)
class Policy:
    """Timeouts, retry bounds and size bounds for one cluster's scan."""

    page_limit: int = 500
    connect_timeout: float = 5.0
    read_timeout: float = 60.0  # one socket read
    max_restarts: int = 3  # 410 Expired
    max_throttled: int = 5  # 429
    max_retry_after: float = 30.0
    max_errors: int = 3  # 5xx, timeouts, dropped connections
    backoff: float = 1.0  # seconds, doubled each time
    page_max_bytes: int = 64 << 20  # one response body
    request_deadline: float = 120.0  # one request, first byte sent to last byte read
    scan_deadline: float = 1800.0  # the whole collection, from the client's creation
    max_pods: int = 1_000_000  # objects in one list (pods; ReplicaSets and Jobs alike)


MAX_CONTINUE_BYTES = 8 << 10
MAX_ERROR_BODY_BYTES = 1 << 20  # an error answer's body (a Status) is read up to this

# resource -> (list path across all namespaces, API group for messages)
LISTS = {
    "pods": ("/api/v1/pods", ""),
    "replicasets": ("/apis/apps/v1/replicasets", "apps"),
    "jobs": ("/apis/batch/v1/jobs", "batch"),
}


class ClusterClient:
    """A kubernetes client for one cluster, with its own configuration. The scan deadline
    (Policy.scan_deadline) runs from its creation."""

    def __init__(
        self,
        creds: Credentials,
        policy: Policy | None = None,
        sleep: Callable[[float], None] = time.sleep,
    ):
        from kubernetes import client

        self.policy = policy or Policy()
        self._deadline = time.monotonic() + self.policy.scan_deadline
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
        self.pages = 0

    def close(self) -> None:
        self.api_client.close()
        if self._tmp is not None:
            self._tmp.cleanup()

    def __enter__(self) -> ClusterClient:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def list_pages(self, resource: str) -> Iterator[list[dict] | Restart]:
        """Every page of `resource` across all namespaces, one at a time, as the items the
        evaluator reads. After 410 Expired the list starts over: RESTART comes first."""
        for attempt in range(self.policy.max_restarts + 1):
            if attempt:
                yield RESTART
            try:
                yield from self._list_once(resource)
                return
            except ListExpired:
                log.info("list %s expired, restart %d", resource, attempt + 1)
        raise ScanError(
            f"list {resource}: the continue token expired "
            f"{self.policy.max_restarts + 1} times (410 Expired); the cluster "
            "changes faster than it can be listed",
            transient=True,
        )

    def _list_once(self, resource: str) -> Iterator[list[dict]]:
        p = self.policy
        # A list of at most max_pods objects needs ceil(max_pods / limit) full pages; short
        # pages are allowed, endless ones are not.
        max_pages = 2 * -(-p.max_pods // p.page_limit) + 10
        seen: set[bytes] = set()  # the continue tokens of this list, hashed
        token, pages, objects = None, 0, 0
        while True:
            body = self._page(resource, token)
            try:
                items, token = podjson.decode_page(resource, body, p.page_limit)
            except podjson.PageError as e:
                raise ScanError(f"list {resource}: {e}") from None
            del body  # one page in memory at a time
            self.pages += 1
            pages += 1
            if len(items) > p.page_limit:
                raise ScanError(
                    f"list {resource}: the API server sent {len(items):,} items "
                    f"in one page, but at most {p.page_limit:,} were asked for "
                    f"(limit={p.page_limit}); it ignores the page limit"
                )
            objects += len(items)
            if objects > p.max_pods:
                raise ScanError(
                    f"list {resource}: more than {p.max_pods:,} {resource} in "
                    "the cluster, the most one scan takes (WELKIN_SCAN_MAX_PODS)"
                )
            if token:
                self._check_token(resource, token, seen, pages, max_pages)
            yield items
            del items
            if not token:
                return

    @staticmethod
    def _check_token(
        resource: str, token: str, seen: set[bytes], pages: int, max_pages: int
    ) -> None:
        raw = token.encode()
        if len(raw) > MAX_CONTINUE_BYTES:
            raise ScanError(
                f"list {resource}: the API server sent a continue token of "
                f"{len(raw):,} bytes (at most {MAX_CONTINUE_BYTES:,} are "
                "accepted)"
            )
        key = hashlib.blake2b(raw, digest_size=16).digest()
        if key in seen:
            raise ScanError(
                f"list {resource}: the API server sent a continue token it had "
                f"already sent in this list (after page {pages}); the list "
                "would never end"
            )
        seen.add(key)
        if pages >= max_pages:
            raise ScanError(
                f"list {resource}: still more pages after {pages:,}; the API "
                "server keeps sending short pages"
            )

    def _scan_expired(self, resource: str) -> ScanError:
        return ScanError(
            f"the scan did not finish within {self.policy.scan_deadline:g} s "
            f"(WELKIN_SCAN_DEADLINE); it stopped while listing {resource}, "
            f"after {self.pages:,} pages"
        )

    def _wait(self, seconds: float, resource: str) -> None:
        if time.monotonic() + seconds >= self._deadline:
            raise self._scan_expired(resource)
        self._sleep(seconds)

    def _fetch(self, resource: str, token: str | None) -> tuple[int, str, Any, bytes | None]:
        """(status, reason phrase, headers, body) of one LIST request; the body is None when
        an error answer's body is too large to read."""
        p = self.policy
        path = LISTS[resource][0]
        start = time.monotonic()
        left = self._deadline - start
        if left <= 0:
            raise self._scan_expired(resource)
        deadline = start + min(p.request_deadline, left)
        query: list[tuple[str, Any]] = [("limit", p.page_limit)]
        if token:
            query.append(("continue", token))
        request = self.api_client.param_serialize(
            "GET",
            path,
            query_params=query,
            header_params={"Accept": "application/json"},
            auth_settings=["BearerToken"],
        )
        r = self.api_client.call_api(
            *request, _request_timeout=(min(p.connect_timeout, left), min(p.read_timeout, left))
        ).response
        ok = 200 <= r.status < 300
        try:
            body: bytes | None = bounded.read_body(
                r, p.page_max_bytes if ok else MAX_ERROR_BODY_BYTES, deadline
            )
        except bounded.TooLarge as e:
            if not ok:
                body = None  # the status says enough
            else:
                raise ScanError(
                    f"list {resource}: a page is larger than {_size(e.limit)} "
                    "(WELKIN_PAGE_MAX_BYTES)"
                    + (f"; the API server announced {e.size:,} bytes" if e.size else "")
                )
        except bounded.DeadlineExceeded as e:
            if deadline >= self._deadline:
                raise self._scan_expired(resource) from None
            raise ScanError(
                f"list {resource}: the API server did not send a whole page "
                f"within {p.request_deadline:g} s (WELKIN_KUBE_REQUEST_DEADLINE);"
                f" {e.received:,} bytes arrived"
            ) from None
        finally:
            r.release_conn()
        return r.status, r.reason or "", r.headers, body

    def _page(self, resource: str, token: str | None) -> bytes:
        from kubernetes.client.exceptions import ApiException

        group = LISTS[resource][1]
        p = self.policy
        throttled = errors = 0
        while True:
            try:
                status, reason, headers, body = self._fetch(resource, token)
                if 200 <= status < 300 and body is not None:
                    return body
                if status == 410:
                    raise ListExpired()
                if status == 401:
                    raise ScanError("credentials rejected (401 Unauthorized)")
                if status == 403:
                    raise ScanError(_forbidden(resource, group, body))
                if status == 429:
                    throttled += 1
                    if throttled > p.max_throttled:
                        raise ScanError(
                            f"list {resource}: still throttled (429) after {p.max_throttled} waits",
                            transient=True,
                        )
                    wait = min(_retry_after(headers), p.max_retry_after)
                    self._wait(wait + random.uniform(0, min(1.0, wait / 4 + 0.1)), resource)
                    continue
                errors += 1
                if errors > p.max_errors or status < 500:
                    raise ScanError(
                        f"list {resource}: {status} {_message(body) or reason}"
                        + (f" (after {errors} attempts)" if errors > 1 else ""),
                        transient=status >= 500,
                    )
            except ApiException as e:  # the client wraps urllib3's SSLError this way
                raise ScanError(
                    f"list {resource}: TLS verification failed: {str(e.reason).splitlines()[-1]}"
                ) from None
            except (urllib3.exceptions.HTTPError, OSError) as e:
                errors += 1
                if errors > p.max_errors:
                    raise ScanError(
                        f"list {resource}: {_network_reason(e)} (after {errors} attempts)",
                        transient=True,
                    ) from None
            self._wait(p.backoff * 2 ** (errors - 1) * random.uniform(0.8, 1.2), resource)


def _size(n: int) -> str:
    for unit, shift in (("GiB", 30), ("MiB", 20), ("KiB", 10)):
        if n >= 1 << shift and n % (1 << shift) == 0:
            return f"{n >> shift} {unit}"
    return f"{n:,} bytes"


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
    return (
        f"forbidden (403): the scanner needs list on {resource} ({api} API group) across "
        f"all namespaces; it needs only list on pods, replicasets and jobs"
        + (f". The API server said: {detail}" if detail else "")
    )


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
