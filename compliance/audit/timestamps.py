"""RFC 3161 trusted timestamps: a time-stamping authority (TSA) signs the SHA-256 of some
bytes (a report, a manifest) together with its time; we keep its whole answer as FILE.tsr
and check it whenever the file is shown or exported.

A token proves that the digest existed at its time (genTime) only as far as the TSA is
trusted, so verify() checks, besides the digest: the CMS signature, that the signer is a
time-stamping certificate (extended key usage timeStamping, critical) that chains to a CA
in the bundle we trust and was valid at genTime, and, given CRLs, that it was not revoked.
The stored .tsr is exactly what the TSA sent, so an auditor can check it without us:

    openssl ts -verify -in FILE.tsr -data FILE -CAfile ca.pem

ASN.1 is read with asn1crypto, signatures and certificate paths are checked with
cryptography. No Django here; only request() touches the network.
"""

from __future__ import annotations

import hashlib
import secrets
import time
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

import requests
import urllib3
from asn1crypto import algos, cms, tsp
from asn1crypto import x509 as asn1_x509
from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec, padding, rsa
from cryptography.hazmat.primitives.asymmetric.types import PublicKeyTypes
from cryptography.x509.oid import ExtendedKeyUsageOID
from cryptography.x509.verification import (
    Criticality,
    ExtensionPolicy,
    PolicyBuilder,
    Store,
    VerificationError,
)

from compliance import bounded

# A TimeStampResp is a few KB (the token, the TSA's certificate, perhaps its chain).
MAX_RESPONSE_BYTES = 64 * 1024
# A token dated later than this past our clock comes from a TSA whose clock is wrong.
CLOCK_SKEW = timedelta(minutes=5)
QUERY_TYPE = "application/timestamp-query"
# RFC 3161 3.4 says -reply; some TSAs still answer with the draft's -response.
REPLY_TYPES = ("application/timestamp-reply", "application/timestamp-response")
# The digests we accept for the token's own signature (SHA-1 and MD5 are forgeable).
HASHES: dict[str, type[hashes.HashAlgorithm]] = {
    "sha224": hashes.SHA224,
    "sha256": hashes.SHA256,
    "sha384": hashes.SHA384,
    "sha512": hashes.SHA512,
}
GRANTED = ("granted", "granted_with_mods")


class TimestampError(Exception):
    """A timestamp refused or not obtained; the message says why, in plain words."""


class TimestampUnavailable(TimestampError):
    """The TSA could not be reached, answered an HTTP error, or refused to stamp."""


@dataclass(frozen=True)
class Stamp:
    """What a verified token says: the TSA `tsa` saw the SHA-256 `digest` at `time`."""

    time: datetime  # genTime, aware UTC
    tsa: str  # the signing certificate's subject, e.g. "CN=Example TSA,O=Example"
    serial: int  # the token's serial number, unique per TSA
    policy: str  # the TSA policy the token was issued under (dotted OID)
    digest: str  # hex SHA-256 that the token covers
    certificate_not_after: datetime  # the end of the TSA certificate's validity
    warning: str = ""  # why the token is still good although something changed since


class _TimeStampResp(tsp.TimeStampResp):
    # RFC 3161 2.4.2: the token is OPTIONAL (a refusal carries only the status); asn1crypto
    # 1.5.1 declares it required, so a refusal would not parse.
    _fields = [
        ("status", tsp.PKIStatusInfo),
        ("time_stamp_token", cms.ContentInfo, {"optional": True}),
    ]


@dataclass(frozen=True)
class _Parsed:
    status: str  # "" when granted, else the TSA's status, text and failure reasons
    signed_data: cms.SignedData | None
    tst_der: bytes  # the encapsulated TSTInfo, as signed
    tst: tsp.TSTInfo | None


