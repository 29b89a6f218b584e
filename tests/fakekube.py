"""A fake Kubernetes API server for tests and benchmarks, over real HTTPS.

- TLS with its own CA, written into a kubeconfig with inline data (certificate-authority-
  data and a bearer token), so the real kubernetes client connects as to a real cluster.
- Bearer tokens: unknown -> 401, a token without `list` on a resource -> 403, both with
  real Status bodies.
- Discovery: /version, /api, /api/v1, /apis, /apis/apps/v1, /apis/batch/v1.
- LIST of pods, replicasets, jobs and namespaces, across all namespaces and per namespace,
  with limit/continue paging: opaque tokens over a consistent snapshot per list
  (resourceVersion); 410 Expired on a token older than `expire_before`.
- Faults injectable at page k of a resource: 429 with Retry-After, 500, 503, a slow
  response, a dropped connection, 410, a 500 with a 2 MiB body.
- A hostile server's misbehaviours, on the lists of one resource (pods by default): the
  same continue token again and again, tokens that cycle back, tokens of any length,
  endless empty pages, a page limit ignored, one page of N generated pods streamed as
  they are generated (chunked, never held), and pages drip-fed a few bytes at a time
  (optionally chunked, with chunk-size lines padded so that one line takes seconds).

Items are kept as serialized JSON bytes so that pages of a 150,000-pod cluster are served
at memory speed. Run as a module to serve a synthetic fleet from its own process:
`python -m tests.fakekube --pods 150000 --kubeconfig out.yaml`.
"""

from __future__ import annotations

import argparse
import base64
import datetime
import ipaddress
import itertools
import signal
import socket
import ssl
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import parse_qs, urlsplit

import orjson
import yaml
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

# resource -> (group, version, kind, namespaced list path segment)
RESOURCES = {
    "pods": ("", "v1", "Pod"),
    "namespaces": ("", "v1", "Namespace"),
    "replicasets": ("apps", "v1", "ReplicaSet"),
    "jobs": ("batch", "v1", "Job"),
}
KIND_TO_RESOURCE = {kind: res for res, (_, _, kind) in RESOURCES.items()}
ALL_VERBS = ["get", "list", "watch"]


def make_ca_and_cert(hostnames=("localhost",), ips=("127.0.0.1",)) -> tuple[bytes, bytes, bytes]:
    """(CA cert PEM, server cert PEM, server key PEM), valid for a day."""
    now = datetime.datetime.now(datetime.UTC)
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "fake-kube-ca")])
    ca = (
        x509.CertificateBuilder()
        .subject_name(ca_name)
        .issuer_name(ca_name)
        .public_key(ca_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True,
                key_cert_sign=True,
                crl_sign=True,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .sign(ca_key, hashes.SHA256())
    )
    key = ec.generate_private_key(ec.SECP256R1())
    sans = [x509.DNSName(h) for h in hostnames] + [
        x509.IPAddress(ipaddress.ip_address(i)) for i in ips
    ]
    cert = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "kube-apiserver")]))
        .issuer_name(ca_name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(x509.SubjectAlternativeName(sans), critical=False)
        .add_extension(
            x509.ExtendedKeyUsage([x509.oid.ExtendedKeyUsageOID.SERVER_AUTH]), critical=False
        )
        .sign(ca_key, hashes.SHA256())
    )
    pem = serialization.Encoding.PEM
    return (
        ca.public_bytes(pem),
        cert.public_bytes(pem),
        key.private_bytes(pem, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()),
    )


def status_body(code: int, reason: str, message: str, details: dict | None = None) -> bytes:
    body = {
        "kind": "Status",
        "apiVersion": "v1",
        "metadata": {},
        "status": "Failure",
        "message": message,
        "reason": reason,
        "code": code,
    }
    if details:
        body["details"] = details
    return orjson.dumps(body)


