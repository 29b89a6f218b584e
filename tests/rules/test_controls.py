"""The ISO 27001 mapping and remediation text."""

from compliance.rules import controls, runas


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
