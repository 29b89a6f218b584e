"""The right fix: minimal per cause, the uid only where known, and proven by evaluating
the changed container again."""

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from compliance.rules import fix, runas
from compliance.rules.fix import Account
from tests.builders import c, one, pod, pods

NODE = {"name": "node", "uid": 1000, "gid": 1000, "layer": "sha256:" + "a" * 64, "line": 12}
NGINX = {"name": "nginx", "uid": 101, "gid": 101, "layer": "sha256:" + "b" * 64, "line": 19}


def test_run_as_user_0_on_a_non_root_image_is_removed_and_the_dockerfile_left_alone():
    v = one(pod([c(runAsUser=0)]), {"img": "1000:1000"})
    f = fix.remediation(v)
    assert f["kind"] == "remove-run-as-user"
    assert f["dockerfile"] is None
    assert f["change"] == {
        "level": "container",
        "set": {"runAsNonRoot": True},
        "remove": ["runAsUser"],
        "pod_remove": [],
    }
    assert f["uid"] == 1000 and "USER 1000:1000" in f["uid_source"]
    assert f["proof"]["workload"] == {"state": "compliant", "psa": "allowed"}


def test_an_image_built_for_10001_keeps_10001():
    f = fix.remediation(one(pod([c(runAsUser=0)], sc={"runAsNonRoot": True}), {"img": "10001"}))
    assert f["uid"] == 10001 and "1000 " not in fix.one_line(f)


def test_a_pod_level_run_as_user_0_is_overridden_on_the_container_not_removed():
    # The pod's 0 is inherited by the other containers: changing it would change them.
    for p in (pod([c(runAsUser=0)], sc={"runAsUser": 0}), pod(sc={"runAsUser": 0})):
        f = fix.remediation(one(p, {"img": "1000"}))
        assert f["kind"] == "remove-run-as-user"
        assert f["change"]["level"] == "container" and f["change"]["pod_remove"] == []
        assert f["change"]["set"] == {"runAsUser": 1000, "runAsNonRoot": True}
        assert f["proof"]["workload"]["state"] == "compliant"
        assert "pod must not set runAsUser=0" in f["proof"]["workload"]["psa"]


def test_a_container_0_over_a_pod_uid_is_just_removed():
    f = fix.remediation(one(pod([c(runAsUser=0)], sc={"runAsUser": 1000}), {"img": ""}))
    assert f["kind"] == "remove-run-as-user" and f["dockerfile"] is None
    assert f["change"]["remove"] == ["runAsUser"] and f["uid"] == 1000


def test_a_pod_run_as_non_root_false_goes_and_nothing_else_on_the_pod():
    f = fix.remediation(one(pod([c()], sc={"runAsNonRoot": False, "runAsUser": 0}), {"img": ""}))
    assert f["change"]["level"] == "container" and f["change"]["pod_remove"] == ["runAsNonRoot"]
    assert f["proof"]["workload"]["state"] == "compliant"


def test_an_account_for_another_name_is_not_used():
    v = one(pod(sc={"runAsNonRoot": True}), {"img": "app"})
    f = fix.remediation(v, Account(user=NODE, read=True))  # node's entry, USER app
    assert f["kind"] == "uid-unknown" and f["uid"] is None


def test_a_named_user_gets_its_uid_from_the_images_passwd():
    v = one(pod(sc={"runAsNonRoot": True}), {"img": "node"})
    f = fix.remediation(v, Account(user=NODE, read=True))
    assert f["kind"] == "numeric-user"
    assert f["dockerfile"] == ["USER 1000"]
    assert f["change"]["set"] == {"runAsUser": 1000}
    assert f["uid_source"] == f"/etc/passwd in layer {NODE['layer']}, line 12"
    assert f["proof"]["workload"]["state"] == f["proof"]["dockerfile"]["state"] == "compliant"
    # rendered as segments: code is code, no Markdown backticks anywhere
    assert ("code", "USER 1000") in f["steps"][0]
    assert "`" not in fix.one_line(f)


