"""The evaluator against every rule of RUNAS.md, from pod JSON."""

import copy
import json
from pathlib import Path

import pytest

from compliance import vocabulary
from compliance.rules import runas
from tests.builders import REF, c, one, pod

FIXTURES = Path(__file__).parents[1] / "fixtures"


L1 = f'container\'s runAsUser breaks non-root policy (pod: "{REF}", container: app)'
L3 = f'container has runAsNonRoot and image will run as root (pod: "{REF}", container: app)'


def L2(user):
    return (
        f"container has runAsNonRoot and image has non-numeric user ({user}), cannot "
        f'verify user is non-root (pod: "{REF}", container: app)'
    )


def L4(uid):
    return (
        f"container has runAsNonRoot and image has an invalid user id ({uid}). (Must be "
        f"1-(2147483647)): must be between 0 and 2147483647, inclusive "
        f'(pod: "{REF}", container: app)'
    )


# (id, pod, image users, expected: state, runs_as_root, uid, kubelet_error)
LINUX_CASES = [
    # section 4.1: no runAsNonRoot, no check
    ("no-guardrail-root-image", pod(), {"img": ""}, "root", True, 0, None),
    ("no-guardrail-uid-1000", pod(), {"img": "1000"}, "unenforced", False, 1000, None),
    ("no-guardrail-unknown-image", pod(), {}, "unverified", None, None, None),
    ("no-guardrail-named-user", pod(), {"img": "node"}, "unverified", None, None, None),
    ("explicit-false", pod(sc={"runAsNonRoot": False}), {"img": "0"}, "root", True, 0, None),
    # section 4.2: runAsUser decides, image not consulted
    (
        "run-as-user-0",
        pod(sc={"runAsNonRoot": True, "runAsUser": 0}),
        {"img": "1000"},
        "blocked",
        True,
        0,
        L1,
    ),
    (
        "run-as-user-1000-root-image",
        pod(sc={"runAsNonRoot": True, "runAsUser": 1000}),
        {"img": ""},
        "compliant",
        False,
        1000,
        None,
    ),
    (
        "run-as-user-1000-unknown-image",
        pod(sc={"runAsNonRoot": True, "runAsUser": 1000}),
        {},
        "compliant",
        False,
        1000,
        None,
    ),
    (
        "run-as-user-1000-named-image",
        pod(sc={"runAsNonRoot": True, "runAsUser": 1000}),
        {"img": "node"},
        "compliant",
        False,
        1000,
        None,
    ),
    (
        "run-as-user-0-no-guardrail",
        pod(sc={"runAsUser": 0}),
        {"img": "1000"},
        "root",
        True,
        0,
        None,
    ),
    (
        "run-as-user-huge-not-checked",
        pod(sc={"runAsNonRoot": True, "runAsUser": 2147483648}),
        {},
        "compliant",
        False,
        2147483648,
        None,
    ),
    # section 4.3: the image user decides
    (
        "welkin-node",
        pod(sc={"runAsNonRoot": True}),
        {"img": "node"},
        "blocked",
        None,
        None,
        L2("node"),
    ),
    ("welkin-no-user", pod(sc={"runAsNonRoot": True}), {"img": ""}, "blocked", True, 0, L3),
    ("uid-0", pod(sc={"runAsNonRoot": True}), {"img": "0"}, "blocked", True, 0, L3),
    ("uid-0-with-group", pod(sc={"runAsNonRoot": True}), {"img": "0:1000"}, "blocked", True, 0, L3),
    (
        "root-name-is-a-name",
        pod(sc={"runAsNonRoot": True}),
        {"img": "root"},
        "blocked",
        None,
        None,
        L2("root"),
    ),
    (
        "name-with-group",
        pod(sc={"runAsNonRoot": True}),
        {"img": "node:group"},
        "blocked",
        None,
        None,
        L2("node"),
    ),
    (
        "uid-with-group",
        pod(sc={"runAsNonRoot": True}),
        {"img": "1000:1000"},
        "compliant",
        False,
        1000,
        None,
    ),
    ("three-parts", pod(sc={"runAsNonRoot": True}), {"img": "1:2:3"}, "compliant", False, 1, None),
    ("plus-sign", pod(sc={"runAsNonRoot": True}), {"img": "+1000"}, "compliant", False, 1000, None),
    (
        "leading-zeros",
        pod(sc={"runAsNonRoot": True}),
        {"img": "0001000"},
        "compliant",
        False,
        1000,
        None,
    ),
    (
        "space-is-a-name",
        pod(sc={"runAsNonRoot": True}),
        {"img": " 1000"},
        "blocked",
        None,
        None,
        L2(" 1000"),
    ),
    (
        "invalid-uid-2^31",
        pod(sc={"runAsNonRoot": True}),
        {"img": "2147483648"},
        "blocked",
        False,
        2147483648,
        L4(2147483648),
    ),
    (
        "invalid-uid-minus-1",
        pod(sc={"runAsNonRoot": True}),
        {"img": "-1"},
        "blocked",
        False,
        -1,
        L4(-1),
    ),
    (
        "max-uid-ok",
        pod(sc={"runAsNonRoot": True}),
        {"img": "2147483647"},
        "compliant",
        False,
        2147483647,
        None,
    ),
    (
        "beyond-int64-is-a-name",
        pod(sc={"runAsNonRoot": True}),
        {"img": "99999999999999999999"},
        "blocked",
        None,
        None,
        L2("99999999999999999999"),
    ),
    (
        "empty-user-part-is-root",
        pod(sc={"runAsNonRoot": True}),
        {"img": ":1000"},
        "blocked",
        True,
        0,
        L3,
    ),
    (
        "image-unknown-with-guardrail",
        pod(sc={"runAsNonRoot": True}),
        {},
        "unverified",
        None,
        None,
        None,
    ),
    # section 2: merge order
    (
        "container-false-overrides-pod-true",
        pod([c(runAsNonRoot=False)], sc={"runAsNonRoot": True}),
        {"img": ""},
        "root",
        True,
        0,
        None,
    ),
    (
        "container-true-overrides-pod-false",
        pod([c(runAsNonRoot=True)], sc={"runAsNonRoot": False}),
        {"img": ""},
        "blocked",
        True,
        0,
        L3,
    ),
    (
        "container-user-overrides-pod-0",
        pod([c(runAsUser=1000)], sc={"runAsNonRoot": True, "runAsUser": 0}),
        {},
        "compliant",
        False,
        1000,
        None,
    ),
    (
        "pod-user-0-inherited",
        pod([c(runAsNonRoot=True)], sc={"runAsUser": 0}),
        {},
        "blocked",
        True,
        0,
        L1,
    ),
    (
        "empty-container-context-inherits",
        pod(
            [{"name": "app", "image": "img", "securityContext": {}}],
            sc={"runAsNonRoot": True, "runAsUser": 1000},
        ),
        {},
        "compliant",
        False,
        1000,
        None,
    ),
    (
        "null-container-value-inherits",
        pod(
            [{"name": "app", "image": "img", "securityContext": {"runAsNonRoot": None}}],
            sc={"runAsNonRoot": True},
        ),
        {"img": "node"},
        "blocked",
        None,
        None,
        L2("node"),
    ),
]


