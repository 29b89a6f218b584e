"""`welkin-evaluate --resolve` reads the uid behind a named USER from the image's own
/etc/passwd in a real registry (TLS, a test CA), and prints the same fix the page shows,
with file and line."""

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from tests.registries import Registries, tar_layer

pytestmark = pytest.mark.uses_registry
WELKIN_EVALUATE = Path(sys.executable).parent / "welkin-evaluate"


@pytest.fixture(scope="module")
def regs():
    r = Registries()
    yield r
    r.stop()


def run(*args, cwd, env):
    p = subprocess.run(
        [str(WELKIN_EVALUATE), *map(str, args)],
        capture_output=True,
        text=True,
        env={"PATH": os.environ["PATH"], **env},
        cwd=cwd,
        timeout=120,
    )
    return p.returncode, p.stdout, p.stderr


def test_resolve_gives_the_uid_from_etc_passwd_and_the_proven_fix(regs, tmp_path):
    passwd = (
        b"root:x:0:0::/root:/bin/sh\nbin:x:1:1::/:/bin/false\n"
        b"node:x:1000:1000::/home/node:/bin/sh\n"
    )
    group = b"root:x:0:\nstaff:x:50:node\n"
    regs.push_layered_image(
        "team/web",
        "1",
        [tar_layer({"etc/passwd": passwd, "etc/group": group}), tar_layer({"srv/app": b"x"})],
        user="node:staff",
    )
    ca = tmp_path / "ca.pem"
    ca.write_text(regs.ca_pem)
    image = f"{regs.tls.host}/team/web:1"
    pod = tmp_path / "web.yaml"
    pod.write_text(
        "apiVersion: v1\nkind: Pod\nmetadata: {name: web, namespace: shop}\nspec:\n"
        "  securityContext: {runAsNonRoot: true}\n"
        f"  containers:\n  - name: app\n    image: {image}\n"
    )
    env = {"SSL_CERT_FILE": str(ca)}
    code, out, err = run("--resolve", "--format", "json", pod, cwd=tmp_path, env=env)
    c = json.loads(out)["objects"][0]["containers"][0]
    assert (c["state"], c["image_user"]) == ("blocked", "node:staff"), err
    fix = c["remediation"]
    assert fix["kind"] == "numeric-user" and fix["uid"] == 1000
    assert fix["dockerfile"] == ["USER 1000:50"]  # staff's gid, from /etc/group
    assert fix["uid_source"].startswith("/etc/passwd in layer sha256:")
    assert fix["uid_source"].endswith(", line 3")
    assert fix["proof"]["workload"]["state"] == "compliant"
    code, out, _ = run("--resolve", pod, cwd=tmp_path, env=env)
    assert code == 1
    assert "web.yaml:7:5" in out  # file, line and column of the container
    assert "fix: The image's USER is the name 'node'" in out and "line 3" in out
    # Without --resolve the uid is not known: the fix says so, and guesses nothing.
    code, out, _ = run(
        "--format", "json", "--image-user", f"{image}=node:staff", pod, cwd=tmp_path, env=env
    )
    fix = json.loads(out)["objects"][0]["containers"][0]["remediation"]
    assert fix["kind"] == "uid-unknown" and fix["uid"] is None and "1000" not in fix["one_line"]


def pip_venv(tmp_path, extra: str) -> Path:
    """welkin-dash installed as a CI job installs it: pip install into an empty venv."""
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True, timeout=120)
    # A copy of what pip packages, so the build leaves nothing (build/) in the checkout.
    root, src = Path(__file__).resolve().parents[2], tmp_path / "src"
    src.mkdir()
    shutil.copy(root / "pyproject.toml", src)
    for package in ("compliance", "welkin_dash"):
        shutil.copytree(root / package, src / package, ignore=shutil.ignore_patterns("__pycache__"))
    subprocess.run(
        [str(venv / "bin" / "pip"), "install", "-q", f"{src}{extra}"],
        check=True,
        timeout=600,
        capture_output=True,
    )
    return venv / "bin" / "welkin-evaluate"


