"""A real RFC 3161 time-stamping authority for tests: `openssl ts -reply` behind HTTP on
loopback, with certificates made here.

    with local_tsa("good") as tsa:
        token = timestamps.request(data, tsa.url)
        stamp = timestamps.verify(token, data, ca_bundle=tsa.ca_pem, crls=[tsa.crl_pem])

Kinds: "good" (issued by the test root), "intermediate" (root -> intermediate CA -> TSA, the
intermediate sent in the token), "expired" (notAfter yesterday), "untrusted" (issued by
another root), "revoked" (listed in the root's CRL), "replay" (answers every query with
its first token), "refusing" (takes SHA-512 imprints only, so it answers ours with status
rejection, bad_alg), "down" (answers 503), "closed" (a port nobody listens on), "huge"
(answers 100 KB). `key="rsa"` signs with RSA 2048 instead of EC P-256. Keys and
certificates are made once per process and cached, so a TSA starts in milliseconds.
"""

from __future__ import annotations

import atexit
import datetime
import shutil
import socket
import subprocess
import tempfile
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from functools import cache
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Literal

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

Kind = Literal[
    "good",
    "intermediate",
    "expired",
    "untrusted",
    "revoked",
    "replay",
    "refusing",
    "down",
    "closed",
    "huge",
]
Key = ec.EllipticCurvePrivateKey | rsa.RSAPrivateKey

POLICY = "1.2.3.4.1"
MAX_QUERY_BYTES = 4096
# openssl rewrites a TSA's serial file in place; TSAs of one kind share that file.
_OPENSSL = threading.Lock()

_CONFIG = """\
[ tsa ]
default_tsa = tsa_config

[ tsa_config ]
dir = {dir}
serial = $dir/serial
crypto_device = builtin
signer_digest = sha256
default_policy = {policy}
other_policies = 1.2.3.4.5
digests = {digests}
accuracy = secs:1, millisecs:500, microsecs:100
clock_precision_digits = 0
ordering = yes
tsa_name = yes
ess_cert_id_chain = no
ess_cert_id_alg = sha256
"""


@dataclass(frozen=True)
class LocalTSA:
    """A running test TSA. `ca_pem` is always the test root, the one a verifier should
    trust (so an "untrusted" TSA's token fails against it)."""

    url: str
    kind: str
    ca_pem: bytes
    ca_path: str
    crl_pem: bytes | None
    cert: x509.Certificate | None  # the TSA's signing certificate
    key: Key | None  # its private key, for tests that forge tokens


def _now() -> datetime.datetime:
    return datetime.datetime.now(datetime.UTC)


@cache
def _workdir() -> Path:
    path = Path(tempfile.mkdtemp(prefix="welkin-tsa-"))
    atexit.register(shutil.rmtree, path, True)
    return path


def _new_key(key: str) -> Key:
    if key == "rsa":
        return rsa.generate_private_key(public_exponent=65537, key_size=2048)
    return ec.generate_private_key(ec.SECP256R1())


def _name(cn: str) -> x509.Name:
    return x509.Name(
        [
            x509.NameAttribute(NameOID.ORGANIZATION_NAME, "Welkin Tests"),
            x509.NameAttribute(NameOID.COMMON_NAME, cn),
        ]
    )


def _issue(
    cn: str,
    key: Key,
    issuer: tuple[x509.Certificate, Key] | None,
    *,
    ca: bool,
    not_before: datetime.datetime,
    not_after: datetime.datetime,
) -> x509.Certificate:
    """A certificate for `key`: a CA (self-signed when `issuer` is None) or a TSA (extended
    key usage timeStamping only, critical, as RFC 3161 2.3 requires)."""
    issuer_cert, issuer_key = issuer if issuer else (None, key)
    builder = (
        x509.CertificateBuilder()
        .subject_name(_name(cn))
        .issuer_name(issuer_cert.subject if issuer_cert else _name(cn))
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(not_before)
        .not_valid_after(not_after)
        .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=not ca,
                content_commitment=not ca,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=ca,
                crl_sign=ca,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), False)
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(issuer_key.public_key()), False
        )
    )
    if not ca:
        builder = builder.add_extension(
            x509.ExtendedKeyUsage([ExtendedKeyUsageOID.TIME_STAMPING]), critical=True
        )
    return builder.sign(issuer_key, hashes.SHA256())


@cache
def _ca(name: str) -> tuple[x509.Certificate, Key]:
    """A CA: "root" (the trusted one), "other" (another root), "intermediate" (under root)."""
    key = _new_key("ec")
    now = _now()
    issuer = _ca("root") if name == "intermediate" else None
    cn = {"root": "Welkin Test Root CA", "other": "Untrusted Test Root CA"}.get(
        name, "Welkin Test Intermediate CA"
    )
    span = (now - datetime.timedelta(days=365), now + datetime.timedelta(days=3650))
    return _issue(cn, key, issuer, ca=True, not_before=span[0], not_after=span[1]), key


@cache
def _tsa_cert(kind: str, key_type: str) -> tuple[x509.Certificate, Key]:
    key = _new_key(key_type)
    now = _now()
    issuer = {"untrusted": "other", "intermediate": "intermediate"}.get(kind, "root")
    if kind == "expired":
        span = (now - datetime.timedelta(days=60), now - datetime.timedelta(days=1))
    else:
        span = (now - datetime.timedelta(days=1), now + datetime.timedelta(days=30))
    cert = _issue(
        f"Welkin Test TSA {kind} {key_type}",
        key,
        _ca(issuer),
        ca=False,
        not_before=span[0],
        not_after=span[1],
    )
    return cert, key


