"""An image's own /etc/passwd, /etc/group and os-release read from its layers, against real
registries (Debian's docker-registry on loopback): the layers stacked as the runtime stacks
them, every blob verified, hostile layers bounded."""

import io
import json
import os
import random
import struct
import tarfile
import time
import zlib

import pytest

from compliance.collect import layers
from compliance.collect.layers import LayerFacts, Limits, read_image_files
from compliance.collect.registry import ImageRef, Platform, RegistryClient, RegistryConfig
from compliance.rules import passwd
from tests.registries import (
    DIR,
    LAYER_MEDIA_TYPES,
    Hardlink,
    Registries,
    Symlink,
    compress,
    opaque,
    tar_layer,
    whiteout,
)

pytestmark = pytest.mark.uses_registry

NODE_PASSWD = b"""root:x:0:0:root:/root:/bin/bash
daemon:x:1:1:daemon:/usr/sbin:/usr/sbin/nologin
bin:x:2:2:bin:/bin:/usr/sbin/nologin
_apt:x:42:65534::/nonexistent:/usr/sbin/nologin
nobody:x:65534:65534:nobody:/nonexistent:/usr/sbin/nologin
node:x:1000:1000::/home/node:/bin/bash
"""
NODE_GROUP = b"root:x:0:\ndaemon:x:1:\nnogroup:x:65534:\nnode:x:1000:\n"
DEBIAN_RELEASE = b'PRETTY_NAME="Debian GNU/Linux 12 (bookworm)"\nID=debian\nVERSION_ID="12"\n'
ALPINE_RELEASE = b'NAME="Alpine Linux"\nID=alpine\nVERSION_ID=3.20.0\n'
BASE = {
    "./": DIR,
    "./etc/": DIR,
    "./etc/passwd": NODE_PASSWD,
    "./etc/group": NODE_GROUP,
    "./usr/lib/os-release": DEBIAN_RELEASE,
    "./etc/os-release": Symlink("../usr/lib/os-release"),  # as Debian ships it
    "./bin/sh": b"\x7fELF",
}
APP = {"usr/src/app/": DIR, "usr/src/app/index.js": b"console.log('hi')\n"}


@pytest.fixture(scope="module")
def regs():
    r = Registries()
    yield r
    r.stop()


def client_for(host, **kw):
    return RegistryClient({host: RegistryConfig(host, plain_http=True, **kw)})


def image(regs, repo, tag, layer_entries, **kw):
    """Pushes an image of these layers, base first, each a dict of tar entries (tar_layer),
    a tar's bytes or a descriptor (with a digest) put in as it is: (client, ref)."""
    tars = [tar_layer(e) if isinstance(e, dict) and "digest" not in e else e for e in layer_entries]
    regs.push_layered_image(repo, tag, tars, **kw)
    return client_for(regs.plain.host), ImageRef.parse(f"{regs.plain.host}/{repo}:{tag}")


class JsonCache:
    """A LayerCache over a dict of JSON text, as a model's JSONField would keep it."""

    def __init__(self):
        self.rows, self.asked, self.puts = {}, [], 0

    def get(self, digests):
        self.asked.append(list(digests))
        return {
            d: LayerFacts.from_json(json.loads(self.rows[d])) for d in digests if d in self.rows
        }

    def put(self, facts):
        self.puts += 1
        self.rows.update({d: json.dumps(f.to_json()) for d, f in facts.items()})


# --- the merged filesystem ---


def test_user_node_is_uid_1000_from_the_base_layer(regs):
    c, ref = image(
        regs, "img/node", "1", [BASE, APP, {"usr/local/bin/app": b"#!/bin/sh\n"}], user="node"
    )
    res = c.resolve(ref)
    files = read_image_files(c, ref, Platform())
    assert (files.error, res.user) == (None, "node")
    assert files.manifest_digest == res.digest and len(files.layers) == 3
    hit = files.files["etc/passwd"]
    assert hit.layer == files.layers[0]  # the base: the upper layers leave /etc alone
    entries, refused = passwd.parse_passwd(hit.data)
    node = passwd.lookup(entries, res.user)
    assert (node.uid, node.gid, node.line, refused) == (1000, 1000, 6, [])
    groups, _ = passwd.parse_group(files.files["etc/group"].data)
    assert [g.gid for g in groups if g.name == "node"] == [1000]
    assert files.missing == {
        "etc/os-release": (
            f"symlink: not followed (layer {files.layers[0]}); usr/lib/os-release is read instead"
        )
    }
    assert passwd.os_family(files.os_release) == "debian"
    assert passwd.fitting_user(entries, ref.repository).name == "node"
    # the walk went down to the base, reading every blob whole
    assert files.layers_read == 3 and files.bytes_read > 0


