"""Notifications with real parts: the outbox written by a scan's reconcile (one message
per owner and channel), an SMTP server (aiosmtpd) and a webhook receiver checking the
HMAC, each in its own process; the receiver down, failing, slow, then back; deliveries
claimed once however many tasks run; failures kept with their reason for officers."""

import datetime as dt
import mailbox
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
import requests
from django.contrib.auth.models import Group
from django.db import connection

from compliance.collect import scanning
from compliance.models import AuditEvent, Cluster, Finding, NamespaceGrant, ScanRun
from compliance.models.notify import Contact, Delivery, OutboxEvent
from compliance.notify import delivery, outbox
from tests import builders
from tests.builders import Receiver, deployment, fleet_snapshot, hook
from tests.processes import free_port

ROOT = Path(__file__).resolve().parents[2]

T0 = builders.T0
ROOT_SC = builders.ROOT
OK_SC = {"runAsUser": 5, "runAsNonRoot": True}


class Smtp:
    def __init__(self, tmp: Path):
        self.port = free_port()
        self.maildir = tmp / "maildir"
        self.p = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "aiosmtpd",
                "-n",
                "-l",
                f"127.0.0.1:{self.port}",
                "-c",
                "aiosmtpd.handlers.Mailbox",
                str(self.maildir),
            ],
            cwd=ROOT,
        )
        for _ in range(100):
            try:
                socket.create_connection(("127.0.0.1", self.port), 0.2).close()
                break
            except OSError:
                time.sleep(0.05)

    def messages(self):
        return list(mailbox.Maildir(self.maildir, create=False)) if self.maildir.exists() else []

    def stop(self):
        self.p.terminate()
        self.p.wait(10)


@pytest.fixture(scope="module")
def receiver():
    r = Receiver()
    yield r
    r.stop()


@pytest.fixture(scope="module")
def smtp(tmp_path_factory):
    s = Smtp(tmp_path_factory.mktemp("smtp"))
    yield s
    s.stop()


@pytest.fixture(autouse=True)
def quick(settings):
    settings.WELKIN_NOTIFY_TIMEOUT = 1
    settings.WELKIN_NOTIFY_BACKOFF_SECONDS = 1
    settings.EMAIL_HOST = ""
    settings.WELKIN_BASE_URL = "https://welkin.example"


@pytest.fixture
def mail_on(settings, smtp):
    settings.EMAIL_HOST, settings.EMAIL_PORT = "127.0.0.1", smtp.port
    return smtp


@pytest.fixture
def owners(db):
    """An officer, a lead granted `shop`, a lead granted `sh*` through a group, someone
    without grants, a webhook for `ops` and a fleet-wide mailbox."""
    officer = builders.make_user("officer")
    lead = builders.make_user("lead", ["shop"])
    team = Group.objects.create(name="team-shop")
    NamespaceGrant.objects.create(group=team, namespace="sh*")
    lead2 = builders.make_user("lead", username="lead2")
    lead2.groups.add(team)
    outsider = builders.make_user("outsider")
    for u in (officer, lead, lead2, outsider):
        u.email = f"{u.username}@example.com"
        u.save()
    ops = Contact.objects.create(
        name="ops", channel="webhook", url="http://127.0.0.1:9/ops", namespace="ops"
    )
    fleet = Contact.objects.create(name="fleet", channel="email", email="sec@example.com")
    return {"officer": officer, "lead": lead, "lead2": lead2, "ops": ops, "fleet": fleet}


# --- the outbox -------------------------------------------------------------------------


def test_a_scan_queues_one_message_per_owner_and_channel(owners, settings):
    settings.EMAIL_HOST = "mail.example"
    fleet_snapshot(T0)
    event = OutboxEvent.objects.get()
    scan = ScanRun.objects.get()
    assert event.kind == "findings" and event.scan == scan and scan.timings["notify_s"] >= 0
    assert event.payload["namespaces"]["airgap/shop"]["root"] == 30
    assert len(event.payload["namespaces"]["airgap/shop"]["examples"]) == outbox.EXAMPLES
    got = {d.destination: d.namespaces for d in Delivery.objects.all()}
    o = owners
    assert got == {
        f"user:{o['officer'].pk}": None,
        f"user:{o['lead'].pk}": ["airgap/shop"],
        f"user:{o['lead2'].pk}": ["airgap/shop"],
        f"contact:{o['ops'].pk}": ["airgap/ops"],
        f"contact:{o['fleet'].pk}": None,
    }
    fleet_snapshot(T0 + dt.timedelta(hours=1))  # nothing new: no event
    assert OutboxEvent.objects.count() == 1