@dataclass
class Fault:
    """A fault served instead of page `page` (1-based) of `resource`, `times` times."""

    resource: str
    page: int
    kind: str  # "429", "500", "503", "slow", "drop", "410", "500-huge" (a 2 MiB body)
    times: int = 1
    retry_after: int = 1
    delay: float = 5.0


@dataclass
class Snapshot:
    rv: int
    items: dict[str, list[bytes]]  # resource -> serialized items, sorted by ns/name
    keys: dict[str, list[tuple[str, str]]]


@dataclass
class FakeKube:
    """The server's state; mutate it from tests between scans."""

    tokens: dict[str, set[str] | None] = field(default_factory=dict)  # token -> resources
    faults: list[Fault] = field(default_factory=list)
    page_delay: float = 0.0  # seconds slept before each page, to make scans observably slow
    expire_before: int = 0  # continue tokens of snapshots older than this rv answer 410
    requests: list[tuple[str, str]] = field(default_factory=list)  # (path, query)
    # Misbehaviours of a hostile API server, on the lists of `hostile`:
    hostile: str = "pods"
    repeat_continue: bool = False  # a page asked for with a token answers that token again
    cycle_continue: int = 0  # page k >= this answers the token of page 2 again
    pad_continue: int = 0  # continue tokens are at least this many bytes
    ignore_limit: bool = False  # every item in one page, whatever the limit
    empty_pages: bool = False  # no items, and always a fresh continue token
    generated_pods: int = 0  # one page of this many generated pods (about 5 KB each)
    small_pods: bool = False  # the generated pods minimal (about 250 bytes each)
    drip_bytes_per_second: float = 0.0  # pages are sent this slowly
    drip_chunked: bool = False  # ... as chunked encoding, each chunk-size line 4 KB long
    invalid_utf8: bool = False  # the first object's name in each page starts with byte 0xff

    def __post_init__(self):
        self._lock = threading.Lock()
        self._objects: dict[str, dict[tuple[str, str], bytes]] = {r: {} for r in RESOURCES}
        self._rv = 1000
        self._snapshot: Snapshot | None = None
        self._snapshots: dict[int, Snapshot] = {}
        self._page_counts: dict[tuple[str, int], int] = {}

    # --- state ---

    def put(self, obj: dict) -> None:
        """Create or replace an object (by kind, namespace and name)."""
        resource = KIND_TO_RESOURCE[obj["kind"]]
        meta = obj["metadata"]
        with self._lock:
            self._rv += 1
            obj = {**obj, "metadata": {**meta, "resourceVersion": str(self._rv)}}
            self._objects[resource][(meta.get("namespace", ""), meta["name"])] = orjson.dumps(obj)
            self._snapshot = None

    def put_many(self, objs) -> None:
        for obj in objs:
            self.put(obj)

    def delete(self, kind: str, namespace: str, name: str) -> None:
        with self._lock:
            self._rv += 1
            del self._objects[KIND_TO_RESOURCE[kind]][(namespace, name)]
            self._snapshot = None

    def clear(self) -> None:
        with self._lock:
            self._rv += 1
            for store in self._objects.values():
                store.clear()
            self._snapshot = None

    def get(self, kind: str, namespace: str, name: str) -> dict:
        return orjson.loads(self._objects[KIND_TO_RESOURCE[kind]][(namespace, name)])

    def expire_all_tokens(self) -> None:
        """Every continue token issued so far answers 410 Expired (like an etcd
        compaction: the revision moves on, new lists get a newer snapshot)."""
        with self._lock:
            self._rv += 1
            self.expire_before = self._rv
            self._snapshot = None

    def current_snapshot(self) -> Snapshot:
        with self._lock:
            if self._snapshot is None:
                # Namespaces are derived from what exists, like a real cluster.
                nss = {
                    ns
                    for store in ("pods", "replicasets", "jobs")
                    for ns, _ in self._objects[store]
                }
                for ns in nss:
                    if ("", ns) not in self._objects["namespaces"]:
                        self._objects["namespaces"][("", ns)] = orjson.dumps(
                            {
                                "apiVersion": "v1",
                                "kind": "Namespace",
                                "metadata": {"name": ns, "uid": ns, "resourceVersion": "1"},
                                "status": {"phase": "Active"},
                            }
                        )
                items, keys = {}, {}
                for res, store in self._objects.items():
                    ordered = sorted(store)
                    keys[res] = ordered
                    items[res] = [store[k] for k in ordered]
                self._snapshot = Snapshot(self._rv, items, keys)
                self._snapshots[self._rv] = self._snapshot
                # Keep a few recent snapshots for continue tokens.
                for old in sorted(self._snapshots)[:-4]:
                    del self._snapshots[old]
            return self._snapshot

    def take_fault(self, resource: str, page: int) -> Fault | None:
        with self._lock:
            for f in self.faults:
                if f.resource == resource and f.page == page and f.times > 0:
                    f.times -= 1
                    return f
        return None


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server: _Server

    def log_message(self, *args):  # quiet
        pass

    def _send(self, code: int, body: bytes, headers: dict | None = None) -> None:
        self.send_response(code)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.send_header("Audit-Id", "fake")
        for k, v in (headers or {}).items():
            self.send_header(k, v)
        self.end_headers()
        self.wfile.write(body)

    def do_GET(self):  # noqa: N802
        state = self.server.state
        url = urlsplit(self.path)
        query = {k: v[-1] for k, v in parse_qs(url.query).items()}
        state.requests.append((url.path, url.query))
        auth = self.headers.get("Authorization", "")
        token = auth[7:] if auth.startswith("Bearer ") else None
        if token is None or token not in state.tokens:
            return self._send(401, status_body(401, "Unauthorized", "Unauthorized"))
        parts = [p for p in url.path.split("/") if p]
        discovery = _discovery(parts)
        if discovery is not None:
            return self._send(200, discovery)
        route = _route(parts)
        if route is None:
            return self._send(
                404,
                status_body(404, "NotFound", "the server could not find the requested resource"),
            )
        resource, namespace = route
        allowed = state.tokens[token]
        if allowed is not None and resource not in allowed:
            group = RESOURCES[resource][0]
            scope = f'in the namespace "{namespace}"' if namespace else "at the cluster scope"
            user = f"system:serviceaccount:welkin:{token[:8]}"
            return self._send(
                403,
                status_body(
                    403,
                    "Forbidden",
                    f'{resource} is forbidden: User "{user}" cannot list resource "{resource}" '
                    f'in API group "{group}" {scope}',
                    {"group": group, "kind": resource},
                ),
            )
        self._list(resource, namespace, query)

    def _list(self, resource: str, namespace: str | None, query: dict) -> None:
        state = self.server.state
        try:
            limit = int(query.get("limit", "0"))
        except ValueError:
            return self._send(400, status_body(400, "BadRequest", "invalid limit"))
        token = query.get("continue")
        if token:
            try:
                rv, offset, page = orjson.loads(base64.urlsafe_b64decode(token))[:3]
            except Exception:
                return self._send(400, status_body(400, "BadRequest", "continue key is not valid"))
            snap = state._snapshots.get(rv)
            if snap is None or rv < state.expire_before:
                return self._send(
                    410,
                    status_body(
                        410,
                        "Expired",
                        "The provided continue parameter is too old to display a consistent "
                        "list result. You can start a new list without the continue parameter, "
                        "or use the continue token in this response to retrieve the remainder "
                        "of the results. Continuing with the provided token results in an "
                        "inconsistent list - objects that were created, modified, or deleted "
                        "between the time the first chunk was returned and now may show up in "
                        "the list.",
                    ),
                )
        else:
            snap, offset, page = state.current_snapshot(), 0, 1
        fault = state.take_fault(resource, page)
        if fault is not None and self._fault(fault):
            return
        if state.page_delay:
            time.sleep(state.page_delay)
        hostile = resource == state.hostile
        group, version, kind = RESOURCES[resource]
        api_version = f"{group}/{version}" if group else version
        if hostile and state.generated_pods:
            return self._send_generated(state.generated_pods, snap.rv)
        items, keys = snap.items[resource], snap.keys[resource]
        if namespace is not None:
            # Per-namespace lists are small in tests: filter without paging by index.
            picked = [i for i, k in enumerate(keys) if k[0] == namespace]
            items = [items[i] for i in picked]
        if hostile and state.ignore_limit:
            limit = 0
        end = len(items) if limit <= 0 else min(offset + limit, len(items))
        if hostile and state.empty_pages:
            end = offset
        meta: dict = {"resourceVersion": str(snap.rv)}
        if end < len(items):
            following = [snap.rv, end, page + 1]
            if hostile and state.cycle_continue and page >= state.cycle_continue:
                following = [snap.rv, limit, 2]  # the token page 1 answered
            if hostile and state.pad_continue:
                following.append("x" * state.pad_continue)
            meta["continue"] = base64.urlsafe_b64encode(orjson.dumps(following)).decode()
            if hostile and state.repeat_continue and token:
                meta["continue"] = token
            meta["remainingItemCount"] = len(items) - end
        head = orjson.dumps({"kind": f"{kind}List", "apiVersion": api_version, "metadata": meta})[
            :-1
        ]
        body = head + b',"items":[' + b",".join(items[offset:end]) + b"]}"
        if hostile and state.invalid_utf8:
            body = body.replace(b'"name":"', b'"name":"\xff', 1)
        if hostile and state.drip_bytes_per_second:
            return self._send_dripping(body, state.drip_bytes_per_second, state.drip_chunked)
        self._send(200, body)

    def _start_chunked(self) -> None:
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Transfer-Encoding", "chunked")
        self.end_headers()
        self.close_connection = True

    def _send_generated(self, n: int, rv: int) -> None:
        """One PodList page of n generated pods, made and sent a batch at a time."""
        from tests import podgen

        marker = b"gen-pod-0000000000"
        if self.server.state.small_pods:  # about 250 bytes: many fit under the byte cap
            template = orjson.dumps(
                {
                    "metadata": {"name": marker.decode(), "namespace": "gen"},
                    "spec": {"containers": [{"name": "app", "image": "app"}]},
                    "status": {"phase": "Running"},
                }
            )
        else:
            template = orjson.dumps(
                podgen.pod("gen", marker.decode(), "registry.example/app", {}, {"runAsUser": 0})
            )
        self._start_chunked()
        try:
            batch = [
                b'{"kind":"PodList","apiVersion":"v1","metadata":{"resourceVersion":"'
                + str(rv).encode()
                + b'"},"items":['
            ]
            for i in range(n):
                item = template.replace(marker, b"gen-pod-%010d" % i)
                batch.append(item if i == 0 else b"," + item)
                if len(batch) >= 64 or i == n - 1:
                    data = b"".join(batch)
                    self.wfile.write(b"%x\r\n%s\r\n" % (len(data), data))
                    batch = []
            self.wfile.write(b"2\r\n]}\r\n0\r\n\r\n")
        except OSError:  # the client stopped reading: that is the point
            pass

    def _send_dripping(self, body: bytes, rate: float, chunked: bool) -> None:
        """body at `rate` bytes a second, a few bytes at a time."""
        if chunked:
            self._start_chunked()
            stream = (
                b"".join(
                    b"%04096x\r\n%s\r\n" % (len(body[i : i + 512]), body[i : i + 512])
                    for i in range(0, len(body), 512)
                )
                + b"0\r\n\r\n"
            )
        else:
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            stream = body
        step = max(1, int(rate / 10))
        try:
            for i in range(0, len(stream), step):
                self.wfile.write(stream[i : i + step])
                self.wfile.flush()
                time.sleep(step / rate)
        except OSError:
            pass

    def _fault(self, fault: Fault) -> bool:
        """Serve a fault; True when the response is done."""
        if fault.kind == "429":
            self._send(
                429,
                status_body(
                    429,
                    "TooManyRequests",
                    "Too many requests, please try again later.",
                    {"retryAfterSeconds": fault.retry_after},
                ),
                {"Retry-After": str(fault.retry_after)},
            )
        elif fault.kind in ("500", "503"):
            code = int(fault.kind)
            reason = "InternalError" if code == 500 else "ServiceUnavailable"
            self._send(code, status_body(code, reason, f"fake {code} at page {fault.page}"))
        elif fault.kind == "500-huge":
            self._send(500, b" " * (2 << 20))
        elif fault.kind == "410":
            self._send(
                410,
                status_body(
                    410,
                    "Expired",
                    "The provided continue parameter is "
                    "too old to display a consistent list result.",
                ),
            )
        elif fault.kind == "slow":
            time.sleep(fault.delay)
            return False
        elif fault.kind == "drop":
            self.close_connection = True
            try:
                self.connection.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
        return True