def test_a_named_user_without_its_passwd_is_not_guessed():
    v = one(pod(sc={"runAsNonRoot": True}), {"img": "node"})
    f = fix.remediation(v, Account(error="registry.example: 401 unauthorized"))
    assert f["kind"] == "uid-unknown" and f["change"] is None and f["uid"] is None
    assert "401 unauthorized" in f["summary"]
    assert "1000" not in fix.one_line(f)
    assert any("getent" in s for step in f["steps"] for _, s in step)


def test_a_root_image_gets_an_existing_user_of_the_image():
    v = one(pod([c(image="nginx")], sc={"runAsNonRoot": True}), {"nginx": ""})
    f = fix.remediation(v, Account(fit=NGINX, family="debian", read=True))
    assert f["kind"] == "image-user" and f["uid"] == 101
    assert f["dockerfile"] == ["USER 101"]
    assert f["change"]["set"] == {"runAsUser": 101} and f["change"]["remove"] == []
    assert "'nginx'" in f["summary"] and "line 19" in fix.one_line(f)


@pytest.mark.parametrize(
    "family,line",
    [
        ("alpine", "RUN adduser -D -H -u 10001 app"),
        ("debian", "RUN useradd --system --no-create-home --uid 10001 app"),
    ],
)
def test_a_root_image_without_a_fitting_user_gets_one_created(family, line):
    v = one(pod(), {"img": "0"})
    f = fix.remediation(v, Account(family=family, read=True))
    assert f["dockerfile"] == [line, "USER 10001"]
    assert "a choice, not read from the image" in f["summary"]
    assert f["change"]["set"] == {"runAsUser": 10001, "runAsNonRoot": True}
    assert f["proof"]["dockerfile"]["state"] == "compliant"


def test_a_root_image_whose_passwd_was_not_read_says_so():
    f = fix.remediation(one(pod(), {"img": ""}))
    assert "was not read" in f["summary"]
    assert f["dockerfile"][0].startswith("# Alpine")


def test_user_root_by_name_is_a_root_image():
    root = {"name": "root", "uid": 0, "gid": 0, "layer": "sha256:" + "c" * 64, "line": 1}
    v = one(pod(sc={"runAsNonRoot": True}), {"img": "root"})
    f = fix.remediation(v, Account(user=root, fit=NODE, read=True))
    assert f["kind"] == "image-user" and f["uid"] == 1000


def test_not_enforced_gets_run_as_non_root_only():
    f = fix.remediation(one(pod(), {"img": "1000"}))
    assert f["kind"] == "enforce"
    assert f["change"]["set"] == {"runAsNonRoot": True} and f["dockerfile"] is None


def test_unverified_says_how_to_verify_and_changes_nothing():
    f = fix.remediation(one(pod(sc={"runAsNonRoot": True})))
    assert f["kind"] == "verify" and f["change"] is None and f["uid"] is None
    assert "--image-user IMAGE=USER" in fix.plain(f["steps"][1])


def test_privileged_takes_the_exception_path():
    f = fix.remediation(one(pod([c(privileged=True)]), {"img": ""}))
    assert f["exception"] is True and f["change"] is None


def test_windows_as_before():
    v = one(pod(sc={"runAsNonRoot": True}, os_name="windows"), {"img": "ContainerAdministrator"})
    f = fix.remediation(v)
    assert f["change"]["set"]["windowsOptions"] == {"runAsUserName": "ContainerUser"}
    assert f["proof"]["workload"]["state"] == "compliant"


# --- the property: a suggested change always comes out compliant ---------------------------

USERS = ["", "0", "1000", "1000:1000", "node", "root", "2147483648", "-1", ":5"]
accounts = st.sampled_from(
    [
        None,
        Account(read=True),
        Account(user=NODE, read=True),
        Account(fit=NGINX, family="alpine", read=True),
        Account(error="timed out"),
        Account(missing="/etc/passwd deleted in layer sha256:...", read=True),
    ]
)


KEYS = runas.SPEC_KEYS


