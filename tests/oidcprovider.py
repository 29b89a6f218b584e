"""A small OpenID Connect provider for the single sign-on tests, run in its own process
(`python -m tests.oidcprovider CONFIG.json`; it prints `listening on PORT`).

Discovery, JWKS, an authorization endpoint with a password form (POST it), a token
endpoint checking the client secret, the code, the redirect URI and PKCE (S256), and an
end-session endpoint. ID tokens are RS256 (joserfc). POST /control changes a user's
groups or makes the next tokens misbehave: signed by another key, a wrong nonce, a wrong
audience, already expired, or no ID token at all.
"""

from __future__ import annotations

import base64
import hashlib
import json
import secrets
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qs, urlencode, urlsplit

from joserfc import jwt
from joserfc.jwk import RSAKey

KEY = RSAKey.generate_key(2048, parameters={"kid": "main"}, private=True)
# Another key with the same kid: a token it signs claims to be the provider's.
FORGER = RSAKey.generate_key(2048, parameters={"kid": "main"}, private=True)


class State:
    def __init__(self, config: dict):
        self.client_id = config["client_id"]
        self.client_secret = config["client_secret"]
        self.users = config["users"]
        self.mode = ""
        self.codes: dict[str, dict] = {}
        self.lock = threading.Lock()
        self.issuer = ""


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


class Handler(BaseHTTPRequestHandler):
    state: State

    def log_message(self, *args):  # quiet
        pass

    def _send(self, status: int, body: dict | str, headers: dict | None = None):
        data = (json.dumps(body) if isinstance(body, dict) else body).encode()
        self.send_response(status)
        ctype = "application/json" if isinstance(body, dict) else "text/html"
        self.send_header("Content-Type", ctype)
        self.send_header("Content-Length", str(len(data)))
        for k, v in (headers or {}).items():
            self.send_header(k, v)
        self.end_headers()
        self.wfile.write(data)

    def _form(self) -> dict[str, str]:
        n = int(self.headers.get("Content-Length") or 0)
        raw = self.rfile.read(n).decode()
        if self.headers.get("Content-Type", "").startswith("application/json"):
            return json.loads(raw or "{}")
        return {k: v[-1] for k, v in parse_qs(raw).items()}

    def do_GET(self):
        url = urlsplit(self.path)
        q = {k: v[-1] for k, v in parse_qs(url.query).items()}
        s = self.state
        if url.path == "/.well-known/openid-configuration":
            return self._send(
                200,
                {
                    "issuer": s.issuer,
                    "authorization_endpoint": s.issuer + "/authorize",
                    "token_endpoint": s.issuer + "/token",
                    "jwks_uri": s.issuer + "/jwks",
                    "end_session_endpoint": s.issuer + "/logout",
                    "response_types_supported": ["code"],
                    "subject_types_supported": ["public"],
                    "id_token_signing_alg_values_supported": ["RS256"],
                    "code_challenge_methods_supported": ["S256"],
                    "token_endpoint_auth_methods_supported": ["client_secret_basic"],
                },
            )
        if url.path == "/jwks":
            return self._send(200, {"keys": [KEY.as_dict(private=False)]})
        if url.path == "/authorize":
            return self._send(200, "<form method=post><input name=username><input name=password>")
        if url.path == "/logout":
            target = q.get("post_logout_redirect_uri", s.issuer)
            return self._send(302, "", {"Location": target})
        return self._send(404, {"error": "not_found"})

    def do_POST(self):
        url = urlsplit(self.path)
        q = {k: v[-1] for k, v in parse_qs(url.query).items()}
        s = self.state
        form = self._form()
        if url.path == "/control":
            with s.lock:
                if "mode" in form:
                    s.mode = form["mode"]
                if "user" in form:
                    s.users[form["user"]].update(form.get("set", {}))
            return self._send(200, {"ok": True})
        if url.path == "/authorize":
            user = s.users.get(form.get("username", ""))
            if user is None or user["password"] != form.get("password"):
                return self._send(401, "<p>wrong password</p>")
            if q.get("client_id") != s.client_id or q.get("code_challenge_method") != "S256":
                return self._send(400, {"error": "invalid_request"})
            code = secrets.token_urlsafe(16)
            with s.lock:
                s.codes[code] = {
                    "user": form["username"],
                    "redirect_uri": q["redirect_uri"],
                    "nonce": q.get("nonce", ""),
                    "challenge": q["code_challenge"],
                }
            target = q["redirect_uri"] + "?" + urlencode({"code": code, "state": q["state"]})
            return self._send(302, "", {"Location": target})
        if url.path == "/token":
            return self._token(form)
        return self._send(404, {"error": "not_found"})

    def _token(self, form: dict):
        s = self.state
        auth = self.headers.get("Authorization", "")
        expected = "Basic " + base64.b64encode(f"{s.client_id}:{s.client_secret}".encode()).decode()
        if auth != expected:
            return self._send(401, {"error": "invalid_client"})
        with s.lock:
            grant = s.codes.pop(form.get("code", ""), None)
            mode = s.mode
        verifier = form.get("code_verifier", "")
        if (
            grant is None
            or form.get("grant_type") != "authorization_code"
            or form.get("redirect_uri") != grant["redirect_uri"]
            or _b64(hashlib.sha256(verifier.encode()).digest()) != grant["challenge"]
        ):
            return self._send(400, {"error": "invalid_grant"})
        user = s.users[grant["user"]]
        now = int(time.time())
        claims = {
            "iss": s.issuer,
            "sub": user.get("sub", grant["user"]),
            "aud": s.client_id,
            "iat": now,
            "exp": now + 300,
            "nonce": grant["nonce"],
            "preferred_username": user.get("preferred_username", grant["user"]),
            "email": user.get("email", ""),
            "email_verified": user.get("email_verified", True),
            "groups": user.get("groups", []),
        }
        key = KEY
        if mode == "other_key":
            key = FORGER
        elif mode == "wrong_nonce":
            claims["nonce"] = "not-the-nonce"
        elif mode == "wrong_audience":
            claims["aud"] = "another-client"
        elif mode == "expired":
            claims["iat"], claims["exp"] = now - 7200, now - 3600
        access = secrets.token_urlsafe(16)
        body = {"access_token": access, "token_type": "Bearer", "expires_in": 300}
        if mode != "no_id_token":
            body["id_token"] = jwt.encode({"alg": "RS256", "kid": key.kid}, claims, key)
        return self._send(200, body)


def main() -> None:
    config = json.loads(open(sys.argv[1]).read())
    state = State(config)
    handler = type("H", (Handler,), {"state": state})
    server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    state.issuer = f"http://127.0.0.1:{server.server_port}"
    print(f"listening on {server.server_port}", flush=True)
    server.serve_forever()


if __name__ == "__main__":
    main()