def test_with_email_off_only_webhooks_are_queued(owners):
    fleet_snapshot(T0)
    assert [d.destination for d in Delivery.objects.all()] == [f"contact:{owners['ops'].pk}"]


def test_the_outbox_is_written_in_the_reconciles_transaction(
    owners, cluster, fake_kube, monkeypatch
):
    """A live scan (its transaction is the outermost: a snapshot's import wraps its own):
    the outbox is written, then the transaction fails; its events go with the rest."""
    deployment(fake_kube, "ops", "db", "postgres", 2, container_sc=builders.ROOT)  # the ops hook
    record_scan = outbox.record_scan

    def written_then_broken(*args, **kwargs):
        record_scan(*args, **kwargs)
        assert OutboxEvent.objects.exists()
        raise RuntimeError("disk full")

    monkeypatch.setattr(outbox, "record_scan", written_then_broken)
    with pytest.raises(RuntimeError):
        scanning.scan_cluster(cluster.pk)
    assert not OutboxEvent.objects.exists() and not Delivery.objects.exists()


def test_a_finding_that_came_back_and_one_newly_blocked_are_news(owners, settings):
    settings.EMAIL_HOST = "mail.example"
    fleet_snapshot(T0, shop_roots=2, extra={("shop", "later"): OK_SC})
    fleet_snapshot(
        T0 + dt.timedelta(days=1), shop_roots=1, extra={("shop", "later"): {"runAsNonRoot": True}}
    )
    assert OutboxEvent.objects.count() == 1  # fixing w1, later unverified: no news
    fleet_snapshot(
        T0 + dt.timedelta(days=2),
        shop_roots=2,
        extra={("shop", "later"): builders.NONROOT_ONLY[0] | {"runAsUser": 0}},
    )
    news = OutboxEvent.objects.latest("pk").payload["namespaces"]["airgap/shop"]
    assert (news["reopened"], news["blocked"]) == (1, 1)
    whats = {(x["workload"], x["what"]) for x in news["examples"]}
    assert whats == {("Pod/w1", "reopened"), ("Pod/later", "became")}
    lead = Delivery.objects.filter(
        event__payload__namespaces__has_key="airgap/shop", destination=f"user:{owners['lead'].pk}"
    ).latest("pk")
    m = delivery.render(lead)
    assert "came back" in m.text() and "https://welkin.example/findings/" in m.html()
    # Each example carries its one-line fix, the one the finding page and exports show.
    later = Finding.objects.get(workload_name="later", resolved_at=None)
    assert {x["fix"] for x in news["examples"] if x["workload"] == "Pod/later"} == {later.fix}
    assert later.fix and f"Fix: {later.fix}" in m.text()


def test_stale_clusters_are_told_to_officers_once(owners, settings):
    settings.EMAIL_HOST = "mail.example"
    fleet_snapshot(T0)  # a snapshot cluster: imported by hand, never stale
    Cluster.objects.create(name="never-scanned")
    Cluster.objects.filter(name="never-scanned").update(created_at=T0)
    failing = Cluster.objects.create(name="failing")
    done = ScanRun.objects.create(cluster=failing, status="succeeded", observed_at=T0)
    last = ScanRun.objects.create(cluster=failing, status="failed", reason="HTTP 401")
    Cluster.objects.filter(pk=failing.pk).update(last_complete_scan=done, last_scan=last)
    Cluster.objects.create(name="fresh")
    assert outbox.notify_stale_clusters() == 2
    assert outbox.notify_stale_clusters() == 0
    stale = OutboxEvent.objects.filter(kind="cluster_stale")
    assert {e.payload["cluster"] for e in stale} == {"failing", "never-scanned"}
    assert stale.get(payload__cluster="failing").payload["last_reason"] == "HTTP 401"
    dests = set(Delivery.objects.filter(event__in=stale).values_list("destination", flat=True))
    assert dests == {f"user:{owners['officer'].pk}", f"contact:{owners['fleet'].pk}"}
    assert (
        "has no complete scan since"
        in delivery.render(Delivery.objects.filter(event__in=stale).first()).subject
    )


