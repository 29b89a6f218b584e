"""Real OCI registries for tests: Debian's docker-registry on loopback.

Several registry processes share one storage directory: plain HTTP (for pushing and
anonymous pulls), TLS with a test CA, Bearer tokens from a small token server (the flow of
Docker Hub, GHCR, Quay, Harbor), and htpasswd basic auth. A fault server answers 429 or
malformed manifests, which a real registry never does on purpose, or stands between the
client and a real registry and lies: other bytes for a blob or for a manifest asked for by
digest, a wrong Docker-Content-Digest header, answers drip-fed a few bytes a second, blobs
redirected elsewhere or sent without a length.

Images with real layers (push_layered_image) are made of tars built by tar_layer: files,
symlinks, hard links, directories, and whiteouts named by whiteout() and opaque().
"""

from __future__ import annotations

import base64
import crypt
import datetime
import gzip
import hashlib
import io
import json
import shutil
import socket
import subprocess
import tarfile
import tempfile
import threading
import time
import uuid
from collections.abc import Iterable
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import parse_qs, urlsplit

import urllib3
import yaml
import zstandard
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.utils import decode_dss_signature
from cryptography.x509.oid import NameOID

from tests.fakekube import make_ca_and_cert

REGISTRY_BIN = shutil.which("docker-registry") or "/usr/bin/docker-registry"
OCI_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
OCI_INDEX = "application/vnd.oci.image.index.v1+json"
LAYER_MEDIA_TYPES = {
    "gzip": "application/vnd.oci.image.layer.v1.tar+gzip",
    "docker": "application/vnd.docker.image.rootfs.diff.tar.gzip",
    "zstd": "application/vnd.oci.image.layer.v1.tar+zstd",
    "none": "application/vnd.oci.image.layer.v1.tar",
}


def reply(
    handler: BaseHTTPRequestHandler,
    code: int,
    body: bytes,
    content_type: str,
    headers: dict | None = None,
) -> None:
    handler.send_response(code)
    handler.send_header("Content-Type", content_type)
    handler.send_header("Content-Length", str(len(body)))
    for k, v in (headers or {}).items():
        handler.send_header(k, v)
    handler.end_headers()
    handler.wfile.write(body)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


class RegistryProcess:
    """One docker-registry serving `storage` with the given auth/TLS settings."""

    def __init__(
        self,
        storage: Path,
        workdir: Path,
        name: str,
        auth: dict | None = None,
        tls: tuple[Path, Path] | None = None,
    ):
        self.port = free_port()
        http = {"addr": f"127.0.0.1:{self.port}", "secret": "test-secret"}
        if tls:
            http["tls"] = {"certificate": str(tls[0]), "key": str(tls[1])}
        config = {
            "version": 0.1,
            "log": {"level": "error", "accesslog": {"disabled": True}},
            "storage": {"filesystem": {"rootdirectory": str(storage)}, "delete": {"enabled": True}},
            "http": http,
            # Foreign layers (their blob served from `urls`) are refused unless allowed.
            "validation": {"manifests": {"urls": {"allow": ["^https://"]}}},
        }
        if auth:
            config["auth"] = auth
        path = workdir / f"{name}.yml"
        path.write_text(yaml.safe_dump(config))
        self.log = open(workdir / f"{name}.log", "w")
        self.p = subprocess.Popen(
            [REGISTRY_BIN, "serve", str(path)], stdout=self.log, stderr=subprocess.STDOUT
        )
        self.host = f"127.0.0.1:{self.port}"
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            try:
                socket.create_connection(("127.0.0.1", self.port), 0.2).close()
                return
            except OSError:
                if self.p.poll() is not None:
                    break
                time.sleep(0.05)
        raise RuntimeError(
            f"docker-registry {name} did not start: {(workdir / f'{name}.log').read_text()[-2000:]}"
        )

    def stop(self) -> None:
        self.p.terminate()
        self.p.wait(10)
        self.log.close()


