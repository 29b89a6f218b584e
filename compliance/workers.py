"""The worker processes that run scans and exports: who this one is, whether another one on
this host is gone, and how a task is queued so that the worker's own limits apply. A leaf:
standard library only."""

from __future__ import annotations

import os
import socket


def worker_id() -> str:
    """This process as a running scan or export records it: `host:pid`."""
    return f"{socket.gethostname()}:{os.getpid()}"


def gone(worker: str | None) -> bool:
    """Is `worker` (`host:pid`) a process on this host that no longer exists? False for
    this process, for another host's (which cannot be told from here) and for no worker."""
    host, _, pid = (worker or "").rpartition(":")
    if host != socket.gethostname() or not pid.isdigit() or int(pid) == os.getpid():
        return False
    return process_gone(int(pid))


def process_gone(pid: int) -> bool:
    """No such process, or a zombie (killed, not yet reaped: a pool process whose parent
    died too waits for an init that may reap late)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    except PermissionError:
        return False
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            return f.read().rsplit(b")", 1)[1].split()[0] == b"Z"
    except (OSError, IndexError):
        return False


def send(task, *args, **options):
    """Queue a task with no time limits in its message, so the worker's own apply (the
    WELKIN_*_TIME_LIMIT of the process that runs it). `delay` would write in the limits
    of the web or beat process that queued it, and the worker would take those."""
    return task.apply_async(args, time_limit=None, soft_time_limit=None, **options)
