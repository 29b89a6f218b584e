"""The audit log: one function records an event; Django's login hooks and a middleware for
denied access call it.

The log is a hash chain. Events are numbered 1, 2, 3... (`seq`, no gaps) and each event's
hash is the SHA-256 of its own fields and the previous event's hash (GENESIS for the first),
so deleting, editing or reordering a row with SQL breaks the chain at that row, which
verify_audit_log (and the auditors' page) names. Someone who can write the database could
recompute every later hash; the daily signed head (heads.py: the chain's last hash signed
with the server's key, timestamped by the TSA when one is configured) is what they cannot
forge, so a rewrite before the last signed head is detected too.
"""

from __future__ import annotations

import csv
import datetime as dt
import hashlib
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import orjson
from axes.signals import user_locked_out
from django.contrib.auth.signals import user_logged_in, user_login_failed
from django.db import IntegrityError, connection, transaction
from django.dispatch import receiver
from django.http import Http404

from compliance import params
from compliance.models import AuditEvent, AuditHead, Export
from compliance.rules.inert import csv_row

PAGE_SIZE = 100
CSV_COLUMNS = ["seq", "at", "user", "action", "target", "scope", "content_hash", "ip", "hash"]
GENESIS = "0" * 64
CHAIN_LOCK = 0x7765_6C6B_6175_6474  # pg_advisory_xact_lock key: "welkaudt"


class Denied(Http404):
    """An object outside the user's scope: answered as 404, and audited."""


def record(
    request,
    action: str,
    target: str = "",
    scope: dict | None = None,
    content_hash: str = "",
    username: str | None = None,
) -> AuditEvent:
    user = getattr(request, "user", None) if request is not None else None
    authenticated = user is not None and user.is_authenticated
    event = AuditEvent(
        user=user if authenticated else None,
        username=username
        if username is not None
        else (user.get_username() if authenticated else ""),
        action=action,
        target=target[:1000],
        # Stored as JSON and read back: hashed as it will be read (tuples become lists).
        scope=orjson.loads(orjson.dumps(scope or {})),
        content_hash=content_hash,
        # Normalised as the database will store it (IPv6 forms), so the hash matches.
        ip=AuditEvent._meta.get_field("ip").get_prep_value(_ip(request)),
    )
    for attempt in range(5):
        try:
            return _append(event)
        except IntegrityError:  # another process took the same seq (SQLite: no lock)
            if attempt == 4:
                raise
    raise AssertionError("unreachable")


def _append(event: AuditEvent) -> AuditEvent:
    """Link the event to the chain's last one and insert it, one writer at a time (the lock
    is held to the end of the surrounding transaction, so the next writer sees this row)."""
    with transaction.atomic():
        if connection.vendor == "postgresql":
            with connection.cursor() as c:
                c.execute("SELECT pg_advisory_xact_lock(%s)", [CHAIN_LOCK])
        seq, prev, last_at = AuditEvent.objects.order_by("-seq").values_list(
            "seq", "hash", "at"
        ).first() or (0, GENESIS, None)
        # Times follow the numbers: an event made before another writer's, but linked after
        # it, takes that one's time (verify_chain refuses a time that goes backwards).
        if last_at is not None and event.at < last_at:
            event.at = last_at
        event.pk, event.seq, event.prev_hash = None, seq + 1, prev
        event.hash = chain_hash(event)
        event.save(force_insert=True)
    return event


def record_change(
    request,
    model: str,
    pk,
    change: str,
    fields=(),
    shown: str = "",
    username: str | None = None,
) -> AuditEvent:
    """A change to what decides access or notifications (the admin, the commands, the
    Settings page): `model` as app.model, added/changed/deleted, the fields, never their
    values."""
    return record(
        request,
        "admin_change",
        f"{model.rsplit('.', 1)[-1]} {pk}",
        {
            "model": model,
            "id": pk,
            "change": change,
            "fields": sorted(fields),
            "object": shown[:200],
        },
        username=username,
    )


def chain_hash(e: AuditEvent) -> str:
    """SHA-256 over the event's recorded fields and the previous hash (not the user's id:
    deleting a user sets it to NULL; the user name is kept and hashed)."""
    fields = [
        e.seq,
        e.at.astimezone(dt.UTC).isoformat(timespec="microseconds"),
        e.username,
        e.action,
        e.target,
        e.scope,
        e.content_hash,
        e.ip or "",
        e.prev_hash,
    ]
    return hashlib.sha256(orjson.dumps(fields, option=orjson.OPT_SORT_KEYS)).hexdigest()


