"""Sending the outbox: one Delivery at a time, by e-mail (SMTP, plain text and HTML) or
webhook (a generic JSON body signed with HMAC-SHA256, or a Slack-compatible body).

Never twice: a delivery is claimed (SELECT ... FOR UPDATE SKIP LOCKED) and marked
`sending` with a lease before anything is sent, and marked `sent` after; a task that runs
again finds it sent, or claimed by another worker, and sends nothing. Only a worker that
dies between sending and recording can leave a delivery whose lease expires and which is
sent again: that retry carries the same idempotency key (the X-Welkin-Delivery header, the
e-mail's Message-ID) for the receiver to drop it. Failures are retried with exponential
backoff; after WELKIN_NOTIFY_MAX_ATTEMPTS the delivery is kept as failed, with its reason.
"""

from __future__ import annotations

import hashlib
import hmac
import logging
import re
import smtplib
import time
from dataclasses import dataclass, field
from datetime import timedelta

import orjson
import requests
from celery import shared_task
from django.conf import settings
from django.core.mail import EmailMultiAlternatives, get_connection
from django.db import transaction
from django.db.models import Q
from django.template.loader import render_to_string
from django.utils import timezone

from compliance import crypto
from compliance.audit import log as audit
from compliance.models.notify import Delivery
from compliance.notify import outbound
from compliance.vocabulary import FAILED, PENDING, SENDING, SENT, STATE, STATES_BY_SEVERITY

log = logging.getLogger(__name__)
MAX_BACKOFF = 3600
REASON_MAX = 1000


class DeliveryError(Exception):
    """A send that failed; permanent ones are not retried (a 4xx answer, a bad address)."""

    def __init__(self, reason: str, permanent: bool = False):
        super().__init__(reason)
        self.reason, self.permanent = reason[:REASON_MAX], permanent


# --- rendering --------------------------------------------------------------------------


@dataclass
class Item:
    text: str
    link: str = ""


@dataclass
class Section:
    heading: str
    items: list[Item] = field(default_factory=list)
    link: str = ""


@dataclass
class Message:
    subject: str
    intro: str
    sections: list[Section] = field(default_factory=list)
    link: str = ""

    def text(self) -> str:
        return render_to_string("compliance/notify/message.txt", {"m": self})

    def html(self) -> str:
        return render_to_string("compliance/notify/message.html", {"m": self})


def url(path: str) -> str:
    return settings.WELKIN_BASE_URL + path


def _plural(n: int, word: str) -> str:
    return f"{n} {word}{'' if n == 1 else 's'}"


def _scoped(payload: dict, keys: list[str] | None) -> dict[str, dict]:
    namespaces = payload.get("namespaces") or {}
    if keys is None:
        return namespaces
    return {k: namespaces[k] for k in keys if k in namespaces}


def _ns_link(key: str) -> str:
    cluster, _, ns = key.partition("/")
    return url(f"/clusters/{cluster}/namespaces/{ns}/")


def _findings(event, keys) -> Message:
    p = event.payload
    scoped = _scoped(p, keys)
    root = sum(e["root"] for e in scoped.values())
    blocked = sum(e["blocked"] for e in scoped.values())
    back = sum(e["reopened"] for e in scoped.values())
    parts = [f"{root} newly root"] * bool(root) + [f"{blocked} newly blocked"] * bool(blocked)
    parts += [f"{back} came back"] * bool(back)
    m = Message(
        subject=f"welkin-dash: {', '.join(parts) or 'news'} in {p['cluster']}",
        intro=f"The scan of {p['cluster']} at {p['at'][:16].replace('T', ' ')} UTC found "
        f"{_plural(root + blocked + back, 'workload container')} to look at in "
        f"{_plural(len(scoped), 'namespace')}.",
        link=url(f"/clusters/{p['cluster']}/"),
    )
    for key, e in sorted(scoped.items()):
        counts = [f"{e[s]} {STATE.label(s).lower()}" for s in ("root", "blocked") if e[s]]
        counts += [f"{e['reopened']} came back"] * bool(e["reopened"])
        section = Section(f"{key}: {', '.join(counts)}", link=_ns_link(key))
        for x in e["examples"]:
            what = {"new": "new", "became": "changed to this", "reopened": "came back"}[x["what"]]
            section.items.append(
                Item(
                    f"{x['workload']} container {x['container']}: "
                    f"{STATE.label(x['state'])} ({what})"
                    + (f". Fix: {x['fix']}" if x.get("fix") else ""),
                    url(f"/findings/{x['id']}/"),
                )
            )
        if e["count"] > len(e["examples"]):
            section.items.append(Item(f"and {e['count'] - len(e['examples'])} more", _ns_link(key)))
        m.sections.append(section)
    return m


