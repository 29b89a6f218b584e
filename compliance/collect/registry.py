"""The only code that talks to image registries: an image reference -> its config's User.

Follows the OCI distribution API the way a container runtime does: normalise the reference
(`nginx` -> docker.io/library/nginx:latest), fetch the manifest (for an image index or a
Docker manifest list, the entry for the pod's platform), then the config blob. Prefers the
digest the pod's status reports (`imageID`), so the answer is about what actually runs.

Authentication: anonymous, basic, and the Bearer token flow announced by
`WWW-Authenticate` (realm, service, scope), as Docker Hub, GHCR, Quay and Harbor use.
TLS is verified (optionally against a per-registry CA); plain HTTP only where configured.
Every failure becomes a short reason such as `registry.example.com: 401 unauthorized`,
and the image stays unknown.

Answers are verified, not trusted: a manifest fetched by digest and every blob are hashed
(sha256 or sha512; any other algorithm is refused) and compared with the digest asked
for, and a manifest fetched by tag gets its digest from its own bytes (sha256), never from
the `Docker-Content-Digest` header. A mismatch is an error (`digest mismatch for ...`)
marked as an integrity failure, which the cache does not keep.

Each request (redirects included) has a timeout per socket read (`timeout`) and a total
deadline of DEADLINE_FACTOR x `timeout` (30 s at the default 10 s), however slowly the
bytes come: bodies are read by bounded.py, with a size cap per kind of answer. A layer
blob, too large to hold, is opened instead (`open_blob`) and read a chunk at a time within
the caller's byte cap and deadline, hashed as it comes and verified at its last byte
(layers.py reads files from layers so).

No Django here: caching and per-registry settings are passed in (see images.py).
"""

from __future__ import annotations

import base64
import hashlib
import re
import ssl
import threading
import time
from collections.abc import Callable, Iterable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlencode, urljoin, urlsplit

import orjson
import urllib3

from compliance import bounded
from compliance.rules import gate
from compliance.rules.reference import (  # noqa: F401 - the names scans and tests use here
    _DIGEST_RE,
    DOCKER_HUB,
    DOCKER_HUB_API,
    ImageRef,
    ReferenceError,
    digest_from_image_id,
)
from compliance.rules.runas import CONTAINER_LISTS

USER_MAX = 255  # the longest image config User accepted (a user name is at most 32)
MAX_MANIFEST_BYTES = 4 << 20
MAX_CONFIG_BYTES = 8 << 20
DEADLINE_FACTOR = 3  # a request's total deadline, in multiples of the per-read timeout
MAX_REDIRECTS = 5
MAX_ERROR_BYTES = 1 << 20  # the body of an error answer to a streamed request
# Digest algorithms that are verified: name -> (hash, length of the hex encoding).
DIGEST_ALGORITHMS = {"sha256": (hashlib.sha256, 64), "sha512": (hashlib.sha512, 128)}
_HEX_RE = re.compile(r"[a-f0-9]+")

MANIFEST_TYPES = (
    "application/vnd.oci.image.index.v1+json",
    "application/vnd.docker.distribution.manifest.list.v2+json",
    "application/vnd.oci.image.manifest.v1+json",
    "application/vnd.docker.distribution.manifest.v2+json",
)
INDEX_TYPES = MANIFEST_TYPES[:2]


class RegistryError(Exception):
    """A registry could not answer; `reason` is shown next to the unverified image.
    `integrity`: its answer did not match the digest (or the digest cannot be verified)."""

    def __init__(self, reason: str, integrity: bool = False):
        reason = gate.inert(reason, 1000)  # it may quote the registry
        super().__init__(reason)
        self.reason = reason
        self.integrity = integrity


class BlobTooLarge(RegistryError):
    """A blob larger than the byte cap it was opened with (announced, or as it came)."""

    def __init__(self, reason: str, limit: int):
        super().__init__(reason)
        self.limit = limit


@dataclass(frozen=True)
class Platform:
    os: str = "linux"
    architecture: str = "amd64"
    variant: str | None = None

    def __str__(self) -> str:
        return f"{self.os}/{self.architecture}" + (f"/{self.variant}" if self.variant else "")


def platform_of(pod: dict) -> Platform:
    """The pod's platform: spec.os, the kubernetes.io/arch node selector, else amd64."""
    spec = pod.get("spec") if isinstance(pod.get("spec"), dict) else {}
    os_ = spec.get("os") if isinstance(spec.get("os"), dict) else {}
    selector = spec.get("nodeSelector") if isinstance(spec.get("nodeSelector"), dict) else {}
    arch = selector.get("kubernetes.io/arch")
    name = os_.get("name") if isinstance(os_.get("name"), str) else "linux"
    return Platform(name or "linux", arch if isinstance(arch, str) and arch else "amd64")


