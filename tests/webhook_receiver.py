"""A webhook receiver for the notification tests, in its own process
(`python -m tests.webhook_receiver SECRET`; it prints `listening on PORT`).

It checks each request as the receiver in docs/operating.md does: the HMAC-SHA256 signature
(X-Welkin-Signature over the timestamp, delivery id, event and body, a line break apart)
and the timestamp's freshness (5 minutes), and keeps every request it got, with its
headers (a test replays one). POST /control sets how it
answers: ok, 500, 410, or slow (sleeps `delay` seconds before answering 200). GET /received
lists what came: the delivery id, the event, whether the signature was right, the body,
and whether the delivery id was new (a receiver drops repeats by that id).
"""

from __future__ import annotations

import hashlib
import hmac
import json
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer


class Handler(BaseHTTPRequestHandler):
    secret = b""
    mode = {"answer": "ok", "delay": 0.0}
    received: list[dict] = []
    seen: set[str] = set()
    lock = threading.Lock()

    def log_message(self, *args):
        pass

    def _reply(self, status: int, body: object = None):
        data = json.dumps(body if body is not None else {}).encode()
        try:
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)
        except OSError:
            pass  # the sender gave up waiting

    def do_GET(self):
        if self.path == "/received":
            with self.lock:
                return self._reply(200, list(self.received))
        return self._reply(404)

    def do_POST(self):
        body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
        if self.path == "/control":
            with self.lock:
                self.mode.update(json.loads(body))
                if self.mode.pop("clear", False):
                    self.received.clear()
                    self.seen.clear()
            return self._reply(200)
        timestamp = self.headers.get("X-Welkin-Timestamp", "")
        delivery = self.headers.get("X-Welkin-Delivery", "")
        event = self.headers.get("X-Welkin-Event", "")
        signed = f"{timestamp}\n{delivery}\n{event}\n".encode() + body
        expected = "sha256=" + hmac.new(self.secret, signed, hashlib.sha256).hexdigest()
        fresh = timestamp.isdigit() and abs(time.time() - int(timestamp)) <= 300
        with self.lock:
            answer, delay = self.mode["answer"], float(self.mode.get("delay", 0))
            self.received.append(
                {
                    "path": self.path,
                    "delivery": delivery,
                    "event": event,
                    "signed": hmac.compare_digest(
                        self.headers.get("X-Welkin-Signature", ""), expected
                    ),
                    "fresh": fresh,
                    "headers": {
                        k: v for k, v in self.headers.items() if k.startswith("X-") or k == "Host"
                    },
                    "new": delivery not in self.seen,
                    "answer": answer,
                    "body": json.loads(body),
                    "raw": body.decode(),
                }
            )
            if answer != "500":
                self.seen.add(delivery)
        if answer == "500":
            return self._reply(500)
        if answer == "410":
            return self._reply(410)
        if answer == "slow":
            time.sleep(delay)
        return self._reply(200)


def main() -> None:
    Handler.secret = sys.argv[1].encode()
    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    print(f"listening on {server.server_port}", flush=True)
    server.serve_forever()


if __name__ == "__main__":
    main()
