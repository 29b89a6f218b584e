"""Reading request parameters: one set of helpers, each answering 400 with a message that
names the parameter when a value is malformed (never a 500 from deep inside a query).

Every query parameter, path value and form field a view or the API reads goes through
these. `BadParameter` is a Django `BadRequest`; the middleware below renders it as a 400
page for the dashboard and the API's exception handler as a 400 JSON body.
"""

from __future__ import annotations

import datetime as dt
import ipaddress
import re
from collections.abc import Iterable, Mapping
from typing import Any

from django.conf import settings
from django.core.exceptions import BadRequest
from django.shortcuts import render
from django.utils import timezone
from django.utils.dateparse import parse_date, parse_datetime

TEXT_MAX = 200
# C0 and C1 controls (NUL included) and Unicode's line/paragraph separators.
_CONTROL_RE = re.compile(r"[\x00-\x1f\x7f-\x9f\u2028\u2029]")
# A lone UTF-16 surrogate: JSON's "\ud800" decodes to one, and no UTF-8 text (so no
# PostgreSQL column) can hold it.
_SURROGATE_RE = re.compile(r"[\ud800-\udfff]")
_DIGITS_RE = re.compile(r"[0-9]+\Z")  # ASCII only: int() would accept '²' and '١٢٣'


class BadParameter(BadRequest):
    """A malformed parameter: answered 400, naming it."""

    def __init__(self, name: str, problem: str):
        super().__init__(f"{name}: {problem}")
        self.name, self.problem = name, problem


def clean_text(value: str, name: str, max_length: int = TEXT_MAX) -> str:
    """A text value: at most max_length characters, no control characters."""
    if len(value) > max_length:
        raise BadParameter(name, f"longer than {max_length} characters")
    if _CONTROL_RE.search(value):
        raise BadParameter(name, "contains control characters")
    if _SURROGATE_RE.search(value):
        raise BadParameter(name, "contains a lone UTF-16 surrogate (not Unicode text)")
    return value


def strings(data: Mapping, fields: Iterable[str]) -> dict[str, str]:
    """A JSON body's fields as a form's: each one of `fields` (a misspelt one would
    otherwise be ignored: a "Cluster" asked for the whole fleet) and a string (a number,
    list or object is a 400 naming the field)."""
    if not isinstance(data, Mapping):
        raise BadParameter("body", "expected a JSON object")
    known = list(fields)
    out = {}
    for name, value in data.items():
        if name not in known:
            raise BadParameter(
                ascii(str(name))[1:-1][:100], f"unknown field (expected {', '.join(known)})"
            )
        if hasattr(data, "getlist") and len(data.getlist(name)) > 1:
            # A form's field given twice: the last would win ("cluster=prod-eu&cluster="
            # asked for the whole fleet), as a JSON key given twice would.
            raise BadParameter(name, "given more than once")
        if value is None:
            continue
        if not isinstance(value, str):
            raise BadParameter(name, "expected a string")
        out[name] = value
    return out


def text(params: Mapping, name: str, max_length: int = TEXT_MAX, default: str = "") -> str:
    value = params.get(name)
    return default if value is None else clean_text(value, name, max_length)


def choice(params: Mapping, name: str, choices: Iterable[str], default: str = "") -> str:
    """One of `choices`, or default when absent or empty."""
    value = text(params, name)
    if not value:
        return default
    allowed = list(choices)
    if value not in allowed:
        raise BadParameter(name, f"expected one of {', '.join(allowed)}")
    return value


def integer(
    params: Mapping,
    name: str,
    default: int | None = None,
    minimum: int = 0,
    maximum: int = 2**63 - 1,
) -> int | None:
    value = text(params, name, 20)
    if not value:
        return default
    if not _DIGITS_RE.match(value):
        raise BadParameter(name, "expected a whole number (digits 0-9)")
    number = int(value)
    if not minimum <= number <= maximum:
        raise BadParameter(name, f"expected a number from {minimum} to {maximum}")
    return number


def boolean(params: Mapping, name: str, default: bool) -> bool:
    value = text(params, name, 5).lower()
    if not value:
        return default
    if value in ("true", "1", "yes"):
        return True
    if value in ("false", "0", "no"):
        return False
    raise BadParameter(name, "expected true or false")


def date(params: Mapping, name: str) -> dt.date | None:
    value = text(params, name, 10)
    if not value:
        return None
    try:
        parsed = parse_date(value)
    except ValueError:  # well formed but impossible: 2026-02-30
        parsed = None
    if parsed is None:
        raise BadParameter(name, f"{value!r} is not a date (YYYY-MM-DD)")
    return parsed


def moment(params: Mapping, name: str, naive_as_utc: bool = True) -> dt.datetime | None:
    """An ISO 8601 time; without a zone it is UTC (the forms' times are UTC)."""
    value = text(params, name, 40)
    return parse_moment(value, name, naive_as_utc) if value else None


