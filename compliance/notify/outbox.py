"""Notifications: which events owners hear about, and who the owners are.

Events are written to the outbox (OutboxEvent) with one Delivery per destination in the
transaction that caused them -- a scan's reconcile, an exception's change -- or by the
periodic checks here (stale clusters, the weekly digest), which are idempotent through
the event's dedupe key. compliance/notify/delivery.py sends the deliveries.

Owners of a namespace: the users granted it (directly or through a group; by e-mail),
the contacts officers set for it (a name or glob; e-mail or webhook), and the security
officers (by e-mail), who also hear fleet-wide events with the fleet-wide contacts.
One event is one message per destination, however many findings it holds: the work is
O(namespaces x owners), not O(findings) messages.
"""

from __future__ import annotations

import fnmatch
import time
from collections import defaultdict
from collections.abc import Iterable
from datetime import datetime, timedelta

from celery import shared_task
from django.conf import settings
from django.contrib.auth.models import User
from django.db import transaction
from django.db.models import Count, F, Q, Window
from django.db.models.functions import RowNumber
from django.utils import timezone

from compliance.identity import access
from compliance.models import Cluster, Finding, FindingEvent, NamespaceGrant, ScanRun, Source
from compliance.models.notify import Contact, Delivery, OutboxEvent
from compliance.notify import delivery
from compliance.vocabulary import BLOCKED, ROOT, SUCCEEDED

EXAMPLES = 5  # findings named per namespace in a message; the rest are counted
DIGEST_OLDEST = 5
BAD = (ROOT, BLOCKED)
# Events about risk acceptance (compliance issue 11 calls exception_event with these).
EXCEPTION_KINDS = ("requested", "approved", "ending", "ended")


def ns_key(cluster_name: str, namespace: str) -> str:
    return f"{cluster_name}/{namespace}"


# --- owners -----------------------------------------------------------------------------


class _Dest:
    __slots__ = ("channel", "address", "contact_id", "namespaces")

    def __init__(self, channel: str, address: str, contact_id: int | None, namespaces):
        self.channel, self.address, self.contact_id = channel, address, contact_id
        self.namespaces = namespaces  # list of keys, or None: everything in the event


def _matcher(cluster_id: int | None, glob: str):
    """A test for (cluster id, namespace) pairs: exact names without fnmatch."""
    plain = "*" not in glob and "?" not in glob
    return lambda c, ns: (
        (cluster_id is None or cluster_id == c)
        and (ns == glob if plain else fnmatch.fnmatchcase(ns, glob))
    )


def _matching(rules: Iterable, where: list[tuple[int, str, str]]) -> list[str]:
    matchers = [_matcher(c, g) for c, g in rules]
    return [key for c, ns, key in where if any(m(c, ns) for m in matchers)]


def email_on() -> bool:
    return bool(settings.EMAIL_HOST)


def destinations(where: list[tuple[int, str, str]] | None) -> dict[str, _Dest]:
    """Who hears about an event touching `where` ((cluster id, namespace, key) triples);
    None: a fleet-wide event (officers and fleet-wide contacts only). A few queries,
    whatever the size of `where`."""
    out: dict[str, _Dest] = {}
    mail = email_on()
    if mail:
        for pk, email in (
            User.objects.filter(is_active=True)
            .filter(Q(is_superuser=True) | Q(groups__name=access.OFFICER))
            .exclude(email="")
            .values_list("pk", "email")
            .distinct()
        ):
            out[f"user:{pk}"] = _Dest("email", email, None, None)
    for contact in Contact.objects.filter(enabled=True):
        if contact.channel == "email" and not mail:
            continue
        if contact.fleet_wide:
            namespaces = None
        elif where is None:
            continue
        else:
            namespaces = _matching([(contact.cluster_id, contact.namespace)], where)
            if not namespaces:
                continue
        out[f"contact:{contact.pk}"] = _Dest(
            contact.channel, contact.address, contact.pk, namespaces
        )
    if mail and where is not None:
        rules: dict[int, list[tuple[int | None, str]]] = defaultdict(list)
        members: dict[int, list[int]] = defaultdict(list)
        for user_id, group_id in User.groups.through.objects.values_list("user_id", "group_id"):
            members[group_id].append(user_id)
        for user_id, group_id, cluster_id, glob in NamespaceGrant.objects.values_list(
            "user_id", "group_id", "cluster_id", "namespace"
        ):
            for uid in [user_id] if user_id else members.get(group_id, []):
                rules[uid].append((cluster_id, glob))
        # Grants count for team leads only, as on the pages: a leftover grant of someone
        # whose role ended (or who never had one) tells them nothing.
        leads = {pk for pk, role in access.roles_of(rules).items() if role == access.LEAD}
        emails = dict(
            User.objects.filter(pk__in=leads, is_active=True)
            .exclude(email="")
            .values_list("pk", "email")
        )
        for uid, user_rules in rules.items():
            if uid in emails and f"user:{uid}" not in out:
                namespaces = _matching(user_rules, where)
                if namespaces:
                    out[f"user:{uid}"] = _Dest("email", emails[uid], None, namespaces)
    return out