@dataclass
class ChainCheck:
    ok: bool
    events: int
    message: str
    broken_seq: int | None = None
    heads: int = 0


HEAD_EVERY = dt.timedelta(hours=48)  # events older than this must be under a signed head


def verify_chain(chunk: int = 5000, tsa_ca: bytes | None = None) -> ChainCheck:
    """Walk the chain in order; the first broken link is named. Then every signed head
    must match the chain (its seq present with its hash) and carry a valid signature;
    every head the chain says was signed must still be there; and every event older than
    two days must be under a signed head (the daily task signs one), so deleting the heads
    along with a rewrite does not pass."""
    from django.contrib.auth import get_user_model
    from django.utils import timezone

    from compliance.audit import heads  # local: heads signs through record(), an import cycle

    expected_seq, prev, n, prev_at, first_at = 1, GENESIS, 0, None, None
    last_seq, signed_events, old_seq = 0, [], 0
    old = timezone.now() - HEAD_EVERY
    qs = AuditEvent.objects.order_by("seq")
    for e in qs.iterator(chunk):
        n += 1
        where = f"event {e.seq} ({e.at:%Y-%m-%d %H:%M:%S} {e.action} by {e.username or '-'})"
        if e.seq != expected_seq:
            return ChainCheck(
                False,
                n,
                f"events {expected_seq}"
                + (f" to {e.seq - 1}" if e.seq - 1 > expected_seq else "")
                + f" are missing: the log goes from event {expected_seq - 1} to {e.seq} "
                "(rows were deleted)",
                expected_seq,
            )
        if e.prev_hash != prev:
            return ChainCheck(
                False,
                n,
                f"{where} does not follow event {e.seq - 1}: it links to another "
                "previous hash (a row was deleted, replaced or reordered)",
                e.seq,
            )
        if chain_hash(e) != e.hash:
            return ChainCheck(
                False,
                n,
                f"{where} was changed after it was written: its hash differs",
                e.seq,
            )
        if prev_at is not None and e.at < prev_at:
            return ChainCheck(
                False,
                n,
                f"{where} is dated before event {e.seq - 1} ({prev_at:%Y-%m-%d %H:%M:%S}): "
                "times were changed",
                e.seq,
            )
        first_at = first_at or e.at
        expected_seq, prev, last_seq, prev_at = e.seq + 1, e.hash, e.seq, e.at
        if e.action == AuditEvent.Action.AUDIT_HEAD:
            scope = e.scope if isinstance(e.scope, dict) else {}
            signed_events.append((e.seq, scope.get("seq"), e.content_hash))
        if e.at < old:
            old_seq = e.seq
    if n == 0 and get_user_model().objects.filter(last_login__isnull=False).exists():
        return ChainCheck(False, 0, "the log is empty, yet users have logged in: it was emptied")
    later = _postdating(prev_at) if n else ""
    if later:
        return ChainCheck(
            False,
            n,
            f"the log ends at {prev_at:%Y-%m-%d %H:%M:%S} (event {last_seq}), yet {later}: "
            "its newest events were deleted",
            last_seq + 1,
        )
    earlier = _predating(first_at)
    if earlier:
        return ChainCheck(
            False,
            n,
            (
                f"the log begins at {first_at:%Y-%m-%d %H:%M:%S}, yet "
                if first_at
                else "the log is empty, yet "
            )
            + f"{earlier}: it was emptied or shortened",
            1,
        )
    head_check = heads.check_all(last_seq, tsa_ca)
    if head_check is not None:
        return ChainCheck(False, n, head_check[1], head_check[0])
    kept = set(AuditHead.objects.values_list("seq", "hash"))
    for at_seq, seq, hash_ in signed_events:
        if (seq, hash_) not in kept:
            return ChainCheck(
                False,
                n,
                f"event {at_seq} records a head signed over event {seq}, which is gone: "
                "signed heads were deleted",
                at_seq,
            )
    covered = max((s for s, _ in kept), default=0)
    if old_seq > covered:
        return ChainCheck(
            False,
            n,
            f"events up to {old_seq} are over two days old but no signed head covers them "
            f"(the last covers event {covered}): heads were deleted, or the daily "
            "sign-audit-head task is not running",
            covered + 1,
        )
    signed = len(kept)
    outages = heads.gaps()
    return ChainCheck(
        True,
        n,
        f"the chain of {n:,} events is unbroken"
        + (
            f" and matches all {signed:,} signed heads"
            if signed
            else "; no head has been signed yet (the daily task signs it)"
        )
        + (
            f"; no head was signed from {', from '.join(outages)} (sign-audit-head did not run)"
            if outages
            else ""
        ),
        heads=signed,
    )