def test_a_newer_layer_replacing_etc_passwd_wins(regs):
    upper = {"/etc/passwd": b"root:x:0:0::/root:/bin/sh\napp:x:10001:10001::/app:/bin/sh\n"}
    c, ref = image(regs, "img/replaced", "1", [BASE, upper, APP])
    files = read_image_files(c, ref)
    hit = files.files["etc/passwd"]
    assert hit.layer == files.layers[1]
    entries, _ = passwd.parse_passwd(hit.data)
    assert passwd.lookup(entries, "app").uid == 10001 and passwd.lookup(entries, "node") is None
    assert files.files["etc/group"].layer == files.layers[0]


def test_a_layer_deleting_etc_passwd_leaves_it_missing(regs):
    c, ref = image(regs, "img/deleted", "1", [BASE, {whiteout("etc/passwd"): b""}, APP])
    files = read_image_files(c, ref)
    assert files.error is None and "etc/passwd" not in files.files
    assert files.missing["etc/passwd"] == f"deleted in layer {files.layers[1]}"
    assert files.files["etc/group"].layer == files.layers[0]
    # a whiteout of the parent deletes everything under it
    c, ref = image(regs, "img/deleted", "2", [BASE, {"./.wh.etc": b""}])
    files = read_image_files(c, ref)
    for p in ("etc/passwd", "etc/group", "etc/os-release"):
        assert files.missing[p] == f"deleted in layer {files.layers[1]}"
    assert files.files["usr/lib/os-release"].data == DEBIAN_RELEASE


def test_an_opaque_etc_hides_the_layers_below(regs):
    upper = {"etc/": DIR, opaque("etc"): b"", "etc/hostname": b"box\n"}
    c, ref = image(regs, "img/opaque", "1", [BASE, upper])
    files = read_image_files(c, ref)
    assert files.error is None and set(files.files) == {"usr/lib/os-release"}
    for p in ("etc/passwd", "etc/group", "etc/os-release"):
        assert files.missing[p] == f"opaque /etc in layer {files.layers[1]}"
    # the opaque layer's own etc/passwd is what shows
    own = {opaque("etc"): b"", "etc/passwd": b"app:x:10001:10001::/:/bin/sh\n"}
    c, ref = image(regs, "img/opaque", "2", [BASE, own])
    files = read_image_files(c, ref)
    assert files.files["etc/passwd"].layer == files.layers[1]
    assert files.missing["etc/group"] == f"opaque /etc in layer {files.layers[1]}"


@pytest.mark.parametrize(
    "compression", ["gzip", "docker", "zstd", "none", ["zstd", "none", "gzip"]]
)
def test_gzip_zstd_and_uncompressed_layers(regs, compression):
    name = compression if isinstance(compression, str) else "mixed"
    c, ref = image(
        regs, f"img/c-{name}", "1", [BASE, {"etc/motd": b"hi\n"}, APP], compression=compression
    )
    files = read_image_files(c, ref)
    assert files.error is None
    assert files.files["etc/passwd"].data == NODE_PASSWD
    assert files.files["etc/passwd"].layer == files.layers[0]


def test_a_mislabelled_layer_is_read_by_its_first_bytes(regs):
    repo = "img/mislabelled"
    zstd_as_gzip = regs.push_layer(
        repo, compress(tar_layer(BASE), "zstd"), LAYER_MEDIA_TYPES["gzip"]
    )
    tar_as_zstd = regs.push_layer(repo, tar_layer(APP), LAYER_MEDIA_TYPES["zstd"])
    c, ref = image(regs, repo, "1", [zstd_as_gzip, tar_as_zstd])
    files = read_image_files(c, ref)
    assert files.error is None and files.files["etc/passwd"].data == NODE_PASSWD
    # a blob that is no tar at all, whatever it is called, is a reason
    junk = regs.push_layer(
        repo, compress(b"\x00not a tar" * 100, "gzip"), LAYER_MEDIA_TYPES["none"]
    )
    c, ref = image(regs, repo, "2", [BASE, junk])
    files = read_image_files(c, ref)
    assert files.error == (
        f"image {ref}: layer {junk['digest']}: not a tar archive (bad header checksum at byte 0)"
    )
    assert not files.integrity_failure


