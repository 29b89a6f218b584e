"""Any JSON value given as a pod yields verdicts or a clear ValueError, never another
exception."""

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from compliance.rules import controls, fix, runas
from tests.builders import json_values, pods

image_users = st.dictionaries(st.sampled_from(["a", "b", "c"]), st.text(max_size=12), max_size=3)


def check(pod, users):
    try:
        verdict = runas.evaluate_pod(pod, users)
    except ValueError as e:
        assert str(e)
        return
    for c in verdict.containers:
        assert c.state in runas.STATES
        assert c.runs_as_root in (True, False, None)
        assert (c.state == "blocked") == (c.kubelet_error is not None)
        assert set(controls.controls_for(c.state)) <= set(controls.CONTROLS)
        assert fix.remediation(c)["summary"]


@settings(max_examples=400, suppress_health_check=[HealthCheck.too_slow])
@given(json_values, image_users)
def test_it_never_crashes_on_any_json_value(pod, users):
    check(pod, users)


@settings(max_examples=600, suppress_health_check=[HealthCheck.too_slow])
@given(pods, image_users)
def test_it_never_crashes_on_pod_shaped_values(pod, users):
    check(pod, users)


@settings(max_examples=300)
@given(st.text(max_size=30))
def test_it_parses_any_image_user_string(raw):
    user = runas.ImageUser.parse(raw)
    assert (user.uid is None) or (user.name is None)
    if user.uid is not None:
        assert -(2**63) <= user.uid < 2**63
