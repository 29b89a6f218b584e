"""Image USER resolution against real registries (Debian's docker-registry on loopback),
through scans of the fake API server."""

import hashlib
import json
import time

import pytest
from django.core.management import call_command

from compliance.collect import images, registry, scanning
from compliance.collect.registry import ImageRef, Platform, RegistryClient, RegistryConfig
from compliance.models import Finding, ImageCache, ImageUserOverride, Registry
from compliance.rules import explain
from tests import podgen
from tests.registries import OCI_MANIFEST, ROOT_CONFIG, FaultServer, Registries, tar_layer

pytestmark = pytest.mark.uses_registry

USERS = {
    "none": "",
    "zero": "0",
    "uid": "1000:1000",
    "node": "node",
    "nobody": "nobody",
    "root": "root",
}


@pytest.fixture(scope="module")
def regs():
    r = Registries()
    for repo, user in USERS.items():
        r.push_image(f"img/{repo}", "1", user)
    r.push_image("img/noconfig", "1", None)
    r.push_index("img/multi", "1", {("linux", "amd64"): "1000", ("linux", "arm64"): "node"})
    r.push_image("public/app", "1", "1000")
    r.push_image("img/garbage", "1", "x", config_bytes=b"not json at all")
    r.swap_good = r.push_image("img/swap", "good", "1000")
    r.swap_evil = r.push_image("img/swap", "evil", "0")
    yield r
    r.stop()


def plain(regs):
    return RegistryClient({regs.plain.host: RegistryConfig(regs.plain.host, plain_http=True)})


# --- references ---


@pytest.mark.parametrize(
    "ref,expected",
    [
        ("nginx", ("docker.io", "library/nginx", "latest", None)),
        ("nginx:1.27", ("docker.io", "library/nginx", "1.27", None)),
        ("bitnami/redis", ("docker.io", "bitnami/redis", "latest", None)),
        ("docker.io/nginx", ("docker.io", "library/nginx", "latest", None)),
        ("index.docker.io/library/nginx:1", ("docker.io", "library/nginx", "1", None)),
        ("ghcr.io/acme/app:v2", ("ghcr.io", "acme/app", "v2", None)),
        (
            "registry.example.com:5000/team/app",
            ("registry.example.com:5000", "team/app", "latest", None),
        ),
        ("localhost/app:dev", ("localhost", "app", "dev", None)),
        ("nginx@sha256:" + "a" * 64, ("docker.io", "library/nginx", None, "sha256:" + "a" * 64)),
        (
            "quay.io/p/node-exporter:v1@sha256:" + "b" * 64,
            ("quay.io", "p/node-exporter", "v1", "sha256:" + "b" * 64),
        ),
    ],
)
def test_it_normalises_references_like_the_runtimes(ref, expected):
    r = ImageRef.parse(ref)
    assert (r.domain, r.repository, r.tag, r.digest) == expected


def test_it_serves_docker_hub_from_registry_1():
    assert ImageRef.parse("nginx").api_host == "registry-1.docker.io"
    assert ImageRef.parse("ghcr.io/a/b").api_host == "ghcr.io"


@pytest.mark.parametrize("ref", ["", "UPPER/case", "nginx@sha256:short", "a b", "nginx:bad tag"])
def test_it_rejects_invalid_references(ref):
    with pytest.raises(registry.ReferenceError):
        ImageRef.parse(ref)


def test_it_reads_digests_from_image_ids():
    d = "sha256:" + "c" * 64
    assert registry.digest_from_image_id(f"docker.io/library/nginx@{d}") == d
    assert registry.digest_from_image_id(f"docker-pullable://nginx@{d}") == d
    assert registry.digest_from_image_id(d) is None
    assert registry.digest_from_image_id(None) is None


# --- resolution ---


@pytest.mark.parametrize("repo", list(USERS))
def test_it_reads_the_config_user(regs, repo):
    res = plain(regs).resolve(ImageRef.parse(f"{regs.plain.host}/img/{repo}:1"))
    assert (res.user, res.error) == (USERS[repo], None)
    assert res.digest.startswith("sha256:") and res.config_digest.startswith("sha256:")