def publish(
    kind: str,
    payload: dict,
    where: list[tuple[int, str, str]] | None,
    cluster: Cluster | None = None,
    scan: ScanRun | None = None,
    dedupe_key: str | None = None,
) -> OutboxEvent | None:
    """Write an event and its deliveries (in the caller's transaction), and queue their
    sending once it commits. With a dedupe_key already used, or nobody to tell, nothing
    is written."""
    dests = destinations(where)
    if not dests:
        return None  # nobody to tell
    with transaction.atomic():
        if dedupe_key and OutboxEvent.objects.filter(dedupe_key=dedupe_key).exists():
            return None
        event = OutboxEvent.objects.create(
            kind=kind, cluster=cluster, scan=scan, payload=payload, dedupe_key=dedupe_key
        )
        now = event.created_at
        Delivery.objects.bulk_create(
            [
                Delivery(
                    event=event,
                    destination=dest,
                    channel=d.channel,
                    address=d.address[:2000],
                    contact_id=d.contact_id,
                    namespaces=d.namespaces,
                    next_attempt_at=now,
                    created_at=now,
                )
                for dest, d in dests.items()
            ],
            batch_size=1000,
        )
    transaction.on_commit(_queue_delivery)
    return event


def _queue_delivery() -> None:
    try:
        delivery.deliver_due.delay()
    except Exception:  # noqa: BLE001 - a broker outage must not fail the scan: beat retries
        import logging

        logging.getLogger(__name__).warning("notifications: could not queue delivery; beat will")


# --- events -----------------------------------------------------------------------------


def record_scan(
    cluster: Cluster,
    scan: ScanRun,
    opened: list[Finding],
    changed: list[tuple[tuple[str, str, str, str], int, str, str]],
) -> OutboxEvent | None:
    """The scan's news for owners, in the reconcile's transaction: workloads newly root
    or blocked (opened so, or changed to it) and findings that came back (opened again
    after being resolved), per namespace with a few examples. `changed` holds (key, id,
    from state, to state) of the findings whose state changed. Nothing else is news.
    The time it takes is the scan's timings["notify_s"] (make bench-scan prints it)."""
    started = time.monotonic()
    try:
        return _record_scan(cluster, scan, opened, changed)
    finally:
        scan.timings["notify_s"] = round(time.monotonic() - started, 3)


