"""RFC 3161 timestamps against a real TSA (openssl ts behind HTTP, tests/tsa.py): tokens
from it verify, and each reason to refuse one is refused by name. Forgeries that need the
TSA's key are made with it, to reach the checks that come after the signature."""

import datetime
import hashlib
import subprocess
import time

import pytest
import requests
from asn1crypto import tsp
from cryptography import x509
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec, padding
from cryptography.hazmat.primitives.serialization import Encoding

from compliance.audit import timestamps
from compliance.audit.timestamps import TimestampError, TimestampUnavailable
from tests.tsa import POLICY, local_tsa

DATA = b"welkin report 2026-11: 3 findings\n"


def _now() -> datetime.datetime:
    return datetime.datetime.now(datetime.UTC)


@pytest.fixture(scope="module")
def good():
    with local_tsa("good") as tsa:
        yield tsa


@pytest.fixture(scope="module")
def token(good) -> bytes:
    return timestamps.request(DATA, good.url)


def _signer_info(resp: tsp.TimeStampResp):
    return resp["time_stamp_token"]["content"]["signer_infos"][0]


def _resign(response: bytes, key, change=None, *, pss: bool = False) -> bytes:
    """The response with its signer info changed by `change` and signed again with `key`."""
    resp = tsp.TimeStampResp.load(response)
    info = _signer_info(resp)
    if change:
        change(info)
    signed = info["signed_attrs"].untag().dump()
    if pss:
        info["signature_algorithm"] = {
            "algorithm": "rsassa_pss",
            "parameters": {
                "hash_algorithm": {"algorithm": "sha256"},
                "mask_gen_algorithm": {"algorithm": "mgf1", "parameters": {"algorithm": "sha256"}},
                "salt_length": 32,
            },
        }
        info["signature"] = key.sign(
            signed, padding.PSS(padding.MGF1(hashes.SHA256()), 32), hashes.SHA256()
        )
    elif isinstance(key, ec.EllipticCurvePrivateKey):
        info["signature"] = key.sign(signed, ec.ECDSA(hashes.SHA256()))
    else:
        info["signature"] = key.sign(signed, padding.PKCS1v15(), hashes.SHA256())
    return resp.dump()


# --- tokens that verify -------------------------------------------------------------------


@pytest.mark.parametrize("key", ["ec", "rsa"])
def test_it_verifies_a_token_from_the_tsa(key):
    with local_tsa("good", key=key) as tsa:
        before = _now()
        token = timestamps.request(DATA, tsa.url, ca_bundle=tsa.ca_pem)
        again = timestamps.request(DATA, tsa.url)
        stamp = timestamps.verify(token, DATA, ca_bundle=tsa.ca_pem, crls=[tsa.crl_pem])

    # genTime has whole seconds (clock_precision_digits = 0): allow for the truncation.
    assert before - datetime.timedelta(seconds=1) <= stamp.time <= _now()
    assert stamp.time.tzinfo is not None and stamp.time.utcoffset() == datetime.timedelta(0)
    assert stamp.tsa == f"CN=Welkin Test TSA good {key},O=Welkin Tests"
    assert stamp.digest == hashlib.sha256(DATA).hexdigest()
    assert stamp.policy == POLICY
    assert stamp.certificate_not_after == tsa.cert.not_valid_after_utc
    assert stamp.warning == ""
    assert timestamps.verify(again, DATA, ca_bundle=tsa.ca_pem).serial != stamp.serial


def test_it_verifies_by_the_digest_alone(token, good):
    stamp = timestamps.verify(
        token, digest_hex=hashlib.sha256(DATA).hexdigest(), ca_bundle=good.ca_pem
    )

    assert stamp.digest == hashlib.sha256(DATA).hexdigest()


def test_it_follows_an_intermediate_ca_carried_in_the_token():
    with local_tsa("intermediate") as tsa:
        token = timestamps.request(DATA, tsa.url)

    stamp = timestamps.verify(token, DATA, ca_bundle=tsa.ca_pem, crls=[tsa.crl_pem])
    assert "intermediate" in stamp.tsa

    # Without the intermediate in the token there is no path to the root.
    resp = tsp.TimeStampResp.load(token)
    signed_data = resp["time_stamp_token"]["content"]
    signed_data["certificates"] = [
        c
        for c in signed_data["certificates"]
        if "Intermediate" not in c.chosen.subject.native["common_name"]
    ]
    assert len(signed_data["certificates"]) == 1
    with pytest.raises(TimestampError, match="not issued by a trusted CA"):
        timestamps.verify(resp.dump(), DATA, ca_bundle=tsa.ca_pem)