def test_each_platform_reads_its_own_passwd(regs):
    repo = "img/multi"
    arm_passwd = NODE_PASSWD.replace(b"node:x:1000:1000", b"node:x:1001:1001")
    amd = regs.push_layered_image(repo, None, [tar_layer(BASE)], platform=("linux", "amd64"))
    arm = regs.push_layered_image(
        repo,
        None,
        [tar_layer({**BASE, "./etc/passwd": arm_passwd, "./usr/lib/os-release": ALPINE_RELEASE})],
        platform=("linux", "arm64"),
    )
    regs.push_index_of(repo, "1", {("linux", "amd64"): amd, ("linux", "arm64"): arm})
    c, ref = client_for(regs.plain.host), ImageRef.parse(f"{regs.plain.host}/{repo}:1")
    on_amd = read_image_files(c, ref, Platform("linux", "amd64"))
    on_arm = read_image_files(c, ref, Platform("linux", "arm64"))
    assert (on_amd.manifest_digest, on_arm.manifest_digest) == (amd, arm)
    uid = {
        p: passwd.lookup(passwd.parse_passwd(f.files["etc/passwd"].data)[0], "node").uid
        for p, f in (("amd64", on_amd), ("arm64", on_arm))
    }
    assert uid == {"amd64": 1000, "arm64": 1001}
    assert passwd.os_family(on_arm.os_release) == "alpine"
    missing = read_image_files(c, ref, Platform("linux", "s390x"))
    assert "no linux/s390x image in the index" in missing.error and missing.files == {}


# --- links and hostile lines ---


def test_symlinks_and_hard_links_at_wanted_paths_are_not_followed(regs):
    upper = {
        "etc/passwd": Symlink("/usr/share/base-passwd/passwd.master"),
        "etc/group": Hardlink("usr/share/base-passwd/group.master"),
    }
    c, ref = image(regs, "img/links", "1", [BASE, upper])
    files = read_image_files(c, ref)
    top = files.layers[1]
    assert files.missing["etc/passwd"] == f"symlink: not followed (layer {top})"
    assert files.missing["etc/group"] == f"hard link: not followed (layer {top})"
    assert "etc/passwd" not in files.files and files.error is None
    # /etc itself replaced by a symlink: nothing under it is followed either
    c, ref = image(regs, "img/links", "2", [BASE, {"etc": Symlink("/var/etc")}])
    files = read_image_files(c, ref)
    assert (
        files.missing["etc/passwd"] == f"/etc is a symlink: not followed (layer {files.layers[1]})"
    )
    assert files.files["usr/lib/os-release"].data == DEBIAN_RELEASE
    # /etc/passwd written, then /etc replaced by a symlink later in the same layer: the
    # unpacked layer has no such file
    same = {"etc/passwd": NODE_PASSWD, "etc": Symlink("/var/etc")}
    c, ref = image(regs, "img/links", "3", [BASE, same])
    files = read_image_files(c, ref)
    assert "etc/passwd" not in files.files
    assert files.missing["etc/passwd"].startswith("/etc is a symlink: not followed")


def test_a_malformed_line_naming_the_user_first_leaves_the_uid_unknown():
    # Runtimes read these leniently (moby/sys/user): the first could be the user's line.
    for line in (
        b"node:x:0:0:r:/root:/bin/sh\r",
        b" node:x:0:0::/:/bin/sh",
        b"node:x:0:0",
        b"node:x:+0:0::/:/bin/sh",
        b"node:x:0:0::/:/bin/sh:extra",
    ):
        data = b"root:x:0:0::/root:/bin/sh\n" + line + b"\nnode:x:1000:1000::/:/bin/sh\n"
        entries, _ = passwd.parse_passwd(data)
        found = passwd.lookup(entries, "node")
        assert found is not None and found.uid == 1000
        assert passwd.shadowed_by(data, "node", found.line) == 2, line
    clean = b"root:x:0:0::/root:/bin/sh\nnode:x:1000:1000::/:/bin/sh\n"
    assert passwd.shadowed_by(clean, "node", 2) is None


