"""Webhooks cannot probe the network: an internal address is refused when a contact is
saved and when a message is sent (unless WELKIN_WEBHOOK_ALLOWED_NETWORKS allows it), and
the request goes to the address that was checked."""

import ipaddress
import socket
from urllib.parse import urlsplit

import pytest

from compliance.models.notify import Contact, Delivery
from compliance.notify import delivery, outbound, outbox
from tests.builders import Receiver, hook

pytestmark = pytest.mark.django_db


@pytest.fixture
def receiver():
    r = Receiver()
    yield r
    r.stop()


@pytest.fixture
def no_allowed_networks(settings):
    settings.WELKIN_WEBHOOK_ALLOWED_NETWORKS = []  # the default


@pytest.mark.parametrize(
    "url",
    [
        "http://127.0.0.1:8000/h",
        "http://localhost:8000/h",
        "http://169.254.169.254/latest/meta-data/",  # a cloud's metadata service
        "http://10.0.0.7/h",
        "http://[::1]:8000/h",
        "http://[::ffff:127.0.0.1]/h",
        "http://[fd00::1]/h",
        "http://0.0.0.0/h",
        "http://100.100.100.200/latest/meta-data/",  # carrier-grade NAT: another metadata
        "http://192.0.0.9/h",
        "http://[fec0::1]/h",
        "http://[2002:a9fe:a9fe::]/h",  # 6to4 around 169.254.169.254
        "http://[64:ff9b::7f00:1]/h",  # NAT64 of 127.0.0.1
        "http://224.0.0.1/h",
        "http://2130706433/h",  # 127.0.0.1 as one number
        "http://[64:ff9b:1::a9fe:a9fe]/h",  # local-use NAT64
        "http://[::ffff:0:7f00:1]/h",  # IPv4-translated
        "http://[::7f00:1]/h",  # IPv4-compatible
    ],
)
def test_the_admin_refuses_a_webhook_to_an_internal_address(admin_client, no_allowed_networks, url):
    form = {"name": "probe", "channel": "webhook", "email": "", "webhook_format": "json"}
    form |= {"namespace": "*", "enabled": "on", "secret": "s" * 20, "url": url}
    r = admin_client.post("/admin/compliance/contact/add/", form)
    assert r.status_code == 200 and b"an internal address" in r.content, r.content[-800:]
    assert not Contact.objects.exists()


def test_a_port_out_of_range_is_named_not_a_server_error(admin_client, no_allowed_networks):
    form = {"name": "probe", "channel": "webhook", "email": "", "webhook_format": "json"}
    form |= {"namespace": "*", "enabled": "on", "secret": "s" * 20}
    r = admin_client.post(
        "/admin/compliance/contact/add/", form | {"url": "https://example.com:99999/h"}
    )
    assert r.status_code == 200 and b"is not a port" in r.content, r.content[-800:]
    assert not Contact.objects.exists()


def test_the_host_header_never_carries_the_urls_credentials(receiver, settings):
    settings.WELKIN_WEBHOOK_ALLOWED_NETWORKS = [ipaddress.ip_network("127.0.0.0/8")]
    netloc = urlsplit(receiver.url).netloc
    r = outbound.post(f"http://user:secret@{netloc}/h", data=b"{}", timeout=5)
    assert r.status_code == 200
    assert receiver.received()[-1]["headers"]["Host"] == netloc


def test_a_send_to_an_internal_address_fails_for_good_and_reaches_nothing(
    receiver, no_allowed_networks
):
    """A contact saved before (or a name that resolves inward later) is checked again at
    every send: the officer's 'Send a test' sees why, the receiver sees nothing."""
    receiver.set("ok", clear=True)
    c = hook(receiver)
    d = outbox.test_event(c, by="officer")
    assert delivery.deliver_one(d.pk) == "failed"
    d.refresh_from_db()
    assert "127.0.0.1, an internal address" in d.last_error
    assert receiver.received() == []


def test_it_connects_to_the_address_it_checked(receiver, monkeypatch):
    """A name is resolved once, checked, and that address is the one connected to; the
    name is only the Host header (no second lookup a rebinding DNS could answer)."""
    receiver.set("ok", clear=True)
    port = int(receiver.url.rsplit(":", 1)[1])
    looked_up = []
    real = socket.getaddrinfo

    def dns(host, *args, **kwargs):
        looked_up.append(host)
        if host == "hooks.example":  # a name no real DNS here answers
            return [(socket.AF_INET, socket.SOCK_STREAM, 6, "", ("127.0.0.1", port))]
        if host == "127.0.0.1":  # an address literal: no lookup
            return real(host, *args, **kwargs)
        raise socket.gaierror(f"{host}: not in this test's DNS")

    monkeypatch.setattr(outbound.socket, "getaddrinfo", dns)
    monkeypatch.setattr(socket, "getaddrinfo", dns)  # anything else that looks it up
    c = hook(receiver, name="named")
    Contact.objects.filter(pk=c.pk).update(url=f"http://hooks.example:{port}/named")
    d = outbox.test_event(Contact.objects.get(pk=c.pk), by="officer")
    assert delivery.deliver_one(d.pk) == "sent", Delivery.objects.get(pk=d.pk).last_error
    (got,) = receiver.received()
    assert got["path"] == "/named" and got["signed"]
    assert looked_up.count("hooks.example") == 1 and set(looked_up) <= {
        "hooks.example",
        "127.0.0.1",
    }


def test_a_proxy_from_the_environment_does_not_carry_webhooks(receiver, monkeypatch):
    """A proxy would look the name up again itself: webhooks go straight to the address
    that was checked, whatever HTTP(S)_PROXY says (here a proxy nobody answers on)."""
    receiver.set("ok", clear=True)
    monkeypatch.setenv("HTTP_PROXY", "http://127.0.0.1:9")
    monkeypatch.setenv("HTTPS_PROXY", "http://127.0.0.1:9")
    monkeypatch.delenv("NO_PROXY", raising=False)
    monkeypatch.delenv("no_proxy", raising=False)
    d = outbox.test_event(hook(receiver), by="officer")
    assert delivery.deliver_one(d.pk) == "sent", Delivery.objects.get(pk=d.pk).last_error
    for name in ("HTTP_PROXY", "HTTPS_PROXY"):
        monkeypatch.delenv(name)  # the test's own client to the receiver goes direct too
    assert len(receiver.received()) == 1