def _route(parts: list[str]) -> tuple[str, str | None] | None:
    """(resource, namespace or None) for a list path."""
    if parts[:2] == ["api", "v1"]:
        rest = parts[2:]
    elif len(parts) >= 3 and parts[0] == "apis":
        rest = parts[3:]
        group = parts[1]
        if rest and rest[-1] in RESOURCES and RESOURCES[rest[-1]][0] != group:
            return None
    else:
        return None
    if len(rest) == 1 and rest[0] in RESOURCES:
        return rest[0], None
    if len(rest) == 3 and rest[0] == "namespaces" and rest[2] in RESOURCES:
        return rest[2], rest[1]
    return None


def _resource_list(group_version: str, names: list[str]) -> bytes:
    return orjson.dumps(
        {
            "kind": "APIResourceList",
            "apiVersion": "v1",
            "groupVersion": group_version,
            "resources": [
                {
                    "name": n,
                    "singularName": RESOURCES[n][2].lower(),
                    "namespaced": n != "namespaces",
                    "kind": RESOURCES[n][2],
                    "verbs": ALL_VERBS,
                    "shortNames": {"pods": ["po"], "replicasets": ["rs"], "namespaces": ["ns"]}.get(
                        n, []
                    ),
                }
                for n in names
            ],
        }
    )