def _stale(event, keys) -> Message:
    p = event.payload
    since = p["since"][:16].replace("T", " ")
    why = f" The last scan {p['last_status']}: {p['last_reason']}" if p.get("last_reason") else ""
    return Message(
        subject=f"welkin-dash: {p['cluster']} has no complete scan since {since} UTC",
        intro=(
            f"Cluster {p['cluster']} has never been scanned completely."
            if p.get("never")
            else f"Cluster {p['cluster']}'s last complete scan was at {since} UTC: its findings "
            "may be out of date." + why
        ),
        link=url("/scans/"),
    )


def _exception(event, keys) -> Message:
    p = event.payload
    verb = {
        "exception_requested": "requested",
        "exception_approved": "approved",
        "exception_ending": "ending soon",
        "exception_ended": "ended",
    }[event.kind]
    where = ns_key_of(p)
    intro = f"An exception in {where} was {verb}: {p['title']}."
    if p.get("ends_at"):
        intro += f" It ends {p['ends_at'][:10]}."
    if p.get("by"):
        intro += f" (by {p['by']})"
    sections = [Section("Details", [Item(p["detail"])])] if p.get("detail") else []
    return Message(
        subject=f"welkin-dash: exception {verb} in {where}",
        intro=intro,
        sections=sections,
        link=url(p["link"]) if p.get("link", "").startswith("/") else _ns_link(where),
    )


def ns_key_of(p: dict) -> str:
    return f"{p['cluster']}/{p['namespace']}"


def _by_state(counts: dict[str, int]) -> str:
    """ "2 blocked by kubelet, 1 runs as root": worst first, as the pages show them."""
    return ", ".join(
        f"{counts[s]} {STATE.label(s).lower()}" for s in STATES_BY_SEVERITY if counts.get(s)
    )


def _digest(event, keys) -> Message:
    p = event.payload
    scoped = _scoped(p, keys)
    states: dict[str, int] = {}
    opened = resolved = 0
    oldest = []
    for key, e in scoped.items():
        for s, n in e["states"].items():
            states[s] = states.get(s, 0) + n
        opened += e["opened"]
        resolved += e["resolved"]
        oldest += [dict(x, key=key) for x in e["oldest"]]
    oldest.sort(key=lambda x: x["since"])
    by_state = _by_state(states) or "none"
    m = Message(
        subject=f"welkin-dash: weekly digest {p['week']}",
        intro=f"Open findings in your {_plural(len(scoped), 'namespace')}: {by_state}. "
        f"In the last 7 days {opened} opened and {resolved} resolved.",
        link=url("/"),
    )
    if oldest:
        m.sections.append(
            Section(
                "The oldest open findings",
                [
                    Item(
                        f"{x['key']} {x['workload']} container {x['container']}: "
                        f"{STATE.label(x['state'])} since {x['since'][:10]}",
                        url(f"/findings/{x['id']}/"),
                    )
                    for x in oldest[:10]
                ],
            )
        )
    for key, e in sorted(scoped.items()):
        counts = _by_state(e["states"])
        m.sections.append(
            Section(
                f"{key}: {counts or 'nothing open'}; +{e['opened']} opened, "
                f"-{e['resolved']} resolved this week",
                link=_ns_link(key),
            )
        )
    return m