@pytest.mark.parametrize(
    "p,users,state,root,uid,error",
    [case[1:] for case in LINUX_CASES],
    ids=[c[0] for c in LINUX_CASES],
)
def test_it_follows_the_linux_rules(p, users, state, root, uid, error):
    v = one(p, users)
    assert (v.state, v.runs_as_root, v.uid, v.kubelet_error) == (state, root, uid, error)
    assert v.evidence == "predicted"


def test_it_keeps_the_image_user_raw_and_its_source():
    v = one(pod(sc={"runAsNonRoot": True}), {"img": "1000:1000"})
    assert v.image_user == "1000:1000"
    assert v.image_user_source == "supplied"
    assert one(pod(), {}).image_user is None
    assert one(pod(), {}).image_user_source == "unknown"


def test_it_looks_images_up_by_the_status_digest_too():
    digest = "docker.io/library/img@sha256:" + "a" * 64
    p = pod(
        sc={"runAsNonRoot": True},
        status={"containerStatuses": [{"name": "app", "imageID": digest}]},
    )
    assert one(p, {digest: "node"}).kubelet_error == L2("node")


def test_it_evaluates_init_sidecar_and_ephemeral_containers():
    p = pod(
        [c("main", "main")],
        sc={"runAsNonRoot": True},
        init=[c("setup", "root-img"), {**c("sidecar", "named"), "restartPolicy": "Always"}],
        ephemeral=[c("debug", "root-img")],
    )
    v = runas.evaluate_pod(p, {"main": "1000", "root-img": "", "named": "node"})
    got = [(x.name, x.type, x.state) for x in v.containers]
    assert got == [
        ("setup", "init", "blocked"),
        ("sidecar", "sidecar", "blocked"),  # a native sidecar: restartPolicy: Always
        ("main", "app", "compliant"),
        ("debug", "ephemeral", "blocked"),
    ]
    assert v.containers[3].kubelet_error.endswith('(pod: "web_shop(u-1)", container: debug)')