def check(v, account, p=None, users=None):
    f = fix.remediation(v, account)
    if p is not None and f["change"] is not None:
        # Applied to the real pod, not the proof's reconstruction, it still comes out
        # compliant (the reconstruction is what the page can do from a stored finding).
        after = runas.evaluate_pod(fix.apply_to_pod(p, KEYS[v.type], v.name, f["change"]), users)
        before = runas.evaluate_pod(p, users)
        # The other containers of the pod are as they were: the change touches this one.
        others = [(x.type, x.name, x.state) for x in before.containers if x.name != v.name]
        assert others == [
            (x.type, x.name, x.state) for x in after.containers if x.name != v.name
        ], (p, f)
        assert (
            next(x for x in after.containers if x.name == v.name and x.type == v.type).state
            == "compliant"
        ), (p, f)
    assert f["kind"] in fix.FIX_KINDS
    if f["change"] is not None:
        assert f["proof"]["workload"]["state"] == "compliant", (v, f)
        if f["proof"]["dockerfile"]:
            assert f["proof"]["dockerfile"]["state"] == "compliant", (v, f)
    else:
        assert f["kind"] in ("none", "exception", "verify", "uid-unknown"), f
    if f["uid"] is not None:  # a uid is stated only with where it came from
        assert f["uid_source"] or f["kind"] == "enforce"


@settings(max_examples=600, suppress_health_check=[HealthCheck.too_slow])
@given(pods, st.dictionaries(st.sampled_from(["a", "b", "c"]), st.sampled_from(USERS)), accounts)
def test_every_suggested_change_is_compliant_when_applied(p, users, account):
    try:
        verdict = runas.evaluate_pod(p, users)
    except ValueError:
        return
    for v in verdict.containers:
        check(v, account, p, users)


@pytest.mark.parametrize("user", USERS + [None])
@pytest.mark.parametrize(
    "pod_sc", [None, {"runAsNonRoot": True}, {"runAsUser": 0}, {"runAsNonRoot": False}]
)
@pytest.mark.parametrize(
    "ctr_sc", [{}, {"runAsUser": 0}, {"runAsNonRoot": True}, {"runAsUser": 0, "runAsNonRoot": True}]
)
def test_every_combination(user, pod_sc, ctr_sc):
    p = pod([c(**ctr_sc)], sc=pod_sc)
    users = {} if user is None else {"img": user}
    for account in (None, Account(user=NODE, fit=NGINX, read=True), Account(error="x")):
        check(one(p, users), account, p, users)


def test_user_name_and_group_both_become_numbers():
    staff = {"name": "staff", "gid": 50, "layer": "sha256:" + "d" * 64, "line": 7}
    v = one(pod(sc={"runAsNonRoot": True}), {"img": "node:staff"})
    f = fix.remediation(v, Account(user=NODE, group=staff, read=True))
    assert f["dockerfile"] == ["USER 1000:50"] and f["uid_name"] == "node"
    assert "/etc/group line 7" in fix.plain(f["steps"][0])
    assert f["proof"]["dockerfile"]["state"] == "compliant"


def stored(kind="Deployment", container_type="app"):
    from types import SimpleNamespace

    return SimpleNamespace(
        state="unenforced",
        detail={},
        image="img",
        image_user="1000",
        uid=1000,
        run_as_user=None,
        run_as_non_root=None,
        namespace="shop",
        workload_kind=kind,
        workload_name="web",
        container="app",
        container_type=container_type,
        cluster=SimpleNamespace(name="prod", context="prod-admin"),
    )


def test_a_bare_pods_patch_is_at_spec_and_an_ephemeral_container_has_none():
    from compliance.rules import explain

    pod_fix = explain.remediation(stored("Pod"))
    assert pod_fix["patch"] == {
        "spec": {"containers": [{"name": "app", "securityContext": {"runAsNonRoot": True}}]}
    }
    assert pod_fix["kubectl"] is None and "cannot be patched in place" in pod_fix["note"]
    eph = explain.remediation(stored(container_type="ephemeral"))
    assert eph["patch"] is None and eph["kubectl"] is None and "kubectl debug" in eph["note"]
    d = explain.remediation(stored())
    assert d["kubectl"].startswith("kubectl --context prod-admin -n shop patch deployment web")