def _test(event, keys) -> Message:
    return Message(
        subject="welkin-dash: test message",
        intro=f"This is a test message from welkin-dash's settings page, sent by "
        f"{event.payload.get('by') or 'an officer'}. Notifications to this destination work.",
        link=url("/"),
    )


RENDERERS = {
    "findings": _findings,
    "cluster_stale": _stale,
    "exception_requested": _exception,
    "exception_approved": _exception,
    "exception_ending": _exception,
    "exception_ended": _exception,
    "digest": _digest,
    "test": _test,
}


def render(delivery: Delivery) -> Message:
    return RENDERERS[delivery.event.kind](delivery.event, delivery.namespaces)


# --- channels -------------------------------------------------------------------------


def send_email(delivery: Delivery, m: Message) -> None:
    if not settings.EMAIL_HOST:
        raise DeliveryError("e-mail is off (EMAIL_HOST is not set)", permanent=True)
    mail = EmailMultiAlternatives(
        subject=m.subject,
        body=m.text(),
        from_email=settings.WELKIN_NOTIFY_FROM,
        to=[delivery.address],
        headers={
            # The same id on every try: a retried delivery is recognisably the same mail.
            "Message-ID": f"<{delivery.idempotency_key}@welkin-dash>",
            "X-Welkin-Delivery": delivery.idempotency_key,
        },
        # SMTP itself, whatever EMAIL_BACKEND says (test runners swap that for a list).
        connection=get_connection(
            "django.core.mail.backends.smtp.EmailBackend", timeout=settings.WELKIN_NOTIFY_TIMEOUT
        ),
    )
    mail.attach_alternative(m.html(), "text/html")
    try:
        mail.send()
    except smtplib.SMTPRecipientsRefused as e:
        raise DeliveryError(f"the mail server refused the recipient: {e}", permanent=True) from None
    except (smtplib.SMTPException, OSError) as e:
        where = f"{settings.EMAIL_HOST}:{settings.EMAIL_PORT}"
        raise DeliveryError(f"SMTP {where}: {type(e).__name__}: {e}") from None


# Slack has no escape for its markup, nor Mattermost for its Markdown: a zero-width space on
# each side of these characters keeps text as typed (no bold, italics, strike, code, links
# or images in brackets, @here or @channel mentions).
_SLACK_MARKUP = str.maketrans({c: "\u200b" + c + "\u200b" for c in "*_~`[]!@"})
_ZWSP = "\u200b"


def _slack_inert(text: str) -> str:
    """User and cluster text as Slack and Mattermost show it, inert: the characters Slack
    reserves escaped as it asks (&, <, >), markup, mentions and the start of a bare link
    broken by zero-width spaces (a reason's *urgent* or @channel stays literal;
    http://evil.example, //evil.example and www.evil.example are not links)."""
    escaped = text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")
    escaped = escaped.translate(_SLACK_MARKUP).replace("//", "/" + _ZWSP + "/")
    return re.sub(r"(?i)\bwww\.", lambda m: m.group(0)[:-1] + _ZWSP + ".", escaped)


def webhook_body(delivery: Delivery, m: Message, fmt: str) -> bytes:
    if fmt == "slack":
        lines = [f"*{_slack_inert(m.subject)}*", _slack_inert(m.intro)]
        for s in m.sections:
            lines.append(
                f"• <{s.link}|{_slack_inert(s.heading)}>"
                if s.link
                else f"• {_slack_inert(s.heading)}"
            )
            lines += [f"    – {_slack_inert(i.text)}" for i in s.items]
        if m.link:
            lines.append(f"<{m.link}|Open welkin-dash>")
        # No previews of links: a message must not make Slack fetch anything.
        body = {"text": "\n".join(lines), "unfurl_links": False, "unfurl_media": False}
        return orjson.dumps(body)
    return orjson.dumps(
        {
            "id": delivery.idempotency_key,
            "event": delivery.event.kind,
            "created_at": delivery.event.created_at.isoformat(),
            "subject": m.subject,
            "text": m.text(),
            "link": m.link,
            "data": {k: v for k, v in delivery.event.payload.items() if k != "namespaces"}
            | {"namespaces": _scoped(delivery.event.payload, delivery.namespaces)},
        }
    )