def request(
    data: bytes, url: str, *, timeout: float = 10.0, ca_bundle: bytes | None = None
) -> bytes:
    """Ask the TSA at `url` to stamp the SHA-256 of `data`; the DER TimeStampResp it sent
    (to store as FILE.tsr). `timeout` is the connect timeout, that of each read, and the
    deadline for the whole body. With `ca_bundle` the answer is also verified. No retries:
    the caller decides when to ask again.

    Raises TimestampUnavailable when no stamp was had (network, HTTP, refusal), and
    TimestampError when the answer is not a token for this request."""
    digest = hashlib.sha256(data).digest()
    nonce = secrets.randbits(64)  # binds the answer to this request: no replayed token
    query = tsp.TimeStampReq(
        {
            "version": "v1",
            "message_imprint": {
                "hash_algorithm": {"algorithm": "sha256"},
                "hashed_message": digest,
            },
            "nonce": nonce,
            "cert_req": True,  # the token then carries the TSA's certificate
        }
    ).dump()
    body = _post(url, query, timeout)
    parsed = _parse(body)
    if parsed.status:
        raise TimestampUnavailable(f"the TSA at {url} refused to stamp: {parsed.status}")
    assert parsed.tst is not None
    if parsed.tst["nonce"].native != nonce:
        raise TimestampError(f"the TSA at {url} answered another request (the nonce differs)")
    _check_imprint(parsed.tst, digest)
    if ca_bundle is not None:
        verify(body, digest_hex=digest.hex(), ca_bundle=ca_bundle)
    return body


def verify(
    response: bytes,
    data: bytes | None = None,
    *,
    digest_hex: str | None = None,
    ca_bundle: bytes,
    crls: Sequence[bytes] = (),
    now: datetime | None = None,
) -> Stamp:
    """verify_token, with anything a malformed token makes a library raise turned into a
    TimestampError that says so (a token is hostile input: it never crashes a verifier)."""
    try:
        return verify_token(
            response, data, digest_hex=digest_hex, ca_bundle=ca_bundle, crls=crls, now=now
        )
    except TimestampError:
        raise
    except Exception as e:  # noqa: BLE001 - asn1crypto and cryptography raise many kinds
        raise TimestampError(
            f"the timestamp token is malformed ({type(e).__name__}: {str(e)[:200]})"
        ) from None


def verify_token(
    response: bytes,
    data: bytes | None = None,
    *,
    digest_hex: str | None = None,
    ca_bundle: bytes,
    crls: Sequence[bytes] = (),
    now: datetime | None = None,
) -> Stamp:
    """Check a stored TimeStampResp against `data` (or its hex SHA-256, `digest_hex`),
    trusting the CAs in `ca_bundle` (PEM) and the revocations in `crls` (PEM or DER);
    the Stamp it proves. Raises TimestampError naming the first reason to refuse.

    Validity is judged at the token's time, which is the point of a timestamp; `now`
    (default: the clock) only decides whether to warn that a certificate has expired since,
    and refuses a token dated in the future."""
    if (data is None) == (digest_hex is None):
        raise TypeError("verify() takes either data or digest_hex")
    expected = hashlib.sha256(data).digest() if data is not None else bytes.fromhex(digest_hex)
    roots = load_pem_bundle(ca_bundle)
    revocations = [load_crl(c) for c in crls]
    now = now or datetime.now(UTC)

    parsed = _parse(response)
    if parsed.status:
        raise TimestampError(
            f"the response holds no token: the TSA refused to stamp: {parsed.status}"
        )
    assert parsed.signed_data is not None and parsed.tst is not None
    tst = parsed.tst
    _check_imprint(tst, expected)
    signer, others = _check_signature(parsed.signed_data, parsed.tst_der)
    gen_time: datetime = tst["gen_time"].native
    if gen_time > now + CLOCK_SKEW:
        raise TimestampError(f"the token is dated in the future ({_when(gen_time)})")
    _check_tsa_certificate(signer, gen_time)
    chain = _chain(signer, others, roots, gen_time)
    _check_revocation(chain, revocations)
    return Stamp(
        time=gen_time,
        tsa=_subject(signer),
        serial=tst["serial_number"].native,
        policy=tst["policy"].dotted,
        digest=expected.hex(),
        certificate_not_after=signer.not_valid_after_utc,
        warning="; ".join(
            f"{_who(cert, chain)} has expired since (not after "
            f"{_when(cert.not_valid_after_utc)}); the token was made while it was valid"
            for cert in chain
            if cert.not_valid_after_utc < now
        ),
    )