def test_exception_events_reach_the_namespace_owners(owners, settings):
    settings.EMAIL_HOST = "mail.example"
    fleet_snapshot(T0)
    cluster = Cluster.objects.get(name="airgap")
    event = outbox.exception_event(
        "approved",
        cluster,
        "shop",
        "legacy image",
        ends_at=T0 + dt.timedelta(days=30),
        by="officer",
    )
    dests = set(event.deliveries.values_list("destination", flat=True))
    assert f"user:{owners['lead'].pk}" in dests and f"contact:{owners['ops'].pk}" not in dests
    assert outbox.exception_event("ending", cluster, "shop", "t", dedupe_key="ending:1")
    assert outbox.exception_event("ending", cluster, "shop", "t", dedupe_key="ending:1") is None
    with pytest.raises(ValueError):
        outbox.exception_event("vanished", cluster, "shop", "t")
    assert "exception approved in airgap/shop" in delivery.render(event.deliveries.first()).subject


def test_the_weekly_digest_is_per_owner_and_once_a_week(owners, settings):
    settings.EMAIL_HOST = "mail.example"
    fleet_snapshot(T0)
    now = T0 + dt.timedelta(days=2)
    event = outbox.weekly_digest(now)
    assert outbox.weekly_digest(now + dt.timedelta(hours=1)) is None
    lead = event.deliveries.get(destination=f"user:{owners['lead'].pk}")
    assert lead.namespaces == ["airgap/shop"]
    m = delivery.render(lead)
    assert "30 runs as root" in m.intro and "The oldest open findings" in m.text()
    ops = event.payload["namespaces"]["airgap/ops"]
    assert [x["workload"] for x in ops["oldest"]] == ["Pod/db"]
    assert len(event.payload["namespaces"]["airgap/shop"]["oldest"]) == outbox.DIGEST_OLDEST
    officer = delivery.render(event.deliveries.get(destination=f"user:{owners['officer'].pk}"))
    assert "32 runs as root" in officer.intro


def test_hostile_contacts_are_refused():
    from django.core.exceptions import ValidationError

    for url in [
        "ftp://x/",
        "javascript:alert(1)",
        "http://user:pw@x/",
        "http://x/\x00",
        "http://" + "x" * 2100,
        "http:///nohost",
    ]:
        with pytest.raises(ValidationError):
            Contact(name="h", channel="webhook", url=url).clean()
    with pytest.raises(ValidationError):
        Contact(name="h", channel="email", email="a@b\r\nBcc: c@d").clean()


# --- delivery ---------------------------------------------------------------------------


def test_it_mails_plain_text_and_html_once(owners, mail_on):
    fleet_snapshot(T0)
    d = Delivery.objects.get(destination=f"user:{owners['lead'].pk}")
    before = len(mail_on.messages())
    assert delivery.deliver_one(d.pk) == "sent"
    assert delivery.deliver_one(d.pk) == "sent"  # a second run sends nothing
    msgs = mail_on.messages()
    assert len(msgs) == before + 1
    m = msgs[-1] if len(msgs) == 1 else next(x for x in msgs if x["To"] == "lead@example.com")
    assert m["Message-ID"] == f"<{d.idempotency_key}@welkin-dash>"
    assert m["Subject"] == "welkin-dash: 30 newly root in airgap"
    parts = {
        p.get_content_type(): p.get_payload(decode=True).decode()
        for p in m.walk()
        if not p.is_multipart()
    }
    assert "airgap/shop: 30 runs as root" in parts["text/plain"]
    assert (
        '<a href="https://welkin.example/clusters/airgap/namespaces/shop/">' in parts["text/html"]
    )
    assert "ops" not in parts["text/plain"]  # the lead hears about their namespace only


def test_a_leftover_grant_without_a_role_hears_nothing(owners, settings):
    """Owners are who the pages say: a grant counts for a team lead only. Someone whose
    role ended keeps neither the findings mails nor the digest."""
    settings.EMAIL_HOST = "mail.example"  # e-mail on: owners are worked out (nothing sent)
    stray = builders.make_user("outsider", ["shop"], username="stray")
    stray.email = "stray@example.com"
    stray.save()
    fleet_snapshot(T0)
    outbox.weekly_digest(T0)
    told = set(Delivery.objects.values_list("destination", flat=True))
    assert f"user:{owners['lead'].pk}" in told and f"user:{stray.pk}" not in told