def test_a_passwd_line_with_control_characters_is_refused(regs):
    hostile = (
        NODE_PASSWD + b"evil:x:0:0:\x1b]0;owned\x07:/root:/bin/sh\nlate:x:1001:1001::/:/bin/sh\n"
    )
    c, ref = image(regs, "img/hostile", "1", [{**BASE, "./etc/passwd": hostile}])
    entries, refused = passwd.parse_passwd(read_image_files(c, ref).files["etc/passwd"].data)
    assert refused == ["line 7: control character"]
    assert [e.name for e in entries][-2:] == ["node", "late"]


def test_a_wanted_file_over_the_size_bound_is_refused(regs):
    c, ref = image(regs, "img/hugepasswd", "1", [BASE])
    files = read_image_files(c, ref, limits=Limits(max_file=100))
    assert files.missing["etc/passwd"] == (
        f"too large ({len(NODE_PASSWD)} bytes; the bound is 100 bytes) (layer {files.layers[0]})"
    )
    assert files.files["usr/lib/os-release"].data == DEBIAN_RELEASE


def test_long_names_and_dot_dots_land_where_the_runtime_puts_them(regs):
    winding = "./" + "x/" * 60 + "../" * 70 + "etc/passwd"  # over 100 bytes, above the root
    for fmt, tag in ((tarfile.GNU_FORMAT, "gnu"), (tarfile.PAX_FORMAT, "pax")):
        tar = tar_layer({winding: b"app:x:10001:10001::/:/bin/sh\n"}, fmt)
        c, ref = image(regs, "img/winding", tag, [tar_layer(BASE), tar])
        files = read_image_files(c, ref)
        assert files.files["etc/passwd"].layer == files.layers[1], tag


# --- verified and bounded ---


def test_a_registry_that_lies_about_a_blob_is_an_integrity_failure(regs, faults):
    evil = compress(
        tar_layer({"etc/passwd": b"root:x:0:0::/:/bin/sh\nnode:x:0:0::/:/bin/sh\n"}), "gzip"
    )
    image(regs, "img/lied", "1", [BASE, APP])
    fault = faults("bad-config", blob=evil)  # every blob answered with the evil layer
    cache = JsonCache()
    files = read_image_files(client_for(fault.host), f"{fault.host}/img/lied:1", cache=cache)
    assert files.integrity_failure and files.files == {}
    assert "digest mismatch" in files.error and files.error.endswith(f"expected {files.layers[1]}")
    assert cache.puts == 0 and cache.rows == {}
    honest = read_image_files(
        client_for(regs.plain.host), f"{regs.plain.host}/img/lied:1", cache=cache
    )
    assert honest.files["etc/passwd"].data == NODE_PASSWD and cache.puts == 2


def test_a_gzip_bomb_is_refused_at_the_decompression_bound(regs):
    bomb = gzip_bomb(2 << 30)
    assert len(bomb) < 3 << 20
    descriptor = regs.push_layer("img/bomb", bomb, LAYER_MEDIA_TYPES["gzip"])
    c, ref = image(regs, "img/bomb", "1", [BASE, descriptor])
    start = time.monotonic()
    files = read_image_files(c, ref)
    assert files.error == (
        f"image {ref}: layer {descriptor['digest']} decompresses past the 512 MiB bound on "
        "decompressed bytes per image (a decompression bomb?)"
    )
    assert files.bytes_read < len(bomb) and time.monotonic() - start < 10
    small = read_image_files(c, ref, limits=Limits(max_uncompressed=1 << 20))
    assert "past the 1 MiB bound on decompressed bytes" in small.error


@pytest.fixture(scope="module")
def big(regs):
    """A 1 GiB layer of random bytes over a base with passwd, uploaded as it is made: the
    manifest says its size (tag honest), or says 1,000 bytes (tag lying)."""
    digest, size = regs.push_blob_stream("img/big", (os.urandom(1 << 20) for _ in range(1024)))
    assert size == 1 << 30
    layer = {"mediaType": LAYER_MEDIA_TYPES["gzip"], "digest": digest, "size": size}
    base = tar_layer(BASE)
    regs.push_layered_image("img/big", "honest", [base, layer])
    regs.push_layered_image("img/big", "lying", [base, {**layer, "size": 1000}])
    return digest


def test_a_layer_over_the_read_bound_is_not_read(regs, big):
    c = client_for(regs.plain.host)
    ref = ImageRef.parse(f"{regs.plain.host}/img/big:honest")
    files = read_image_files(c, ref)
    assert (
        files.error
        == f"image {ref}: layer {big} exceeds the 64 MiB read bound (layer bytes read per image)"
    )
    assert (files.bytes_read, c.requests) == (0, 1)  # its manifest said so: not asked for


