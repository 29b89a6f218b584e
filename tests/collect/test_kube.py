"""The collector against the fake API server, through the real kubernetes client."""

import dataclasses
import re
import time

import pytest

from compliance.collect import kube
from compliance.rules import kubeconfig
from tests import podgen
from tests.builders import FAST
from tests.fakekube import Fault


class Sink:
    def __init__(self):
        self.resets, self.pages, self.items = 0, 0, []

    def reset(self):
        self.resets += 1
        self.items = []

    def add(self, items):
        self.pages += 1
        self.items.extend(i["metadata"]["name"] for i in items)


def list_into(client, resource, sink):
    """Every page into sink, reset at the start and at each restart (410 Expired)."""
    sink.reset()
    for page in client.list_pages(resource):
        if page is kube.RESTART:
            sink.reset()
        else:
            sink.add(page)


def client_for(server, token=None, policy=FAST, sleeps=None):
    _, creds = kubeconfig.parse_kubeconfig(server.kubeconfig_yaml(token=token))
    return kube.ClusterClient(
        creds, policy, sleep=(sleeps.append if sleeps is not None else lambda s: None)
    )


@pytest.fixture
def pods(fake_kube):
    fake_kube.state.put_many(
        podgen.pod("ns-a" if i % 2 else "ns-b", f"p-{i:04d}", "img", {}, {}) for i in range(120)
    )
    return fake_kube


def test_it_lists_every_page_with_continue_tokens(pods):
    sink = Sink()
    with client_for(pods) as c:
        list_into(c, "pods", sink)
    assert len(sink.items) == 120 and len(set(sink.items)) == 120
    assert sink.pages == 3  # limit 50
    queries = [q for p, q in pods.state.requests if p == "/api/v1/pods"]
    assert "limit=50" in queries[0] and "continue=" not in queries[0]
    assert all("continue=" in q for q in queries[1:])


def test_it_sees_a_consistent_snapshot_while_the_cluster_changes(pods):
    class Mutating(Sink):
        def add(self, items):
            super().add(items)
            if self.pages == 1:
                pods.state.put(podgen.pod("ns-a", "p-zzzz-new", "img", {}, {}))

    sink = Mutating()
    with client_for(pods) as c:
        list_into(c, "pods", sink)
    assert "p-zzzz-new" not in sink.items and len(sink.items) == 120


def test_it_restarts_the_list_on_410_expired(pods):
    class Expiring(Sink):
        def add(self, items):
            super().add(items)
            if self.resets == 1 and self.pages == 1:
                pods.state.expire_all_tokens()

    sink = Expiring()
    with client_for(pods) as c:
        list_into(c, "pods", sink)
    assert sink.resets == 2
    assert len(sink.items) == 120


def test_it_gives_up_after_bounded_restarts(pods):
    pods.state.faults.append(Fault("pods", 2, "410", times=99))
    with client_for(pods) as c, pytest.raises(kube.ScanError, match="410 Expired"):
        list_into(c, "pods", Sink())


def test_it_honours_retry_after_on_429(pods):
    pods.state.faults.append(Fault("pods", 2, "429", times=2, retry_after=7))
    sleeps = []
    policy = kube.Policy(page_limit=50, backoff=0.01, max_retry_after=30)
    sink = Sink()
    with client_for(pods, policy=policy, sleeps=sleeps) as c:
        list_into(c, "pods", sink)
    assert len(sink.items) == 120
    assert len(sleeps) == 2 and all(7 <= s <= 8 for s in sleeps)


def test_it_fails_when_throttled_too_long(pods):
    pods.state.faults.append(Fault("pods", 1, "429", times=99))
    with client_for(pods) as c, pytest.raises(kube.ScanError, match="throttled") as e:
        list_into(c, "pods", Sink())
    assert e.value.transient


@pytest.mark.parametrize("kind", ["500", "503"])
def test_it_retries_5xx_then_succeeds(pods, kind):
    pods.state.faults.append(Fault("pods", 2, kind, times=2))
    sink = Sink()
    with client_for(pods) as c:
        list_into(c, "pods", sink)
    assert len(sink.items) == 120


