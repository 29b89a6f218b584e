"""The fix, as a team lead uses it: read off the finding page in a real browser (its copy
button included), applied with the real kubectl to the workload's manifest
(`kubectl patch --local`), and the result evaluated again by welkin-evaluate."""

import json
import os
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from compliance import demo
from compliance.models import Finding
from compliance.rules import explain, fix
from compliance.vocabulary import WORKLOAD_KINDS
from tests.builders import CHROMIUM, SHOTS

PASSWORD = "browser-pass"
KUBECTL = shutil.which("kubectl") or "/usr/bin/kubectl"
EVALUATE = str(Path(sys.executable).with_name("welkin-evaluate"))

pytestmark = [
    pytest.mark.django_db(transaction=True),
    pytest.mark.skipif(not os.path.exists(CHROMIUM), reason="chromium missing"),
    pytest.mark.skipif(not os.path.exists(KUBECTL), reason="kubectl missing"),
]

KINDS = ("numeric-user", "remove-run-as-user", "image-user", "enforce")
API = {"CronJob": "batch/v1", "Job": "batch/v1"}


def manifest(f: Finding) -> dict:
    """The workload as the scan saw it: its securityContexts at the levels they were set,
    its pod template where its kind keeps one."""
    pod_sc, ctr_sc = fix.levels_of(explain.verdict_of(f))
    container = {"name": f.container, "image": f.image}
    if ctr_sc:
        container["securityContext"] = ctr_sc
    spec = {"containers": [container], "restartPolicy": "Never"}
    if f.workload_kind not in ("CronJob", "Job"):
        spec.pop("restartPolicy")
    if pod_sc:
        spec["securityContext"] = pod_sc
    template: dict = {"metadata": {"labels": {"app": f.workload_name}}, "spec": spec}
    path = WORKLOAD_KINDS[f.workload_kind].template
    for key in reversed(path[1:]):
        template = {key: template}
    body = (
        template
        if f.workload_kind != "Deployment"
        else {**template, "selector": {"matchLabels": {"app": f.workload_name}}}
    )
    if f.workload_kind == "CronJob":
        body["schedule"] = "0 3 * * *"
    return {
        "apiVersion": API.get(f.workload_kind, "apps/v1"),
        "kind": f.workload_kind,
        "metadata": {"name": f.workload_name, "namespace": f.namespace},
        "spec": body,
    }


def evaluate(path: Path, image: str, user: str) -> dict:
    out = subprocess.run(
        [EVALUATE, "--format", "json", "--image-user", f"{image}={user}", str(path)],
        capture_output=True,
        text=True,
        check=False,
    )
    assert out.returncode in (0, 1), out.stderr
    return json.loads(out.stdout)["objects"][0]["containers"][0]


def test_the_fix_read_off_the_page_applied_with_kubectl_makes_it_compliant(
    browser, live_server, tmp_path
):
    demo.load(PASSWORD)
    # One finding of each kind of fix, among the lead's namespaces (payments, web).
    cases = {}
    for f in (
        Finding.objects.filter(namespace__in=["payments", "web"], resolved_at__isnull=True)
        .select_related("cluster")
        .order_by("pk")
    ):
        cases.setdefault(explain.remediation(f)["kind"], f)
    assert set(KINDS) <= set(cases), sorted(cases)
    context = browser.new_context(viewport={"width": 1280, "height": 1000})
    context.grant_permissions(["clipboard-read", "clipboard-write"], origin=live_server.url)
    page = context.new_page()
    page.goto(live_server.url + "/")
    page.fill("#id_username", "lead")
    page.fill("#id_password", PASSWORD)
    page.click("button[type=submit]")
    page.wait_for_url(live_server.url + "/")
    for kind in KINDS:
        f = cases[kind]
        cluster, ns, name = f.cluster.name, f.namespace, f.workload_name
        before = tmp_path / f"{name}-before.yaml"
        before.write_text(yaml.safe_dump(manifest(f)))
        assert evaluate(before, f.image, f.image_user)["state"] != "compliant"

        page.goto(f"{live_server.url}/findings/{f.pk}/")
        SHOTS.mkdir(parents=True, exist_ok=True)
        page.screenshot(path=str(SHOTS / f"lead-fix-{kind}.png"), full_page=True)
        assert "compliant" in page.inner_text("#fix-proof")
        shown = page.inner_text("#fix-kubectl")
        page.click("button[data-copy=fix-kubectl]")
        page.wait_for_function(
            "document.querySelector('button[data-copy=fix-kubectl]').textContent === 'Copied'"
        )
        copied = page.evaluate("navigator.clipboard.readText()")
        assert copied == shown
        argv = shlex.split(copied)
        assert argv[:5] == ["kubectl", "--context", cluster, "-n", ns]
        patch = argv[argv.index("-p") + 1]

        patched = subprocess.run(
            [
                KUBECTL,
                "patch",
                "--local",
                "-f",
                str(before),
                "--type",
                "strategic",
                "-p",
                patch,
                "-o",
                "yaml",
            ],
            capture_output=True,
            text=True,
            check=True,
        ).stdout
        after = tmp_path / f"{name}-after.yaml"
        after.write_text(patched)
        result = evaluate(after, f.image, f.image_user)
        assert result["state"] == "compliant", (kind, patched, result)
        # The Dockerfile line, where there is one, is proven too: the image rebuilt with it
        # and the workload's stopgap runAsUser gone.
        if page.locator("#fix-dockerfile").count():
            user = page.inner_text("#fix-dockerfile").splitlines()[-1].removeprefix("USER ")
            rebuilt = yaml.safe_load(patched)
            pod = rebuilt
            for key in WORKLOAD_KINDS[f.workload_kind].pod_spec:
                pod = pod[key]
            sc = pod["containers"][0]["securityContext"]
            sc.pop("runAsUser", None)
            sc["runAsNonRoot"] = True
            again = tmp_path / f"{name}-rebuilt.yaml"
            again.write_text(yaml.safe_dump(rebuilt))
            assert evaluate(again, f.image, user)["state"] == "compliant"
    context.close()