def cache_key(ref: ImageRef, platform: Platform) -> str:
    """`reference|platform`, or its SHA-256 when that is longer than the column."""
    key = f"{ref}|{platform}"
    if len(key) <= 1000:
        return key
    return "sha256:" + hashlib.sha256(key.encode()).hexdigest()


def pod_images(pod: dict):
    """(image, status imageID or None) for every container of a pod."""
    spec = pod.get("spec") if isinstance(pod.get("spec"), dict) else {}
    status = pod.get("status") if isinstance(pod.get("status"), dict) else {}
    for spec_key, _, status_key in CONTAINER_LISTS:
        ids = {}
        entries = status.get(status_key)
        if isinstance(entries, list):
            ids = {e.get("name"): e.get("imageID") for e in entries if isinstance(e, dict)}
        containers = spec.get(spec_key)
        if not isinstance(containers, list):
            continue
        for c in containers:
            if isinstance(c, dict) and isinstance(c.get("image"), str) and c["image"]:
                image_id = ids.get(c.get("name"))
                yield c["image"], image_id if isinstance(image_id, str) else None


@dataclass(frozen=True)
class RegistryConfig:
    """How to reach one registry (host, or host:port)."""

    host: str
    username: str | None = None
    password: str | None = None
    ca_pem: str | None = None
    plain_http: bool = False


@dataclass(frozen=True)
class Resolution:
    """An image's configured user, or why it is unknown."""

    user: str | None  # None: unknown
    digest: str | None = None  # the manifest digest the answer is about
    config_digest: str | None = None
    error: str | None = None
    integrity_failure: bool = False  # the answer did not verify: never cache it


@dataclass(frozen=True)
class _Response:
    status: int
    headers: Any
    data: bytes
    raw: Any = None  # a streamed answer's open urllib3 response, its body unread


@dataclass
class _Token:
    value: str
    expires: float


