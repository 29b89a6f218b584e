"""Reading an HTTP response body from a server that may be hostile: a byte cap and a total
deadline. Used for Kubernetes LIST pages (kube.py) and registry answers (registry.py),
whole or, for image layers, a chunk at a time (BodyReader). No Django here.

A socket timeout bounds each read, not the request: a server that sends a few bytes every
second never trips it. So the body is read with urllib3's `read1` (one socket read at a
time, returning whatever arrived; `read(n)` would block until n bytes came), the size and
the clock are checked after every read, and a watchdog shuts the socket down at the
deadline, which ends a read that is still blocked then (a chunk-size line, say, dripped one
byte at a time, is read inside one `read1`). The status line and headers are read by
urllib3 before this starts: they are bounded per socket read by the request's timeout, and
in size by http.client.
"""

from __future__ import annotations

import threading
import time
from typing import Any


class BodyError(Exception):
    """The body could not be read within the bounds; the response has been closed."""


class TooLarge(BodyError):
    def __init__(self, limit: int, size: int | None = None):
        super().__init__(f"larger than {limit} bytes")
        self.limit = limit
        self.size = size  # the announced Content-Length, when that was the reason


class DeadlineExceeded(BodyError):
    def __init__(self, received: int):
        super().__init__(f"deadline passed after {received} bytes")
        self.received = received


CHUNK = 1 << 16


def remaining(deadline: float) -> float:
    """Seconds left until a time.monotonic() deadline (never negative)."""
    return max(0.0, deadline - time.monotonic())


def read_body(response: Any, limit: int, deadline: float) -> bytes:
    """The whole body of a urllib3 response opened with preload_content=False, at most
    `limit` bytes (after content decoding), complete by `deadline` (time.monotonic()).

    Raises TooLarge or DeadlineExceeded (and closes the response, so that its connection is
    not reused mid-body); network errors are raised as urllib3/OS errors, as from read().
    The caller still releases the connection."""
    body = BodyReader(response, limit, deadline)
    buf = bytearray()
    try:
        while data := body.read1():
            buf += data
    finally:
        body.close()
    return bytes(buf)


class BodyReader:
    """A body read a chunk at a time within read_body's bounds, for one too large to hold
    (an image layer): `read1` returns what one socket read brought (b"" at the end), and
    raises TooLarge past `limit` bytes or DeadlineExceeded at `deadline`, closing the
    response then. The watchdog runs until close(), which the caller must call; the caller
    also releases the connection, or closes the response if it stops before the end."""

    def __init__(self, response: Any, limit: int, deadline: float):
        announced = response.headers.get("Content-Length")
        if announced and announced.strip().isdigit() and int(announced) > limit:
            response.close()
            raise TooLarge(limit, int(announced))
        self._response, self._limit, self._deadline = response, limit, deadline
        self.received = 0
        self._alarm = _Alarm(response, remaining(deadline))

    def read1(self, amount: int = CHUNK) -> bytes:
        try:
            if time.monotonic() >= self._deadline:
                raise DeadlineExceeded(self.received)
            try:
                data = self._response.read1(amount)
            except Exception:
                if self._alarm.fired or time.monotonic() >= self._deadline:
                    raise DeadlineExceeded(self.received) from None
                raise
            if not data and self._alarm.fired:  # an EOF caused by the watchdog
                raise DeadlineExceeded(self.received)
            self.received += len(data)
            if self.received > self._limit:
                raise TooLarge(self._limit)
            return data
        except BodyError:
            self._alarm.cancel()
            self._response.close()
            raise

    def close(self) -> None:
        """Stops the watchdog (the response stays as it is)."""
        self._alarm.cancel()


class _Alarm:
    """Shuts the response's socket down at the deadline, unless cancelled first."""

    def __init__(self, response: Any, seconds: float):
        self._response = response
        self._lock = threading.Lock()
        self._done = False
        self.fired = False
        self._timer = threading.Timer(seconds, self._fire)
        self._timer.daemon = True
        self._timer.start()

    def _fire(self) -> None:
        with self._lock:
            if self._done:
                return
            self.fired = True
            try:
                self._response.shutdown()
            except Exception:  # already closed or released: nothing is blocked on it
                pass

    def cancel(self) -> None:
        """After this returns the alarm will not fire (it may have fired already)."""
        with self._lock:
            self._done = True
        self._timer.cancel()
