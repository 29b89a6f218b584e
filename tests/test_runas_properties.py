"""Any JSON value given as a pod yields verdicts or a clear ValueError, never another
exception."""

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from compliance import controls, runas

json_values = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(min_value=-(2**70), max_value=2**70)
    | st.floats(allow_nan=False)
    | st.text(max_size=8),
    lambda children: (
        st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=8), children, max_size=4)
    ),
    max_leaves=20,
)
field_values = (
    st.none()
    | st.booleans()
    | st.integers(min_value=-(2**64), max_value=2**64)
    | st.text(max_size=6)
    | st.just({})
    | st.just([])
)
security_contexts = (
    st.fixed_dictionaries(
        {},
        optional={
            "runAsUser": field_values,
            "runAsNonRoot": field_values,
            "runAsGroup": field_values,
            "windowsOptions": st.fixed_dictionaries({}, optional={"runAsUserName": field_values})
            | field_values,
        },
    )
    | field_values
)
containers = st.fixed_dictionaries(
    {"name": st.text(min_size=1, max_size=4) | field_values},
    optional={
        "image": st.sampled_from(["a", "b", "c"]) | field_values,
        "securityContext": security_contexts,
    },
)
pods = st.fixed_dictionaries(
    {
        "metadata": st.fixed_dictionaries(
            {},
            optional={
                "name": st.text(max_size=5) | field_values,
                "namespace": st.text(max_size=5),
                "uid": st.text(max_size=5),
            },
        )
        | field_values,
        "spec": st.fixed_dictionaries(
            {},
            optional={
                "containers": st.lists(containers, max_size=3) | field_values,
                "initContainers": st.lists(containers, max_size=2) | field_values,
                "ephemeralContainers": st.lists(containers, max_size=2),
                "securityContext": security_contexts,
                "os": st.fixed_dictionaries({"name": st.sampled_from(["linux", "windows"])})
                | field_values,
                "hostUsers": field_values,
            },
        )
        | field_values,
        "status": json_values,
    }
)
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
        assert controls.remediation(c)["summary"]


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