@dataclass
class RegistryClient:
    """Talks to registries. Thread-safe; one instance per scan or command."""

    configs: dict[str, RegistryConfig] = field(default_factory=dict)
    timeout: float = 10.0
    concurrency: int = 8  # connections kept per registry host
    requests: int = 0  # how many HTTP requests were made, for the benchmark

    def __post_init__(self):
        self._lock = threading.Lock()
        self._tokens: dict[tuple[str, str], _Token] = {}
        self._pools: dict[str, urllib3.PoolManager] = {}

    # --- public -------------------------------------------------------------------------

    def resolve(self, ref: ImageRef, platform: Platform = Platform()) -> Resolution:
        """The config User of the image at ref, for platform."""
        try:
            manifest, digest = self.image_manifest(ref, platform)
            config = manifest.get("config")
            if not isinstance(config, dict) or not isinstance(config.get("digest"), str):
                raise RegistryError(f"{ref.domain}: malformed manifest for {ref}: no config")
            config_digest = config["digest"]
            check_digest_syntax(ref, config_digest)
            blob = self._get(
                ref,
                f"/v2/{ref.repository}/blobs/{config_digest}",
                accept="*/*",
                limit=MAX_CONFIG_BYTES,
            )
            verify_digest(ref, "image config", blob, config_digest)
            user = _config_user(blob, ref)
            return Resolution(user, digest, config_digest)
        except RegistryError as e:
            return Resolution(None, ref.digest, error=e.reason, integrity_failure=e.integrity)

    def image_manifest(self, ref: ImageRef, platform: Platform = Platform()) -> tuple[dict, str]:
        """(manifest, digest) of the image at ref for platform: for an image index or a
        manifest list, its entry for the platform. Fetched by digest when ref has one, and
        then verified. Raises RegistryError."""
        manifest, media_type, digest = self._manifest(
            ref, ref.reference, by_digest=ref.digest is not None
        )
        if media_type in INDEX_TYPES or "manifests" in manifest:
            entry = _pick_platform(manifest, platform, str(ref))
            manifest, media_type, digest = self._manifest(ref, entry, by_digest=True)
        return manifest, digest

    def open_blob(self, ref: ImageRef, digest: str, limit: int, deadline: float) -> BlobStream:
        """The blob `digest` of ref's repository, opened to be read a chunk at a time (a
        layer, too large to hold): at most `limit` bytes, the last by `deadline`
        (time.monotonic()). Authentication and redirects as for other blobs. Raises
        RegistryError (BlobTooLarge when its announced length is over `limit`)."""
        check_digest_syntax(ref, digest)
        host = ref.api_host
        late = f"{host}: timed out (blob {digest} not complete by the deadline)"

        def send(host: str, cfg: RegistryConfig, url: str, headers: dict) -> _Response:
            r = self._open(host, cfg, url, headers, deadline, late)
            if r.status == 200:
                return _Response(r.status, r.headers, b"", r)
            return _Response(
                r.status, r.headers, self._body(host, r, MAX_ERROR_BYTES, deadline, late)
            )

        r = self._authorized(ref, f"/v2/{ref.repository}/blobs/{digest}", "*/*", send)
        if r.status != 200:
            raise RegistryError(_status_reason(ref, r.status, r.data))
        return BlobStream(ref, digest, r.raw, limit, deadline, late)

    def close(self) -> None:
        for pool in self._pools.values():
            pool.clear()

    # --- HTTP -----------------------------------------------------------------------------

    def _config_for(self, host: str) -> RegistryConfig:
        return self.configs.get(host) or RegistryConfig(host)

    def _pool(self, host: str, cfg: RegistryConfig) -> urllib3.PoolManager:
        """A connection pool per API host, with the TLS settings of its registry."""
        with self._lock:
            pool = self._pools.get(host)
            if pool is None:
                kwargs: dict[str, Any] = {
                    "retries": False,
                    "maxsize": self.concurrency,
                    "timeout": urllib3.Timeout(connect=self.timeout, read=self.timeout),
                }
                if not cfg.plain_http:
                    ctx = (
                        ssl.create_default_context(cadata=cfg.ca_pem)
                        if cfg.ca_pem
                        else ssl.create_default_context()
                    )
                    kwargs["ssl_context"] = ctx
                pool = self._pools[host] = urllib3.PoolManager(**kwargs)
            return pool

    def _manifest(self, ref: ImageRef, reference: str, by_digest: bool) -> tuple[dict, str, str]:
        """(manifest, media type, digest) of the manifest at reference (a tag or a digest);
        the digest is the one asked for, verified, or for a tag the sha256 of the bytes."""
        if by_digest:
            check_digest_syntax(ref, reference)
        body, headers = self._get(
            ref,
            f"/v2/{ref.repository}/manifests/{reference}",
            accept=", ".join(MANIFEST_TYPES),
            limit=MAX_MANIFEST_BYTES,
            with_headers=True,
        )
        if by_digest:
            verify_digest(ref, "manifest", body, reference)
            digest = reference
        else:  # what the tag names now, from the bytes, whatever the headers say
            digest = "sha256:" + hashlib.sha256(body).hexdigest()
        try:
            manifest = orjson.loads(body)
        except orjson.JSONDecodeError:
            raise RegistryError(f"{ref.domain}: malformed manifest for {ref}: not JSON")
        if not isinstance(manifest, dict):
            raise RegistryError(f"{ref.domain}: malformed manifest for {ref}")
        media_type = manifest.get("mediaType") or headers.get("Content-Type", "")
        if not isinstance(media_type, str):
            raise RegistryError(f"{ref.domain}: malformed manifest for {ref}: mediaType")
        return manifest, media_type.split(";")[0].strip(), digest

    def _get(
        self, ref: ImageRef, path: str, accept: str, limit: int, with_headers: bool = False
    ) -> Any:
        r = self._authorized(
            ref,
            path,
            accept,
            lambda host, cfg, url, headers: self._request(host, cfg, url, headers, limit),
        )
        if r.status == 200:
            return (r.data, r.headers) if with_headers else r.data
        raise RegistryError(_status_reason(ref, r.status, r.data))

    def _authorized(
        self,
        ref: ImageRef,
        path: str,
        accept: str,
        send: Callable[[str, RegistryConfig, str, dict], _Response],
    ) -> _Response:
        """The answer to GET path on ref's registry, sent by `send` with the credentials it
        asks for (a 401 is answered once with a token or basic auth)."""
        host = ref.api_host
        cfg = self._config_for(ref.domain)  # settings are kept by the name in references
        scheme = "http" if cfg.plain_http else "https"
        url = f"{scheme}://{host}{path}"
        scope = f"repository:{ref.repository}:pull"
        headers = {"Accept": accept}
        auth = self._cached_auth(host, scope, cfg)
        for attempt in (1, 2):
            if auth:
                headers["Authorization"] = auth
            r = send(host, cfg, url, headers)
            if r.status == 401 and attempt == 1:
                auth = self._authenticate(
                    host, scope, cfg, r.headers.get("WWW-Authenticate", ""), ref
                )
                if auth:
                    continue
            break
        return r

    def _request(
        self, host: str, cfg: RegistryConfig, url: str, headers: dict, limit: int
    ) -> _Response:
        """One GET, following redirects, complete (body included) within the deadline."""
        seconds = self.timeout * DEADLINE_FACTOR
        deadline = time.monotonic() + seconds
        late = f"{host}: timed out (no complete answer within {seconds:g} s)"
        r = self._open(host, cfg, url, headers, deadline, late)
        return _Response(r.status, r.headers, self._body(host, r, limit, deadline, late))

    def _open(
        self, host: str, cfg: RegistryConfig, url: str, headers: dict, deadline: float, late: str
    ) -> Any:
        """One GET, following redirects, by the deadline (`late` says it passed): the open
        urllib3 response of the last, its body unread."""
        with self._lock:
            self.requests += 1
        pool = self._pool(host, cfg)
        for _ in range(MAX_REDIRECTS + 1):
            left = bounded.remaining(deadline)
            if left <= 0:
                raise RegistryError(late)
            try:
                r = pool.request(
                    "GET",
                    url,
                    headers=headers,
                    preload_content=False,
                    redirect=False,
                    timeout=urllib3.Timeout(
                        connect=min(self.timeout, left), read=min(self.timeout, left)
                    ),
                )
            except urllib3.exceptions.SSLError as e:
                raise RegistryError(f"{host}: TLS verification failed: {_last_line(e)}")
            except urllib3.exceptions.NewConnectionError as e:  # a TimeoutError subclass
                raise RegistryError(f"{host}: unreachable ({_last_line(e)})")
            except (urllib3.exceptions.TimeoutError, TimeoutError):
                raise RegistryError(f"{host}: timed out")
            except (urllib3.exceptions.HTTPError, OSError) as e:
                raise RegistryError(f"{host}: unreachable ({_last_line(e)})")
            location = r.get_redirect_location()
            if location:  # blobs are often served from elsewhere (a CDN, object storage)
                r.close()  # its body is not wanted; nor is a connection with it unread
                r.release_conn()
                target = urljoin(url, location)
                if urlsplit(target).netloc != urlsplit(url).netloc:
                    headers = {k: v for k, v in headers.items() if k.lower() != "authorization"}
                url = target
                continue
            return r
        raise RegistryError(f"{host}: more than {MAX_REDIRECTS} redirects")

    def _body(self, host: str, r: Any, limit: int, deadline: float, late: str) -> bytes:
        """The whole body of an open response, within the bounds; the connection released."""
        try:
            return bounded.read_body(r, limit, deadline)
        except bounded.TooLarge as e:
            raise RegistryError(f"{host}: response too large (more than {e.limit} bytes)")
        except bounded.DeadlineExceeded:
            raise RegistryError(late)
        except (urllib3.exceptions.HTTPError, OSError) as e:
            raise RegistryError(f"{host}: connection lost ({_last_line(e)})")
        finally:
            r.release_conn()

    # --- authentication ---------------------------------------------------------------

    def _cached_auth(self, host: str, scope: str, cfg: RegistryConfig) -> str | None:
        with self._lock:
            token = self._tokens.get((host, scope))
        if token and token.expires > time.monotonic():
            return token.value
        return None

    def _authenticate(
        self, host: str, scope: str, cfg: RegistryConfig, challenge: str, ref: ImageRef
    ) -> str | None:
        scheme, params = _parse_challenge(challenge)
        basic = None
        if cfg.username is not None:
            basic = (
                "Basic "
                + base64.b64encode(f"{cfg.username}:{cfg.password or ''}".encode()).decode()
            )
        if scheme == "basic":
            if basic is None:
                raise RegistryError(f"{host}: 401 unauthorized (credentials required)")
            self._store(host, scope, basic, 3600)
            return basic
        if scheme != "bearer" or "realm" not in params:
            return None
        realm = params["realm"]
        # Plain HTTP only for a registry configured so: a hostile registry must not make
        # the worker fetch plain-HTTP URLs of its choosing (inside the network).
        if not realm.startswith("https://") and not (
            cfg.plain_http and realm.startswith("http://")
        ):
            raise RegistryError(f"{host}: unusable token realm {realm!r} (https:// expected)")
        query = {"scope": params.get("scope", scope)}
        if "service" in params:
            query["service"] = params["service"]
        realm_host = realm.split("/")[2]
        headers = {"Accept": "application/json"}
        if basic:
            headers["Authorization"] = basic
        # The token service is its own host: default TLS settings, or the registry's CA.
        realm_cfg = RegistryConfig(
            realm_host, ca_pem=cfg.ca_pem, plain_http=realm.startswith("http://")
        )
        r = self._request(
            "token:" + realm_host, realm_cfg, f"{realm}?{urlencode(query)}", headers, 1 << 20
        )
        if r.status != 200:
            raise RegistryError(
                f"{host}: token service refused ({r.status})"
                if r.status not in (401, 403)
                else f"{host}: 401 unauthorized"
            )
        try:
            doc = orjson.loads(r.data)
            token = doc.get("token") or doc.get("access_token")
            ttl = float(doc.get("expires_in") or 60)
        except (orjson.JSONDecodeError, AttributeError, TypeError, ValueError):
            token = None
        if not isinstance(token, str) or not token:
            raise RegistryError(f"{host}: token service answered without a token")
        value = f"Bearer {token}"
        self._store(host, scope, value, max(ttl - 10, 5))
        return value

    def _store(self, host: str, scope: str, value: str, ttl: float) -> None:
        with self._lock:
            self._tokens[(host, scope)] = _Token(value, time.monotonic() + ttl)