def test_it_formats_the_pod_reference_without_uid():
    p = pod(sc={"runAsNonRoot": True})
    del p["metadata"]["uid"]
    assert one(p, {"img": ""}).kubelet_error.endswith('(pod: "web_shop()", container: app)')


def test_it_defaults_the_namespace():
    p = pod(sc={"runAsNonRoot": True})
    del p["metadata"]["namespace"]
    assert "web_default(u-1)" in one(p, {"img": ""}).kubelet_error


# --- Windows (section 5) ---

W = "ContainerAdministrator"


def W1(v):
    return (
        f"container's runAsUserName ({v}) which will be regarded as root identity and "
        f'will break non-root policy (pod: "{REF}", container: app)'
    )


def W2(v):
    return (
        f"container's runAsUser ({v}) which will be regarded as root identity and will "
        f'break non-root policy (pod: "{REF}", container: app)'
    )


WINDOWS_CASES = [
    ("no-guardrail-admin", {"windowsOptions": {"runAsUserName": W}}, {}, "root", True, None),
    (
        "run-as-admin-lowercase",
        {"runAsNonRoot": True, "windowsOptions": {"runAsUserName": "containeradministrator"}},
        {},
        "blocked",
        True,
        W1("containeradministrator"),
    ),
    (
        "run-as-user-name-wins-over-image",
        {"runAsNonRoot": True, "windowsOptions": {"runAsUserName": "ContainerUser"}},
        {"img": W},
        "compliant",
        False,
        None,
    ),
    ("image-admin", {"runAsNonRoot": True}, {"img": W}, "blocked", True, W2(W)),
    (
        "image-admin-any-case",
        {"runAsNonRoot": True},
        {"img": "CONTAINERADMINISTRATOR"},
        "blocked",
        True,
        W2("CONTAINERADMINISTRATOR"),
    ),
    ("image-user-empty-starts", {"runAsNonRoot": True}, {"img": ""}, "unverified", None, None),
    (
        "image-user-container-user",
        {"runAsNonRoot": True},
        {"img": "ContainerUser"},
        "compliant",
        False,
        None,
    ),
    ("image-unknown", {"runAsNonRoot": True}, {}, "unverified", None, None),
    (
        "uid-zero-means-nothing",
        {"runAsNonRoot": True, "runAsUser": 0},
        {"img": "ContainerUser"},
        "compliant",
        False,
        None,
    ),
]


@pytest.mark.parametrize(
    "sc,users,state,root,error", [x[1:] for x in WINDOWS_CASES], ids=[x[0] for x in WINDOWS_CASES]
)
def test_it_follows_the_windows_rules(sc, users, state, root, error):
    v = one(pod(sc=sc, os_name="windows"), users)
    assert (v.state, v.runs_as_root, v.kubelet_error, v.uid) == (state, root, error, None)


def test_it_merges_windows_options_field_by_field():
    p = pod(
        [c(windowsOptions={"gmsaCredentialSpecName": "x"})],
        os_name="windows",
        sc={"runAsNonRoot": True, "windowsOptions": {"runAsUserName": W}},
    )
    assert one(p).kubelet_error == W1(W)


# --- runtime evidence (section 6) ---


def waiting(message, name="app", key="containerStatuses"):
    return {
        key: [
            {
                "name": name,
                "state": {"waiting": {"reason": "CreateContainerConfigError", "message": message}},
            }
        ]
    }


def test_it_takes_the_observed_uid_over_the_prediction():
    p = pod(
        status={
            "containerStatuses": [
                {"name": "app", "user": {"linux": {"uid": 0, "gid": 0, "supplementalGroups": [0]}}}
            ]
        }
    )
    v = one(p, {"img": "1000"})
    assert (v.state, v.uid, v.runs_as_root, v.evidence) == ("root", 0, True, "observed")