def test_an_image_config_without_config_section_has_no_user(regs):
    assert plain(regs).resolve(ImageRef.parse(f"{regs.plain.host}/img/noconfig:1")).user == ""


def test_it_picks_the_platform_from_an_index(regs):
    ref = ImageRef.parse(f"{regs.plain.host}/img/multi:1")
    c = plain(regs)
    assert c.resolve(ref).user == "1000"
    assert c.resolve(ref, Platform("linux", "arm64")).user == "node"
    res = c.resolve(ref, Platform("windows", "amd64"))
    assert res.user is None and "no windows/amd64 image in the index" in res.error


def test_it_prefers_the_digest_over_a_moved_tag(regs):
    old = regs.push_image("img/moving", "stable", "1000")
    regs.push_image("img/moving", "stable", "node")
    ref = ImageRef.parse(f"{regs.plain.host}/img/moving:stable")
    assert plain(regs).resolve(ref).user == "node"
    assert plain(regs).resolve(ref.with_digest(old)).user == "1000"


def test_it_verifies_tls_with_the_registry_ca(regs):
    ref = ImageRef.parse(f"{regs.tls.host}/img/node:1")
    ok = RegistryClient({regs.tls.host: RegistryConfig(regs.tls.host, ca_pem=regs.ca_pem)})
    assert ok.resolve(ref).user == "node"
    res = RegistryClient().resolve(ref)
    assert res.user is None and "TLS verification failed" in res.error


def test_it_follows_the_bearer_token_flow(regs):
    host = regs.token.host
    public = RegistryClient({host: RegistryConfig(host, plain_http=True)})
    assert public.resolve(ImageRef.parse(f"{host}/public/app:1")).user == "1000"
    anonymous = public.resolve(ImageRef.parse(f"{host}/img/node:1"))
    assert anonymous.error == f"{host}: 401 unauthorized for {host}/img/node:1"
    c = RegistryClient({host: RegistryConfig(host, "reader", "s3cret", plain_http=True)})
    assert c.resolve(ImageRef.parse(f"{host}/img/node:1")).user == "node"
    before = c.requests
    assert c.resolve(ImageRef.parse(f"{host}/img/node:1")).user == "node"
    assert c.requests - before == 2  # the token is reused: manifest and config only
    wrong = RegistryClient({host: RegistryConfig(host, "reader", "nope", plain_http=True)})
    assert wrong.resolve(ImageRef.parse(f"{host}/img/node:1")).error == f"{host}: 401 unauthorized"


def test_it_uses_basic_credentials(regs):
    host = regs.basic.host
    c = RegistryClient({host: RegistryConfig(host, "basicuser", "basicpass", plain_http=True)})
    assert c.resolve(ImageRef.parse(f"{host}/img/zero:1")).user == "0"
    res = RegistryClient({host: RegistryConfig(host, plain_http=True)}).resolve(
        ImageRef.parse(f"{host}/img/zero:1")
    )
    assert res.error == f"{host}: 401 unauthorized (credentials required)"


@pytest.mark.parametrize(
    "mode,reason",
    [("429", "429 rate limited (TOOMANYREQUESTS)"), ("malformed", "malformed manifest")],
)
def test_it_reports_faults_as_reasons(mode, reason):
    fault = FaultServer(mode)
    try:
        c = RegistryClient({fault.host: RegistryConfig(fault.host, plain_http=True)})
        res = c.resolve(ImageRef.parse(f"{fault.host}/x/y:1"))
        assert res.user is None and reason in res.error
    finally:
        fault.stop()


def test_it_reports_unreachable_and_missing_images(regs):
    res = RegistryClient({"127.0.0.1:9": RegistryConfig("127.0.0.1:9", plain_http=True)}).resolve(
        ImageRef.parse("127.0.0.1:9/x/y:1")
    )
    assert res.error.startswith("127.0.0.1:9: unreachable")
    res = plain(regs).resolve(ImageRef.parse(f"{regs.plain.host}/img/nothere:1"))
    assert res.error.startswith(f"{regs.plain.host}: 404 not found")
    res = plain(regs).resolve(ImageRef.parse(f"{regs.plain.host}/img/garbage:1"))
    assert "malformed image config" in res.error