def test_resolve_after_a_plain_pip_install_with_its_cache(regs, tmp_path):
    passwd = b"root:x:0:0::/root:/bin/sh\nnode:x:1000:1000::/home/node:/bin/sh\n"
    regs.push_layered_image("team/pip", "1", [tar_layer({"etc/passwd": passwd})], user="node")
    ca = tmp_path / "ca.pem"
    ca.write_text(regs.ca_pem)
    pod = tmp_path / "pod.yaml"
    pod.write_text(
        "kind: Pod\nmetadata: {name: p}\nspec:\n  securityContext: {runAsNonRoot: true}\n"
        f"  containers:\n  - {{name: a, image: '{regs.tls.host}/team/pip:1'}}\n"
    )
    evaluate = pip_venv(tmp_path, "[resolve]")
    cache = tmp_path / "cache"

    def resolve(cert):
        p = subprocess.run(
            [str(evaluate), "--resolve", "--cache", str(cache), "--format", "json", str(pod)],
            capture_output=True,
            text=True,
            env={"PATH": "/usr/bin:/bin", "HOME": str(tmp_path), "SSL_CERT_FILE": str(cert)},
            timeout=120,
        )
        assert "Traceback" not in p.stderr and "django" not in p.stderr.lower(), p.stderr
        return p.returncode, json.loads(p.stdout)["objects"][0]["containers"][0]

    code, c = resolve(ca)
    assert (code, c["state"], c["image_user"]) == (1, "blocked", "node")
    assert c["remediation"]["uid"] == 1000 and c["remediation"]["dockerfile"] == ["USER 1000"]
    assert list((cache / "images").glob("*.json")) and list((cache / "layers").glob("*.json"))
    # Again with TLS verification failing: the answers come from the cache, not the registry.
    code, again = resolve(tmp_path / "no-such-ca.pem")
    assert (code, again["image_user"], again["remediation"]["uid"]) == (1, "node", 1000)


def test_resolve_without_the_extra_says_what_to_install(tmp_path):
    evaluate = pip_venv(tmp_path, "")
    pod = tmp_path / "pod.yaml"
    pod.write_text(
        "kind: Pod\nmetadata: {name: p}\nspec:\n  containers:\n  - {name: a, image: x}\n"
    )
    p = subprocess.run(
        [str(evaluate), "--resolve", str(pod)],
        capture_output=True,
        text=True,
        env={"PATH": "/usr/bin:/bin", "HOME": str(tmp_path)},
        timeout=120,
    )
    assert p.returncode == 2, p.stderr  # not 1: the gate did not fail, it could not run
    assert "pip install 'welkin-dash[resolve]' (" in p.stderr and "is missing)" in p.stderr


def test_the_disk_cache_believes_only_its_own_regular_files(tmp_path):
    from compliance.ci import cli
    from compliance.ci.resolve import MAX_ENTRY, DiskCache

    cache = DiskCache(tmp_path / "c")
    cache.write("images", "k", {"user": "1000"})
    assert cache.read("images", "k")["user"] == "1000"
    path = cache._path("images", "k")
    path.unlink()
    (tmp_path / "planted.json").write_text(json.dumps({"key": "k", "user": "0"}))
    path.symlink_to(tmp_path / "planted.json")  # a link is not followed
    assert cache.read("images", "k") is None
    path.unlink()
    path.write_bytes(b'{"key": "k", "user": "0", "pad": "' + b"x" * MAX_ENTRY + b'"}')
    assert cache.read("images", "k") is None  # larger than an entry can be
    (tmp_path / "afile").write_text("")
    pod = tmp_path / "p.yaml"
    pod.write_text(
        "kind: Pod\nmetadata: {name: p}\nspec:\n  containers:\n  - {name: a, image: x}\n"
    )
    assert cli.main(["--resolve", "--cache", str(tmp_path / "afile"), str(pod)]) == 2