@cache
def _root_crl(key_type: str) -> bytes:
    """The root's CRL (PEM), listing the "revoked" TSA's certificate since an hour ago."""
    root, root_key = _ca("root")
    revoked, _ = _tsa_cert("revoked", key_type)
    now = _now()
    entry = (
        x509.RevokedCertificateBuilder()
        .serial_number(revoked.serial_number)
        .revocation_date(now - datetime.timedelta(hours=1))
        .add_extension(x509.CRLReason(x509.ReasonFlags.key_compromise), critical=False)
        .build()
    )
    crl = (
        x509.CertificateRevocationListBuilder()
        .issuer_name(root.subject)
        .last_update(now - datetime.timedelta(hours=1))
        .next_update(now + datetime.timedelta(days=7))
        .add_revoked_certificate(entry)
        .sign(root_key, hashes.SHA256())
    )
    return crl.public_bytes(serialization.Encoding.PEM)


def _pem(*certs: x509.Certificate) -> bytes:
    return b"".join(c.public_bytes(serialization.Encoding.PEM) for c in certs)


@cache
def _tsa_dir(kind: str, key_type: str) -> Path:
    """The files `openssl ts -reply` reads: config, key, certificate, chain, serial."""
    cert, key = _tsa_cert(kind, key_type)
    path = _workdir() / f"{kind}-{key_type}"
    path.mkdir()
    (path / "tsa.key").write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    (path / "tsa.pem").write_bytes(_pem(cert))
    chain = [_ca("intermediate")[0]] if kind == "intermediate" else []
    (path / "chain.pem").write_bytes(_pem(*chain))
    (path / "serial").write_text("01\n")
    (path / "tsa.cnf").write_text(
        _CONFIG.format(
            dir=path,
            policy=POLICY,
            digests="sha512" if kind == "refusing" else "sha256, sha384, sha512",
        )
    )
    return path


@cache
def _root_path() -> str:
    path = _workdir() / "root.pem"
    path.write_bytes(_pem(_ca("root")[0]))
    return str(path)


class _Handler(BaseHTTPRequestHandler):
    server: _Server

    def log_message(self, *args: object) -> None:
        pass

    def _reply(self, code: int, body: bytes, content_type: str) -> None:
        self.send_response(code)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def do_POST(self) -> None:
        kind = self.server.kind
        if kind == "down":
            return self._reply(503, b"down for maintenance\n", "text/plain")
        if kind == "huge":
            return self._reply(200, b"\x30" * 100_000, "application/timestamp-reply")
        length = int(self.headers.get("Content-Length") or 0)
        if self.headers.get("Content-Type") != "application/timestamp-query":
            return self._reply(415, b"not a timestamp query\n", "text/plain")
        if not 0 < length <= MAX_QUERY_BYTES:
            return self._reply(413, b"query too large\n", "text/plain")
        query = self.rfile.read(length)
        try:
            answer = self.server.reply(query)
        except subprocess.CalledProcessError as e:
            return self._reply(500, e.stderr, "text/plain")
        self._reply(200, answer, "application/timestamp-reply")


class _Server(ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self, kind: str, files: Path | None):
        super().__init__(("127.0.0.1", 0), _Handler)
        self.kind = kind
        self.files = files
        self._count = 0
        self._first: bytes | None = None

    def reply(self, query: bytes) -> bytes:
        """openssl's answer to a DER TimeStampReq: a DER TimeStampResp."""
        assert self.files is not None
        with _OPENSSL:
            if self.kind == "replay" and self._first:
                return self._first
            self._count += 1
            q = self.files / f"q{self._count}.tsq"
            r = self.files / f"r{self._count}.tsr"
            q.write_bytes(query)
            # openssl answers a malformed query with a rejection response, exit status 0.
            subprocess.run(
                [
                    "openssl", "ts", "-reply",
                    "-config", str(self.files / "tsa.cnf"),
                    "-queryfile", str(q),
                    "-inkey", str(self.files / "tsa.key"),
                    "-signer", str(self.files / "tsa.pem"),
                    "-chain", str(self.files / "chain.pem"),
                    "-out", str(r),
                ],
                check=True,
                capture_output=True,
                timeout=10,
            )  # fmt: skip
            answer = r.read_bytes()
            q.unlink()
            r.unlink()
            self._first = self._first or answer
            return answer


def _closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextmanager
def local_tsa(kind: Kind = "good", key: Literal["ec", "rsa"] = "ec") -> Iterator[LocalTSA]:
    """A TSA of this kind serving on loopback until the block ends."""
    ca_pem = _pem(_ca("root")[0])
    signs = kind not in ("down", "closed", "huge")
    cert, tsa_key = _tsa_cert(kind, key) if signs else (None, None)
    crl = _root_crl(key) if signs and kind != "untrusted" else None
    if kind == "closed":
        url = f"http://127.0.0.1:{_closed_port()}/tsr"
        yield LocalTSA(url, kind, ca_pem, _root_path(), None, None, None)
        return
    server = _Server(kind, _tsa_dir(kind, key) if signs else None)
    # A short poll interval: shutdown() waits for the next poll, 0.5 s by default.
    thread = threading.Thread(target=server.serve_forever, args=(0.02,), daemon=True)
    thread.start()
    try:
        url = f"http://127.0.0.1:{server.server_address[1]}/tsr"
        yield LocalTSA(url, kind, ca_pem, _root_path(), crl, cert, tsa_key)
    finally:
        server.shutdown()
        server.server_close()
