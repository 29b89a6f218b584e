"""`manage.py evaluate`: formats, exit codes and bad input."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
FIXTURES = Path(__file__).parents[1] / "fixtures"

DEPLOYMENT = """\
apiVersion: apps/v1
kind: Deployment
metadata: {name: api, namespace: shop}
spec:
  template:
    spec:
      securityContext: {runAsNonRoot: true}
      containers:
      - {name: api, image: "node:22"}
"""
CRONJOB = """\
apiVersion: batch/v1
kind: CronJob
metadata: {name: nightly, namespace: ops}
spec:
  jobTemplate:
    spec:
      template:
        spec:
          containers:
          - {name: job, image: "etl:1", securityContext: {runAsNonRoot: true, runAsUser: 1000}}
"""


def run(*args, stdin=None):
    env = {**os.environ, "DEBUG": "1"}
    env.pop("DATABASE_URL", None)
    env["WELKIN_VAR_DIR"] = "/tmp/welkin-dash-test-var"
    p = subprocess.run(
        [sys.executable, "manage.py", "evaluate", *map(str, args)],
        cwd=ROOT,
        input=stdin,
        capture_output=True,
        text=True,
        env=env,
        timeout=60,
    )
    return p.returncode, p.stdout, p.stderr


@pytest.fixture
def files(tmp_path):
    def write(name, text):
        path = tmp_path / name
        path.write_text(text)
        return path

    return write


def test_it_gives_the_welkin_page_errors(files):
    code, out, err = run(
        "--format",
        "json",
        "--image-user",
        "docker.io/library/node:22=node",
        "--image-user",
        "docker.io/library/nginx:1.27=",
        FIXTURES / "welkin-pods.json",
    )
    assert code == 1, err
    doc = json.loads(out)
    errors = [c["kubelet_error"] for o in doc["objects"] for c in o["containers"]]
    assert any("image has non-numeric user (node)" in (e or "") for e in errors)
    assert any("image will run as root" in (e or "") for e in errors)
    assert doc["summary"] == {
        "compliant": 1,
        "unenforced": 0,
        "root": 0,
        "blocked": 2,
        "unverified": 0,
    }


def test_it_prints_the_documented_json_keys(files):
    f = files("d.yaml", DEPLOYMENT + "---\n" + CRONJOB)
    code, out, _ = run("--format", "json", "--image-user", "node:22=node", f)
    doc = json.loads(out)
    assert code == 1
    obj = doc["objects"][0]
    assert {"kind", "namespace", "name", "psa_restricted", "containers"} <= set(obj)
    assert set(obj["psa_restricted"]) == {"allowed", "violations"}
    assert {
        "name",
        "type",
        "image",
        "run_as_user",
        "run_as_non_root",
        "image_user",
        "uid",
        "runs_as_root",
        "kubelet_error",
        "evidence",
        "state",
        "controls_2022",
        "controls_2013",
        "remediation",
    } <= set(obj["containers"][0])
    assert (obj["kind"], obj["namespace"], obj["name"]) == ("Deployment", "shop", "api")
    assert obj["containers"][0]["controls_2022"] == ["8.27"]
    assert obj["containers"][0]["controls_2013"] == ["A.14.2.5"]
    assert obj["containers"][0]["kubelet_error"].startswith(
        "container has runAsNonRoot and image has non-numeric user (node)"
    )
    cron = doc["objects"][1]
    assert (cron["kind"], cron["containers"][0]["state"]) == ("CronJob", "compliant")


def test_it_exits_0_without_root_or_blocked(files):
    code, out, _ = run(files("c.yaml", CRONJOB))
    assert code == 0
    assert "compliant" in out


def test_it_reads_stdin_and_kubectl_lists():
    data = (FIXTURES / "welkin-pods.json").read_text()
    code, out, _ = run("--format", "json", "-", stdin=data)
    # Images unknown: the two refusals come from the pods' status, the fixed one from
    # its explicit runAsUser.
    states = [c["state"] for o in json.loads(out)["objects"] for c in o["containers"]]
    assert (code, states) == (1, ["blocked", "blocked", "compliant"])


def test_it_takes_observed_refusals_without_image_users():
    code, out, _ = run("--format", "json", FIXTURES / "welkin-pods.json")
    doc = json.loads(out)
    c = doc["objects"][0]["containers"][0]
    assert (c["state"], c["evidence"], c["image_user"]) == ("blocked", "observed", "node")
    assert code == 1


def test_it_reads_image_users_from_a_file(files):
    users = files("users.json", json.dumps({"node:22": ""}))
    code, out, _ = run("--format", "json", "--image-users", users, files("d.yaml", DEPLOYMENT))
    c = json.loads(out)["objects"][0]["containers"][0]
    assert c["kubelet_error"].startswith("container has runAsNonRoot and image will run as root")


def test_it_colours_nothing_when_not_a_terminal(files):
    code, out, _ = run("--image-user", "node:22=node", files("d.yaml", DEPLOYMENT))
    assert "\x1b[" not in out
    assert "blocked" in out and "kubelet: container has runAsNonRoot" in out


@pytest.mark.parametrize(
    "text,message",
    [
        ("{not json", "invalid JSON"),
        ("[" * 100_000, "invalid JSON: depth limit exceeded"),  # was a RecursionError
        ("[" * 1010 + "]" * 1010, "invalid JSON: nested too deeply"),
        (  # PyYAML keeps the last; kubectl refuses: the gate must not judge a guess
            "kind: Pod\nmetadata: {name: p}\nspec:\n  securityContext: {runAsUser: 0}\n"
            "  securityContext: {runAsUser: 1000}\n  containers: [{name: a, image: x}]\n",
            "invalid YAML at line 5, column 3: the key 'securityContext' is given twice",
        ),
        (
            '{"kind": "Pod", "metadata": {"name": "p"}, "spec": {"securityContext": '
            '{"runAsUser": 0}, "securityContext": {"runAsUser": 1000}, "containers": []}}',
            "invalid JSON at line 1, column 90: the key 'securityContext' is given twice",
        ),
        ("a: [b\n", "invalid YAML at line"),
        (
            "kind: Deployment\nmetadata: {name: d}\nspec:\n  template:\n    spec:\n"
            "      containers: {name: a}\n",
            "spec.containers: expected a list",
        ),
        (
            "kind: Pod\nmetadata: {name: p}\nspec:\n  containers:\n  - {name: a, image: x, "
            "securityContext: {runAsUser: root}}\n",
            "spec.containers[0].securityContext.runAsUser: expected an integer, got string",
        ),
    ],
)
def test_it_names_what_is_wrong_and_exits_2(files, text, message):
    f = files("bad.yaml", text)
    code, out, err = run(f)
    assert code == 2
    assert message in err
    assert str(f) in err
    assert "Traceback" not in err


def test_it_keeps_the_results_of_the_other_documents(files):
    bad = "kind: Pod\nmetadata: {name: p}\nspec: {containers: 3}\n"
    f = files("mixed.yaml", DEPLOYMENT + "---\n" + bad + "---\n" + CRONJOB)
    code, out, err = run("--format", "json", f)
    assert code == 2
    doc = json.loads(out)
    assert [o["name"] for o in doc["objects"]] == ["api", "nightly"]
    assert f"{f}: document 2 (Pod default/p): spec.containers: expected a list" in err


def test_it_names_a_bad_item_in_a_list(files):
    items = {
        "kind": "PodList",
        "items": [
            {"metadata": {"name": "good"}, "spec": {"containers": [{"name": "a", "image": "x"}]}},
            {"metadata": {"name": "bad"}, "spec": {"containers": [{"image": "x"}]}},
        ],
    }
    f = files("list.json", json.dumps(items))
    code, out, err = run("--format", "json", f)
    assert code == 2
    assert "items[1] (Pod default/bad): spec.containers[0].name: required" in err
    assert json.loads(out)["objects"][0]["name"] == "good"


@pytest.mark.parametrize(
    "args,message",
    [
        (["--image-user", "nginx"], "expected IMAGE=USER"),
        (["--image-users", "/nonexistent.json"], "No such file"),
    ],
)
def test_it_rejects_bad_image_user_options(files, args, message):
    code, _, err = run(*args, files("c.yaml", CRONJOB))
    assert code == 2
    assert message in err


def test_it_reports_a_missing_file_and_still_evaluates_the_others(files):
    code, out, err = run("/nonexistent.yaml", files("c.yaml", CRONJOB))
    assert code == 2
    assert "/nonexistent.yaml: cannot read" in err
    assert "nightly" in out