def test_openssl_agrees(token, good, tmp_path):
    (tmp_path / "report").write_bytes(DATA)
    (tmp_path / "other").write_bytes(DATA + b"!")
    (tmp_path / "report.tsr").write_bytes(token)

    def openssl_verify(data_file: str) -> subprocess.CompletedProcess:
        return subprocess.run(
            ["openssl", "ts", "-verify", "-in", "report.tsr", "-data", data_file,
             "-CAfile", good.ca_path],
            cwd=tmp_path,
            capture_output=True,
            text=True,
        )  # fmt: skip

    ok = openssl_verify("report")
    assert ok.returncode == 0 and "Verification: OK" in ok.stdout, ok.stderr
    assert openssl_verify("other").returncode != 0


def test_it_warns_when_the_tsa_certificate_has_expired_since(token, good):
    later = good.cert.not_valid_after_utc + datetime.timedelta(days=1)

    stamp = timestamps.verify(token, DATA, ca_bundle=good.ca_pem, now=later)

    assert "the TSA's certificate has expired since" in stamp.warning
    assert good.cert.not_valid_after_utc.strftime("%Y-%m-%d %H:%M:%S") in stamp.warning


def test_it_checks_rsa_pss_signatures():
    with local_tsa("good", key="rsa") as tsa:
        token = timestamps.request(DATA, tsa.url)
    pss = _resign(token, tsa.key, pss=True)

    assert (
        timestamps.verify(pss, DATA, ca_bundle=tsa.ca_pem).digest
        == hashlib.sha256(DATA).hexdigest()
    )

    wrong = tsp.TimeStampResp.load(pss)
    _signer_info(wrong)["signature_algorithm"]["parameters"]["salt_length"] = 20
    with pytest.raises(TimestampError, match="signature is not valid"):
        timestamps.verify(wrong.dump(), DATA, ca_bundle=tsa.ca_pem)


# --- tokens refused -----------------------------------------------------------------------


def test_it_refuses_a_token_for_other_data(token, good):
    with pytest.raises(TimestampError, match="another digest") as e:
        timestamps.verify(token, DATA + b"!", ca_bundle=good.ca_pem)

    assert hashlib.sha256(DATA).hexdigest() in str(e.value)
    assert hashlib.sha256(DATA + b"!").hexdigest() in str(e.value)


def test_it_refuses_a_tsa_from_an_untrusted_ca():
    with local_tsa("untrusted") as tsa:
        token = timestamps.request(DATA, tsa.url)
        with pytest.raises(TimestampError, match="not issued by a trusted CA"):
            timestamps.request(DATA, tsa.url, ca_bundle=tsa.ca_pem)

    with pytest.raises(
        TimestampError, match=r"not issued by a trusted CA \(WELKIN_TSA_CA_BUNDLE\)"
    ):
        timestamps.verify(token, DATA, ca_bundle=tsa.ca_pem)


def test_it_refuses_a_tsa_whose_certificate_had_expired():
    with local_tsa("expired") as tsa:
        token = timestamps.request(DATA, tsa.url)

    with pytest.raises(TimestampError, match="had expired when the token was made") as e:
        timestamps.verify(token, DATA, ca_bundle=tsa.ca_pem)
    assert tsa.cert.not_valid_after_utc.strftime("not after %Y-%m-%d %H:%M:%S") in str(e.value)


def test_it_refuses_a_revoked_tsa_certificate_given_the_crl():
    with local_tsa("revoked") as tsa:
        token = timestamps.request(DATA, tsa.url)
    revoked_on = x509.load_pem_x509_crl(tsa.crl_pem)[0].revocation_date_utc

    # Without the CRL nothing says it was revoked: the CRL is what refuses it.
    assert timestamps.verify(token, DATA, ca_bundle=tsa.ca_pem).digest
    with pytest.raises(TimestampError, match="TSA's certificate was revoked on") as e:
        timestamps.verify(token, DATA, ca_bundle=tsa.ca_pem, crls=[tsa.crl_pem])
    assert revoked_on.strftime("%Y-%m-%d %H:%M:%S UTC") in str(e.value)
    assert "reason: keyCompromise" in str(e.value)


def test_it_reads_a_der_crl_and_refuses_one_its_ca_did_not_sign(token, good):
    crl = x509.load_pem_x509_crl(good.crl_pem)

    assert timestamps.verify(
        token, DATA, ca_bundle=good.ca_pem, crls=[crl.public_bytes(Encoding.DER)]
    )
    forged = (
        x509.CertificateRevocationListBuilder()
        .issuer_name(crl.issuer)
        .last_update(_now())
        .next_update(_now() + datetime.timedelta(days=1))
        .sign(ec.generate_private_key(ec.SECP256R1()), hashes.SHA256())
    )
    with pytest.raises(TimestampError, match="is not signed by it"):
        timestamps.verify(
            token, DATA, ca_bundle=good.ca_pem, crls=[forged.public_bytes(Encoding.PEM)]
        )