def test_the_mail_server_down_is_retried(owners, settings):
    settings.EMAIL_HOST, settings.EMAIL_PORT = "127.0.0.1", free_port()
    fleet_snapshot(T0)
    d = Delivery.objects.get(destination=f"user:{owners['lead'].pk}")
    assert delivery.deliver_one(d.pk) == "pending"
    d.refresh_from_db()
    assert d.attempts == 1 and "ConnectionRefusedError" in d.last_error


def test_webhooks_are_signed_and_scoped(db, receiver):
    receiver.set(clear=True)
    builders.make_user("officer")
    j, s = hook(receiver, "json", name="json"), hook(receiver, "slack", name="slack")
    fleet_snapshot(T0)
    for d in Delivery.objects.all():
        assert delivery.deliver_one(d.pk) == "sent"
    got = {r["path"]: r for r in receiver.received()}
    assert got["/json"]["signed"] and got["/slack"]["signed"]
    body = got["/json"]["body"]
    assert (
        body["event"] == "findings"
        and body["id"] == Delivery.objects.get(contact=j).idempotency_key
    )
    assert set(body["data"]["namespaces"]) == {"airgap/shop", "airgap/ops", "airgap/dev"}
    assert body["subject"] == "welkin-dash: 32 newly root in airgap"
    assert got["/slack"]["body"]["text"].startswith("*welkin-dash: 32 newly root in airgap*")
    assert Delivery.objects.get(contact=s).status == "sent"


def test_slack_shows_a_reason_as_typed_without_links_or_previews(db, receiver):
    """An exception's reason is user text: in Slack it must not turn bold, italic, struck,
    code, a link or a preview (a webhook body is what Slack renders)."""
    receiver.set(clear=True)
    hook(receiver, "slack", namespace="*", name="slack")
    builders.make_user("officer")
    reason = (
        "*urgent* _see_ ~old~ `x` http://evil.example www.evil.example <http://a|b> & co "
        "@channel [click](//evil.example/login) ![p](//evil.example/p.png)"
    )
    outbox.exception_event(
        "requested",
        Cluster.objects.create(name="airgap"),
        "shop",
        "airgap/shop",
        detail=reason,
        link="/exceptions/1/",
    )
    (d,) = Delivery.objects.all()
    assert delivery.deliver_one(d.pk) == "sent"
    (got,) = receiver.received()
    body = got["body"]
    assert body["unfurl_links"] is False and body["unfurl_media"] is False
    text = body["text"]
    for markup in (
        "*urgent*",
        "_see_",
        "~old~",
        "`x`",
        "http://",
        "www.evil",
        "<http://a|b>",
        "@channel",
        "[click]",
        "(//evil",
        "![p]",
    ):
        assert markup not in text, markup
    # Nothing else changed: without the zero-width spaces, the reason as Slack escapes it.
    as_typed = reason.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")
    assert as_typed in text.replace("\u200b", "")


def test_a_replayed_webhook_with_another_id_or_event_fails_its_signature(db, receiver):
    """The delivery id and the event a receiver dedupes and acts on are signed with the
    body: a captured request sent again under a new id (past the receiver's dedupe) or as
    another event does not verify; the original does, and is fresh."""
    receiver.set(clear=True)
    hook(receiver)
    fleet_snapshot(T0)
    (d,) = Delivery.objects.all()
    assert delivery.deliver_one(d.pk) == "sent"
    (got,) = receiver.received()
    assert got["signed"] and got["fresh"]
    body = got["raw"].encode()
    for header, value in (
        ("X-Welkin-Delivery", got["delivery"]),  # the same request again: it verifies
        ("X-Welkin-Delivery", "welkin-other"),
        ("X-Welkin-Event", "test"),
    ):
        replay = {**got["headers"], header: value, "Content-Type": "application/json"}
        requests.post(receiver.url + "/hook", data=body, headers=replay, timeout=5)
    first, *replays = receiver.received()
    assert [r["signed"] for r in replays] == [True, False, False]
    assert [r["new"] for r in replays] == [False, True, False]  # a new id passes the dedupe


