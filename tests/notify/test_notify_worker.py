"""Delivery through real Celery workers: a worker killed while a webhook is being sent
leaves a claimed delivery that another worker sends once its lease has expired, with the
same idempotency key; tasks delivered again send nothing."""

import signal
import time

import pytest

from compliance import tasks
from compliance.models.notify import Delivery
from compliance.notify import outbox
from tests.builders import T0, Receiver, fleet_snapshot, hook
from tests.processes import Proc, start_worker, wait_for
from welkin_dash.celery import app

pytestmark = pytest.mark.django_db(transaction=True)
TIMEOUT = 1  # the workers' WELKIN_NOTIFY_TIMEOUT: a lease of 3 x 1 + 5 = 8 s


@pytest.fixture
def receiver():
    r = Receiver()
    yield r
    r.stop()


def notify_worker() -> Proc:
    return start_worker(WELKIN_NOTIFY_TIMEOUT=str(TIMEOUT))


def test_a_worker_killed_mid_delivery_leaves_it_to_the_next_once(receiver, settings):
    assert not app.conf.task_always_eager
    app.control.purge()
    receiver.set("slow", delay=0.9, clear=True)
    hook(receiver)
    first = notify_worker()
    try:
        fleet_snapshot(T0)  # its commit queues deliver_due for the worker
        wait_for(receiver.received, 30, every=0.02)
        first.kill(signal.SIGKILL)  # while the receiver holds the request
    finally:
        first.kill()
    d = Delivery.objects.get()
    assert (d.status, d.attempts) == ("sending", 1)
    receiver.set("ok")
    second = notify_worker()
    try:
        tasks.deliver_due.delay()
        time.sleep(1)
        d.refresh_from_db()
        assert d.status == "sending"  # the lease holds: nobody sends it meanwhile

        def sent():
            tasks.deliver_due.delay()  # as beat does every minute
            d.refresh_from_db()
            return d.status == "sent"

        wait_for(sent, 30, every=1)
        assert d.attempts == 2
        got = receiver.received()
        assert [r["delivery"] for r in got] == [d.idempotency_key] * 2
        assert [r["new"] for r in got] == [True, False]  # the receiver drops the repeat
        # The same task delivered again sends nothing.
        marker = outbox.test_event(hook(receiver, name="marker"), by="test")
        tasks.deliver.delay(d.pk)
        tasks.deliver.delay(d.pk)
        tasks.deliver.delay(marker.pk)
        wait_for(lambda: Delivery.objects.get(pk=marker.pk).status == "sent", 30)
        assert len([r for r in receiver.received() if r["path"] == "/hook"]) == 2
    finally:
        second.kill()
        app.control.purge()