def load_pem_bundle(pem: bytes) -> list[x509.Certificate]:
    """The certificates in a PEM bundle (the CAs we trust to certify TSAs)."""
    try:
        return x509.load_pem_x509_certificates(pem)
    except ValueError:
        raise TimestampError(
            "the TSA CA bundle (WELKIN_TSA_CA_BUNDLE) holds no readable PEM certificate"
        )


def load_crl(data: bytes) -> x509.CertificateRevocationList:
    """A CRL from PEM or DER (CAs publish DER, people paste PEM)."""
    try:
        if data.lstrip().startswith(b"-----BEGIN"):
            return x509.load_pem_x509_crl(data)
        return x509.load_der_x509_crl(data)
    except ValueError:
        raise TimestampError("a CRL given is neither a PEM nor a DER certificate revocation list")


# --- the token ----------------------------------------------------------------------------


def _post(url: str, query: bytes, timeout: float) -> bytes:
    """The body of the TSA's answer, at most MAX_RESPONSE_BYTES, within `timeout`."""
    deadline = time.monotonic() + timeout
    try:
        r = requests.post(
            url,
            data=query,
            headers={
                "Content-Type": QUERY_TYPE,
                "Accept": REPLY_TYPES[0],
                "Accept-Encoding": "identity",  # read_body counts the bytes as sent
            },
            timeout=timeout,
            stream=True,
            allow_redirects=False,  # a POST redirected becomes a GET in requests
        )
    except requests.ReadTimeout:
        raise TimestampUnavailable(f"the TSA at {url} did not answer within {timeout:g} s")
    except requests.RequestException as e:
        raise TimestampUnavailable(f"the TSA at {url} could not be reached: {_cause(e)}")
    with r:
        if r.status_code != 200:
            raise TimestampUnavailable(
                f"the TSA at {url} answered HTTP {r.status_code} {r.reason or ''}".rstrip()
            )
        content_type = r.headers.get("Content-Type", "").split(";")[0].strip().lower()
        if content_type not in REPLY_TYPES:
            raise TimestampUnavailable(
                f"the TSA at {url} answered {content_type or 'no content type'}, "
                f"not {REPLY_TYPES[0]}"
            )
        try:
            return bounded.read_body(r.raw, MAX_RESPONSE_BYTES, deadline)
        except bounded.TooLarge:
            raise TimestampUnavailable(
                f"the TSA at {url} answered more than {MAX_RESPONSE_BYTES} bytes, "
                "too large for a timestamp response"
            )
        except bounded.DeadlineExceeded:
            raise TimestampUnavailable(f"the TSA at {url} did not answer within {timeout:g} s")
        except (urllib3.exceptions.HTTPError, OSError) as e:
            raise TimestampUnavailable(f"the TSA at {url} broke off: {_cause(e)}")


def _parse(response: bytes) -> _Parsed:
    """The TimeStampResp, parsed whole now: asn1crypto parses lazily, and a malformed part
    must be refused here rather than surface as a ValueError from some later check."""
    if len(response) > MAX_RESPONSE_BYTES:
        raise TimestampError(
            f"the timestamp response is larger than {MAX_RESPONSE_BYTES} bytes "
            f"({len(response)}); not an RFC 3161 timestamp response"
        )
    try:
        resp = _TimeStampResp.load(response, strict=True)
        resp.native  # noqa: B018 -- parses every part
        status = resp["status"]
        if status["status"].native not in GRANTED:
            words = [status["status"].native, *(status["status_string"].native or [])]
            failures = sorted(status["fail_info"].native or [])
            if failures:
                words.append(f"({', '.join(failures)})")
            return _Parsed(" ".join(words), None, b"", None)
        token = resp["time_stamp_token"]
        if token["content_type"].native != "signed_data":
            raise TimestampError("the timestamp token is not CMS SignedData")
        signed_data = token["content"]
        encap = signed_data["encap_content_info"]
        if encap["content_type"].native != "tst_info":
            raise TimestampError("the signed content is not a TSTInfo (id-ct-TSTInfo)")
        tst_der = bytes(encap["content"])
        tst = tsp.TSTInfo.load(tst_der, strict=True)
        tst.native  # noqa: B018
    except (ValueError, TypeError, KeyError, IndexError):
        raise TimestampError("not an RFC 3161 timestamp response (it does not parse as one)")
    if tst["version"].native != "v1":
        raise TimestampError(f"the TSTInfo has version {tst['version'].native}, not v1")
    return _Parsed("", signed_data, tst_der, tst)