def signature(secret: str, timestamp: str, delivery_id: str, event: str, body: bytes) -> str:
    """HMAC-SHA256 of "<timestamp>\n<delivery id>\n<event>\n<body>" under the destination's
    secret (docs/operating.md, Notifications): the headers a receiver acts on are signed
    with the body, so a request replayed with another delivery id (past its dedupe) or
    event is refused. A header cannot hold a line break, so the fields cannot be cut
    another way."""
    signed = f"{timestamp}\n{delivery_id}\n{event}\n".encode() + body
    return "sha256=" + hmac.new(secret.encode(), signed, hashlib.sha256).hexdigest()


def send_webhook(delivery: Delivery, m: Message) -> None:
    contact = delivery.contact
    fmt = contact.webhook_format if contact else "json"
    body = webhook_body(delivery, m, fmt)
    timestamp = str(int(time.time()))
    headers = {
        "Content-Type": "application/json",
        "User-Agent": "welkin-dash",
        "X-Welkin-Event": delivery.event.kind,
        "X-Welkin-Delivery": delivery.idempotency_key,
        "X-Welkin-Timestamp": timestamp,
    }
    secret = contact.secret if contact else settings.WELKIN_WEBHOOK_SECRET
    if secret:
        headers["X-Welkin-Signature"] = signature(
            secret, timestamp, delivery.idempotency_key, delivery.event.kind, body
        )
    elif fmt == "json":
        raise DeliveryError(
            "no HMAC secret for this webhook (set one, or WELKIN_WEBHOOK_SECRET)", True
        )
    try:
        r = outbound.post(
            delivery.address,
            data=body,
            headers=headers,
            timeout=settings.WELKIN_NOTIFY_TIMEOUT,
            allow_redirects=False,
        )
    except outbound.Refused as e:
        raise DeliveryError(str(e), permanent=True) from None
    except requests.Timeout:
        raise DeliveryError(f"no answer within {settings.WELKIN_NOTIFY_TIMEOUT} s") from None
    except requests.RequestException as e:
        raise DeliveryError(f"cannot reach the webhook: {type(e).__name__}") from None
    if 200 <= r.status_code < 300:
        return
    permanent = 400 <= r.status_code < 500 and r.status_code not in (408, 425, 429)
    raise DeliveryError(f"the webhook answered HTTP {r.status_code}", permanent=permanent)


# --- claiming and recording -------------------------------------------------------------


def lease_seconds() -> int:
    # Long enough for one send to end by its own timeout (SMTP can take a few round trips).
    return 3 * settings.WELKIN_NOTIFY_TIMEOUT + 5


def backoff(attempts: int) -> int:
    return min(settings.WELKIN_NOTIFY_BACKOFF_SECONDS * 2 ** max(attempts - 1, 0), MAX_BACKOFF)


def _claim(delivery_id: int) -> Delivery | str:
    now = timezone.now()
    with transaction.atomic():
        d = (
            Delivery.objects.select_for_update(skip_locked=True, of=("self",))
            .select_related("event", "contact")
            .filter(pk=delivery_id)
            .first()
        )
        if d is None:
            return "busy" if Delivery.objects.filter(pk=delivery_id).exists() else "gone"
        if d.status in (SENT, FAILED):
            return d.status
        if d.status == SENDING and d.lease_until and d.lease_until > now:
            return "busy"
        if d.status == PENDING and d.next_attempt_at > now:
            return "not due"
        if d.destination.startswith("contact:") and d.contact_id is None:
            # Its contact was deleted: the officer took that destination away.
            d.status, d.lease_until = FAILED, None
            d.last_error = "dropped: its contact was deleted; nothing was sent"
            d.save(update_fields=["status", "lease_until", "last_error"])
            audit.record(
                None,
                "notify_dropped",
                f"delivery {d.idempotency_key} to a deleted contact",
                {"delivery": d.pk, "event": d.event.kind, "channel": d.channel},
                username="",
            )
            return FAILED
        d.status, d.attempts = SENDING, d.attempts + 1
        d.lease_until = now + timedelta(seconds=lease_seconds())
        d.save(update_fields=["status", "attempts", "lease_until"])
        return d