def test_it_resolves_an_unknown_image_from_the_observed_uid():
    p = pod(
        sc={"runAsNonRoot": True},
        status={"containerStatuses": [{"name": "app", "user": {"linux": {"uid": 1001}}}]},
    )
    v = one(p)
    assert (v.state, v.uid, v.evidence) == ("compliant", 1001, "observed")


@pytest.mark.parametrize(
    "message,root,image_user",
    [
        (L2("node"), None, "node"),
        (
            "container has runAsNonRoot and image has non-numeric user (node), cannot verify user "
            "is non-root",
            None,
            "node",
        ),
        (L3, True, None),
        ("container has runAsNonRoot and image will run as root", True, None),
        (L1, True, None),
        ("container's runAsUser breaks non-root policy", True, None),
        (L4(-1), False, "-1"),
    ],
    ids=["L2", "L2-old", "L3", "L3-old", "L1", "L1-old", "L4"],
)
def test_it_takes_an_observed_refusal_as_blocked(message, root, image_user):
    v = one(pod(sc={"runAsNonRoot": True}, status=waiting(message)))
    assert (v.state, v.evidence, v.kubelet_error) == ("blocked", "observed", message)
    assert v.runs_as_root is root
    assert v.image_user == image_user


def test_it_marks_a_learned_image_user_as_runtime():
    v = one(pod(sc={"runAsNonRoot": True}, status=waiting(L2("node"))))
    assert v.image_user_source == "runtime"


def test_it_ignores_other_config_errors():
    v = one(
        pod(sc={"runAsNonRoot": True}, status=waiting('configmap "x" not found')), {"img": "1000"}
    )
    assert (v.state, v.evidence) == ("compliant", "predicted")


def test_it_matches_statuses_by_container_type():
    p = pod(
        [c("x", "img")],
        init=[c("x", "init-img")],
        sc={"runAsNonRoot": True},
        status=waiting(L3.replace("container: app", "container: x"), "x", "initContainerStatuses"),
    )
    init, app = runas.evaluate_pod(p, {"img": "1000"}).containers
    assert (init.state, init.evidence) == ("blocked", "observed")
    assert (app.state, app.evidence) == ("compliant", "predicted")


def test_it_ignores_a_malformed_status():
    assert one(pod(status={"containerStatuses": "nope"}), {"img": "1000"}).state == "unenforced"


# --- PSA restricted (section 7) ---

PSA_CASES = [
    ("allowed", pod([c(runAsNonRoot=True)]), []),
    ("pod-true-covers", pod([c()], sc={"runAsNonRoot": True}), []),
    (
        "implicit-one",
        pod([c("a")]),
        ['runAsNonRoot != true (pod or container "a" must set securityContext.runAsNonRoot=true)'],
    ),
    (
        "implicit-many",
        pod([c("a"), c("b", runAsNonRoot=True)], init=[c("i")]),
        [
            'runAsNonRoot != true (pod or containers "i", "a" must set '
            "securityContext.runAsNonRoot=true)"
        ],
    ),
    (
        "pod-false-even-when-overridden",
        pod([c("a", runAsNonRoot=True)], sc={"runAsNonRoot": False}),
        ["runAsNonRoot != true (pod must not set securityContext.runAsNonRoot=false)"],
    ),
    (
        "pod-and-containers-false",
        pod([c("a", runAsNonRoot=False), c("b", runAsNonRoot=False)], sc={"runAsNonRoot": False}),
        [
            'runAsNonRoot != true (pod and containers "a", "b" must not set '
            "securityContext.runAsNonRoot=false)"
        ],
    ),
    (
        "explicit-wins-over-implicit",
        pod([c("a", runAsNonRoot=False), c("b")]),
        ['runAsNonRoot != true (container "a" must not set securityContext.runAsNonRoot=false)'],
    ),
    (
        "run-as-user-does-not-count",
        pod([c("a", runAsUser=1000)]),
        ['runAsNonRoot != true (pod or container "a" must set securityContext.runAsNonRoot=true)'],
    ),
    (
        "pod-user-0-even-when-overridden",
        pod([c("a", runAsUser=1000)], sc={"runAsNonRoot": True, "runAsUser": 0}),
        ["runAsUser=0 (pod must not set runAsUser=0)"],
    ),
    (
        "pod-and-containers-user-0",
        pod([c("c", runAsUser=0), c("d", runAsUser=0)], sc={"runAsNonRoot": True, "runAsUser": 0}),
        ['runAsUser=0 (pod and containers "c", "d" must not set runAsUser=0)'],
    ),
    (
        "ephemeral-counts",
        pod([c("a")], sc={"runAsNonRoot": True}, ephemeral=[c("dbg", runAsUser=0)]),
        ['runAsUser=0 (container "dbg" must not set runAsUser=0)'],
    ),
    (
        "both-checks",
        pod([c("a", runAsUser=0)]),
        [
            'runAsNonRoot != true (pod or container "a" must set '
            "securityContext.runAsNonRoot=true)",
            'runAsUser=0 (container "a" must not set runAsUser=0)',
        ],
    ),
    ("host-users-false-passes", pod([c("a", runAsUser=0)], host_users=False), []),
    (
        "windows-not-exempt",
        pod([c("a")], os_name="windows"),
        ['runAsNonRoot != true (pod or container "a" must set securityContext.runAsNonRoot=true)'],
    ),
]