def _check_imprint(tst: tsp.TSTInfo, expected: bytes) -> None:
    imprint = tst["message_imprint"]
    algorithm = imprint["hash_algorithm"]["algorithm"].native
    if algorithm != "sha256":
        raise TimestampError(f"the timestamp token is for a {algorithm} digest, not SHA-256")
    if imprint["hashed_message"].native != expected:
        raise TimestampError(
            "the timestamp token is for another digest: token says "
            f"{imprint['hashed_message'].native.hex()}, the data's SHA-256 is {expected.hex()}"
        )


def _check_signature(
    signed_data: cms.SignedData, tst_der: bytes
) -> tuple[x509.Certificate, list[x509.Certificate]]:
    """Check the TSA's CMS signature over the TSTInfo (RFC 5652 5.4, 5.6); the signer's
    certificate and the token's other certificates (perhaps intermediates)."""
    infos = signed_data["signer_infos"]
    if len(infos) != 1:
        raise TimestampError(
            f"the token has {len(infos)} signatures; RFC 3161 wants the TSA's only"
        )
    info = infos[0]
    certs = [c.chosen for c in signed_data["certificates"] or [] if c.name == "certificate"]
    signer = _find_signer(info["sid"], certs)
    if signer is None:
        raise TimestampError("the token does not include the certificate of its signer")

    attrs = info["signed_attrs"]
    if not attrs:
        raise TimestampError("the token's signature has no signed attributes")
    values: dict[str, cms.SetOfAny] = {}
    for attr in attrs:
        name = attr["type"].native
        if name in values:
            raise TimestampError(f"the token's signed attribute {name} appears twice")
        values[name] = attr["values"]
    content_type = values.get("content_type")
    if not content_type or len(content_type) != 1 or content_type[0].native != "tst_info":
        raise TimestampError("the token's signed content type is not id-ct-TSTInfo")
    digest_name = info["digest_algorithm"]["algorithm"].native
    if digest_name not in HASHES:
        raise TimestampError(f"the token is signed over a {digest_name} digest, which is too weak")
    message_digest = values.get("message_digest")
    if not message_digest or len(message_digest) != 1:
        raise TimestampError("the token's signature has no message digest")
    if message_digest[0].native != hashlib.new(digest_name, tst_der).digest():
        raise TimestampError(
            "the token's content does not match the digest its signature covers "
            "(the TSTInfo was altered)"
        )
    signer_cert = _load_certificate(signer)
    # CMS signs the DER of the attributes as a SET OF, not with their [0] tag (5.4).
    _check_signature_value(signer_cert.public_key(), info, attrs.untag().dump(), digest_name)
    _check_signing_certificate(values, signer)
    return signer_cert, [_load_certificate(c) for c in certs if c is not signer]


def _load_certificate(cert: asn1_x509.Certificate) -> x509.Certificate:
    try:
        return x509.load_der_x509_certificate(cert.dump())
    except ValueError:
        raise TimestampError(
            f"the token holds a malformed certificate ({cert.subject.human_friendly})"
        )


def _find_signer(
    sid: cms.SignerIdentifier, certs: list[asn1_x509.Certificate]
) -> asn1_x509.Certificate | None:
    for cert in certs:
        if sid.name == "issuer_and_serial_number":
            if (
                cert.issuer == sid.chosen["issuer"]
                and cert.serial_number == sid.chosen["serial_number"].native
            ):
                return cert
        elif cert.key_identifier == sid.chosen.native:
            return cert
    return None