# --- through a scan ---


@pytest.fixture
def cluster(cluster, regs):
    """The shared cluster, with the plain test registry configured."""
    Registry.objects.create(host=regs.plain.host, plain_http=True)
    return cluster


def put_pods(fake, images_by_name, sc=None, status_digest=None):
    for name, image in images_by_name.items():
        p = podgen.pod("shop", name, image, sc if sc is not None else {"runAsNonRoot": True}, {})
        if status_digest is not None:
            p["status"]["containerStatuses"][0]["imageID"] = status_digest.get(name, "")
        fake.state.put(p)


def findings():
    return {f.workload_name: f for f in Finding.objects.filter(resolved_at__isnull=True)}


def test_a_scan_decides_from_the_registry_alone(cluster, fake_kube, regs):
    h = regs.plain.host
    put_pods(
        fake_kube,
        {
            "node-app": f"{h}/img/node:1",
            "no-user": f"{h}/img/none:1",
            "uid-zero": f"{h}/img/zero:1",
            "good": f"{h}/img/uid:1",
        },
    )
    r = scanning.scan_cluster(cluster.pk)
    assert r.status == "succeeded"
    f = findings()
    assert set(f) == {"node-app", "no-user", "uid-zero"}  # "good" is compliant
    assert f["node-app"].kubelet_error == (
        "container has runAsNonRoot and image has non-numeric user (node), cannot verify "
        f'user is non-root (pod: "node-app_shop({podgen.uid_for("shop", "node-app")})", '
        "container: app)"
    )
    for name in ("no-user", "uid-zero"):
        assert f[name].state == "blocked"
        assert f[name].kubelet_error.startswith(
            "container has runAsNonRoot and image will run as root"
        )
    assert f["node-app"].image_user_source == "registry"
    assert f["node-app"].detail["image_note"].startswith("registry (sha256:")


def test_registry_failures_leave_images_unverified_and_the_scan_completes(cluster, fake_kube, regs):
    fault = FaultServer("429")
    try:
        put_pods(
            fake_kube,
            {
                "limited": f"{fault.host}/x/y:1",
                "down": "127.0.0.1:9/x/y:1",
                "private": f"{regs.token.host}/img/node:1",
                "fine": f"{regs.plain.host}/img/node:1",
            },
        )
        Registry.objects.create(host=fault.host, plain_http=True)
        Registry.objects.create(host="127.0.0.1:9", plain_http=True)
        Registry.objects.create(host=regs.token.host, plain_http=True)
        r = scanning.scan_cluster(cluster.pk)
    finally:
        fault.stop()
    assert r.status == "succeeded"
    f = findings()
    assert {n: f[n].state for n in f} == {
        "limited": "unverified",
        "down": "unverified",
        "private": "unverified",
        "fine": "blocked",
    }
    assert "429 rate limited" in f["limited"].detail["image_note"]
    assert f["down"].detail["image_note"].startswith("127.0.0.1:9: unreachable")
    assert (
        f["private"].detail["image_note"]
        == f"{regs.token.host}: 401 unauthorized for {regs.token.host}/img/node:1"
    )


def test_a_rescan_asks_the_registry_nothing_for_known_digests(cluster, fake_kube, regs):
    h = regs.plain.host
    digest = plain(regs).resolve(ImageRef.parse(f"{h}/img/node:1")).digest
    put_pods(
        fake_kube,
        {f"p{i}": f"{h}/img/node:1" for i in range(5)},
        status_digest={f"p{i}": f"{h}/img/node@{digest}" for i in range(5)},
    )
    first = scanning.scan_cluster(cluster.pk)
    from compliance.models import ScanRun

    t1 = ScanRun.objects.get(pk=first.scan_id).timings
    assert (t1["images_looked_up"], t1["registry_requests"]) == (1, 4)
    # manifest + config for the USER; for /etc/passwd behind `node`, the manifest again
    # (the image by digest) and its one layer
    assert (t1["passwd_lookups"], t1["layers_read"]) == (1, 1)
    assert ImageCache.objects.get().expires_at is None  # a digest: cached for good
    second = scanning.scan_cluster(cluster.pk)
    t2 = ScanRun.objects.get(pk=second.scan_id).timings
    assert (t2["images_looked_up"], t2["image_cache_hits"], t2["registry_requests"]) == (0, 1, 0)
    assert (t2["passwd_lookups"], t2["layers_read"]) == (0, 0)