@pytest.mark.parametrize(
    "kind,message",
    [
        ("500", "list pods: 500 fake 500 at page 3 (after 4 attempts)"),
        ("503", "list pods: 503 fake 503 at page 3 (after 4 attempts)"),
        ("drop", "list pods: the API server dropped the connection (after 4 attempts)"),
        ("slow", "list pods: timed out waiting for the API server (after 4 attempts)"),
    ],
)
def test_it_fails_after_repeated_errors_with_the_reason(pods, kind, message):
    pods.state.faults.append(Fault("pods", 3, kind, times=99, delay=3))
    with client_for(pods) as c, pytest.raises(kube.ScanError) as e:
        list_into(c, "pods", Sink())
    assert e.value.reason == message
    assert e.value.transient


def test_it_fails_on_401(pods):
    with client_for(pods, token="wrong") as c, pytest.raises(kube.ScanError) as e:
        list_into(c, "pods", Sink())
    assert e.value.reason == "credentials rejected (401 Unauthorized)"
    assert not e.value.transient


def test_it_names_the_missing_permission_on_403(pods):
    pods.state.tokens["pods-only"] = {"pods"}
    with client_for(pods, token="pods-only") as c:
        list_into(c, "pods", Sink())
        with pytest.raises(kube.ScanError) as e:
            list_into(c, "replicasets", Sink())
    assert e.value.reason.startswith(
        'forbidden (403): the scanner needs list on replicasets ("apps" API group)'
    )
    assert 'cannot list resource "replicasets"' in e.value.reason


def test_it_does_not_trust_another_ca(pods):
    from tests.fakekube import make_ca_and_cert

    other_ca = make_ca_and_cert()[0]
    _, creds = kubeconfig.parse_kubeconfig(pods.kubeconfig_yaml())
    creds = kubeconfig.Credentials(
        server=creds.server, ca_data=other_ca.decode(), token=creds.token
    )
    with (
        kube.ClusterClient(creds, FAST, sleep=lambda s: None) as c,
        pytest.raises(kube.ScanError, match="TLS verification failed: .*CERTIFICATE_VERIFY_FAILED"),
    ):
        list_into(c, "pods", Sink())


def test_it_uses_its_own_configuration_not_the_global_default(pods):
    from kubernetes import client

    before = client.Configuration.get_default_copy().host
    with client_for(pods) as c:
        list_into(c, "pods", Sink())
        assert c.api_client.configuration.host == pods.url
        assert c.api_client.configuration.retries is False
    assert client.Configuration.get_default_copy().host == before


# --- a hostile API server: bounded pages, tokens, time and objects ---

BOUNDED = dataclasses.replace(FAST, request_deadline=2, scan_deadline=60)


def hostile_failure(server, policy=BOUNDED):
    """The ScanError a pods list ends with, and how long it took."""
    start = time.monotonic()
    with client_for(server, policy=policy) as c, pytest.raises(kube.ScanError) as e:
        list_into(c, "pods", Sink())
    assert not e.value.transient
    return e.value.reason, time.monotonic() - start


def test_a_repeated_continue_token_ends_the_list(pods):
    pods.state.repeat_continue = True
    reason, seconds = hostile_failure(pods)
    assert reason == (
        "list pods: the API server sent a continue token it had already sent "
        "in this list (after page 2); the list would never end"
    )
    assert seconds < 20


def test_cycling_continue_tokens_end_the_list(pods):
    pods.state.cycle_continue = 3  # page 3 answers the token page 1 answered
    reason, _ = hostile_failure(pods, dataclasses.replace(BOUNDED, page_limit=20))
    assert reason.startswith(
        "list pods: the API server sent a continue token it had already "
        "sent in this list (after page 3)"
    )
    assert len([q for p, q in pods.state.requests if p == "/api/v1/pods"]) == 3


def test_an_overlong_continue_token_ends_the_list(pods):
    pods.state.pad_continue = 9000
    reason, _ = hostile_failure(pods)
    assert re.fullmatch(
        r"list pods: the API server sent a continue token of [\d,]+ bytes "
        r"\(at most 8,192 are accepted\)",
        reason,
    ), reason