def _discovery(parts: list[str]) -> bytes | None:
    if parts == ["version"]:
        return orjson.dumps(
            {
                "major": "1",
                "minor": "34",
                "emulationMajor": "1",
                "emulationMinor": "34",
                "minCompatibilityMajor": "1",
                "minCompatibilityMinor": "33",
                "gitVersion": "v1.34.0-fake",
                "gitCommit": "0" * 40,
                "gitTreeState": "clean",
                "buildDate": "2026-08-27T00:00:00Z",
                "goVersion": "go1.24.6",
                "compiler": "gc",
                "platform": "linux/amd64",
            }
        )
    if parts == ["api"]:
        return orjson.dumps(
            {
                "kind": "APIVersions",
                "versions": ["v1"],
                "serverAddressByClientCIDRs": [
                    {"clientCIDR": "0.0.0.0/0", "serverAddress": "127.0.0.1"}
                ],
            }
        )
    if parts == ["api", "v1"]:
        return _resource_list("v1", ["pods", "namespaces"])
    if parts == ["apis"]:
        return orjson.dumps(
            {
                "kind": "APIGroupList",
                "apiVersion": "v1",
                "groups": [
                    {
                        "name": g,
                        "versions": [{"groupVersion": f"{g}/v1", "version": "v1"}],
                        "preferredVersion": {"groupVersion": f"{g}/v1", "version": "v1"},
                    }
                    for g in ("apps", "batch")
                ],
            }
        )
    if parts == ["apis", "apps", "v1"]:
        return _resource_list("apps/v1", ["replicasets"])
    if parts == ["apis", "batch", "v1"]:
        return _resource_list("batch/v1", ["jobs"])
    return None


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    state: FakeKube

    def handle_error(self, request, client_address):
        if isinstance(sys.exc_info()[1], OSError):
            return  # a client that hung up (as scans of a misbehaving server do): not news
        super().handle_error(request, client_address)