class TokenServer:
    """Issues registry Bearer tokens (ES256 JWT with an x5c chain), Docker Hub style.

    Anonymous requests get pull on `public/*` only; `user`/`password` get pull on all."""

    def __init__(
        self,
        workdir: Path,
        service: str = "welkin-test",
        issuer: str = "test-issuer",
        user: str = "reader",
        password: str = "s3cret",
    ):
        self.service, self.issuer, self.user, self.password = service, issuer, user, password
        self.key = ec.generate_private_key(ec.SECP256R1())
        now = datetime.datetime.now(datetime.UTC)
        name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "token-signer")])
        self.cert = (
            x509.CertificateBuilder()
            .subject_name(name)
            .issuer_name(name)
            .public_key(self.key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(minutes=5))
            .not_valid_after(now + datetime.timedelta(days=1))
            .add_extension(x509.BasicConstraints(ca=True, path_length=None), True)
            .sign(self.key, hashes.SHA256())
        )
        self.bundle = workdir / "token-bundle.pem"
        self.bundle.write_bytes(self.cert.public_bytes(serialization.Encoding.PEM))
        self.requests = 0
        server = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *a):
                pass

            def do_GET(self):  # noqa: N802
                server.requests += 1
                q = {k: v[-1] for k, v in parse_qs(urlsplit(self.path).query).items()}
                authed = (
                    self.headers.get("Authorization")
                    == "Basic "
                    + base64.b64encode(f"{server.user}:{server.password}".encode()).decode()
                )
                if self.headers.get("Authorization") and not authed:
                    return self._send(401, {"details": "incorrect username or password"})
                scope = q.get("scope", "")
                access = []
                if scope.startswith("repository:"):
                    _, repo, actions = scope.split(":", 2)
                    if authed or repo.startswith("public/"):
                        access.append(
                            {"type": "repository", "name": repo, "actions": actions.split(",")}
                        )
                token = server.token(q.get("service", ""), access)
                self._send(200, {"token": token, "access_token": token, "expires_in": 300})

            def _send(self, code, body):
                reply(self, code, json.dumps(body).encode(), "application/json")

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}/token"
        threading.Thread(target=self.httpd.serve_forever, daemon=True).start()

    def token(self, audience: str, access: list) -> str:
        now = int(time.time())
        header = {
            "typ": "JWT",
            "alg": "ES256",
            "x5c": [base64.b64encode(self.cert.public_bytes(serialization.Encoding.DER)).decode()],
        }
        claims = {
            "iss": self.issuer,
            "sub": "tester",
            "aud": audience,
            "exp": now + 300,
            "nbf": now - 10,
            "iat": now,
            "jti": uuid.uuid4().hex,
            "access": access,
        }
        signing_input = (
            b64url(json.dumps(header).encode()) + "." + b64url(json.dumps(claims).encode())
        )
        r, s = decode_dss_signature(
            self.key.sign(signing_input.encode(), ec.ECDSA(hashes.SHA256()))
        )
        return signing_input + "." + b64url(r.to_bytes(32, "big") + s.to_bytes(32, "big"))

    def auth_config(self) -> dict:
        return {
            "token": {
                "realm": self.url,
                "service": self.service,
                "issuer": self.issuer,
                "rootcertbundle": str(self.bundle),
            }
        }

    def stop(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()


# A config without USER: accepted, it would make the image run as root.
ROOT_CONFIG = json.dumps({"architecture": "amd64", "os": "linux", "config": {}}).encode()


class FaultServer:
    """Answers registry requests with a fault. Modes:

    - "429": 429 with Retry-After; "malformed": a manifest cut short;
    - "drip": 200, then a 4,000-byte body at `drip_rate` bytes a second;
    with `upstream` (a registry host on plain HTTP), which it otherwise passes through:
    - "bad-config": every blob is answered with `blob` (ROOT_CONFIG unless given);
    - "stream": blobs are passed on as they come, without a Content-Length;
    - "bad-manifest": a manifest asked for by digest is answered with the manifest of the
      same repository's tag `swap_tag`;
    - "wrong-header": manifests carry `Docker-Content-Digest: <header_digest>`;
    - "redirect": blobs are answered with 307 to the upstream's URL for them.
    """

    def __init__(
        self,
        mode: str,
        upstream: str | None = None,
        swap_tag: str = "evil",
        header_digest: str = "sha256:" + "e" * 64,
        drip_rate: float = 20.0,
        blob: bytes = ROOT_CONFIG,
    ):
        self.mode, self.requests = mode, 0
        http = urllib3.PoolManager(retries=False, timeout=10)
        server = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *a):
                pass

            def _upstream(self, path):
                r = http.request(
                    "GET",
                    f"http://{upstream}{path}",
                    headers={"Accept": self.headers.get("Accept", "*/*")},
                )
                return r.status, r.data, r.headers.get("Content-Type", "application/json")

            def do_GET(self):  # noqa: N802
                server.requests += 1
                mode, path = server.mode, self.path
                is_blob, is_manifest = "/blobs/" in path, "/manifests/" in path
                if mode == "429":
                    return reply(
                        self,
                        429,
                        json.dumps(
                            {"errors": [{"code": "TOOMANYREQUESTS", "message": "pull rate limit"}]}
                        ).encode(),
                        OCI_MANIFEST,
                        {"Retry-After": "60"},
                    )
                if mode == "malformed":
                    return reply(self, 200, b'{"schemaVersion": 2, "config": ', OCI_MANIFEST)
                if mode == "drip":
                    return self._drip(b" " * 4000)
                if mode == "bad-config" and is_blob:
                    return reply(self, 200, blob, "application/octet-stream")
                if mode == "stream" and is_blob:
                    return self._stream(path)
                if mode == "redirect" and is_blob:
                    return reply(
                        self, 307, b"", "text/plain", {"Location": f"http://{upstream}{path}"}
                    )
                if mode == "bad-manifest" and is_manifest and "sha256:" in path:
                    path = path.rsplit("/", 1)[0] + "/" + swap_tag
                status, body, ctype = self._upstream(path)
                headers = {}
                if is_manifest and status == 200:
                    headers["Docker-Content-Digest"] = (
                        header_digest
                        if mode == "wrong-header"
                        else "sha256:" + hashlib.sha256(body).hexdigest()
                    )
                reply(self, status, body, ctype, headers)

            def _stream(self, path):
                r = http.request("GET", f"http://{upstream}{path}", preload_content=False)
                try:
                    self.send_response(r.status)
                    self.send_header("Content-Type", "application/octet-stream")
                    self.end_headers()  # HTTP/1.0, no length: the body ends with the connection
                    for chunk in r.stream(1 << 16):
                        self.wfile.write(chunk)
                except OSError:
                    pass  # the client stopped reading
                finally:
                    r.close()
                    r.release_conn()

            def _drip(self, body):
                self.send_response(200)
                self.send_header("Content-Type", OCI_MANIFEST)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                try:
                    for i in range(0, len(body), 4):
                        self.wfile.write(body[i : i + 4])
                        self.wfile.flush()
                        time.sleep(4 / drip_rate)
                except OSError:
                    pass

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.host = f"127.0.0.1:{self.httpd.server_address[1]}"
        threading.Thread(target=self.httpd.serve_forever, daemon=True).start()

    def stop(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()


class Registries:
    """The set of registries over one storage, and helpers to push image configs."""

    def __init__(self):
        self.dir = Path(tempfile.mkdtemp(prefix="registries-"))
        storage = self.dir / "storage"
        storage.mkdir()
        ca, cert, key = make_ca_and_cert()
        self.ca_pem = ca.decode()
        (self.dir / "tls.crt").write_bytes(cert)
        (self.dir / "tls.key").write_bytes(key)
        self.tokens = TokenServer(self.dir)
        (self.dir / "htpasswd").write_text(
            "basicuser:" + crypt.crypt("basicpass", crypt.mksalt(crypt.METHOD_BLOWFISH)) + "\n"
        )
        self.plain = RegistryProcess(storage, self.dir, "plain")
        self.tls = RegistryProcess(
            storage, self.dir, "tls", tls=(self.dir / "tls.crt", self.dir / "tls.key")
        )
        self.token = RegistryProcess(storage, self.dir, "token", auth=self.tokens.auth_config())
        self.basic = RegistryProcess(
            storage,
            self.dir,
            "basic",
            auth={"htpasswd": {"realm": "welkin-test", "path": str(self.dir / "htpasswd")}},
        )
        self.http = urllib3.PoolManager(retries=False, timeout=10)

    def stop(self) -> None:
        for r in (self.plain, self.tls, self.token, self.basic):
            r.stop()
        self.tokens.stop()
        shutil.rmtree(self.dir, ignore_errors=True)

    # --- pushing ---

    def _upload(self, repo: str) -> str:
        """Start a blob upload: the URL to send its bytes to."""
        base = f"http://{self.plain.host}"
        r = self.http.request("POST", f"{base}/v2/{repo}/blobs/uploads/")
        assert r.status == 202, r.data
        location = r.headers["Location"]
        return base + location if location.startswith("/") else location

    def push_blob(self, repo: str, data: bytes) -> str:
        digest = "sha256:" + hashlib.sha256(data).hexdigest()
        location = self._upload(repo)
        sep = "&" if "?" in location else "?"
        r = self.http.request(
            "PUT",
            f"{location}{sep}digest={digest}",
            body=data,
            headers={"Content-Type": "application/octet-stream"},
        )
        assert r.status == 201, r.data
        return digest

    def push_manifest(self, repo: str, reference: str, manifest: dict, media_type: str) -> str:
        data = json.dumps(manifest).encode()
        r = self.http.request(
            "PUT",
            f"http://{self.plain.host}/v2/{repo}/manifests/{reference}",
            body=data,
            headers={"Content-Type": media_type},
        )
        assert r.status == 201, r.data
        return r.headers["Docker-Content-Digest"]

    def push_image(
        self,
        repo: str,
        tag: str | None,
        user: str | None,
        platform: tuple[str, str] = ("linux", "amd64"),
        config_bytes: bytes | None = None,
    ) -> str:
        """An image whose config has User `user` (None: no config section). Returns the
        manifest digest."""
        layer = _tiny_layer(repo + (user or ""))
        layer_digest = self.push_blob(repo, layer)
        config = {
            "architecture": platform[1],
            "os": platform[0],
            "rootfs": {
                "type": "layers",
                "diff_ids": [
                    "sha256:" + hashlib.sha256(_tiny_tar(repo + (user or ""))).hexdigest()
                ],
            },
        }
        if user is not None:
            config["config"] = {"User": user, "Env": ["PATH=/usr/bin"], "Cmd": ["/bin/sh"]}
        data = config_bytes if config_bytes is not None else json.dumps(config).encode()
        config_digest = self.push_blob(repo, data)
        manifest = {
            "schemaVersion": 2,
            "mediaType": OCI_MANIFEST,
            "config": {
                "mediaType": "application/vnd.oci.image.config.v1+json",
                "digest": config_digest,
                "size": len(data),
            },
            "layers": [
                {
                    "mediaType": "application/vnd.oci.image.layer.v1.tar+gzip",
                    "digest": layer_digest,
                    "size": len(layer),
                }
            ],
        }
        data = json.dumps(manifest).encode()
        digest = "sha256:" + hashlib.sha256(data).hexdigest()
        self.push_manifest(repo, tag or digest, manifest, OCI_MANIFEST)
        return digest

    def push_blob_stream(self, repo: str, chunks: Iterable[bytes]) -> tuple[str, int]:
        """A blob uploaded as it is made (one chunked PATCH), never held whole: (digest,
        size)."""
        location = self._upload(repo)
        digest, size = hashlib.sha256(), 0

        def body():
            nonlocal size
            for chunk in chunks:
                digest.update(chunk)
                size += len(chunk)
                yield chunk

        r = self.http.request(
            "PATCH",
            location,
            body=body(),
            chunked=True,
            headers={"Content-Type": "application/octet-stream"},
            timeout=120,
        )
        assert r.status == 202, r.data
        location = r.headers["Location"]
        if location.startswith("/"):
            location = f"http://{self.plain.host}{location}"
        sep = "&" if "?" in location else "?"
        name = "sha256:" + digest.hexdigest()
        r = self.http.request("PUT", f"{location}{sep}digest={name}", timeout=120)
        assert r.status == 201, r.data
        return name, size

    def push_layer(self, repo: str, blob: bytes, media_type: str) -> dict:
        """A layer blob, and its descriptor for a manifest."""
        return {"mediaType": media_type, "digest": self.push_blob(repo, blob), "size": len(blob)}

    def push_layered_image(
        self,
        repo: str,
        tag: str | None,
        layers: list[bytes | dict],
        compression: list[str] | str = "gzip",
        user: str = "",
        platform: tuple[str, str] = ("linux", "amd64"),
    ) -> str:
        """An image of these layers, base first: each a tar (tar_layer), compressed as
        `compression` says (gzip, docker, zstd or none; one for all, or one each), or a
        descriptor put in the manifest as it is. Its config's User is `user`. Returns the
        manifest digest."""
        kinds = [compression] * len(layers) if isinstance(compression, str) else compression
        descriptors, diff_ids = [], []
        for layer, kind in zip(layers, kinds, strict=True):
            if isinstance(layer, dict):
                descriptors.append(layer)
                diff_ids.append(layer["digest"])  # not read by anything here
                continue
            descriptors.append(
                self.push_layer(repo, compress(layer, kind), LAYER_MEDIA_TYPES[kind])
            )
            diff_ids.append("sha256:" + hashlib.sha256(layer).hexdigest())
        config = json.dumps(
            {
                "architecture": platform[1],
                "os": platform[0],
                "config": {"User": user, "Cmd": ["/bin/sh"]},
                "rootfs": {"type": "layers", "diff_ids": diff_ids},
            }
        ).encode()
        manifest = {
            "schemaVersion": 2,
            "mediaType": OCI_MANIFEST,
            "config": {
                "mediaType": "application/vnd.oci.image.config.v1+json",
                "digest": self.push_blob(repo, config),
                "size": len(config),
            },
            "layers": descriptors,
        }
        digest = "sha256:" + hashlib.sha256(json.dumps(manifest).encode()).hexdigest()
        self.push_manifest(repo, tag or digest, manifest, OCI_MANIFEST)
        return digest

    def push_index_of(self, repo: str, tag: str, manifests: dict[tuple[str, str], str]) -> str:
        """An image index of manifests already pushed: (os, architecture) -> digest."""
        entries = []
        for (os_, arch), digest in manifests.items():
            size = len(
                self.http.request(
                    "GET",
                    f"http://{self.plain.host}/v2/{repo}/manifests/{digest}",
                    headers={"Accept": OCI_MANIFEST},
                ).data
            )
            entries.append(
                {
                    "mediaType": OCI_MANIFEST,
                    "digest": digest,
                    "size": size,
                    "platform": {"os": os_, "architecture": arch},
                }
            )
        return self.push_manifest(
            repo, tag, {"schemaVersion": 2, "mediaType": OCI_INDEX, "manifests": entries}, OCI_INDEX
        )

    def push_index(self, repo: str, tag: str, users: dict[tuple[str, str], str]) -> str:
        """An image index with one image per platform, each with its own User."""
        return self.push_index_of(
            repo,
            tag,
            {
                (os_, arch): self.push_image(repo, None, user, (os_, arch))
                for (os_, arch), user in users.items()
            },
        )


def _tiny_tar(seed: str) -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as tar:
        data = seed.encode()
        info = tarfile.TarInfo("seed.txt")
        info.size, info.mtime = len(data), 0
        tar.addfile(info, io.BytesIO(data))
    return buf.getvalue()


def _tiny_layer(seed: str) -> bytes:
    return gzip.compress(_tiny_tar(seed), mtime=0)


# --- layers ---


@dataclass(frozen=True)
class Symlink:
    target: str


@dataclass(frozen=True)
class Hardlink:
    target: str


@dataclass(frozen=True)
class Dir:
    pass


DIR = Dir()


def whiteout(path: str) -> str:
    """The entry that deletes `path` from the layers below: etc/passwd -> etc/.wh.passwd."""
    parent, _, name = path.rpartition("/")
    return f"{parent}/.wh.{name}" if parent else f".wh.{name}"


def opaque(directory: str) -> str:
    """The entry that hides what the layers below have in `directory`."""
    return f"{directory}/.wh..wh..opq"


def tar_layer(
    entries: dict[str, bytes | Symlink | Hardlink | Dir], fmt: int = tarfile.PAX_FORMAT
) -> bytes:
    """A layer's tar, entries in the order given: path (as written in the tar, so
    './etc/passwd' and '/etc/passwd' stay so) -> content, a Symlink, a Hardlink or DIR.
    Whiteouts are empty files: {whiteout("etc/passwd"): b""}."""
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=fmt) as tar:
        for path, content in entries.items():
            info = tarfile.TarInfo(path)
            info.mtime, info.mode = 0, 0o644
            if isinstance(content, Symlink | Hardlink):
                info.type = tarfile.SYMTYPE if isinstance(content, Symlink) else tarfile.LNKTYPE
                info.linkname = content.target
                tar.addfile(info)
            elif isinstance(content, Dir):
                info.type, info.mode = tarfile.DIRTYPE, 0o755
                tar.addfile(info)
            else:
                info.size = len(content)
                tar.addfile(info, io.BytesIO(content))
    return buf.getvalue()


def compress(tar: bytes, compression: str) -> bytes:
    """A layer's blob: gzip (OCI's or Docker's media type), zstd, or none."""
    if compression in ("gzip", "docker"):
        return gzip.compress(tar, mtime=0)
    if compression == "zstd":
        return zstandard.ZstdCompressor().compress(tar)
    assert compression == "none", compression
    return tar