def test_a_page_over_the_limit_fails_the_scan(pods):
    pods.state.ignore_limit = True
    reason, _ = hostile_failure(pods)
    assert reason == (
        "list pods: the API server sent 120 items in one page, but at most 50 "
        "were asked for (limit=50); it ignores the page limit"
    )


def test_a_page_over_the_byte_cap_fails_the_scan(pods):
    reason, _ = hostile_failure(pods, dataclasses.replace(BOUNDED, page_max_bytes=64 << 10))
    assert reason.startswith(
        "list pods: a page is larger than 64 KiB (WELKIN_PAGE_MAX_BYTES); the API server announced "
    )


def test_a_streamed_page_over_the_byte_cap_fails_without_reading_it_all(fake_kube):
    fake_kube.state.generated_pods = 200_000  # about 1 GB, chunked: no length announced
    reason, seconds = hostile_failure(
        fake_kube, dataclasses.replace(BOUNDED, page_max_bytes=4 << 20)
    )
    assert reason == "list pods: a page is larger than 4 MiB (WELKIN_PAGE_MAX_BYTES)"
    assert seconds < 20


@pytest.mark.parametrize("chunked", [False, True])
def test_a_drip_fed_page_is_cut_off_at_the_request_deadline(pods, chunked):
    # 100 bytes a second: far inside the 2 s socket read timeout, so only the request's
    # own deadline ends it. Chunked, every chunk-size line is 4 KB: one blocked read.
    pods.state.drip_bytes_per_second = 100
    pods.state.drip_chunked = chunked
    reason, seconds = hostile_failure(pods)
    assert re.fullmatch(
        r"list pods: the API server did not send a whole page within 2 s "
        r"\(WELKIN_KUBE_REQUEST_DEADLINE\); [\d,]+ bytes arrived",
        reason,
    ), reason
    assert seconds < 15


def test_the_scan_deadline_bounds_the_whole_listing(pods):
    pods.state.page_delay = 0.5
    policy = dataclasses.replace(BOUNDED, page_limit=10, scan_deadline=1.2, request_deadline=30)
    reason, seconds = hostile_failure(pods, policy)
    assert re.fullmatch(
        r"the scan did not finish within 1.2 s \(WELKIN_SCAN_DEADLINE\); it "
        r"stopped while listing pods, after \d+ pages",
        reason,
    ), reason
    assert seconds < 15


def test_the_scan_deadline_cuts_a_drip_fed_page(pods):
    pods.state.drip_bytes_per_second = 100
    reason, seconds = hostile_failure(
        pods, dataclasses.replace(BOUNDED, request_deadline=600, scan_deadline=2)
    )
    assert reason.startswith("the scan did not finish within 2 s (WELKIN_SCAN_DEADLINE)")
    assert seconds < 15


def test_the_pod_budget_bounds_a_list(pods):
    reason, _ = hostile_failure(pods, dataclasses.replace(BOUNDED, max_pods=100))
    assert reason == (
        "list pods: more than 100 pods in the cluster, the most one scan takes "
        "(WELKIN_SCAN_MAX_PODS)"
    )


def test_endless_empty_pages_end_the_list(pods):
    # A fresh token every time, never a repeat, never an item: a list of at most 100
    # objects at 50 a page gets 2 x 2 + 10 pages.
    pods.state.empty_pages = True
    reason, _ = hostile_failure(pods, dataclasses.replace(BOUNDED, max_pods=100))
    assert reason == (
        "list pods: still more pages after 14; the API server keeps sending short pages"
    )


def test_an_oversized_error_body_is_not_read(pods):
    pods.state.faults.append(Fault("pods", 1, "500-huge", times=99))
    with (
        client_for(pods, policy=dataclasses.replace(BOUNDED, max_errors=0)) as c,
        pytest.raises(kube.ScanError) as e,
    ):
        list_into(c, "pods", Sink())
    assert e.value.reason == "list pods: 500 Internal Server Error"