def test_down_failing_slow_then_up_is_sent_with_one_key(db, receiver, settings):
    receiver.set(clear=True)
    c = hook(receiver)
    c.url = f"http://127.0.0.1:{free_port()}/hook"  # nobody listens
    c.save()
    fleet_snapshot(T0)
    d = Delivery.objects.get()

    def again(expected):
        Delivery.objects.filter(pk=d.pk).update(next_attempt_at=d.created_at)
        assert delivery.deliver_one(d.pk) == expected
        d.refresh_from_db()
        return d.last_error

    assert delivery.deliver_one(d.pk) == "pending"
    d.refresh_from_db()
    assert "cannot reach the webhook" in d.last_error and d.next_attempt_at > d.created_at
    assert delivery.deliver_one(d.pk) == "not due"  # backoff
    Delivery.objects.filter(pk=d.pk).update(address=receiver.url + "/hook")
    receiver.set("500")
    assert "HTTP 500" in again("pending")
    receiver.set("slow", delay=2)
    assert "no answer within 1 s" in again("pending")
    receiver.set("ok")
    again("sent")
    assert d.attempts == 4 and d.last_error == ""
    got = receiver.received()
    assert len(got) == 3 and {r["delivery"] for r in got} == {d.idempotency_key}
    assert [r["new"] for r in got] == [True, True, False]  # the receiver drops the repeat


def test_a_delivery_failing_for_good_is_kept_for_officers(db, receiver, settings, client):
    settings.WELKIN_NOTIFY_MAX_ATTEMPTS = 2
    receiver.set("500", clear=True)
    hook(receiver)
    fleet_snapshot(T0)
    d = Delivery.objects.get()
    assert delivery.deliver_one(d.pk) == "pending"
    Delivery.objects.filter(pk=d.pk).update(next_attempt_at=d.created_at)
    assert delivery.deliver_one(d.pk) == "failed"
    assert delivery.deliver_one(d.pk) == "failed"
    assert len(receiver.received()) == 2
    receiver.set("ok")
    client.force_login(builders.make_user("lead", ["shop"]))
    assert client.get("/settings/").status_code == 404
    client.force_login(builders.make_user("officer"))
    page = client.get("/settings/").content.decode()
    assert "attempt 2: the webhook answered HTTP 500" in page


def test_a_4xx_answer_fails_at_once(db, receiver):
    receiver.set("410", clear=True)
    hook(receiver)
    fleet_snapshot(T0)
    d = Delivery.objects.get()
    assert delivery.deliver_one(d.pk) == "failed"
    d.refresh_from_db()
    assert d.attempts == 1 and d.last_error == "attempt 1: the webhook answered HTTP 410"
    receiver.set("ok")


def test_the_send_a_test_button(db, receiver, client):
    receiver.set("ok", clear=True)
    c = hook(receiver)
    client.force_login(builders.make_user("officer"))
    r = client.post(f"/settings/contacts/{c.pk}/test/", follow=True)
    assert b"Test message sent to hook" in r.content
    (got,) = receiver.received()
    assert got["event"] == "test" and got["signed"]
    assert AuditEvent.objects.filter(action="notify_test", target=f"contact:{c.pk}").exists()
    receiver.set("500")
    r = client.post(f"/settings/contacts/{c.pk}/test/", follow=True)
    assert b"not sent: attempt 1: the webhook answered HTTP 500" in r.content


def test_a_failed_test_message_is_not_tried_again(db, receiver, client):
    """The button answers the officer now; a retry hours later (after the contact was
    changed or deleted) would reach a destination nobody is watching."""
    receiver.set("500", clear=True)
    c = hook(receiver)
    client.force_login(builders.make_user("officer"))
    client.post(f"/settings/contacts/{c.pk}/test/")
    d = Delivery.objects.get(event__kind="test")
    assert (d.status, d.attempts) == ("failed", 1)
    assert d.pk not in delivery.due()


def test_a_secret_that_no_key_decrypts_fails_the_delivery_for_good(db, receiver):
    """Not left claimed and claimed again after every lease, for ever."""
    c = hook(receiver)
    Contact.objects.filter(pk=c.pk).update(secret_encrypted=b"gAAAAA-not-a-fernet-token")
    d = outbox.test_event(Contact.objects.get(pk=c.pk), by="officer")
    assert delivery.deliver_one(d.pk) == "failed"
    d.refresh_from_db()
    assert d.status == "failed" and "cannot be decrypted" in d.last_error
    assert d.pk not in delivery.due()