def test_it_refuses_a_token_whose_time_was_changed(token, good):
    gen_time = tsp.TimeStampResp.load(token)["time_stamp_token"]["content"]["encap_content_info"][
        "content"
    ].parsed["gen_time"]
    old = gen_time.dump()
    new = old.replace(b"2", b"1", 1)  # the year, back by a millennium; same length
    assert old != new and token.count(old) == 1

    with pytest.raises(TimestampError, match="does not match the digest its signature covers"):
        timestamps.verify(token.replace(old, new), DATA, ca_bundle=good.ca_pem)


def test_it_refuses_a_token_whose_signature_was_changed(token, good):
    signature = _signer_info(tsp.TimeStampResp.load(token))["signature"].native
    assert token.count(signature) == 1
    changed = signature[:-1] + bytes([signature[-1] ^ 1])

    with pytest.raises(TimestampError, match="signature is not valid"):
        timestamps.verify(token.replace(signature, changed), DATA, ca_bundle=good.ca_pem)


def test_it_refuses_a_signature_for_another_certificate(token, good):
    """A token whose signing-certificate attribute names another certificate, signed with
    the right key: what a certificate substituted for the TSA's would look like."""

    def name_another(info):
        for attr in info["signed_attrs"]:
            if attr["type"].native == "signing_certificate_v2":
                attr["values"][0]["certs"][0]["cert_hash"] = bytes(32)

    forged = _resign(token, good.key, name_another)
    assert timestamps.verify(_resign(token, good.key), DATA, ca_bundle=good.ca_pem)
    with pytest.raises(TimestampError, match="names another certificate"):
        timestamps.verify(forged, DATA, ca_bundle=good.ca_pem)


@pytest.mark.parametrize(
    "garbage",
    [b"", b"hello, world", b"\x30\x03\x02\x01\x00", DATA, b"\x30\x82\xff\xff" + bytes(100)],
)
def test_it_refuses_what_is_not_a_timestamp_response(garbage, good):
    with pytest.raises(TimestampError, match="not an RFC 3161 timestamp response"):
        timestamps.verify(garbage, DATA, ca_bundle=good.ca_pem)


def test_it_refuses_a_truncated_token(token, good):
    with pytest.raises(TimestampError, match="not an RFC 3161 timestamp response"):
        timestamps.verify(token[:-10], DATA, ca_bundle=good.ca_pem)


def test_it_refuses_a_response_larger_than_the_bound(token, good):
    padded = token + bytes(timestamps.MAX_RESPONSE_BYTES)

    with pytest.raises(TimestampError, match="larger than 65536 bytes"):
        timestamps.verify(padded, DATA, ca_bundle=good.ca_pem)
    with local_tsa("huge") as tsa, pytest.raises(TimestampUnavailable, match="more than 65536"):
        timestamps.request(DATA, tsa.url)


def test_it_reports_a_refusal_by_the_tsa(good):
    """A query openssl refuses (SHA-1 is not among its digests) gives a response with only a
    status; asn1crypto's own TimeStampResp cannot read that one."""
    query = tsp.TimeStampReq(
        {
            "version": "v1",
            "message_imprint": {
                "hash_algorithm": {"algorithm": "sha1"},
                "hashed_message": hashlib.sha1(DATA).digest(),
            },
        }
    ).dump()
    refusal = requests.post(
        good.url, data=query, headers={"Content-Type": "application/timestamp-query"}
    ).content

    with pytest.raises(TimestampError, match=r"refused to stamp: rejection .*\(bad_alg\)"):
        timestamps.verify(refusal, DATA, ca_bundle=good.ca_pem)


def test_it_refuses_an_answer_to_another_request():
    with local_tsa("replay") as tsa:
        first = timestamps.request(DATA, tsa.url)
        with pytest.raises(TimestampError, match="answered another request"):
            timestamps.request(DATA, tsa.url)

    assert timestamps.verify(first, DATA, ca_bundle=tsa.ca_pem)


# --- the TSA unavailable ------------------------------------------------------------------


@pytest.mark.parametrize(
    ("kind", "reason"),
    [
        ("down", "answered HTTP 503"),
        ("closed", "could not be reached"),
        ("refusing", r"refused to stamp: rejection .*\(bad_alg\)"),
    ],
)
def test_it_says_when_the_tsa_is_unavailable(kind, reason):
    with local_tsa(kind) as tsa:
        start = time.monotonic()
        with pytest.raises(TimestampUnavailable, match=reason) as e:
            timestamps.request(DATA, tsa.url, timeout=5)

    assert time.monotonic() - start < 2
    assert tsa.url in str(e.value)