def _check_signature_value(
    public_key: PublicKeyTypes, info: cms.SignerInfo, signed: bytes, digest_name: str
) -> None:
    algorithm = info["signature_algorithm"]
    signature = info["signature"].native
    try:
        kind = algorithm.signature_algo
    except ValueError:
        raise TimestampError(
            f"the token is signed with {algorithm['algorithm'].dotted}, unsupported"
        )
    try:
        hash_name = algorithm.hash_algo  # sha256_rsa, sha256_ecdsa, PSS parameters
    except ValueError:
        hash_name = digest_name  # plain rsaEncryption: the signer's digest algorithm
    if hash_name not in HASHES:
        raise TimestampError(f"the token is signed with {hash_name}, which is too weak")
    digest = HASHES[hash_name]()
    try:
        if kind == "rsassa_pkcs1v15" and isinstance(public_key, rsa.RSAPublicKey):
            public_key.verify(signature, signed, padding.PKCS1v15(), digest)
        elif kind == "rsassa_pss" and isinstance(public_key, rsa.RSAPublicKey):
            public_key.verify(signature, signed, _pss(algorithm["parameters"]), digest)
        elif kind == "ecdsa" and isinstance(public_key, ec.EllipticCurvePublicKey):
            public_key.verify(signature, signed, ec.ECDSA(digest))
        else:
            raise TimestampError(
                f"the token's signature ({kind}) is not one we check with the TSA's key "
                f"({type(public_key).__name__.lstrip('_')})"
            )
    except InvalidSignature:
        raise TimestampError(
            "the token's signature is not valid (the token was altered, or not signed by "
            "the key of the certificate it names)"
        )


def _pss(params: algos.RSASSAPSSParams) -> padding.PSS:
    mgf = params["mask_gen_algorithm"]
    mgf_hash = mgf["parameters"]["algorithm"].native
    if mgf["algorithm"].native != "mgf1" or mgf_hash not in HASHES:
        raise TimestampError("the token's RSA-PSS parameters are not MGF1 with SHA-2")
    return padding.PSS(
        mgf=padding.MGF1(HASHES[mgf_hash]()), salt_length=params["salt_length"].native
    )


def _check_signing_certificate(
    values: dict[str, cms.SetOfAny], signer: asn1_x509.Certificate
) -> None:
    """The ESS signing-certificate attribute (RFC 2634, RFC 5035), when present, binds the
    signature to one certificate: a substituted certificate with the same key fails here."""
    for name in ("signing_certificate_v2", "signing_certificate"):
        if name not in values:
            continue
        ids = values[name][0]["certs"]
        if not ids:
            raise TimestampError("the token's signing-certificate attribute is empty")
        first = ids[0]  # the signer's; the others would be its chain
        algorithm = first["hash_algorithm"]["algorithm"].native if name.endswith("v2") else "sha1"
        try:
            cert_hash = hashlib.new(algorithm, signer.dump()).digest()
        except ValueError:
            raise TimestampError(f"the token's signing-certificate attribute uses {algorithm}")
        issuer_serial = first["issuer_serial"]
        if cert_hash != first["cert_hash"].native or (
            issuer_serial.native is not None
            and (
                issuer_serial["serial_number"].native != signer.serial_number
                or not any(
                    n.name == "directory_name" and n.chosen == signer.issuer
                    for n in issuer_serial["issuer"]
                )
            )
        ):
            raise TimestampError(
                "the token's signing-certificate attribute names another certificate "
                "than the one that signed it"
            )


# --- the TSA's certificate ------------------------------------------------------------------


def _check_tsa_certificate(cert: x509.Certificate, gen_time: datetime) -> None:
    """RFC 3161 2.3: the TSA's certificate is for time-stamping only, and says so critically;
    it must have been valid when the token was made."""
    try:
        eku = cert.extensions.get_extension_for_class(x509.ExtendedKeyUsage)
    except x509.ExtensionNotFound:
        raise TimestampError(
            "the TSA's certificate is not for time-stamping (no extended key usage)"
        )
    except ValueError:
        raise TimestampError("the TSA's certificate has malformed extensions")
    if list(eku.value) != [ExtendedKeyUsageOID.TIME_STAMPING]:
        usages = ", ".join(u._name for u in eku.value)
        raise TimestampError(
            f"the TSA's certificate is not for time-stamping only (extended key usage: {usages})"
        )
    if not eku.critical:
        raise TimestampError(
            "the TSA's certificate's extended key usage is not critical (RFC 3161 2.3)"
        )
    if gen_time > cert.not_valid_after_utc:
        raise TimestampError(
            "the TSA's certificate had expired when the token was made "
            f"(not after {_when(cert.not_valid_after_utc)}; token made {_when(gen_time)})"
        )
    if gen_time < cert.not_valid_before_utc:
        raise TimestampError(
            "the TSA's certificate was not yet valid when the token was made "
            f"(not before {_when(cert.not_valid_before_utc)}; token made {_when(gen_time)})"
        )