def test_a_layer_lying_about_its_size_is_cut_off_at_the_read_bound(regs, big, faults):
    ref = ImageRef.parse(f"{regs.plain.host}/img/big:lying")
    files = read_image_files(client_for(regs.plain.host), ref)  # the registry says its length
    assert "exceeds the 64 MiB read bound" in files.error and files.bytes_read == 0
    fault = faults("stream")  # no length: read until the bound
    ref = ImageRef.parse(f"{fault.host}/img/big:lying")
    files = read_image_files(client_for(fault.host), ref)
    assert (
        files.error
        == f"image {ref}: layer {big} exceeds the 64 MiB read bound (layer bytes read per image)"
    )
    assert 64 << 20 <= files.bytes_read < 70 << 20
    assert not files.integrity_failure


def test_the_time_bound(regs):
    c, ref = image(regs, "img/slow", "1", [BASE])
    files = read_image_files(c, ref, limits=Limits(seconds=0))
    assert (
        files.error
        == f"image {ref}: layers not read within the 0 s time bound (at layer {files.layers[0]})"
    )


def test_a_warm_lookup_asks_for_no_blob(regs):
    c, ref = image(regs, "img/warm", "1", [BASE, APP, {"etc/motd": b"hi\n"}])
    cache = JsonCache()
    cold = read_image_files(c, ref, cache=cache)
    assert (cold.layers_read, cache.puts, len(cache.rows)) == (3, 3, 3)
    before = c.requests
    warm = read_image_files(c, ref, cache=cache)
    assert (warm.layers_read, warm.bytes_read, c.requests - before) == (0, 0, 1)  # the manifest
    assert (warm.files, warm.missing, warm.error) == (cold.files, cold.missing, None)
    assert cache.asked[-1] == warm.layers
    # facts about other paths than those asked for now are not taken for an answer
    cache.rows = {
        d: json.dumps({**json.loads(v), "wanted": ["etc/passwd"]}) for d, v in cache.rows.items()
    }
    again = read_image_files(c, ref, cache=cache)
    assert again.layers_read == 3 and again.files == cold.files


def test_a_foreign_layer_is_not_fetched(regs):
    foreign = {
        "mediaType": "application/vnd.oci.image.layer.nondistributable.v1.tar+gzip",
        "digest": "sha256:" + "f" * 64,
        "size": 1 << 30,
        "urls": ["https://example.invalid/base.tar.gz"],
    }
    c, ref = image(regs, "img/foreign", "1", [foreign, APP])
    files = read_image_files(c, ref)
    assert files.error is None and files.layers_read == 1
    assert files.missing["etc/passwd"] == (
        f"layer {foreign['digest']} is foreign (served from its urls, not the registry): not "
        "fetched, nor the layers below it"
    )
    # above it, an upper layer's passwd is read all the same
    c, ref = image(regs, "img/foreign", "2", [foreign, {"etc/passwd": NODE_PASSWD}])
    assert read_image_files(c, ref).files["etc/passwd"].data == NODE_PASSWD


def test_layers_come_through_auth_and_redirects(regs, faults):
    image(regs, "img/reach", "1", [BASE, APP])
    token = client_for(regs.token.host, username="reader", password="s3cret")
    files = read_image_files(token, f"{regs.token.host}/img/reach:1")
    assert files.files["etc/passwd"].data == NODE_PASSWD
    fault = faults("redirect")
    files = read_image_files(client_for(fault.host), f"{fault.host}/img/reach:1")
    assert files.files["etc/passwd"].data == NODE_PASSWD
    denied = read_image_files(client_for(regs.token.host), f"{regs.token.host}/img/reach:1")
    assert denied.error == f"{regs.token.host}: 401 unauthorized for {regs.token.host}/img/reach:1"


def test_failures_are_reasons_not_exceptions(regs):
    c = client_for(regs.plain.host)
    assert (
        read_image_files(c, "UPPER/case").error == "invalid repository 'UPPER/case' in 'UPPER/case'"
    )
    gone = read_image_files(c, f"{regs.plain.host}/img/nothere:1")
    assert gone.error.startswith(f"{regs.plain.host}: 404 not found")


# --- the tar reader alone ---


def scan(data: bytes):
    return layers._scan(io.BytesIO(data), layers.WANTED, 1 << 20)