def deliver_one(delivery_id: int) -> str:
    """Send one delivery if it is due and nobody else holds it: sent, pending (to retry),
    failed, or why nothing was done (busy, not due, gone)."""
    d = _claim(delivery_id)
    if isinstance(d, str):
        return d
    mine = Delivery.objects.filter(pk=d.pk, status=SENDING, attempts=d.attempts)
    try:
        try:
            m = render(d)
            (send_email if d.channel == "email" else send_webhook)(d, m)
        except crypto.DecryptionError:
            raise DeliveryError(
                "the contact's secret cannot be decrypted (WELKIN_FERNET_KEYS changed?): "
                "set it again",
                permanent=True,
            ) from None
        except DeliveryError:
            raise
        except Exception as e:  # a bug: failed with its name, never left claimed for ever
            log.exception("delivery %s", d.idempotency_key)
            raise DeliveryError(f"internal error: {type(e).__name__}", permanent=True) from e
    except DeliveryError as e:
        # A test answers the officer who pressed the button, now: never tried again later.
        final = (
            e.permanent
            or d.attempts >= settings.WELKIN_NOTIFY_MAX_ATTEMPTS
            or d.event.kind == "test"
        )
        status = FAILED if final else PENDING
        mine.update(
            status=status,
            last_error=f"attempt {d.attempts}: {e.reason}",
            next_attempt_at=timezone.now() + timedelta(seconds=backoff(d.attempts)),
            lease_until=None,
        )
        log.info("delivery %s %s: %s", d.idempotency_key, status, e.reason)
        return status
    mine.update(status=SENT, sent_at=timezone.now(), last_error="", lease_until=None)
    return SENT


def due(limit: int = 500) -> list[int]:
    """Deliveries to try now: pending and due, or sending with an expired lease (their
    worker died)."""
    now = timezone.now()
    return list(
        Delivery.objects.filter(
            Q(status=PENDING, next_attempt_at__lte=now) | Q(status=SENDING, lease_until__lt=now)
        )
        .order_by("next_attempt_at")
        .values_list("pk", flat=True)[:limit]
    )


def next_due_in() -> float | None:
    """Seconds until the next pending delivery is due (None: none pending)."""
    first = (
        Delivery.objects.filter(status__in=[PENDING, SENDING])
        .order_by("next_attempt_at")
        .values_list("next_attempt_at", "lease_until", "status")
        .first()
    )
    if first is None:
        return None
    at = first[1] if first[2] == SENDING and first[1] else first[0]
    return max((at - timezone.now()).total_seconds(), 0.0)


# --- tasks (names pinned: routes, beat entries and messages already queued use them) -----


@shared_task(name="compliance.tasks.deliver", acks_late=True)
def deliver(delivery_id: int) -> str:
    """Send one delivery. Safe to run twice: a sent or claimed delivery is left alone. A
    failure to retry is queued again at its backoff (beat's deliver_due also finds it)."""
    outcome = deliver_one(delivery_id)
    if outcome == PENDING and not deliver.request.is_eager:
        at = Delivery.objects.filter(pk=delivery_id).values_list("next_attempt_at", flat=True)[0]
        deliver.apply_async((delivery_id,), eta=at)
    return outcome


@shared_task(name="compliance.tasks.deliver_due")
def deliver_due() -> int:
    """One delivery task per delivery due now (new, retry due, or left by a dead worker)."""
    ids = due()
    for pk in ids:
        deliver.delay(pk)
    return len(ids)
