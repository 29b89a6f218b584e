"""The Celery application: settings come from Django's, prefixed CELERY_.

Liveness without inbound connections: with WELKIN_HEARTBEAT_FILE set, a worker touches
the file from its event loop every 15 s (WELKIN_HEARTBEAT_SECONDS) while connected to the
broker, and beat touches it on every tick (run beat with `--scheduler
welkin_dash.celery:HeartbeatScheduler`). A probe checks the file's age (`python
welkin_dash/alive.py FILE SECONDS`); a hung loop stops touching it and the pod is
restarted.
"""

import os
from pathlib import Path

from celery import Celery, bootsteps
from celery.beat import PersistentScheduler

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "welkin_dash.settings")

app = Celery("welkin_dash")
app.config_from_object("django.conf:settings", namespace="CELERY")
app.autodiscover_tasks()

HEARTBEAT_SECONDS = float(os.environ.get("WELKIN_HEARTBEAT_SECONDS", "15"))


def touch_heartbeat() -> None:
    path = os.environ.get("WELKIN_HEARTBEAT_FILE")
    if path:
        Path(path).touch()


class WorkerHeartbeat(bootsteps.StartStopStep):
    """Touches the heartbeat file from the consumer's timer (so only while the worker's
    loop runs and it is connected to the broker)."""

    requires = {"celery.worker.consumer.heart:Heart"}

    def __init__(self, parent, **kwargs):
        super().__init__(parent, **kwargs)
        self.tref = None

    def start(self, parent):
        touch_heartbeat()
        self.tref = parent.timer.call_repeatedly(HEARTBEAT_SECONDS, touch_heartbeat)

    def stop(self, parent):
        if self.tref is not None:
            self.tref.cancel()
            self.tref = None


app.steps["consumer"].add(WorkerHeartbeat)


class HeartbeatScheduler(PersistentScheduler):
    def tick(self, *args, **kwargs):
        touch_heartbeat()
        return super().tick(*args, **kwargs)
