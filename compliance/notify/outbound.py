"""Where a webhook may go: never to this machine, its network or the cloud's metadata
service unless an operator allows it. The host is resolved when a contact is saved and
again at every send, each of its addresses must be allowed, and the request connects to
the address that was checked (a name that resolves elsewhere a moment later, DNS
rebinding, changes nothing). Allowed: public addresses, and those in
WELKIN_WEBHOOK_ALLOWED_NETWORKS."""

from __future__ import annotations

import ipaddress
import socket
from urllib.parse import urlsplit

import requests
from django.conf import settings
from requests.adapters import HTTPAdapter

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address


class Refused(Exception):
    """A destination that may not be reached, with why (shown to the officer)."""


def internal(ip: IPAddress) -> bool:
    """Loopback, link-local (the metadata service), private, unique-local, multicast,
    reserved or unspecified: addresses of this machine or its networks."""
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        ip = ip.ipv4_mapped
    return (
        ip.is_loopback
        or ip.is_link_local
        or ip.is_private
        or ip.is_multicast
        or ip.is_reserved
        or ip.is_unspecified
    )


def allowed(ip: IPAddress) -> bool:
    return not internal(ip) or any(ip in net for net in settings.WELKIN_WEBHOOK_ALLOWED_NETWORKS)


def resolve(url: str) -> tuple[str, IPAddress]:
    """The URL's host and the address to connect to, every address the host resolves to
    being allowed; Refused names the first that is not."""
    parts = urlsplit(url)
    host = parts.hostname or ""
    port = parts.port or (443 if parts.scheme == "https" else 80)
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except (socket.gaierror, UnicodeError) as e:
        raise Refused(f"the host {host!r} does not resolve ({e})") from None
    addresses = [ipaddress.ip_address(info[4][0].split("%", 1)[0]) for info in infos]
    for ip in addresses:
        if not allowed(ip):
            raise Refused(
                f"{host} resolves to {ip}, an internal address: webhooks go to public "
                "addresses unless WELKIN_WEBHOOK_ALLOWED_NETWORKS allows it"
            )
    if not addresses:
        raise Refused(f"the host {host!r} has no address")
    return host, addresses[0]


class _Pinned(HTTPAdapter):
    """Connects to one checked address, while TLS still checks the certificate against
    the URL's host name (and the Host header names it)."""

    def __init__(self, host: str, ip: IPAddress):
        self.host, self.ip = host, ip
        super().__init__(max_retries=0)

    def build_connection_pool_key_attributes(self, request, verify, cert=None):
        host_params, pool_kwargs = super().build_connection_pool_key_attributes(
            request, verify, cert
        )
        host_params["host"] = str(self.ip)
        if host_params.get("scheme") == "https":
            pool_kwargs["server_hostname"] = self.host
            pool_kwargs["assert_hostname"] = self.host
        return host_params, pool_kwargs


def post(url: str, **kwargs) -> requests.Response:
    """requests.post to the webhook, through the checks above (Refused if it may not)."""
    host, ip = resolve(url)
    netloc = urlsplit(url).netloc
    headers = {**kwargs.pop("headers", {}), "Host": netloc}
    with requests.Session() as session:
        session.mount("http://", _Pinned(host, ip))
        session.mount("https://", _Pinned(host, ip))
        return session.post(url, headers=headers, **kwargs)
