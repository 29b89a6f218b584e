"""A database writer without the signing key rewrites the audit log: deletes an event,
deletes the signed heads from there on (and their audit_head events), renumbers and
rehashes what follows, moves those events' times into the last 47 hours. Each variant of
that forgery is caught, naming the first broken link (issue 27)."""

import datetime as dt

import pytest
from django.utils import timezone

from compliance.audit import heads
from compliance.audit import log as audit
from compliance.models import AuditEvent, AuditHead, Export

pytestmark = pytest.mark.django_db
NOW = timezone.now().replace(microsecond=0)


@pytest.fixture
def week(monkeypatch):
    """Six days of a log: two events a day and the daily signed head."""
    at = AuditEvent._meta.get_field("at")  # its default, the clock (Django caches it)
    for day in range(6, 0, -1):
        t = NOW - dt.timedelta(days=day)
        monkeypatch.setattr(timezone, "now", lambda t=t: t)
        monkeypatch.setattr(at, "_get_default", lambda t=t: t)
        for i in range(2):
            audit.record(None, AuditEvent.Action.API, f"day {day} event {i}")
        heads.sign_head()
    monkeypatch.setattr(timezone, "now", lambda: NOW)
    monkeypatch.setattr(at, "_get_default", lambda: NOW)
    assert audit.verify_chain().ok, audit.verify_chain().message


def rewrite(delete_seq=None, heads_from=None, move_into_hours=None, shift=0):
    """The forger's tools: delete one event and renumber the rest, delete heads signed
    from a time on with their audit_head events, move later events' times, rehash all."""
    if heads_from is not None:
        gone = list(AuditHead.objects.filter(at__gte=heads_from).values_list("seq", "hash"))
        AuditHead.objects.filter(at__gte=heads_from).delete()
        for seq, hash_ in gone:
            AuditEvent.objects.filter(
                action=AuditEvent.Action.AUDIT_HEAD, scope__seq=seq, content_hash=hash_
            ).delete()
    if delete_seq is not None:
        AuditEvent.objects.filter(seq=delete_seq).delete()
    events = list(AuditEvent.objects.order_by("seq"))
    AuditEvent.objects.all().delete()
    prev = audit.GENESIS
    cut = heads_from
    for i, e in enumerate(events[shift:], 1):
        e.pk, e.seq, e.prev_hash = None, i, prev
        if move_into_hours is not None and cut is not None and e.at >= cut:
            e.at = NOW - dt.timedelta(hours=move_into_hours) + dt.timedelta(seconds=i)
        e.hash = prev = audit.chain_hash(e)
        e.save(force_insert=True)


def test_the_forgery_is_caught_by_the_gap_since_the_last_head(week):
    cut = NOW - dt.timedelta(days=3, hours=1)
    seq = AuditEvent.objects.filter(at__gte=cut).order_by("seq").first().seq
    rewrite(delete_seq=seq, heads_from=cut, move_into_hours=47)
    result = audit.verify_chain()
    assert not result.ok
    assert "the last signed head is from" in result.message, result.message
    assert "newer heads were deleted" in result.message


def test_the_forgery_without_moving_times_is_caught(week):
    cut = NOW - dt.timedelta(days=3, hours=1)
    seq = AuditEvent.objects.filter(at__gte=cut).order_by("seq").first().seq
    rewrite(delete_seq=seq, heads_from=cut)
    result = audit.verify_chain()
    assert not result.ok and "signed head" in result.message, result.message


def test_a_head_deleted_in_the_middle_breaks_the_heads_chain(week):
    middle = AuditHead.objects.order_by("at")[2]
    AuditHead.objects.filter(pk=middle.pk).delete()
    result = audit.verify_chain()
    assert not result.ok and "signed heads were deleted" in result.message, result.message


def test_times_that_go_backwards_are_refused(week):
    e = AuditEvent.objects.order_by("-seq")[3]
    e.at = e.at - dt.timedelta(days=10)
    e.hash = audit.chain_hash(e)  # only this link: the next ones are rehashed below
    e.save()
    rewrite()
    result = audit.verify_chain()
    assert not result.ok and "is dated before event" in result.message, result.message


def test_an_emptied_log_is_refused_when_an_export_predates_it(week, persona):
    Export.objects.create(
        user=persona("auditor"), format="csv", scope={}, at=NOW - dt.timedelta(days=2)
    )
    Export.objects.update(created_at=NOW - dt.timedelta(days=2))
    AuditHead.objects.all().delete()
    AuditEvent.objects.all().delete()
    result = audit.verify_chain()
    assert not result.ok
    assert "the log is empty, yet an export was asked for" in result.message, result.message


def test_a_shortened_log_renumbered_from_one_is_refused(week):
    """The first days cut off, the rest renumbered and rehashed from event 1: the heads
    that were signed before the new beginning show it (the forger kept them, or deleted
    them: then their gap shows)."""
    rewrite(shift=6)
    result = audit.verify_chain()
    assert not result.ok
    assert "the log begins at" in result.message or "signed head" in result.message, result.message


def test_the_demo_fleets_log_verifies(db):
    """The first look (`make run`) must not greet anyone with a broken chain: the demo's
    seeded history (an exception that ran its course weeks ago) is not a shortened log."""
    from compliance import demo
    from tests.builders import PASSWORD

    demo.load(PASSWORD, days=7)
    result = audit.verify_chain()
    assert result.ok, result.message


def test_a_missed_days_head_is_reported_not_a_failure_for_ever(db, monkeypatch):
    """One sign-audit-head run missed (a deploy, a backed-up queue) leaves two chained
    heads over 48 h apart with events between: reported, and the chain still verifies."""
    at = AuditEvent._meta.get_field("at")
    for day in range(6, 0, -1):
        t = NOW - dt.timedelta(days=day, minutes=5 if day == 4 else 0)
        monkeypatch.setattr(timezone, "now", lambda t=t: t)
        monkeypatch.setattr(at, "_get_default", lambda t=t: t)
        audit.record(None, AuditEvent.Action.API, f"day {day}")
        if day != 3:  # that day's run did not happen: 48 h and 5 minutes between heads
            heads.sign_head()
    monkeypatch.setattr(timezone, "now", lambda: NOW)
    monkeypatch.setattr(at, "_get_default", lambda: NOW)
    result = audit.verify_chain()
    assert result.ok, result.message
    assert "no head was signed from" in result.message and "did not run" in result.message


def test_deleting_the_newest_events_after_the_last_head_is_caught(week, persona):
    """No rehash is needed to cut the log's end: a login after its last event (the week's
    last event is a day old) shows the newest events were deleted."""
    user = persona("auditor")
    user.last_login = NOW - dt.timedelta(hours=5)
    user.save()
    result = audit.verify_chain()
    assert not result.ok and "its newest events were deleted" in result.message, result.message


def test_a_manifest_folder_with_oddities_fails_cleanly(tmp_path, week):
    from io import StringIO

    from django.core.management import call_command

    (tmp_path / "odd.manifest.json").mkdir()  # a folder with a manifest's name
    (tmp_path / "deep.manifest.json").write_bytes(b'{"a":' * 1000 + b"1" + b"}" * 1000)
    out = StringIO()
    call_command("verify_audit_log", "--manifests", str(tmp_path), stdout=out)
    assert "OK" in out.getvalue() and "2 files in the folder are not" in out.getvalue()