@pytest.mark.parametrize("p,violations", [x[1:] for x in PSA_CASES], ids=[x[0] for x in PSA_CASES])
def test_it_gives_the_psa_restricted_verdict(p, violations):
    psa = runas.evaluate_pod(p).psa
    assert psa.violations == violations
    assert psa.allowed is (not violations)


def test_it_writes_the_admission_denial():
    psa = runas.evaluate_pod(pod([c("a", runAsUser=0)])).psa
    assert psa.denial("web") == (
        'pods "web" is forbidden: violates PodSecurity "restricted:latest": '
        'runAsNonRoot != true (pod or container "a" must set securityContext.runAsNonRoot=true)'
        ', runAsUser=0 (container "a" must not set runAsUser=0)'
    )


# --- bad input ---


@pytest.mark.parametrize(
    "mutate,message",
    [
        (
            lambda p: p["spec"]["containers"][0].update(securityContext={"runAsUser": "0"}),
            "spec.containers[0].securityContext.runAsUser: expected an integer, got string",
        ),
        (
            lambda p: p["spec"]["containers"][0].update(securityContext={"runAsUser": True}),
            "runAsUser: expected an integer, got boolean",
        ),
        (
            lambda p: p["spec"].update(securityContext={"runAsNonRoot": "true"}),
            "spec.securityContext.runAsNonRoot: expected a boolean, got string",
        ),
        (lambda p: p["spec"].update(containers=[]), "at least one container"),
        (lambda p: p["spec"].update(containers={"a": 1}), "spec.containers: expected a list"),
        (lambda p: p["spec"]["containers"][0].pop("name"), "spec.containers[0].name: required"),
        (lambda p: p.pop("spec"), "spec: required"),
        (
            lambda p: p["spec"]["containers"][0].update(securityContext={"runAsUser": 2**63}),
            "does not fit in int64",
        ),
    ],
)
def test_it_rejects_malformed_pods_with_the_field_path(mutate, message):
    p = pod()
    mutate(p)
    with pytest.raises(ValueError, match=message.replace("[", r"\[").replace("]", r"\]")):
        runas.evaluate_pod(p)


def test_it_does_not_modify_its_input():
    p = pod(sc={"runAsNonRoot": True}, status=waiting(L3))
    before = copy.deepcopy(p)
    runas.evaluate_pod(p, {"img": ""})
    assert p == before


def test_it_picks_the_worst_state():
    assert vocabulary.STATE.worst(["compliant", "root", "unverified"]) == "root"
    assert vocabulary.STATE.worst(["unenforced", "blocked", "root"]) == "blocked"


def test_it_evaluates_the_real_fixture_pods():
    pods = json.loads((FIXTURES / "welkin-pods.json").read_text())["items"]
    verdicts = {
        p["metadata"]["name"]: runas.evaluate_pod(
            p,
            {
                "docker.io/library/node:22": "node",
                "docker.io/library/nginx:1.27": "",
            },
        ).containers[0]
        for p in pods
    }
    assert verdicts["node-app-7d9f-abcde"].state == "blocked"
    assert "non-numeric user (node)" in verdicts["node-app-7d9f-abcde"].kubelet_error
    assert verdicts["nginx-6c7b-xyz12"].state == "blocked"
    assert "image will run as root" in verdicts["nginx-6c7b-xyz12"].kubelet_error
    assert verdicts["fixed-app-55d-qwert"].state == "compliant"