def _postdating(last_at) -> str:
    """What the log should record but ends before: a login or an export after its last
    event. '' when nothing does."""
    from django.contrib.auth import get_user_model  # noqa: PLC0415 - as in verify_chain

    limit = last_at + dt.timedelta(seconds=1)
    checks = [
        ("a user logged in", get_user_model().objects, "last_login"),
        ("an export was asked for", Export.objects, "created_at"),
    ]
    for what, objects, field in checks:
        at = (
            objects.filter(**{f"{field}__gt": limit})
            .order_by(f"-{field}")
            .values_list(field, flat=True)
            .first()
        )
        if at is not None:
            return f"{what} at {at:%Y-%m-%d %H:%M:%S}"
    return ""


def _predating(first_at) -> str:
    """What the log should record but begins after (or, empty, lacks): a login, an export,
    a signed head. '' when nothing predates it. (Not exception history: the demo seeds
    an exception that ran its course weeks ago.)"""
    from django.contrib.auth import get_user_model  # noqa: PLC0415 - as in verify_chain

    # A second of slack: each record is written just before the event that records it.
    limit = first_at - dt.timedelta(seconds=1) if first_at else None
    checks = [
        ("a user logged in", get_user_model().objects, "last_login"),
        ("an export was asked for", Export.objects, "created_at"),
        ("a head was signed", AuditHead.objects, "at"),
    ]
    for what, objects, field in checks:
        qs = objects.filter(**{f"{field}__isnull": False})
        if limit is not None:
            qs = qs.filter(**{f"{field}__lt": limit})
        at = qs.order_by(field).values_list(field, flat=True).first()
        if at is not None:
            return f"{what} at {at:%Y-%m-%d %H:%M:%S}"
    return ""


def for_log_page(action: str, before: int | None) -> list[AuditEvent]:
    """The audit log page: newest first, 100 at a time before an id, of one action."""
    qs = AuditEvent.objects.all()
    if action:
        qs = qs.filter(action=action)
    if before is not None:
        qs = qs.filter(pk__lt=before)
    return list(qs.order_by("-pk")[:PAGE_SIZE])


class _Echo:
    def write(self, value: str) -> str:
        return value


def csv_lines() -> Iterator[str]:
    """The whole audit log as CSV lines, streamed; every cell made inert (user names of
    failed logins are whatever an anonymous visitor typed)."""
    writer = csv.writer(_Echo())
    yield writer.writerow(CSV_COLUMNS)
    for e in AuditEvent.objects.order_by("seq").iterator(5000):
        yield writer.writerow(
            csv_row(
                [
                    e.seq,
                    e.at.isoformat(),
                    e.username,
                    e.action,
                    e.target,
                    orjson.dumps(e.scope).decode(),
                    e.content_hash,
                    e.ip or "",
                    e.hash,
                ]
            )
        )


def _ip(request) -> str | None:
    return params.client_address(request) if request is not None else None


@receiver(user_logged_in)
def _logged_in(sender, request, user, **kwargs: Any) -> None:
    record(request, AuditEvent.Action.LOGIN, target="login")


def axes_username(request, credentials: dict | None = None) -> str | None:
    """The user name django-axes counts attempts under (AXES_USERNAME_CALLABLE), cut to
    its column, varchar(255): a longer one was a 500, neither counted nor audited. No
    account's name is over 150 characters, so a cut name stands for the same guess."""
    if credentials:
        name = credentials.get("username")
    else:
        name = getattr(request, "data", request.POST).get("username")
    return None if name is None else str(name)[:255]


@receiver(user_login_failed)
def _login_failed(sender, credentials, request=None, **kwargs: Any) -> None:
    record(
        request,
        AuditEvent.Action.LOGIN_FAILED,
        target="login",
        username=str(credentials.get("username", ""))[:150],
    )


@receiver(user_locked_out)
def _locked_out(sender, request, username, ip_address, **kwargs: Any) -> None:
    """django-axes locked a user name or address out (and refuses it while locked)."""
    record(request, AuditEvent.Action.LOCKOUT, target="login", username=str(username or "")[:150])


class DeniedAccessMiddleware:
    """Records every Denied raised by access.py for the request's path."""

    def __init__(self, get_response):
        self.get_response = get_response

    def __call__(self, request):
        return self.get_response(request)

    def process_exception(self, request, exception):
        if isinstance(exception, Denied):
            record(request, AuditEvent.Action.DENIED, target=request.get_full_path())
        return None