class BlobStream:
    """A blob's body, read a chunk at a time and hashed as it comes (from open_blob).
    Nothing read is to be believed before `verify()`, after the last byte, has checked the
    digest. close() it in any case: a blob left unfinished closes its connection."""

    def __init__(
        self, ref: ImageRef, digest: str, response: Any, limit: int, deadline: float, late: str
    ):
        self.ref, self.digest, self._response, self._late = ref, digest, response, late
        self._host = ref.api_host
        try:
            self._body = bounded.BodyReader(response, limit, deadline)
        except bounded.TooLarge as e:
            response.release_conn()
            raise BlobTooLarge(
                f"{self._host}: blob {digest} is {e.size} bytes, over the {limit}-byte bound",
                limit,
            )
        self._hash = DIGEST_ALGORITHMS[digest.partition(":")[0]][0]()
        self.done = False  # its last byte was read

    @property
    def received(self) -> int:
        """Bytes of the blob read so far (the read that went over the cap included)."""
        return self._body.received

    def read1(self, amount: int = bounded.CHUNK) -> bytes:
        """What one socket read brought, at most `amount` bytes; b"" at the end."""
        if self.done:
            return b""
        try:
            data = self._body.read1(amount)
        except bounded.TooLarge as e:
            raise BlobTooLarge(
                f"{self._host}: blob {self.digest} is over the {e.limit}-byte bound", e.limit
            )
        except bounded.DeadlineExceeded:
            raise RegistryError(self._late)
        except (urllib3.exceptions.HTTPError, OSError) as e:
            raise RegistryError(f"{self._host}: connection lost ({_last_line(e)})")
        self._hash.update(data)
        self.done = not data
        return data

    read = read1  # for readers that call read(n) and take what comes (zstandard's)

    def verify(self) -> None:
        """Raises a RegistryError (integrity) unless every byte was read and they hash to the
        digest."""
        if not self.done:
            raise RegistryError(
                f"{self._host}: blob {self.digest} verified before its end", integrity=True
            )
        algorithm, _, encoded = self.digest.partition(":")
        actual = self._hash.hexdigest()
        if actual != encoded:
            raise RegistryError(
                f"{self.ref.domain}: digest mismatch for {self.ref}: the blob's bytes "
                f"hash to {algorithm}:{actual}, expected {self.digest}",
                integrity=True,
            )

    def close(self) -> None:
        self._body.close()
        if not self.done:  # its unread rest must not be taken for the next answer
            self._response.close()
        self._response.release_conn()

    def __enter__(self) -> BlobStream:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def check_digest_syntax(ref: ImageRef, digest: str) -> None:
    """A digest that can be verified: a known algorithm and its full hex encoding; else a
    RegistryError (integrity)."""
    algorithm, _, encoded = digest.partition(":")
    spec = DIGEST_ALGORITHMS.get(algorithm)
    if spec is None:
        raise RegistryError(
            f"{ref.domain}: unsupported digest algorithm {algorithm[:32]!r} "
            f"for {ref} (sha256 and sha512 are verified)",
            integrity=True,
        )
    if len(encoded) != spec[1] or not _HEX_RE.fullmatch(encoded):
        raise RegistryError(
            f"{ref.domain}: malformed digest {digest[:160]!r} for {ref}", integrity=True
        )