def option_moment(value: str | None, name: str = "--at") -> dt.datetime | None:
    """A command's time option (ISO 8601 with a zone), or CommandError naming it."""
    from django.core.management import CommandError

    try:
        return parse_moment(value, name, naive_as_utc=False) if value else None
    except BadParameter as e:
        raise CommandError(f"{e} (e.g. 2026-11-28T10:00:00Z)") from None


def parse_moment(value: str, name: str, naive_as_utc: bool = True) -> dt.datetime:
    """An ISO 8601 time from a parameter or a command-line option, in UTC."""
    try:
        # ASCII only: Django's pattern reads any Unicode digit ('２０２６' as 2026).
        cleaned = clean_text(value, name, 40)
        parsed = parse_datetime(cleaned) if cleaned.isascii() else None
    except ValueError:
        parsed = None
    if parsed is None:
        raise BadParameter(
            name, f"expected an ISO 8601 time (YYYY-MM-DDTHH:MM[:SS][+zone]), got {value!r}"
        )
    if timezone.is_naive(parsed):
        if not naive_as_utc:
            raise BadParameter(name, f"{value!r} needs a time zone (e.g. Z or +01:00)")
        parsed = parsed.replace(tzinfo=dt.UTC)
    try:  # 0001-01-01T00:00+14:00 is before the first representable UTC time
        return parsed.astimezone(dt.UTC)
    except (OverflowError, ValueError):
        raise BadParameter(name, f"{value!r} is out of range") from None


def content_length(request) -> int:
    """The request body's declared size (Django reads no more than that)."""
    try:
        return max(int(request.META.get("CONTENT_LENGTH") or 0), 0)
    except ValueError:
        return 0


class BadParameterMiddleware:
    """Renders BadParameter as a 400 page naming the parameter, and refuses a request
    whose path or query string holds control characters (NUL included) before any view
    or the admin can pass them to the database."""

    def __init__(self, get_response):
        self.get_response = get_response

    def __call__(self, request):
        try:
            clean_text(request.path, "path", 10_000)
            # What authentication reads: a token or session key with a NUL would reach
            # the database (PostgreSQL refuses NUL in a string: a 500).
            clean_text(request.META.get("HTTP_AUTHORIZATION", ""), "Authorization", 1000)
            for name, value in request.COOKIES.items():
                clean_text(value, f"cookie {name[:40]}", 4096)
            for key, values in request.GET.lists():
                clean_text(key, "parameter name", TEXT_MAX)
                for value in values:
                    clean_text(value, key, 10_000)
        except BadParameter as e:
            return bad_request(request, e)
        return self.get_response(request)

    def process_exception(self, request, exception):
        if isinstance(exception, BadParameter):
            return bad_request(request, exception)
        return None


def bad_request(request, error: BadParameter):
    return render(request, "400.html", {"error": str(error)}, status=400)


class DuplicateKey(Exception):
    """A JSON object that gives a key twice (which value would count?)."""


def unique_keys(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    """json.loads' object_pairs_hook that refuses a key given twice (DuplicateKey)."""
    seen: dict[str, Any] = {}
    for key, value in pairs:
        if key in seen:
            raise DuplicateKey(repr(key))
        seen[key] = value
    return seen


def client_address(request) -> str | None:
    """Where a request comes from, for throttling (AXES_CLIENT_IP_CALLABLE) and the audit
    log alike: the TCP peer, or, when the peer is a trusted proxy (WELKIN_TRUSTED_PROXIES,
    none by default), the right-most X-Forwarded-For hop that is not one -- the hops to its
    left are whatever the client wrote."""
    peer = (request.META.get("REMOTE_ADDR") or "").strip() or None
    nets = settings.WELKIN_TRUSTED_PROXIES
    if peer is None or not nets:
        return peer

    def trusted(address: str) -> bool:
        try:
            ip = ipaddress.ip_address(address)
        except ValueError:
            return False
        return any(ip in net for net in nets)

    if not trusted(peer):
        return peer
    hops = [h.strip() for h in request.META.get("HTTP_X_FORWARDED_FOR", "").split(",")]
    # From the right: the proxies' own hops are last, what the client wrote comes first
    # (so a client's long list cannot push the real address out of reach).
    for hop in reversed([h for h in hops if h][-64:]):
        if trusted(hop):
            continue
        address = _address(hop)
        return address if address is not None else peer  # nothing left of it is believable
    return peer


def _address(hop: str) -> str | None:
    """An X-Forwarded-For hop as an address ("1.2.3.4:5678" and "[::1]:80" without the
    port); None for anything else, a scoped IPv6 address included (no database stores it)."""
    host = hop
    if hop.startswith("[") and "]" in hop:
        host = hop[1 : hop.index("]")]
    elif hop.count(":") == 1:
        host = hop.split(":", 1)[0]
    try:
        ip = ipaddress.ip_address(host)
    except ValueError:
        return None
    if getattr(ip, "scope_id", None):
        return None
    return str(ip)