def test_mangled_tars_are_corrupt_never_an_exception():
    rng = random.Random(7)
    samples = [
        tar_layer(BASE, fmt)
        for fmt in (tarfile.USTAR_FORMAT, tarfile.GNU_FORMAT, tarfile.PAX_FORMAT)
    ] + [
        tar_layer(
            {"./" + "d/" * 80 + "../" * 80 + "etc/passwd": b"a:x:1:1::/:/bin/sh\n"},
            tarfile.PAX_FORMAT,
        )
    ]
    outcomes = set()
    for _ in range(3000):
        data = bytearray(rng.choice(samples))
        for _ in range(rng.randint(1, 8)):
            data[rng.randrange(len(data))] = rng.randrange(256)
        if rng.random() < 0.3:
            del data[rng.randrange(len(data)) :]
        try:
            outcomes.add(type(scan(bytes(data))).__name__)
        except layers._Corrupt:
            outcomes.add("corrupt")
    assert outcomes == {"LayerFacts", "corrupt"}


def test_an_extended_header_over_its_bound_is_corrupt():
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.PAX_FORMAT) as tar:
        info = tarfile.TarInfo("etc/passwd")
        info.pax_headers = {"comment": "x" * (layers.MAX_SPECIAL + 1)}
        tar.addfile(info, io.BytesIO(b""))
    with pytest.raises(layers._Corrupt, match="over the 1 MiB bound"):
        scan(buf.getvalue())


def test_layer_facts_round_trip_through_json():
    facts = scan(tar_layer({**BASE, whiteout("etc/shadow"): b"", opaque("usr/lib"): b""}))
    assert LayerFacts.from_json(json.loads(json.dumps(facts.to_json()))) == facts
    for bad in (
        None,
        [],
        {"wanted": "etc/passwd"},
        {**facts.to_json(), "present": {"etc/passwd": "!!"}},
    ):
        with pytest.raises(ValueError):
            LayerFacts.from_json(bad)


def gzip_bomb(size: int) -> bytes:
    """A gzip'd tar of one file of `size` zero bytes (a multiple of a MiB), made without
    compressing them all: after a full flush, deflate writes a MiB of zeros as the same
    bytes every time, so they are made once and repeated."""
    info = tarfile.TarInfo("zeros")
    info.size, info.mtime = size, 0
    header = info.tobuf(tarfile.USTAR_FORMAT)
    mib, end = bytes(1 << 20), bytes(1024)  # end: the two end-of-archive blocks
    c = zlib.compressobj(9, zlib.DEFLATED, -zlib.MAX_WBITS)
    head = c.compress(header) + c.flush(zlib.Z_FULL_FLUSH)
    block = c.compress(mib) + c.flush(zlib.Z_FULL_FLUSH)
    tail = c.compress(end) + c.flush()
    crc = zlib.crc32(header)
    for _ in range(size >> 20):
        crc = zlib.crc32(mib, crc)
    crc = zlib.crc32(end, crc)
    trailer = struct.pack("<II", crc, (len(header) + size + len(end)) & 0xFFFFFFFF)
    return (
        b"\x1f\x8b\x08\x00\x00\x00\x00\x00\x02\xff" + head + block * (size >> 20) + tail + trailer
    )


def test_what_the_fix_is_told_names_the_layer_and_line_or_why_not():
    from compliance.collect.images import account_of
    from compliance.collect.layers import FileHit, ImageFiles

    layer = "sha256:" + "e" * 64
    good = b"root:x:0:0::/root:/bin/sh\nnode:x:1000:1000::/:/bin/sh\n"
    files = ImageFiles({"etc/passwd": FileHit(good, layer)}, {}, None, [layer])
    a = account_of(files, "node", "library/node")
    assert a["user"] == {"name": "node", "uid": 1000, "gid": 1000, "layer": layer, "line": 2}
    shadowed = b"root:x:0:0::/root:/bin/sh\n node:x:0:0::/:/bin/sh\n" + good.split(b"\n")[1]
    files = ImageFiles({"etc/passwd": FileHit(shadowed, layer)}, {}, None, [layer])
    a = account_of(files, "node", "library/node")
    assert a["user"] is None and "line 2" in a["missing"] and "not known" in a["missing"]
    failed = ImageFiles({}, {}, None, [], error="registry: 401 unauthorized")
    assert account_of(failed, "node", "library/node") == {"error": "registry: 401 unauthorized"}