class FakeKubeServer:
    """Serves a FakeKube over HTTPS on 127.0.0.1 in a background thread."""

    def __init__(self, state: FakeKube | None = None, token: str = "admin-token"):
        self.state = state or FakeKube()
        self.token = token
        self.state.tokens.setdefault(token, None)
        self.ca_pem, cert, key = make_ca_and_cert()
        self._dir = tempfile.TemporaryDirectory(prefix="fakekube-")
        cert_path, key_path = Path(self._dir.name, "tls.crt"), Path(self._dir.name, "tls.key")
        cert_path.write_bytes(cert)
        key_path.write_bytes(key)
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        ctx.load_cert_chain(cert_path, key_path)
        self.httpd = _Server(("127.0.0.1", 0), _Handler)
        self.httpd.state = self.state
        self.httpd.socket = ctx.wrap_socket(self.httpd.socket, server_side=True)
        self.port = self.httpd.server_address[1]
        self.url = f"https://127.0.0.1:{self.port}"
        self._thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)

    def start(self) -> FakeKubeServer:
        self._thread.start()
        return self

    def stop(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()
        self._dir.cleanup()

    def kubeconfig(self, token: str | None = None, context: str = "fake") -> dict:
        """A kubeconfig with inline CA data and a bearer token."""
        return {
            "apiVersion": "v1",
            "kind": "Config",
            "current-context": context,
            "clusters": [
                {
                    "name": context,
                    "cluster": {
                        "server": self.url,
                        "certificate-authority-data": base64.b64encode(self.ca_pem).decode(),
                    },
                }
            ],
            "users": [{"name": f"{context}-user", "user": {"token": token or self.token}}],
            "contexts": [
                {"name": context, "context": {"cluster": context, "user": f"{context}-user"}}
            ],
        }

    def kubeconfig_yaml(self, **kw) -> str:
        return yaml.safe_dump(self.kubeconfig(**kw))


def main() -> None:
    from tests import podgen

    parser = argparse.ArgumentParser()
    parser.add_argument("--pods", type=int, default=10_000)
    parser.add_argument("--kubeconfig", required=True)
    hostile = parser.add_argument_group("misbehaviours (on the pods list)")
    hostile.add_argument("--repeat-continue", action="store_true")
    hostile.add_argument(
        "--generated-pods",
        type=int,
        default=0,
        help="one page of this many generated pods, whatever the limit",
    )
    hostile.add_argument("--drip-bytes-per-second", type=float, default=0.0)
    hostile.add_argument("--small-pods", action="store_true", help="--generated-pods minimal")
    args = parser.parse_args()
    # Started from a background job, SIGINT arrives ignored: stop() sends it, so listen.
    signal.signal(signal.SIGINT, signal.default_int_handler)
    server = FakeKubeServer()
    server.state.repeat_continue = args.repeat_continue
    server.state.generated_pods = args.generated_pods
    server.state.small_pods = args.small_pods
    server.state.drip_bytes_per_second = args.drip_bytes_per_second
    server.state.put_many(obj for _, obj in podgen.fleet(args.pods))
    server.state.current_snapshot()
    Path(args.kubeconfig).write_text(server.kubeconfig_yaml())
    print(f"ready {server.url}", flush=True)
    server.start()
    try:
        for _ in itertools.count():
            time.sleep(3600)
    except KeyboardInterrupt:
        pass


if __name__ == "__main__":
    main()