def test_tags_and_failures_expire(cluster, fake_kube, regs, settings):
    h = regs.plain.host
    put_pods(fake_kube, {"tagged": f"{h}/img/uid:1", "bad": f"{h}/img/nothere:1"})
    scanning.scan_cluster(cluster.pk)
    tagged = ImageCache.objects.get(key=f"{h}/img/uid:1|linux/amd64")
    bad = ImageCache.objects.get(key=f"{h}/img/nothere:1|linux/amd64")
    assert (
        tagged.expires_at - tagged.resolved_at
    ).total_seconds() == settings.WELKIN_REGISTRY_TAG_TTL
    assert (
        bad.expires_at - bad.resolved_at
    ).total_seconds() == settings.WELKIN_REGISTRY_FAILURE_TTL
    assert bad.error.startswith(f"{h}: 404 not found")


def test_operator_supplied_users_win(cluster, fake_kube, regs):
    ImageUserOverride.objects.create(pattern="internal.example/*", user="node")
    put_pods(fake_kube, {"legacy": "internal.example/team/legacy:3"})
    scanning.scan_cluster(cluster.pk)
    f = findings()["legacy"]
    assert (f.state, f.image_user, f.image_user_source) == ("blocked", "node", "operator")
    assert f.detail["image_note"] == "operator-supplied (internal.example/*)"


def test_the_platform_comes_from_the_pod(cluster, fake_kube, regs):
    p = podgen.pod("shop", "arm", f"{regs.plain.host}/img/multi:1", {"runAsNonRoot": True}, {})
    p["spec"]["nodeSelector"] = {"kubernetes.io/arch": "arm64"}
    fake_kube.state.put(p)
    put_pods(fake_kube, {"amd": f"{regs.plain.host}/img/multi:1"})
    scanning.scan_cluster(cluster.pk)
    assert set(findings()) == {"arm"}  # arm64 runs USER node; amd64 runs 1000
    assert images.platform_of(p) == Platform("linux", "arm64")


def test_evaluate_resolve_looks_images_up(db, regs, tmp_path, capsys):
    Registry.objects.create(host=regs.plain.host, plain_http=True)
    f = tmp_path / "pod.yaml"
    f.write_text(f"""
kind: Pod
metadata: {{name: web, namespace: shop}}
spec:
  securityContext: {{runAsNonRoot: true}}
  containers:
  - {{name: a, image: "{regs.plain.host}/img/node:1"}}
  - {{name: b, image: "{regs.plain.host}/img/uid:1"}}
""")
    with pytest.raises(SystemExit) as e:
        call_command("evaluate", "--resolve", "--format", "json", str(f))
    assert e.value.code == 1
    out = json.loads(capsys.readouterr().out)
    a, b = out["objects"][0]["containers"]
    assert (a["state"], a["image_user"], a["image_user_source"]) == ("blocked", "node", "registry")
    assert (b["state"], b["image_user"]) == ("compliant", "1000:1000")


# --- verified answers ---


def via(fault, **kw):
    return RegistryClient({fault.host: RegistryConfig(fault.host, plain_http=True)}, **kw)


def test_a_config_blob_that_does_not_match_its_digest_is_refused(regs, faults):
    fault = faults("bad-config")
    ref = ImageRef.parse(f"{fault.host}/img/uid:1")
    res = via(fault).resolve(ref)
    config_digest = (
        plain(regs).resolve(ImageRef.parse(f"{regs.plain.host}/img/uid:1")).config_digest
    )
    assert res.user is None and res.integrity_failure
    assert res.error == (
        f"{fault.host}: digest mismatch for {ref}: the image config's bytes "
        f"hash to sha256:{hashlib.sha256(ROOT_CONFIG).hexdigest()}, "
        f"expected {config_digest}"
    )


