"""Reading settings from the environment: one helper per kind of value, each raising
ImproperlyConfigured that names the variable and says what it expected."""

import base64
import binascii
import ipaddress
import json
import os
import secrets
from pathlib import Path
from urllib.parse import parse_qs, unquote, urlsplit

from django.core.exceptions import ImproperlyConfigured

_TRUE = {"1", "true", "yes", "on"}
_FALSE = {"0", "false", "no", "off", ""}


def env_str(name: str, default: str | None = None) -> str | None:
    return os.environ.get(name, default)


def env_bool(name: str, default: bool) -> bool:
    raw = os.environ.get(name)
    if raw is None:
        return default
    value = raw.strip().lower()
    if value in _TRUE:
        return True
    if value in _FALSE:
        return False
    raise ImproperlyConfigured(f"{name}={raw!r}: expected true or false (1/0, yes/no, on/off)")


def env_int(name: str, default: int, minimum: int = 0) -> int:
    raw = os.environ.get(name)
    if raw is None:
        return default
    try:
        value = int(raw)
    except ValueError:
        raise ImproperlyConfigured(f"{name}={raw!r}: expected a whole number") from None
    if value < minimum:
        raise ImproperlyConfigured(f"{name}={raw!r}: must be at least {minimum}")
    return value


def env_list(name: str, default: list[str]) -> list[str]:
    raw = os.environ.get(name)
    if raw is None:
        return default
    return [item.strip() for item in raw.split(",") if item.strip()]


def database_from_url(url: str, name: str = "DATABASE_URL") -> dict:
    """postgres://user:password@host:port/dbname?sslmode=... -> a DATABASES entry."""
    parts = urlsplit(url)
    if parts.scheme not in ("postgres", "postgresql", "pgsql"):
        raise ImproperlyConfigured(
            f"{name}: unsupported scheme {parts.scheme!r}, expected postgres://"
        )
    dbname = unquote(parts.path.lstrip("/"))
    if not dbname:
        raise ImproperlyConfigured(f"{name}: no database name in the URL")
    try:
        port = parts.port
    except ValueError:
        raise ImproperlyConfigured(f"{name}: the port is not a number") from None
    options = {k: v[-1] for k, v in parse_qs(parts.query).items()}
    return {
        "ENGINE": "django.db.backends.postgresql",
        "NAME": dbname,
        "USER": unquote(parts.username or ""),
        "PASSWORD": unquote(parts.password or ""),
        # An empty host means the local socket.
        "HOST": unquote(parts.hostname or ""),
        "PORT": str(port or ""),
        "OPTIONS": options,
        "CONN_MAX_AGE": env_int("DATABASE_CONN_MAX_AGE", 60),
        "CONN_HEALTH_CHECKS": True,
    }


def development_keys(path: Path) -> dict[str, str]:
    """The keys of a first look (DEBUG): random, generated once into `path` (mode 0600)
    and read from there afterwards, never derived from anything in the source. Written to
    a temporary file and linked into place, so two processes starting at once agree."""
    if not path.exists():
        from cryptography.fernet import Fernet

        keys = {
            "SECRET_KEY": secrets.token_urlsafe(50),
            "WELKIN_SIGNING_KEY": base64.b64encode(os.urandom(32)).decode(),
            "WELKIN_FERNET_KEYS": Fernet.generate_key().decode(),
        }
        path.parent.mkdir(parents=True, exist_ok=True)
        part = path.with_name(f".{path.name}.{os.getpid()}.{secrets.token_hex(4)}")
        fd = os.open(part, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        try:
            with os.fdopen(fd, "w") as f:
                json.dump(keys, f, indent=2)
                f.write("\n")
            try:
                os.link(part, path)
            except FileExistsError:
                pass  # another process was first: use its keys
        finally:
            part.unlink(missing_ok=True)
    if path.stat().st_mode & 0o077:
        path.chmod(0o600)
    try:
        keys = json.loads(path.read_text())
        if not all(isinstance(keys.get(k), str) for k in DEVELOPMENT_KEY_NAMES):
            raise ValueError
    except ValueError:
        raise ImproperlyConfigured(
            f"{path}: not a development key file (delete it to generate new keys)"
        ) from None
    return keys


DEVELOPMENT_KEY_NAMES = ("SECRET_KEY", "WELKIN_SIGNING_KEY", "WELKIN_FERNET_KEYS")


def proxy_ssl_header(name: str) -> tuple[str, str] | None:
    """SECURE_PROXY_SSL_HEADER=X-Forwarded-Proto (or X-Forwarded-Proto=https): the header
    a TLS-terminating proxy sets, and its value for HTTPS. Only behind a proxy that sets
    it on every request (and strips it from clients)."""
    raw = (env_str(name, "") or "").strip()
    if not raw:
        return None
    header, _, value = raw.partition("=")
    header, value = header.strip(), value.strip() or "https"
    if not header or not all(c.isalnum() or c == "-" for c in header):
        raise ImproperlyConfigured(
            f"{name}={raw!r}: expected a header name, e.g. X-Forwarded-Proto or "
            "X-Forwarded-Proto=https"
        )
    return "HTTP_" + header.upper().replace("-", "_"), value


def env_networks(
    name: str, default: list[str]
) -> list[ipaddress.IPv4Network | ipaddress.IPv6Network]:
    nets = []
    for item in env_list(name, default):
        try:
            nets.append(ipaddress.ip_network(item, strict=False))
        except ValueError:
            raise ImproperlyConfigured(f"{name}: {item!r} is not a network (a CIDR)") from None
    return nets


def check_fernet_keys(name: str, keys: list[str]) -> None:
    """Each key must be a Fernet key: a bad one stops start-up here, not the first scan."""
    for i, key in enumerate(keys, 1):
        try:
            if len(base64.urlsafe_b64decode(key.encode("ascii"))) != 32:
                raise ValueError
        except (ValueError, binascii.Error):
            raise ImproperlyConfigured(
                f"{name}: key {i} of {len(keys)} is not a Fernet key (32 url-safe "
                "base64-encoded bytes, as Fernet.generate_key() makes)"
            ) from None


def env_url(name: str, default: str = "", loopback_http: bool = True, *, debug: bool) -> str:
    """An http(s) URL; plain http only for a first look (debug) or a loopback host."""
    raw = (env_str(name, default) or "").strip()
    if not raw:
        return ""
    parts = urlsplit(raw)
    local = (parts.hostname or "") in ("127.0.0.1", "localhost", "::1")
    if parts.scheme not in ("https", "http") or not parts.hostname:
        raise ImproperlyConfigured(f"{name}={raw!r}: expected an https:// URL")
    if parts.scheme == "http" and not (debug or (loopback_http and local)):
        raise ImproperlyConfigured(f"{name}={raw!r}: expected https:// (http only with DEBUG)")
    return raw.rstrip("/")