def _record_scan(cluster, scan, opened, changed) -> OutboxEvent | None:
    reopened: set[tuple] = set()
    if opened and Finding.objects.filter(cluster=cluster, resolved_at__isnull=False).exists():
        keys = {(f.namespace, f.workload_kind, f.workload_name, f.container) for f in opened}
        reopened = keys & set(
            Finding.objects.filter(
                cluster=cluster,
                resolved_at__isnull=False,
                namespace__in={k[0] for k in keys},
            ).values_list("namespace", "workload_kind", "workload_name", "container")
        )
    news: dict[str, dict] = {}

    def add(key: tuple[str, str, str, str], pk: int, state: str, what: str) -> None:
        entry = news.setdefault(
            key[0], {"count": 0, "root": 0, "blocked": 0, "reopened": 0, "examples": []}
        )
        entry["count"] += 1
        if what == "reopened":
            entry["reopened"] += 1
        if state in BAD:
            entry[state] += 1
        if len(entry["examples"]) < EXAMPLES:
            entry["examples"].append(
                {
                    "id": pk,
                    "workload": f"{key[1]}/{key[2]}",
                    "container": key[3],
                    "state": state,
                    "what": what,
                }
            )

    for f in opened:
        key = (f.namespace, f.workload_kind, f.workload_name, f.container)
        if key in reopened:
            add(key, f.pk, f.state, "reopened")
        elif f.state in BAD:
            add(key, f.pk, f.state, "new")
    for key, pk, from_state, to_state in changed:
        if to_state in BAD and from_state != to_state:
            add(key, pk, to_state, "became")
    if not news:
        return None
    # Each example carries its one-line fix (rules/fix.py), as the finding page shows it.
    examples = [x for e in news.values() for x in e["examples"]]
    fixes = dict(
        Finding.objects.filter(pk__in=[x["id"] for x in examples]).values_list("pk", "fix")
    )
    for x in examples:
        x["fix"] = fixes.get(x["id"], "")
    payload = {
        "cluster": cluster.name,
        "scan": scan.pk,
        "at": scan.observed_at.isoformat(),
        "namespaces": {ns_key(cluster.name, ns): {"namespace": ns, **e} for ns, e in news.items()},
    }
    where = [(cluster.pk, ns, ns_key(cluster.name, ns)) for ns in news]
    return publish("findings", payload, where, cluster=cluster, scan=scan)


def exception_event(
    kind: str,
    cluster: Cluster,
    namespace: str,
    title: str,
    *,
    detail: str = "",
    link: str = "",
    ends_at: datetime | None = None,
    by: str = "",
    dedupe_key: str | None = None,
) -> OutboxEvent | None:
    """Risk acceptance news for a namespace's owners and the officers: an exception
    `kind` (requested, approved, ending -- within 14 days --, ended). Call it inside the
    transaction that changes the exception; pass a dedupe_key for periodic checks (e.g.
    f"exception-ending:{pk}") so a second run writes nothing."""
    if kind not in EXCEPTION_KINDS:
        raise ValueError(f"exception event kind: one of {', '.join(EXCEPTION_KINDS)}")
    key = ns_key(cluster.name, namespace)
    payload = {
        "cluster": cluster.name,
        "namespace": namespace,
        "title": title[:300],
        "detail": detail[:2000],
        "link": link[:500],
        "ends_at": ends_at.isoformat() if ends_at else None,
        "by": by[:150],
        "namespaces": {key: {"namespace": namespace}},
    }
    return publish(
        f"exception_{kind}",
        payload,
        [(cluster.pk, namespace, key)],
        cluster=cluster,
        dedupe_key=dedupe_key,
    )


def notify_stale_clusters(now: datetime | None = None) -> int:
    """Tell the officers about each scheduled cluster whose last complete scan is older than
    WELKIN_NOTIFY_STALE_SECONDS (its scans failing, or not running): once per last
    complete scan, so the periodic check can run as often as it likes."""
    now = now or timezone.now()
    limit = now - timedelta(seconds=settings.WELKIN_NOTIFY_STALE_SECONDS)
    written = 0
    # Snapshot clusters are imported by hand, on no schedule: their age is not news.
    scanned = Cluster.objects.filter(enabled=True).exclude(source=Source.SNAPSHOT)
    for cluster in scanned.select_related("last_complete_scan", "last_scan"):
        done = cluster.last_complete_scan
        since = done.observed_at if done else cluster.created_at  # what the data describes
        if since >= limit:
            continue
        last = cluster.last_scan
        payload = {
            "cluster": cluster.name,
            "since": since.isoformat(),
            "never": done is None,
            "last_status": last.status if last else "",
            "last_reason": (last.reason or "")[:500] if last and last.status != SUCCEEDED else "",
        }
        if publish(
            "cluster_stale",
            payload,
            None,
            cluster=cluster,
            dedupe_key=f"stale:{cluster.pk}:{done.pk if done else 0}",
        ):
            written += 1
    return written