def test_a_manifest_by_digest_with_other_bytes_is_refused(regs, faults):
    fault = faults("bad-manifest")  # answers the manifest of img/swap:evil instead
    ref = ImageRef.parse(f"{fault.host}/img/swap@{regs.swap_good}")
    res = via(fault).resolve(ref)
    assert res.user is None and res.integrity_failure
    assert res.error == (
        f"{fault.host}: digest mismatch for {ref}: the manifest's bytes "
        f"hash to {regs.swap_evil}, expected {regs.swap_good}"
    )


def test_a_tags_digest_comes_from_the_bytes_not_the_header(regs, faults):
    fault = faults("wrong-header", header_digest=regs.swap_evil)
    res = via(fault).resolve(ImageRef.parse(f"{fault.host}/img/swap:good"))
    assert (res.user, res.digest, res.error) == ("1000", regs.swap_good, None)


def test_sha512_digests_are_verified_and_unknown_algorithms_refused(regs):
    ref = ImageRef.parse(f"{regs.plain.host}/img/node:1")
    registry.verify_digest(ref, "image config", b"x", "sha512:" + hashlib.sha512(b"x").hexdigest())
    with pytest.raises(
        registry.RegistryError, match="the image config's bytes hash to sha512:"
    ) as e:
        registry.verify_digest(
            ref, "image config", b"y", "sha512:" + hashlib.sha512(b"x").hexdigest()
        )
    assert e.value.integrity
    c = plain(regs)
    res = c.resolve(ImageRef.parse(f"{regs.plain.host}/img/node@md5:" + "a" * 32))
    assert res.error == (
        f"{regs.plain.host}: unsupported digest algorithm 'md5' for "
        f"{regs.plain.host}/img/node@md5:{'a' * 32} (sha256 and sha512 are "
        "verified)"
    )
    assert res.integrity_failure and c.requests == 0


def test_redirected_blobs_are_followed_and_verified(regs, faults):
    fault = faults("redirect")
    c = via(fault)
    assert c.resolve(ImageRef.parse(f"{fault.host}/img/node:1")).user == "node"


def test_a_drip_feeding_registry_is_cut_off_at_the_deadline(faults):
    fault = faults("drip", drip_rate=20)  # 4,000 bytes: 200 s
    c = via(fault, timeout=1)  # 1 s a read, 3 s a request
    start = time.monotonic()
    results = registry.resolve_many(
        c, [(ImageRef.parse(f"{fault.host}/x/y{i}:1"), Platform()) for i in range(3)]
    )
    assert time.monotonic() - start < 12
    assert {r.error for r in results.values()} == {
        f"{fault.host}: timed out (no complete answer within 3 s)"
    }


def test_a_scan_keeps_unverified_answers_out_of_the_cache(cluster, fake_kube, regs, faults):
    bad_config, bad_manifest = faults("bad-config"), faults("bad-manifest")
    header = faults("wrong-header", header_digest=regs.swap_evil)
    for f in (bad_config, bad_manifest, header):
        Registry.objects.create(host=f.host, plain_http=True)
    put_pods(
        fake_kube,
        {
            "tampered-config": f"{bad_config.host}/img/uid:1",
            "swapped": f"{bad_manifest.host}/img/swap:good",
            "header": f"{header.host}/img/swap:good",
        },
        status_digest={"swapped": f"{bad_manifest.host}/img/swap@{regs.swap_good}"},
    )
    for _ in range(2):  # the second scan asks again: nothing wrong was kept
        r = scanning.scan_cluster(cluster.pk)
        assert r.status == "succeeded"
        f = findings()
        assert {n: f[n].state for n in f} == {
            "tampered-config": "unverified",
            "swapped": "unverified",
        }
        assert (
            f["tampered-config"]
            .detail["image_note"]
            .startswith(
                f"{bad_config.host}: digest mismatch for {bad_config.host}/img/uid:1: the image "
                "config's bytes hash to sha256:"
            )
        )
        # not answered by the tag instead: the digest is what runs
        assert f["swapped"].detail["image_note"] == (
            f"{bad_manifest.host}: digest mismatch for {bad_manifest.host}/img/swap@"
            f"{regs.swap_good}: the manifest's bytes hash to {regs.swap_evil}, expected "
            f"{regs.swap_good}"
        )
        assert not ImageCache.objects.filter(key__startswith=bad_config.host).exists()
        assert not ImageCache.objects.filter(key__startswith=bad_manifest.host).exists()
        cached = ImageCache.objects.get(key__startswith=header.host)
        assert (cached.user, cached.digest, cached.error) == ("1000", regs.swap_good, "")


