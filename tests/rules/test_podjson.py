"""The slim page decoder gives the same verdicts and workloads as a full parse."""

import json
from pathlib import Path

import orjson
import pytest
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

from compliance.collect import images
from compliance.rules import gate, manifests, podjson, runas
from compliance.rules.workloads import OwnerIndex
from tests import podgen
from tests.builders import pods as pod_strategy

FIXTURES = Path(__file__).parents[1] / "fixtures"


def page(items, token=None):
    meta = {"resourceVersion": "7"}
    if token:
        meta["continue"] = token
    # The standard library writes integers beyond 64 bits too, as an API server might.
    return json.dumps(
        {"kind": "PodList", "apiVersion": "v1", "metadata": meta, "items": items}, allow_nan=False
    ).encode()


def verdict(pod):
    try:
        v = runas.evaluate_pod(pod, podgen.IMAGES)
    except ValueError as e:
        return ("error", str(e))
    return (
        [c.as_dict() for c in v.containers],
        v.psa.as_dict(),
        v.name,
        v.namespace,
        OwnerIndex().workload_of(pod),
        images.platform_of(pod),
        list(images._images(pod)),
    )


def same_as_full_parse(items):
    body = page(items)
    slim, _ = podjson.decode_page("pods", body)
    full = json.loads(body)["items"]  # the reference: every integer exact
    assert [verdict(p) for p in slim] == [verdict(p) for p in full]
    return slim


def test_it_matches_a_full_parse_on_the_fixture_pods():
    items = json.loads((FIXTURES / "welkin-pods.json").read_text())["items"]
    slim = same_as_full_parse(items)
    assert len(orjson.dumps(slim)) < len(orjson.dumps(items)) / 4


def test_it_matches_a_full_parse_on_a_synthetic_fleet():
    pods = [o for k, o in podgen.fleet(400) if k == "Pod"]
    pods[0]["spec"]["nodeSelector"] = {"kubernetes.io/arch": "arm64", "disk": "ssd"}
    pods[1]["spec"]["os"] = {"name": "windows"}
    same_as_full_parse(pods)


@settings(max_examples=300, suppress_health_check=[HealthCheck.too_slow])
@given(pod_strategy)
def test_it_matches_a_full_parse_on_any_pod_shape(pod):
    try:
        page([pod])
    except ValueError:
        assume(False)  # NaN and infinities are not JSON; no API server sends them
    same_as_full_parse([pod])


@pytest.mark.parametrize("uid", [2**64, -(2**63) - 1, 10**30])
def test_an_integer_beyond_64_bits_reads_the_same_on_every_path(uid, tmp_path):
    """orjson reads such an integer as a float: "got number" on the path it parsed, "does
    not fit in int64" on the others. Every path now keeps it exact."""
    pod = podgen.pod("ns", "big", "img", {}, {"runAsUser": uid})
    message = f"spec.containers[0].securityContext.runAsUser: {uid} does not fit in int64"
    slim, _ = podjson.decode_page("pods", page([pod]))
    odd = dict(pod, spec=dict(pod["spec"], containers={"not": "a list"}))
    fallback, _ = podjson.decode_page("pods", page([pod, odd]))  # the page fails the schema
    as_json = manifests.parse_documents(json.dumps(pod).encode(), "pod.json")
    as_yaml = manifests.parse_documents(json.dumps(pod).encode() + b"\n---\n", "pod.yaml")
    for p in (slim[0], fallback[0], as_json[0], as_yaml[0]):
        assert verdict(p) == ("error", message)


def test_an_answer_that_is_not_utf8_is_a_page_error():
    body = page([podgen.pod("ns", "x", "img", {}, {})]).replace(b'"x"', b'"\xff"')
    with pytest.raises(podjson.PageError, match="not UTF-8"):
        podjson.decode_page("pods", body)
    assert podjson.decode_snapshot(body) is None  # then parsed whole, which names the place


GOOD_PAGE = page([podgen.pod("ns", "p", "img", {"runAsNonRoot": True}, {})])


