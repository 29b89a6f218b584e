"""A reverse proxy for the tests, in its own process, as an Ingress or nginx is in front
of gunicorn: `python -m tests.reverseproxy http://UPSTREAM` prints `listening on PORT`,
forwards each request to UPSTREAM and appends the TCP peer's address to X-Forwarded-For
(keeping what the client sent there, as nginx's $proxy_add_x_forwarded_for does)."""

from __future__ import annotations

import http.client
import sys
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import urlsplit

HOP = {"connection", "keep-alive", "transfer-encoding", "upgrade", "proxy-connection"}


class Handler(BaseHTTPRequestHandler):
    upstream = ("127.0.0.1", 80)

    def log_message(self, *args):
        pass

    def _forward(self):
        body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
        headers = {k: v for k, v in self.headers.items() if k.lower() not in HOP}
        sent = headers.pop("X-Forwarded-For", "")
        headers["X-Forwarded-For"] = f"{sent}, {self.client_address[0]}".lstrip(", ")
        conn = http.client.HTTPConnection(*self.upstream, timeout=30)
        conn.request(self.command, self.path, body=body, headers=headers)
        r = conn.getresponse()
        data = r.read()
        self.send_response(r.status)
        for k, v in r.getheaders():
            if k.lower() not in HOP and k.lower() != "content-length":
                self.send_header(k, v)
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)
        conn.close()

    do_GET = do_POST = _forward


def main() -> None:
    target = urlsplit(sys.argv[1])
    Handler.upstream = (target.hostname, target.port)
    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    print(f"listening on {server.server_port}", flush=True)
    server.serve_forever()


if __name__ == "__main__":
    main()