def verify_digest(ref: ImageRef, what: str, data: bytes, digest: str) -> None:
    """Raise a RegistryError (integrity) unless data hashes to digest."""
    check_digest_syntax(ref, digest)
    algorithm, _, encoded = digest.partition(":")
    actual = DIGEST_ALGORITHMS[algorithm][0](data).hexdigest()
    if actual != encoded:
        raise RegistryError(
            f"{ref.domain}: digest mismatch for {ref}: the {what}'s bytes "
            f"hash to {algorithm}:{actual}, expected {digest}",
            integrity=True,
        )


def _parse_challenge(header: str) -> tuple[str, dict[str, str]]:
    scheme, _, rest = header.strip().partition(" ")
    params = dict(re.findall(r'(\w+)="([^"]*)"', rest))
    return scheme.lower(), params


def _status_reason(ref: ImageRef, status: int, body: bytes | None) -> str:
    code = ""
    try:
        errors = orjson.loads(body or b"{}").get("errors") or []
        code = errors[0].get("code", "") if errors else ""
    except (orjson.JSONDecodeError, AttributeError, IndexError, KeyError, TypeError):
        pass
    code = gate.inert(code, 60) if isinstance(code, str) else ""
    words = {
        401: "401 unauthorized",
        403: "403 denied",
        404: "404 not found",
        429: "429 rate limited",
    }
    reason = words.get(status, f"{status} error")
    if code and code.lower().replace("_", " ") not in reason:
        reason += f" ({code})"
    return f"{ref.domain}: {reason} for {ref}"


