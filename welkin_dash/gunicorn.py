"""gunicorn settings for the web process: `gunicorn -c python:welkin_dash.gunicorn
welkin_dash.wsgi` (the image's command). Each is overridable by its environment variable.

Metrics: the workers keep prometheus_client's multiprocess files in
PROMETHEUS_MULTIPROC_DIR (an emptyDir in Kubernetes); the master empties it before the
first worker starts, and a dead worker's live gauges are dropped, so a scrape answered
by any worker sums them all (compliance/ops/metrics.py).
"""

import os
import tempfile
from pathlib import Path

bind = os.environ.get("GUNICORN_BIND", "0.0.0.0:8000")
workers = int(os.environ.get("WEB_CONCURRENCY", "2"))
# A request that takes longer is killed (and its worker replaced): the page budget is
# 150 ms, an export of a million rows about a minute.
timeout = int(os.environ.get("GUNICORN_TIMEOUT", "120"))
graceful_timeout = int(os.environ.get("GUNICORN_GRACEFUL_TIMEOUT", "30"))
keepalive = 5
# The heartbeat files: /tmp is an emptyDir (the root filesystem is read-only).
worker_tmp_dir = os.environ.get("GUNICORN_WORKER_TMP_DIR", tempfile.gettempdir())
accesslog = "-"
errorlog = "-"
# Request lines stay bounded (the defaults), and the proxy's forwarded scheme is trusted
# only through Django's SECURE_PROXY_SSL_HEADER, never through gunicorn.
forwarded_allow_ips = ""

if not os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
    os.environ["PROMETHEUS_MULTIPROC_DIR"] = tempfile.mkdtemp(prefix="welkin-metrics-")


def on_starting(server):
    directory = Path(os.environ["PROMETHEUS_MULTIPROC_DIR"])
    directory.mkdir(parents=True, exist_ok=True)
    for f in directory.glob("*.db"):  # values of a previous run
        f.unlink()


def child_exit(server, worker):
    from prometheus_client import multiprocess

    multiprocess.mark_process_dead(worker.pid)