@settings(max_examples=500, suppress_health_check=[HealthCheck.too_slow])
@given(
    cuts=st.lists(
        st.tuples(st.integers(0, len(GOOD_PAGE) - 1), st.binary(min_size=1, max_size=3)),
        min_size=1,
        max_size=3,
    )
)
def test_a_damaged_page_is_a_page_error_or_pods_the_gate_can_judge(cuts):
    """Any bytes an API server (or a snapshot file) could hold in place of a few of a good
    page's: the decoder fails with PageError (the scan's reason; ManifestError for a file)
    or gives pods the gate and the evaluator judge with their own errors. No other
    exception escapes to fail a scan without a reason."""
    body = bytearray(GOOD_PAGE)
    for i, replacement in cuts:
        body[i : i + len(replacement)] = replacement
    body = bytes(body)
    # The same bytes as a snapshot file: the slim decoder, or a full parse that names
    # what is wrong.
    if podjson.decode_snapshot(body) is None:
        try:
            manifests.parse_documents(body, "snapshot.json")
        except manifests.ManifestError:
            pass
    try:
        items, _ = podjson.decode_page("pods", body)
    except podjson.PageError:
        return
    for pod in items:
        try:
            gate.check_pod(pod)
            verdict(pod)
            OwnerIndex().workload_of(pod)
        except gate.Rejected:
            pass


@pytest.mark.parametrize("depth", [1010, 100_000])
def test_an_answer_nested_too_deeply_is_a_page_error(depth):
    body = b'{"items": [{"metadata": {"x": ' + b"[" * depth + b"]" * depth + b"}}]}"
    with pytest.raises(podjson.PageError, match="nested too deeply|depth limit exceeded"):
        podjson.decode_page("pods", body)
    assert podjson.decode_snapshot(body) is None


def test_it_returns_the_continue_token():
    items, token = podjson.decode_page("pods", page([], "abc"))
    assert (items, token) == ([], "abc")
    assert podjson.decode_page("pods", page([]))[1] is None


def test_a_structurally_odd_page_still_gives_per_pod_errors():
    good = podgen.pod("ns", "good", "img", {}, {})
    bad = podgen.pod("ns", "bad", "img", {}, {})
    bad["spec"]["containers"] = {"not": "a list"}
    items, _ = podjson.decode_page("pods", page([good, bad]))
    assert verdict(items[0])[2] == "good"
    assert verdict(items[1]) == ("error", "spec.containers: expected a list, got object")


@pytest.mark.parametrize(
    "body,message",
    [
        (b"<html>proxy error</html>", "not JSON"),
        (b"[1, 2]", "not a list"),
        (b'{"items": 3}', "not a list"),
    ],
)
def test_it_rejects_answers_that_are_not_lists(body, message):
    with pytest.raises(podjson.PageError, match=message):
        podjson.decode_page("pods", body)


def test_it_keeps_owner_references_of_replicasets():
    rs = podgen.replicaset("ns", "web-1", "web", 3)
    items, _ = podjson.decode_page("replicasets", page([rs]))
    idx = OwnerIndex()
    idx.add("ReplicaSet", items[0])
    pod = podgen.pod(
        "ns", "web-1-x", "i", {}, {}, owner=podgen.owner_ref("ReplicaSet", "web-1", "ns")
    )
    assert idx.workload_of(pod) == ("Deployment", "web")
    assert "spec" not in items[0]


def test_a_page_with_more_items_than_asked_for_is_refused_before_they_are_built():
    """A hostile API server ignoring `limit` with many small pods in one page (under the
    byte cap) took a scan to 426 MB: the items are counted, unread, first."""
    body = page([{"metadata": {"name": f"p{i}"}} for i in range(3)])
    assert len(podjson.decode_page("pods", body, 3)[0]) == 3
    with pytest.raises(podjson.PageError, match="sent 3 items in one page, but at most 2"):
        podjson.decode_page("pods", body, 2)


@pytest.mark.parametrize("body", [b"[" + b"{}," * 1000 + b"{}]", b'{"items": {"a": [{}]}}'])
def test_a_page_that_is_not_a_list_of_items_is_refused_unread(body):
    """Not an object holding a list: the full fallback parse (to say where it fails) built
    a 28 MB body of such items into 734 MB; with a limit it is refused before."""
    with pytest.raises(podjson.PageError, match="not a list"):
        podjson.decode_page("pods", body, 500)
