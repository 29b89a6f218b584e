"""The ISO 27001 mapping and remediation text."""

import pytest

from compliance.rules import controls, runas
from tests.builders import c, one, pod


def test_it_maps_every_state_to_known_controls_with_a_rationale():
    assert set(controls.MAPPING) == set(runas.STATES)
    for _state, mapping in controls.MAPPING.items():
        for control_id, why in mapping.items():
            assert control_id in controls.CONTROLS
            assert why.strip()
    assert controls.controls_for("compliant") == ()
    assert controls.controls_for("root") == ("A.9.4.4", "A.12.6.1", "A.14.2.5")


def test_it_gives_2022_numbers():
    assert {c.id: c.id_2022 for c in controls.CONTROLS.values()} == {
        "A.9.4.4": "8.18",
        "A.12.6.1": "8.8",
        "A.14.2.5": "8.27",
    }
    assert controls.CONTROLS["A.9.4.4"].label == "8.18 (2013: A.9.4.4)"


def test_it_gives_the_numeric_form_of_a_named_user():
    fix = controls.remediation(one(pod(sc={"runAsNonRoot": True}), {"img": "node"}))
    assert fix["dockerfile"] == "USER 1000"
    assert "replace `USER node` with `USER 1000`" in fix["steps"][0]
    fix = controls.remediation(one(pod(sc={"runAsNonRoot": True}), {"img": "nobody:nogroup"}))
    assert fix["dockerfile"] == "USER 65534"


def test_it_adds_user_1000_for_an_image_without_user():
    fix = controls.remediation(one(pod(sc={"runAsNonRoot": True}), {"img": ""}))
    assert fix["dockerfile"] == "USER 1000"
    assert fix["security_context"]["fields"] == {"runAsNonRoot": True, "runAsUser": 1000}


@pytest.mark.parametrize(
    "p,level",
    [
        (pod([c(runAsUser=0)], sc={"runAsNonRoot": True}), "container"),
        (pod([c()], sc={"runAsNonRoot": True, "runAsUser": 0}), "pod"),
        (pod([c()]), "container"),
        (pod([c(runAsNonRoot=False)], sc={"runAsUser": 0}), "container"),
    ],
)
def test_it_places_the_security_context_at_the_level_that_set_it(p, level):
    assert controls.remediation(one(p, {"img": ""}))["security_context"]["level"] == level


def test_it_adds_only_run_as_non_root_when_unenforced():
    fix = controls.remediation(one(pod(), {"img": "1000"}))
    assert fix["security_context"]["fields"] == {"runAsNonRoot": True}
    assert fix["dockerfile"] is None


def test_it_suggests_container_user_on_windows():
    v = one(pod(sc={"runAsNonRoot": True}, os_name="windows"), {"img": "ContainerAdministrator"})
    fix = controls.remediation(v)
    assert fix["security_context"]["fields"]["windowsOptions"] == {"runAsUserName": "ContainerUser"}
