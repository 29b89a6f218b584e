"""The audit chain's signed heads: daily, the last event's seq and hash are signed with
the server's Ed25519 key (the one that signs manifests) and, when a TSA is configured,
timestamped. verify_audit_log checks every head against the chain, so deleting the newest
events, or recomputing the chain after an edit, shows as soon as one head covers them."""

from __future__ import annotations

import base64
import datetime as dt
import hashlib

import orjson
from celery import shared_task
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey
from django.utils import timezone

from compliance.audit import log, signing, tsa
from compliance.models import AuditEvent, AuditHead


def payload(head: AuditHead) -> bytes:
    """The signed (and timestamped) bytes: what the head says, canonical JSON (with the
    previous head's digest, for heads signed since heads are chained)."""
    said = {
        "kind": "welkin-dash audit log head",
        "seq": head.seq,
        "hash": head.hash,
        "at": head.at.astimezone(dt.UTC).isoformat(timespec="microseconds"),
    }
    if head.previous:
        said["previous"] = head.previous
    return orjson.dumps(said, option=orjson.OPT_SORT_KEYS)


def digest(head: AuditHead) -> str:
    """What the next head signs of this one."""
    return hashlib.sha256(payload(head)).hexdigest()


def latest() -> dict | None:
    """The newest signed head, as exports carry it in their manifests: an auditor holding
    any export holds the chain's state at that time, outside the database."""
    head = AuditHead.objects.order_by("-at", "-pk").first()
    if head is None:
        return None
    return {
        "seq": head.seq,
        "hash": head.hash,
        "at": head.at.isoformat(timespec="microseconds"),
        "signature": head.signature,
    }


def sign_head() -> AuditHead | None:
    """Sign the chain's current last event (None when the log is empty), audited."""
    last = AuditEvent.objects.order_by("-seq").values_list("seq", "hash").first()
    if last is None:
        return None
    before = AuditHead.objects.order_by("-at", "-pk").first()
    head = AuditHead(seq=last[0], hash=last[1], at=timezone.now())
    head.previous = digest(before) if before is not None else ""
    head.public_key = signing.public_key_b64()
    head.signature = base64.b64encode(signing.signing_key().sign(payload(head))).decode()
    head.timestamp, head.timestamp_error = tsa.stamp(payload(head))
    head.save()
    log.record(
        None,
        AuditEvent.Action.AUDIT_HEAD,
        f"head {head.seq}",
        {"seq": head.seq, "timestamped": head.timestamp is not None},
        content_hash=head.hash,
    )
    return head


def add_timestamp(head: AuditHead) -> bool:
    """Ask the TSA again for a head signed while it was down."""
    token, error = tsa.stamp(payload(head))
    head.timestamp, head.timestamp_error = token, error
    head.save(update_fields=["timestamp", "timestamp_error"])
    return token is not None


def check(
    head: AuditHead, chain_hash: str | None, current_key: str, tsa_ca: bytes | None = None
) -> str:
    """'' when the head is good, else why not."""
    when = f"the head signed at {head.at:%Y-%m-%d %H:%M:%S}"
    if head.public_key != current_key:
        return f"{when} was signed with another key than this server's"
    try:
        Ed25519PublicKey.from_public_bytes(base64.b64decode(head.public_key)).verify(
            base64.b64decode(head.signature), payload(head)
        )
    except (InvalidSignature, ValueError):
        return f"{when}'s signature is not valid: the head was changed"
    if chain_hash is None:
        return (
            f"{when} covers event {head.seq}, which is missing: events were deleted from the "
            "end of the log"
        )
    if chain_hash != head.hash:
        return (
            f"event {head.seq} is not the one {when} covers: the chain was rewritten up to "
            "that event"
        )
    if head.timestamp:
        try:
            tsa.check(bytes(head.timestamp), payload(head), tsa_ca)
        except tsa.NoTrustAnchor:
            pass  # not checked without the TSA's CA; verify_audit_log --tsa-ca checks it
        except tsa.TimestampError as e:
            return f"{when}: its timestamp is not valid: {e}"
    return ""


def check_all(last_seq: int, tsa_ca: bytes | None = None) -> tuple[int, str] | None:
    """The first head that does not match the chain (its seq and why), or None: each head
    signed and matching its event, naming the head before it (heads signed since they are
    chained), and the last one no older than HEAD_LATE while events came after it (gaps
    between two chained heads are outages, reported by gaps())."""
    key = signing.public_key_b64()
    heads = list(AuditHead.objects.order_by("at", "pk"))
    hashes = dict(
        AuditEvent.objects.filter(seq__in={h.seq for h in heads}).values_list("seq", "hash")
    )
    before = None
    for head in heads:
        why = check(head, hashes.get(head.seq) if head.seq <= last_seq else None, key, tsa_ca)
        if not why and head.previous and (before is None or head.previous != digest(before)):
            why = (
                f"the head signed at {head.at:%Y-%m-%d %H:%M:%S} follows a head that is not "
                "there any more: signed heads were deleted"
            )
        if why:
            return head.seq, why
        before = head
    now = timezone.now()
    if before is not None and last_seq > before.seq + 1 and now - before.at > HEAD_LATE:
        return before.seq + 1, (
            f"the last signed head is from {before.at:%Y-%m-%d %H:%M}, over "
            f"{HEAD_LATE.total_seconds() / 3600:.0f} h ago, and events {before.seq + 1} "
            f"to {last_seq} came after it: newer heads were deleted, or sign-audit-head is "
            "not running"
        )
    return None


# Heads are signed daily: the newest may be this late (a missed run, a deploy) before the
# events after it count as unsigned. A gap between two heads that are chained is an
# outage, not a deletion (that breaks the chain): gaps() reports those, without failing.
HEAD_LATE = log.HEAD_EVERY + dt.timedelta(hours=24)


def gaps() -> list[str]:
    """Spans of more than HEAD_EVERY between two heads while events were written: the
    signing did not run (reported with the check, not a failure)."""
    out, before = [], None
    for head in AuditHead.objects.order_by("at", "pk").only("seq", "at"):
        if (
            before is not None
            and head.seq > before.seq + 1
            and head.at - before.at > log.HEAD_EVERY
        ):
            out.append(f"{before.at:%Y-%m-%d %H:%M} to {head.at:%Y-%m-%d %H:%M}")
        before = head
    return out


# --- tasks (names pinned: routes, beat entries and messages already queued use them) -----


@shared_task(name="compliance.tasks.sign_audit_head")
def sign_audit_head() -> int | None:
    """Beat, daily: sign (and timestamp, with a TSA) the audit chain's last event."""
    head = sign_head()
    return head.seq if head else None