def test_evaluate_resolve_answers_per_platform_like_the_scan(
    cluster, fake_kube, regs, tmp_path, capsys
):
    Registry.objects.get_or_create(host=regs.plain.host, defaults={"plain_http": True})
    image = f"{regs.plain.host}/img/multi:1"  # amd64: USER 1000; arm64: USER node
    arm = podgen.pod("shop", "arm", image, {"runAsNonRoot": True}, {})
    arm["spec"]["nodeSelector"] = {"kubernetes.io/arch": "arm64"}
    amd = podgen.pod("shop", "amd", image, {"runAsNonRoot": True}, {})
    for p in (amd, arm):  # amd64 first: a per-image answer would be 1000 for both
        fake_kube.state.put(p)
    f = tmp_path / "pods.json"
    f.write_text(
        json.dumps({"kind": "List", "items": [{**amd, "kind": "Pod"}, {**arm, "kind": "Pod"}]})
    )
    with pytest.raises(SystemExit):
        call_command("evaluate", "--resolve", "--format", "json", str(f))
    objects = json.loads(capsys.readouterr().out)["objects"]
    offline = {o["name"]: o["containers"][0]["state"] for o in objects}
    assert offline == {"amd": "compliant", "arm": "blocked"}
    scanning.scan_cluster(cluster.pk)
    scanned = {f.workload_name: f.state for f in Finding.objects.all()}
    assert scanned == {"arm": "blocked"}  # compliant containers are not findings


def test_the_uid_behind_a_named_user_is_read_from_the_images_passwd_into_the_fix(
    cluster, fake_kube, regs
):
    h = regs.plain.host
    base = tar_layer(
        {"etc/passwd": b"root:x:0:0::/root:/bin/sh\n", "etc/os-release": b"ID=debian\n"}
    )
    users = tar_layer(
        {"etc/passwd": b"root:x:0:0::/root:/bin/sh\nnode:x:1000:1000::/home/node:/bin/sh\n"}
    )
    app = tar_layer({"app/index.js": b"//\n"})
    regs.push_layered_image("img/named", "1", [base, users, app], user="node")
    put_pods(fake_kube, {"named": f"{h}/img/named:1"})
    first = scanning.scan_cluster(cluster.pk)
    f = findings()["named"]
    assert f.state == "blocked"
    assert "user" in f.detail["passwd"], f.detail["passwd"]
    entry = f.detail["passwd"]["user"]
    assert (entry["name"], entry["uid"], entry["line"]) == ("node", 1000, 2)
    manifest = regs.http.request(
        "GET", f"http://{h}/v2/img/named/manifests/1", headers={"Accept": OCI_MANIFEST}
    )
    layer_digests = [d["digest"] for d in json.loads(manifest.data)["layers"]]
    assert entry["layer"] == layer_digests[1]  # the newest layer holding /etc/passwd
    fix = explain.remediation(f)
    assert fix["kind"] == "numeric-user" and fix["dockerfile"] == ["USER 1000"]
    assert f"/etc/passwd in layer {layer_digests[1]}, line 2" in f.fix
    from compliance.models import ScanRun

    # All three layers read (os-release is only in the base); a rescan reads none.
    assert ScanRun.objects.get(pk=first.scan_id).timings["layers_read"] == 3
    second = scanning.scan_cluster(cluster.pk)
    assert ScanRun.objects.get(pk=second.scan_id).timings["layers_read"] == 0
    assert findings()["named"].detail["passwd"]["user"]["uid"] == 1000