def _last_line(e: Exception) -> str:
    return str(e).strip().splitlines()[-1][:200] if str(e).strip() else type(e).__name__


def _pick_platform(index: dict, platform: Platform, ref: str) -> str:
    entries = index.get("manifests")
    if not isinstance(entries, list):
        raise RegistryError(f"{ref.split('/')[0]}: malformed image index for {ref}")
    candidates = []
    for m in entries:
        if not isinstance(m, dict) or not isinstance(m.get("digest"), str):
            continue
        p = m.get("platform") if isinstance(m.get("platform"), dict) else {}
        if p.get("os") == platform.os and p.get("architecture") == platform.architecture:
            exact = platform.variant is None or p.get("variant") == platform.variant
            candidates.append((0 if exact else 1, m["digest"]))
    if not candidates:
        raise RegistryError(f"{ref.split('/')[0]}: no {platform} image in the index for {ref}")
    return min(candidates)[1]


def _config_user(blob: bytes, ref: ImageRef) -> str:
    try:
        config = orjson.loads(blob)
    except orjson.JSONDecodeError:
        raise RegistryError(f"{ref.domain}: malformed image config for {ref}: not JSON")
    inner = config.get("config") if isinstance(config, dict) else None
    if inner is None and isinstance(config, dict) and "architecture" in config:
        return ""  # an image config without a config section: no USER
    if not isinstance(inner, dict):
        raise RegistryError(f"{ref.domain}: malformed image config for {ref}")
    user = inner.get("User", "")
    if user is None:
        return ""
    if not isinstance(user, str):
        raise RegistryError(f"{ref.domain}: malformed image config for {ref}: User is not a string")
    if len(user) > USER_MAX or not user.isprintable():
        # The kubelet would refuse such a user anyway; nothing here stores or shows it.
        raise RegistryError(
            f"{ref.domain}: malformed image config for {ref}: User is longer than "
            f"{USER_MAX} characters or holds control characters"
        )
    return user


def resolve_many(
    client: RegistryClient,
    items: Iterable[tuple[ImageRef, Platform]],
    workers: int = 8,
    on_done: Callable[[ImageRef, Platform, Resolution], None] | None = None,
) -> dict[tuple[ImageRef, Platform], Resolution]:
    """Resolve several images concurrently (a bounded pool)."""
    items = list(dict.fromkeys(items))
    results: dict[tuple[ImageRef, Platform], Resolution] = {}
    if not items:
        return results
    with ThreadPoolExecutor(max_workers=min(workers, len(items))) as pool:
        for key, res in zip(items, pool.map(lambda kp: client.resolve(*kp), items), strict=True):
            results[key] = res
            if on_done:
                on_done(*key, res)
    return results
