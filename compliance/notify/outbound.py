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


# Not public, though Python's is_global says so (3.11) or they route inward: IETF
# protocol assignments, the 6to4 relay, carrier-grade NAT (cloud metadata services, pod
# networks), IPv6 site-local.
_NOT_PUBLIC = [
    ipaddress.ip_network(n)
    for n in (
        "192.0.0.0/24",
        "192.88.99.0/24",
        "100.64.0.0/10",
        "240.0.0.0/4",
        "fec0::/10",
        "64:ff9b:1::/48",  # NAT64 for local use
        "::ffff:0:0:0/96",  # IPv4-translated
        "::/96",  # IPv4-compatible (deprecated), and :: and ::1 with them
    )
]
_NAT64 = ipaddress.ip_network("64:ff9b::/96")


def internal(ip: IPAddress) -> bool:
    """Anything but a public unicast address: loopback, link-local (the metadata service),
    private, carrier-grade NAT, unique- and site-local, multicast, reserved, unspecified;
    an IPv6 address that carries an IPv4 one (mapped, NAT64) is judged by that one, and
    6to4 and Teredo tunnels are refused."""
    if isinstance(ip, ipaddress.IPv6Address):
        if ip.ipv4_mapped is not None:
            return internal(ip.ipv4_mapped)
        if ip in _NAT64:
            return internal(ipaddress.IPv4Address(int(ip) & 0xFFFFFFFF))
        if ip.sixtofour is not None or ip.teredo is not None:
            return True
    return not ip.is_global or ip.is_multicast or any(ip in net for net in _NOT_PUBLIC)


def allowed(ip: IPAddress) -> bool:
    return not internal(ip) or any(ip in net for net in settings.WELKIN_WEBHOOK_ALLOWED_NETWORKS)


def resolve(url: str) -> tuple[str, IPAddress]:
    """The URL's host and the address to connect to, every address the host resolves to
    being allowed; Refused names the first that is not."""
    parts = urlsplit(url)
    host = parts.hostname or ""
    try:
        port = parts.port or (443 if parts.scheme == "https" else 80)
    except ValueError:  # a port out of range (URLField lets five digits through)
        raise Refused(
            f"the URL's port is not a port (0 to 65535): {parts.netloc[-60:]!r}"
        ) from None
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
    netloc = urlsplit(url).netloc.rpartition("@")[2]  # never the URL's credentials
    headers = {**kwargs.pop("headers", {}), "Host": netloc}
    with requests.Session() as session:
        # Straight to the checked address: a proxy from the environment would look the
        # name up again (DNS rebinding), so HTTP(S)_PROXY does not apply to webhooks.
        session.trust_env = False
        session.mount("http://", _Pinned(host, ip))
        session.mount("https://", _Pinned(host, ip))
        return session.post(url, headers=headers, **kwargs)