def test_a_deleted_contacts_pending_delivery_is_dropped_and_audited(db, receiver):
    receiver.set("ok", clear=True)
    c = hook(receiver)
    fleet_snapshot(T0)
    d = Delivery.objects.get(contact=c)
    c.delete()
    assert delivery.deliver_one(d.pk) == "failed"
    d.refresh_from_db()
    assert d.status == "failed" and "contact was deleted" in d.last_error
    assert receiver.received() == []  # nothing was sent to the address it had
    assert AuditEvent.objects.filter(action="notify_dropped", scope__delivery=d.pk).exists()


@pytest.mark.django_db(transaction=True)
def test_two_workers_racing_for_one_delivery_send_it_once(receiver):
    receiver.set("slow", delay=0.5, clear=True)
    hook(receiver)
    fleet_snapshot(T0)
    d = Delivery.objects.get()
    outcomes = []

    def run():
        outcomes.append(delivery.deliver_one(d.pk))
        connection.close()

    threads = [threading.Thread(target=run) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sorted(outcomes).count("sent") >= 1 and len(receiver.received()) == 1
    assert set(outcomes) <= {"sent", "busy"}
    receiver.set("ok")


def test_the_admin_keeps_webhook_secrets_encrypted_and_refuses_bad_urls(admin_client):
    form = {"name": "chat", "channel": "webhook", "email": "", "webhook_format": "json"}
    form |= {"namespace": "team-*", "enabled": "on", "secret": "s" * 20}
    r = admin_client.post("/admin/compliance/contact/add/", form | {"url": "file:///etc/passwd"})
    assert r.status_code == 200 and b"http:// or https://" in r.content
    r = admin_client.post("/admin/compliance/contact/add/", form | {"url": "https://localhost/h"})
    assert r.status_code == 302
    c = Contact.objects.get()
    assert c.secret == "s" * 20 and b"s" * 20 not in bytes(c.secret_encrypted)


def test_a_new_webhook_needs_its_own_secret_and_a_shared_one_is_flagged(admin_client):
    form = {"name": "chat", "channel": "webhook", "email": "", "webhook_format": "json"}
    form |= {"namespace": "*", "enabled": "on", "url": "https://chat.example/h"}
    r = admin_client.post("/admin/compliance/contact/add/", form)
    assert r.status_code == 200 and b"a webhook needs its own secret" in r.content
    assert not Contact.objects.exists()
    # One made before secrets were required signs with WELKIN_WEBHOOK_SECRET: flagged.
    old = Contact.objects.create(name="old", channel="webhook", url="https://localhost/o")
    page = admin_client.get("/settings/")
    assert b"shared secret" in page.content
    # Changed, it needs its own; so does an e-mail contact turned into a webhook, and one
    # whose secret is cleared.
    change = form | {"name": "old", "url": "https://localhost/o2"}
    r = admin_client.post(f"/admin/compliance/contact/{old.pk}/change/", change)
    assert b"a webhook needs its own secret" in r.content
    mail = Contact.objects.create(name="mail", channel="email", email="a@example.com")
    r = admin_client.post(
        f"/admin/compliance/contact/{mail.pk}/change/",
        form | {"name": "mail", "url": "https://localhost/m"},
    )
    assert b"a webhook needs its own secret" in r.content
    own = Contact(name="own", channel="webhook", url="https://localhost/w")
    own.set_secret("s" * 20)
    own.save()
    r = admin_client.post(
        f"/admin/compliance/contact/{own.pk}/change/",
        form | {"name": "own", "url": "https://localhost/w", "clear_secret": "on"},
    )
    assert b"a webhook needs its own secret" in r.content


def test_the_settings_page_needs_few_queries(db, client, django_assert_max_num_queries):
    from compliance.models.identity import GroupMapping

    for i in range(5):
        GroupMapping.objects.create(claim="groups", value=f"g{i}", role="auditor")
        Contact.objects.create(name=f"c{i}", channel="email", email=f"c{i}@example.com")
    event = OutboxEvent.objects.create(kind="test")
    for i in range(60):
        Delivery.objects.create(
            event=event,
            destination=f"contact:{i}",
            channel="email",
            address="x@example.com",
            status="failed",
            last_error="attempt 8: boom",
        )
    client.force_login(builders.make_user("officer"))
    with django_assert_max_num_queries(10):
        r = client.get("/settings/")
    assert r.status_code == 200 and r.content.count(b"attempt 8: boom") == 50
    assert b"?before=" in r.content