def weekly_digest(now: datetime | None = None) -> OutboxEvent | None:
    """The week's digest, once per ISO week: per namespace with open findings, the open
    ones by state, what was opened and resolved in the last 7 days, and the oldest ones.
    Each owner's message covers their namespaces; an officer's, the fleet."""
    now = now or timezone.now()
    year, week, _ = now.isocalendar()
    dedupe = f"digest:{year}-W{week:02d}"
    if OutboxEvent.objects.filter(dedupe_key=dedupe).exists():
        return None
    since = now - timedelta(days=7)
    names = dict(Cluster.objects.values_list("pk", "name"))
    namespaces: dict[str, dict] = {}
    ids: dict[str, tuple[int, str]] = {}

    def entry(cluster_id: int, ns: str) -> dict:
        key = ns_key(names[cluster_id], ns)
        ids[key] = (cluster_id, ns)
        return namespaces.setdefault(
            key,
            {"namespace": ns, "states": {}, "opened": 0, "resolved": 0, "oldest": []},
        )

    open_findings = Finding.objects.filter(resolved_at__isnull=True)
    for cluster_id, ns, state, n in (
        open_findings.values_list("cluster_id", "namespace", "state")
        .annotate(n=Count("pk"))
        .order_by()
    ):
        entry(cluster_id, ns)["states"][state] = n
    for cluster_id, ns, kind, n in (
        FindingEvent.objects.filter(at__gte=since, kind__in=["opened", "resolved"])
        .values_list("finding__cluster_id", "finding__namespace", "kind")
        .annotate(n=Count("pk"))
        .order_by()
    ):
        entry(cluster_id, ns)[kind] = n
    # The oldest open findings of every namespace: the first few of each, ranked in the
    # database (a window per namespace), not every open finding brought back.
    ranked = open_findings.annotate(
        rank=Window(
            RowNumber(),
            partition_by=[F("cluster_id"), F("namespace")],
            order_by=F("first_seen").asc(),
        )
    ).filter(rank__lte=DIGEST_OLDEST)
    for f in ranked.order_by("first_seen").values(
        "pk",
        "cluster_id",
        "namespace",
        "workload_kind",
        "workload_name",
        "container",
        "state",
        "first_seen",
    ):
        oldest = entry(f["cluster_id"], f["namespace"])["oldest"]
        if len(oldest) < DIGEST_OLDEST:
            oldest.append(
                {
                    "id": f["pk"],
                    "workload": f"{f['workload_kind']}/{f['workload_name']}",
                    "container": f["container"],
                    "state": f["state"],
                    "since": f["first_seen"].isoformat(),
                }
            )
    payload = {"week": f"{year}-W{week:02d}", "since": since.isoformat(), "namespaces": namespaces}
    where = [(c, ns, key) for key, (c, ns) in ids.items()]
    return publish("digest", payload, where, dedupe_key=dedupe)


def test_event(contact: Contact, by: str) -> Delivery:
    """A test message to one contact (the settings page's button)."""
    with transaction.atomic():
        event = OutboxEvent.objects.create(kind="test", payload={"by": by[:150], "namespaces": {}})
        return Delivery.objects.create(
            event=event,
            destination=f"contact:{contact.pk}",
            channel=contact.channel,
            address=contact.address,
            contact=contact,
            namespaces=None,
        )


# --- tasks (names pinned: routes, beat entries and messages already queued use them) -----


@shared_task(name="compliance.tasks.notify_stale_clusters")
def notify_stale_clusters_task() -> int:
    """Beat: officers hear about clusters without a recent complete scan (once each)."""
    return notify_stale_clusters()


@shared_task(name="compliance.tasks.weekly_digest")
def weekly_digest_task() -> bool:
    """Beat, weekly: each owner's digest (once per ISO week)."""
    return weekly_digest() is not None