def _ca_key_usage(_policy: object, _cert: x509.Certificate, usage: x509.KeyUsage | None) -> None:
    if usage is not None and not usage.key_cert_sign:
        raise ValueError("a CA certificate whose key usage does not allow keyCertSign")


def _chain(
    signer: x509.Certificate,
    intermediates: list[x509.Certificate],
    roots: list[x509.Certificate],
    at: datetime,
) -> list[x509.Certificate]:
    """The signer's path to a trusted root (signer first), every certificate valid at `at`.

    cryptography's path builder checks the signatures, CA basicConstraints and path
    lengths, names and validity. Its default policies are the Web PKI's: they want a
    clientAuth/serverAuth EKU of the leaf and criticality rules that TSA hierarchies do not
    follow, so the leaf's EKU is left to _check_tsa_certificate and CAs are held to
    meaning (cA asserted, keyCertSign when key usage is present), not to form."""
    verifier = (
        PolicyBuilder()
        .store(Store(roots))
        .time(at)
        .extension_policies(
            ca_policy=ExtensionPolicy.permit_all()
            .require_present(x509.BasicConstraints, Criticality.AGNOSTIC, None)
            .may_be_present(x509.KeyUsage, Criticality.AGNOSTIC, _ca_key_usage),
            ee_policy=ExtensionPolicy.permit_all().require_present(
                x509.ExtendedKeyUsage, Criticality.CRITICAL, None
            ),
        )
        .build_client_verifier()
    )
    try:
        return verifier.verify(signer, intermediates).chain
    except VerificationError as e:
        detail = str(e).removeprefix("validation failed: ")
        if "no interior errors" in detail:  # no candidate issuer at all
            detail = f"no path from its issuer {signer.issuer.rfc4514_string()} to a CA there"
        raise TimestampError(
            "the TSA's certificate is not issued by a trusted CA (WELKIN_TSA_CA_BUNDLE): "
            f"{detail} (checked at the token's time, {_when(at)})"
        )


def _check_revocation(
    chain: list[x509.Certificate], crls: list[x509.CertificateRevocationList]
) -> None:
    """Refuse when a CRL signed by a certificate's issuer lists it. A CRL from that issuer's
    name that its key did not sign is refused too: silently skipping it would hide a
    revocation the operator meant to apply."""
    for cert, issuer in zip(chain, chain[1:], strict=False):
        for crl in crls:
            if crl.issuer != issuer.subject:
                continue
            if not crl.is_signature_valid(issuer.public_key()):
                raise TimestampError(
                    f"a CRL said to be from {_subject(issuer)} is not signed by it"
                )
            entry = crl.get_revoked_certificate_by_serial_number(cert.serial_number)
            if entry is None:
                continue
            try:
                why = entry.extensions.get_extension_for_class(x509.CRLReason).value.reason
                reason = f", reason: {why.value}"
            except x509.ExtensionNotFound:
                reason = ""
            raise TimestampError(
                f"{_who(cert, chain)} was revoked on {_when(entry.revocation_date_utc)} "
                f"(CRL of {_subject(issuer)}{reason})"
            )


# --- words --------------------------------------------------------------------------------


def _subject(cert: x509.Certificate) -> str:
    return cert.subject.rfc4514_string()


def _who(cert: x509.Certificate, chain: list[x509.Certificate]) -> str:
    return "the TSA's certificate" if cert is chain[0] else f"the CA certificate {_subject(cert)}"


def _when(moment: datetime) -> str:
    return moment.astimezone(UTC).strftime("%Y-%m-%d %H:%M:%S UTC")


def _cause(e: BaseException) -> str:
    """The root cause in its own words: requests wraps urllib3, which wraps the OSError."""
    while e.__cause__ or e.__context__:
        e = e.__cause__ or e.__context__  # type: ignore[assignment]
    return (str(e).strip().splitlines() or [type(e).__name__])[-1][:300]
