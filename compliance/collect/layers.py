"""An image's own files, read from its layers: /etc/passwd, /etc/group and os-release, so
that a remediation can name the uid behind `USER node` and a user the image already has.

The layers are walked as the runtime stacks them, newest first. A path is decided by the
first layer that holds it as a regular file (a hit), deletes it (`etc/.wh.passwd`, or a
whiteout of a parent, `.wh.etc`), or hides the lower layers' copy under an opaque
directory (`etc/.wh..wh..opq`; that layer's own etc/passwd is still a hit). A symlink,
hard link, device or directory at a wanted path, or a parent that is not a directory, is
not followed: the path is missing, with the reason. The walk stops once every wanted path
is decided. A foreign layer (its blob served from its `urls`) is not fetched.

Every blob read is read to its end and hashed: what a layer says is used, and cached, only
when its bytes match its digest. A layer is gzip (one member or several), zstd (one frame
or several) or a plain tar, told by its first bytes whatever its media type says. The tar
stream is parsed here (ustar, GNU and PAX headers, as Go's archive/tar reads them for the
runtimes), not by tarfile, so that every header is bounded and no regular expression runs
on it. Bounds per image (Limits): layer bytes read, decompressed bytes (a decompression
bomb), wall time, and the size of a wanted file. A failure becomes `ImageFiles.error`,
never an exception.

No Django here: the layer cache is passed in. Layers are immutable, so what one says
about the wanted paths holds for good; a failure is never cached.
"""

from __future__ import annotations

import base64
import binascii
import time
import zlib
from dataclasses import dataclass
from typing import Any, Protocol

import zstandard

from compliance.collect.registry import (
    BlobStream,
    BlobTooLarge,
    ImageRef,
    Platform,
    ReferenceError,
    RegistryClient,
    RegistryError,
    check_digest_syntax,
)
from compliance.rules import gate, passwd
from compliance.rules.runas import ImageUser

DEFAULT_PLATFORM = Platform()  # linux/amd64
WANTED = ("etc/passwd", "etc/group", "etc/os-release", "usr/lib/os-release")
MAX_LAYERS = 256  # overlayfs stacks at most 128; a manifest listing more is refused
MAX_SPECIAL = 1 << 20  # a PAX extended header or a GNU long name (Go's archive/tar limit)
ZSTD_MAX_WINDOW = 1 << 27  # zstd's default: a frame cannot make us hold more than 128 MiB
BLOCK = 512
CHUNK = 1 << 16
_ZERO_BLOCK = bytes(BLOCK)
_HIGH_BYTES = bytes(range(128, 256))

GZIP_MAGIC = b"\x1f\x8b"
ZSTD_MAGIC = b"\x28\xb5\x2f\xfd"
REGULAR = (b"0", b"\x00", b"7")  # a file, an old-style file, a contiguous file
HEADER_ONLY = (b"1", b"2", b"3", b"4", b"5", b"6")  # no data follows, whatever the size
_KINDS = {
    b"1": "hard link",
    b"2": "symlink",
    b"3": "device",
    b"4": "device",
    b"5": "directory",
    b"6": "FIFO",
    b"S": "sparse file",
}
_LINKS = ("symlink", "hard link")


@dataclass(frozen=True)
class Limits:
    max_compressed: int = 64 << 20  # bytes of layer blobs read per image
    max_uncompressed: int = 512 << 20  # decompressed bytes per image (decompression bombs)
    seconds: float = 60.0  # wall time per image
    max_file: int = 1 << 20  # size of one wanted file


@dataclass(frozen=True)
class FileHit:
    """A wanted file as the merged filesystem shows it."""

    data: bytes
    layer: str  # digest of the layer that holds it


@dataclass(frozen=True)
class ImageFiles:
    """The wanted files of one image, for one platform."""

    files: dict[str, FileHit]  # path (no leading slash) -> hit
    missing: dict[str, str]  # path -> why it is absent, deleted or refused
    manifest_digest: str | None
    layers: list[str]  # the image's layer digests, base first, as in the manifest
    error: str | None = None  # why the lookup failed: then files MUST NOT be used
    integrity_failure: bool = False  # a blob did not match its digest
    layers_read: int = 0  # layer blobs asked of the registry (0 on a warm cache)
    bytes_read: int = 0  # bytes of layer blobs read

    @property
    def os_release(self) -> bytes | None:
        """os-release as os-release(5) finds it: /etc/os-release, else
        /usr/lib/os-release; None when neither is there or the lookup failed."""
        if self.error:
            return None
        hit = self.files.get("etc/os-release") or self.files.get("usr/lib/os-release")
        return hit.data if hit else None


@dataclass(frozen=True)
class LayerFacts:
    """What one layer says about the wanted paths. JSON-serialisable (to_json)."""

    present: dict[str, bytes]  # path -> content: the layer has it as a regular file
    deleted: list[str]  # paths whited out (.wh.<name>, or a .wh. of a parent directory)
    opaque: list[str]  # directories made opaque (.wh..wh..opq), "etc"; "" is the root
    refused: dict[str, str]  # path -> why not read (symlink, hard link, device, too large)
    wanted: tuple[str, ...] = WANTED  # the paths these facts are about

    def to_json(self) -> dict:
        return {
            "wanted": list(self.wanted),
            "present": {p: base64.b64encode(d).decode("ascii") for p, d in self.present.items()},
            "deleted": list(self.deleted),
            "opaque": list(self.opaque),
            "refused": dict(self.refused),
        }

    @classmethod
    def from_json(cls, doc: Any) -> LayerFacts:
        """The facts to_json wrote; ValueError for anything else."""
        if not isinstance(doc, dict):
            raise ValueError("layer facts: not an object")
        wanted, present = doc.get("wanted"), doc.get("present")
        deleted, opaque, refused = doc.get("deleted"), doc.get("opaque"), doc.get("refused")
        if not (
            _strings(wanted)
            and _strings(deleted)
            and _strings(opaque)
            and isinstance(present, dict)
            and isinstance(refused, dict)
            and _strings(list(present) + list(present.values()))
            and _strings(list(refused) + list(refused.values()))
        ):
            raise ValueError("layer facts: malformed")
        try:
            content = {p: base64.b64decode(d, validate=True) for p, d in present.items()}
        except binascii.Error:
            raise ValueError("layer facts: content is not base64")
        return cls(content, list(deleted), list(opaque), dict(refused), tuple(wanted))


def _strings(value: Any) -> bool:
    return isinstance(value, list) and all(isinstance(v, str) for v in value)


class LayerCache(Protocol):
    """Layer digest -> LayerFacts, kept by the caller (a Django model, a dict)."""

    def get(self, digests: list[str]) -> dict[str, LayerFacts]: ...

    def put(self, facts: dict[str, LayerFacts]) -> None: ...


class _Failed(Exception):
    """The lookup cannot go on; `reason` is ImageFiles.error."""

    def __init__(self, reason: str, integrity: bool = False):
        super().__init__(reason)
        self.reason, self.integrity = gate.inert(reason, 1000), integrity


class _Corrupt(Exception):
    """A layer that is not what it says (a tar, gzip or zstd stream); the reason is ours."""


@dataclass(frozen=True)
class _Layer:
    """A layer as its manifest describes it (its media type is not trusted, nor needed:
    the first bytes of the blob tell its format)."""

    digest: str
    size: int | None  # None when the manifest gives none that makes sense
    foreign: bool  # it has `urls`


@dataclass
class _Walk:
    """One lookup's bounds and counts."""

    ref: ImageRef
    limits: Limits
    deadline: float
    layers_read: int = 0
    bytes_read: int = 0
    uncompressed: int = 0


def read_image_files(
    client: RegistryClient,
    ref: ImageRef | str,
    platform: Platform = DEFAULT_PLATFORM,
    *,
    limits: Limits = Limits(),
    cache: LayerCache | None = None,
    paths: tuple[str, ...] | list[str] = WANTED,
) -> ImageFiles:
    """The files at `paths` in the image at ref for platform, as its merged filesystem
    shows them. Never raises for what a registry or a layer sends: a failure is `error`."""
    wanted = tuple(dict.fromkeys(paths))
    for p in wanted:
        if not p or _clean(p) != p:
            raise ValueError(f"paths are relative and clean ('etc/passwd'), not {p!r}")
    if isinstance(ref, str):
        try:
            ref = ImageRef.parse(ref)
        except ReferenceError as e:
            return ImageFiles({}, {}, None, [], error=gate.inert(str(e), 1000))
    walk = _Walk(ref, limits, time.monotonic() + limits.seconds)
    files: dict[str, FileHit] = {}
    missing: dict[str, str] = {}
    manifest_digest, digests = ref.digest, []
    try:
        manifest, manifest_digest = client.image_manifest(ref, platform)
        layers = _layers(manifest, ref)
        digests = [layer.digest for layer in layers]
        # What every layer says is cached about the union, so the next caller can use it.
        scope = tuple(dict.fromkeys(wanted + WANTED))
        cached = cache.get(list(dict.fromkeys(digests))) if cache is not None and layers else {}
        undecided = list(wanted)
        for layer in reversed(layers):
            if not undecided:
                break
            facts = cached.get(layer.digest)
            if not isinstance(facts, LayerFacts) or not set(wanted) <= set(facts.wanted):
                if layer.foreign:
                    for p in undecided:
                        missing[p] = (
                            f"layer {layer.digest} is foreign (served from its urls, not the "
                            "registry): not fetched, nor the layers below it"
                        )
                    undecided = []
                    break
                if time.monotonic() >= walk.deadline:
                    raise _Failed(_late(walk, layer.digest))
                facts = cached[layer.digest] = _read_layer(client, walk, layer, scope)
                if cache is not None:
                    cache.put({layer.digest: facts})
            undecided = _decide(facts, layer.digest, undecided, files, missing)
        for p in undecided:
            missing[p] = "not in any layer"
    except RegistryError as e:
        return _failed(walk, files, missing, manifest_digest, digests, e.reason, e.integrity)
    except _Failed as e:
        return _failed(walk, files, missing, manifest_digest, digests, e.reason, e.integrity)
    return ImageFiles(
        files,
        missing,
        manifest_digest,
        digests,
        layers_read=walk.layers_read,
        bytes_read=walk.bytes_read,
    )


def _failed(
    walk: _Walk,
    files: dict[str, FileHit],
    missing: dict[str, str],
    manifest_digest: str | None,
    digests: list[str],
    reason: str,
    integrity: bool,
) -> ImageFiles:
    return ImageFiles(
        files,
        missing,
        manifest_digest,
        digests,
        error=reason,
        integrity_failure=integrity,
        layers_read=walk.layers_read,
        bytes_read=walk.bytes_read,
    )


def _layers(manifest: dict, ref: ImageRef) -> list[_Layer]:
    """The manifest's layers, base first; RegistryError for a malformed list."""
    entries = manifest.get("layers")
    if not isinstance(entries, list):
        raise RegistryError(f"{ref.domain}: malformed manifest for {ref}: no layers")
    if len(entries) > MAX_LAYERS:
        raise RegistryError(f"{ref.domain}: manifest for {ref} lists more than {MAX_LAYERS} layers")
    out = []
    for i, d in enumerate(entries):
        if not isinstance(d, dict) or not isinstance(d.get("digest"), str):
            raise RegistryError(f"{ref.domain}: malformed manifest for {ref}: layer {i}")
        check_digest_syntax(ref, d["digest"])
        size = d.get("size")
        if isinstance(size, bool) or not isinstance(size, int) or size < 0:
            size = None
        out.append(_Layer(d["digest"], size, bool(d.get("urls"))))
    return out


def _decide(
    facts: LayerFacts,
    digest: str,
    undecided: list[str],
    files: dict[str, FileHit],
    missing: dict[str, str],
) -> list[str]:
    """Decides the paths this layer decides; returns the others."""
    rest = []
    for p in undecided:
        opaque = [o for o in facts.opaque if o == "" or p.startswith(o + "/")]
        if p in facts.present:
            files[p] = FileHit(facts.present[p], digest)
        elif p in facts.refused:
            missing[p] = f"{facts.refused[p]} (layer {digest})"
            if p == "etc/os-release" and facts.refused[p].startswith("symlink"):
                missing[p] += "; usr/lib/os-release is read instead"
        elif p in facts.deleted:
            missing[p] = f"deleted in layer {digest}"
        elif opaque:
            missing[p] = f"opaque /{opaque[0]} in layer {digest}"
        else:
            rest.append(p)
    return rest


# --- one layer ---------------------------------------------------------------------------


def _read_layer(
    client: RegistryClient, walk: _Walk, layer: _Layer, wanted: tuple[str, ...]
) -> LayerFacts:
    """The layer's facts, its blob read to the end and verified; _Failed otherwise."""
    ref, limits, digest = walk.ref, walk.limits, layer.digest
    too_large = (
        f"image {ref}: layer {digest} exceeds the {_size(limits.max_compressed)} read bound "
        "(layer bytes read per image)"
    )
    left = limits.max_compressed - walk.bytes_read
    if layer.size is not None and layer.size > left:
        raise _Failed(too_large)  # as its manifest says: not worth a byte
    walk.layers_read += 1
    try:
        blob = client.open_blob(ref, digest, left, walk.deadline)
    except BlobTooLarge:
        raise _Failed(too_large)
    except RegistryError as e:
        raise _Failed(_registry_reason(walk, digest, e), e.integrity)
    try:
        corrupt = None
        facts = None
        try:
            facts = _scan(_open_stream(blob, walk, digest), wanted, limits.max_file)
        except _Corrupt as e:
            corrupt = str(e)  # said after the hash: a blob that is not its digest is worse
        while blob.read1():  # the rest of the blob: hashed, not parsed
            _check_time(walk, digest)
        blob.verify()
        if corrupt or facts is None:
            raise _Failed(f"image {ref}: layer {digest}: {corrupt}")
        return facts
    except BlobTooLarge:
        raise _Failed(too_large)
    except RegistryError as e:
        raise _Failed(_registry_reason(walk, digest, e), e.integrity)
    finally:
        walk.bytes_read += blob.received
        blob.close()


def _registry_reason(walk: _Walk, digest: str, e: RegistryError) -> str:
    if time.monotonic() >= walk.deadline:
        return _late(walk, digest)
    if e.integrity:
        return e.reason
    return f"image {walk.ref}: layer {digest}: {e.reason}"


def _late(walk: _Walk, digest: str) -> str:
    return (
        f"image {walk.ref}: layers not read within the {walk.limits.seconds:g} s time bound "
        f"(at layer {digest})"
    )


def _check_time(walk: _Walk, digest: str) -> None:
    if time.monotonic() >= walk.deadline:
        raise _Failed(_late(walk, digest))


def _size(n: int) -> str:
    for unit, shift in (("GiB", 30), ("MiB", 20), ("KiB", 10)):
        if n >= 1 << shift and n % (1 << shift) == 0:
            return f"{n >> shift} {unit}"
    return f"{n} bytes"


# --- decompression ---------------------------------------------------------------------


class _Source:
    """The blob's bytes, the first few (read to tell the format) given back first."""

    def __init__(self, blob: BlobStream, head: bytes):
        self._blob, self._head = blob, head

    def read(self, amount: int = CHUNK) -> bytes:
        if self._head:
            out, self._head = self._head[:amount], self._head[amount:]
            return out
        return self._blob.read1(amount)


def _open_stream(blob: BlobStream, walk: _Walk, digest: str) -> _Counted:
    """The layer's tar stream, decompressed as its first bytes say, counted and timed."""
    head = b""
    while len(head) < 4:
        data = blob.read1()
        if not data:
            break
        head += data
    source = _Source(blob, head)
    if head.startswith(GZIP_MAGIC):
        return _Counted(_Gunzip(source), walk, digest, "gzip")
    if head.startswith(ZSTD_MAGIC) or (
        len(head) >= 4 and head[0] & 0xF0 == 0x50 and head[1:4] == b"\x2a\x4d\x18"
    ):  # a zstd frame, or a skippable one first (as zstd:chunked writes)
        dctx = zstandard.ZstdDecompressor(max_window_size=ZSTD_MAX_WINDOW)
        reader = dctx.stream_reader(source, read_size=CHUNK, read_across_frames=True, closefd=False)
        return _Counted(reader, walk, digest, "zstd")
    return _Counted(source, walk, digest, "tar")


class _Gunzip:
    """gzip members one after another (as eStargz writes them), at most `amount` bytes of
    output a read. What follows the last member is left to the hash."""

    def __init__(self, source: _Source):
        self._source = source
        self._d: Any = zlib.decompressobj(31)
        self._pending = b""
        self._finished = False

    def read(self, amount: int = CHUNK) -> bytes:
        while not self._finished:
            if self._d is None and not self._next_member():
                break
            if not self._pending:
                self._pending = self._source.read(CHUNK)
                if not self._pending:
                    out = self._d.flush()  # what zlib still holds: less than one match
                    if out:
                        return out
                    if not self._d.eof:
                        raise _Corrupt("the gzip stream is cut short")
                    self._d = None
                    continue
            out = self._d.decompress(self._pending, amount)
            self._pending = self._d.unconsumed_tail
            if self._d.eof:
                self._pending = self._d.unused_data + self._pending
                self._d = None
            if out:
                return out
        return b""

    def _next_member(self) -> bool:
        while len(self._pending) < 2:
            data = self._source.read(CHUNK)
            if not data:
                break
            self._pending += data
        if not self._pending.startswith(GZIP_MAGIC):
            self._finished = True
            return False
        self._d = zlib.decompressobj(31)
        return True


class _Counted:
    """A decompressed stream whose bytes count against the image's bound, and whose reads
    watch the clock (decompressing takes time even when the network is fast)."""

    def __init__(self, inner: Any, walk: _Walk, digest: str, kind: str):
        self._inner, self._walk, self._digest, self._kind = inner, walk, digest, kind

    def read(self, amount: int = CHUNK) -> bytes:
        walk = self._walk
        try:
            data = self._inner.read(amount)
        except (zlib.error, zstandard.ZstdError) as e:
            raise _Corrupt(f"not valid {self._kind} data ({gate.inert(str(e), 200)})")
        walk.uncompressed += len(data)
        if walk.uncompressed > walk.limits.max_uncompressed:
            raise _Failed(
                f"image {walk.ref}: layer {self._digest} decompresses past the "
                f"{_size(walk.limits.max_uncompressed)} bound on decompressed bytes per image "
                "(a decompression bomb?)"
            )
        _check_time(walk, self._digest)
        return data


# --- tar ---------------------------------------------------------------------------------


class _Tar:
    """Exact reads and skips over a stream that returns what it has."""

    def __init__(self, source: Any):
        self._source = source
        self._buf = b""
        self._pos = 0
        self.offset = 0  # bytes of the tar consumed, for reasons

    def read(self, n: int) -> bytes:
        """n bytes, or fewer if the stream ends first."""
        have = len(self._buf) - self._pos
        if have >= n:
            out = self._buf[self._pos : self._pos + n]
            self._pos += n
            self.offset += n
            return out
        parts = [self._buf[self._pos :]]
        need = n - have
        self._buf, self._pos = b"", 0
        while need > 0:
            data = self._source.read(CHUNK)
            if not data:
                break
            if len(data) > need:
                parts.append(data[:need])
                self._buf, self._pos = data, need
                need = 0
            else:
                parts.append(data)
                need -= len(data)
        out = b"".join(parts)
        self.offset += len(out)
        return out

    def skip(self, n: int) -> None:
        have = len(self._buf) - self._pos
        if have >= n:
            self._pos += n
            self.offset += n
            return
        n -= have
        self.offset += have
        self._buf, self._pos = b"", 0
        while n > 0:
            data = self._source.read(CHUNK)
            if not data:
                raise _Corrupt("the tar archive is cut short")
            if len(data) > n:
                self._buf, self._pos = data, n
                self.offset += n
                return
            n -= len(data)
            self.offset += len(data)


def _scan(source: Any, wanted: tuple[str, ...], max_file: int) -> LayerFacts:
    """What the tar stream says about the wanted paths (the last entry for a path wins,
    as when it is unpacked). Reads to the end-of-archive blocks; _Corrupt for a stream
    that is not a tar archive."""
    tar = _Tar(source)
    ancestors = {a for p in wanted for a in _ancestors(p)}
    present: dict[str, bytes] = {}
    refused: dict[str, str] = {}
    deleted: set[str] = set()
    opaque: set[str] = set()
    parent_kinds: dict[str, str] = {}  # an ancestor of a wanted path -> what it is
    pax: dict[str, str] = {}
    long_name = None
    while True:
        at = tar.offset
        block = tar.read(BLOCK)
        if not block:
            break  # the end, without end-of-archive blocks: as Go's reader, accepted
        if len(block) < BLOCK:
            raise _Corrupt("the tar archive is cut short")
        if block == _ZERO_BLOCK:
            following = tar.read(BLOCK)
            if not following or following == _ZERO_BLOCK:
                break
            raise _Corrupt(f"a tar header follows a zero block at byte {at}")
        h = _header(block, at)
        typeflag = h["type"]
        if typeflag in (b"x", b"g", b"L", b"K"):
            if h["size"] > MAX_SPECIAL:
                raise _Corrupt(
                    f"a tar extended header at byte {at} is over the {_size(MAX_SPECIAL)} bound"
                )
            data = tar.read(h["size"])
            if len(data) < h["size"]:
                raise _Corrupt("the tar archive is cut short")
            tar.skip(-h["size"] % BLOCK)
            if typeflag == b"x":
                pax = _pax(data, at)
            elif typeflag == b"L":
                long_name = data.split(b"\x00", 1)[0]
            continue  # a link target ('K') is not needed; a global header ('g') is not
            # applied, as Go's reader does not apply it
        name, size = h["name"], h["size"]
        sparse = typeflag == b"S" or any(k.startswith("GNU.sparse.") for k in pax)
        if pax.get("path"):
            name = pax["path"].encode("utf-8", "surrogateescape")
        if long_name is not None:
            name = long_name
        if pax.get("GNU.sparse.name"):
            name = pax["GNU.sparse.name"].encode("utf-8", "surrogateescape")
        if pax.get("size"):
            if not pax["size"].isascii() or not pax["size"].isdigit():
                raise _Corrupt(f"a malformed PAX size for the tar entry at byte {at}")
            size = int(pax["size"])
        pax, long_name = {}, None
        if typeflag == b"\x00" and name.endswith(b"/"):
            typeflag = b"5"  # an old-style directory
        if typeflag == b"S" and block[482]:
            _skip_sparse_extensions(tar)
        length = 0 if typeflag in HEADER_ONLY else size
        padding = -length % BLOCK
        path = _clean(name.decode("utf-8", "surrogateescape"))
        parent, _, base = path.rpartition("/")
        if base.startswith(".wh."):
            if base == ".wh..wh..opq":
                if parent in ancestors:
                    opaque.add(parent)
            elif not base.startswith(".wh..wh.") and len(base) > 4:
                target = f"{parent}/{base[4:]}" if parent else base[4:]
                deleted.update(p for p in wanted if p == target or p.startswith(target + "/"))
        elif path in wanted:
            present.pop(path, None)
            refused.pop(path, None)
            kind = _kind(typeflag)
            if sparse:
                refused[path] = "sparse file: not read"
            elif kind in _LINKS:
                refused[path] = f"{kind}: not followed"
            elif kind != "regular file":
                refused[path] = f"{kind}: not a regular file"
            elif length > max_file:
                refused[path] = f"too large ({length} bytes; the bound is {_size(max_file)})"
            else:
                data = tar.read(length)
                if len(data) < length:
                    raise _Corrupt("the tar archive is cut short")
                present[path] = data
                length = 0  # read: only its padding is left
        elif path in ancestors and path:
            parent_kinds[path] = _kind(typeflag)
            if parent_kinds[path] != "directory":
                # Unpacking replaces the directory, and what was written under it earlier in
                # this layer goes with it (containerd removes it before it writes the link).
                for p in wanted:
                    if p.startswith(path + "/"):
                        present.pop(p, None)
                        refused.pop(p, None)
        tar.skip(length + padding)
    for ancestor in sorted(parent_kinds, key=len):
        kind = parent_kinds[ancestor]
        if kind == "directory":
            continue
        why = ": not followed" if kind in _LINKS else ", not a directory"
        for p in wanted:
            if p.startswith(ancestor + "/") and p not in present and p not in refused:
                refused[p] = f"/{ancestor} is a {kind}{why}"
    return LayerFacts(present, sorted(deleted), sorted(opaque), refused, wanted)


def _kind(typeflag: bytes) -> str:
    if typeflag in REGULAR:
        return "regular file"
    return _KINDS.get(typeflag) or f"tar type {typeflag!r}"


def _ancestors(path: str) -> list[str]:
    """ "usr/lib/os-release" -> ["", "usr", "usr/lib"] ("" is the root)."""
    parts = path.split("/")[:-1]
    return [""] + ["/".join(parts[: i + 1]) for i in range(len(parts))]


def _clean(name: str) -> str:
    """A tar entry's path as it lands under the root: no leading "/" or "./", "." and empty
    parts dropped, ".." resolved lexically and never above the root (as the runtimes
    unpack)."""
    parts: list[str] = []
    for part in name.split("/"):
        if part in ("", "."):
            continue
        if part == "..":
            if parts:
                parts.pop()
            continue
        parts.append(part)
    return "/".join(parts)


def _header(block: bytes, at: int) -> dict[str, Any]:
    """The fields of a tar header block we use; _Corrupt unless its checksum holds."""
    try:
        stored = _number(block[148:156], at)
    except _Corrupt:
        raise _Corrupt(f"not a tar archive (bad header checksum at byte {at})")
    unsigned = sum(block) - sum(block[148:156]) + 8 * 32
    if stored != unsigned:
        high = BLOCK - len(block.translate(None, _HIGH_BYTES))
        high -= 8 - len(block[148:156].translate(None, _HIGH_BYTES))
        if stored != unsigned - 256 * high:  # some old tars summed signed bytes
            raise _Corrupt(f"not a tar archive (bad header checksum at byte {at})")
    name = block[0:100].split(b"\x00", 1)[0]
    magic = block[257:263]
    if magic == b"ustar\x00":  # POSIX ustar (and PAX): a prefix of the name
        prefix = block[345:476] if block[508:512] == b"tar\x00" else block[345:500]
        prefix = prefix.split(b"\x00", 1)[0]
        if prefix:
            name = prefix + b"/" + name
    return {"name": name, "size": _number(block[124:136], at), "type": block[156:157]}


def _number(field: bytes, at: int) -> int:
    """A numeric header field: octal, or GNU's base-256 for large values."""
    if field[0] & 0x80:
        if field[0] == 0xFF:
            raise _Corrupt(f"a negative number in the tar header at byte {at}")
        return int.from_bytes(bytes([field[0] & 0x7F]) + field[1:], "big")
    digits = field.strip(b" \x00")
    if not digits:
        return 0
    if digits.strip(b"01234567"):
        raise _Corrupt(f"not a tar archive (a malformed number in the header at byte {at})")
    return int(digits, 8)


def _skip_sparse_extensions(tar: _Tar) -> None:
    """The extension blocks of an old GNU sparse header (each flags the next at 504)."""
    while True:
        block = tar.read(BLOCK)
        if len(block) < BLOCK:
            raise _Corrupt("the tar archive is cut short")
        if not block[504]:
            return


def _pax(data: bytes, at: int) -> dict[str, str]:
    """The records of a PAX extended header ("%d %s=%s\\n" each)."""
    records: dict[str, str] = {}
    pos = 0
    while pos < len(data):
        space = data.find(b" ", pos, pos + 21)
        digits = data[pos:space] if space > pos else b""
        if not digits.isdigit():
            raise _Corrupt(f"a malformed PAX header at byte {at}")
        end = pos + int(digits)
        if end <= space + 1 or end > len(data) or data[end - 1] != 0x0A:
            raise _Corrupt(f"a malformed PAX header at byte {at}")
        key, eq, value = data[space + 1 : end - 1].partition(b"=")
        if not eq:
            raise _Corrupt(f"a malformed PAX header at byte {at}")
        if value:  # an empty value keeps the header's own (as Go's reader)
            records[key.decode("utf-8", "surrogateescape")] = value.decode(
                "utf-8", "surrogateescape"
            )
        pos = end
    return records


def account_of(files: ImageFiles, image_user: str, repository: str) -> dict:
    """What an image's files say for the fix (rules/fix.Account): the entry of its USER
    name, an existing non-root user fit to run it, its OS family; or why not."""
    if files.error:
        return {"error": files.error}
    family = passwd.os_family(files.os_release)
    hit = files.files.get("etc/passwd")
    if hit is None:
        why = files.missing.get("etc/passwd", "not in any layer")
        return {"missing": f"no /etc/passwd in the image: {why}", "family": family}
    try:
        entries, refused = passwd.parse_passwd(hit.data)
    except passwd.PasswdError as e:
        return {"error": f"/etc/passwd in layer {hit.layer}: {e}"}

    def entry(e: passwd.Entry | None) -> dict | None:
        if e is None:
            return None
        return {"name": e.name, "uid": e.uid, "gid": e.gid, "layer": hit.layer, "line": e.line}

    out: dict = {"family": family, "layer": hit.layer, "refused": refused[:5]}
    name = ImageUser.parse(image_user).name
    if name is not None:
        found = passwd.lookup(entries, name)
        shadow = passwd.shadowed_by(hit.data, name, found.line if found else None)
        if shadow is not None:  # a malformed line a runtime may read as this user
            out["user"] = None
            out["missing"] = (
                f"line {shadow} of /etc/passwd (layer {hit.layer}) names {name!r} but is not "
                "well-formed: a container runtime may read it, so the uid is not known"
            )[:300]
        else:
            out["user"] = entry(found)
            if found is None:
                out["missing"] = f"no user {name!r} in /etc/passwd (layer {hit.layer})"[:300]
    fit = passwd.fitting_user(entries, repository)
    if fit is not None and passwd.shadowed_by(hit.data, fit.name, fit.line) is not None:
        fit = None  # its name is also on a malformed line before it: not suggested
    out["fit"] = entry(fit)
    group = image_user.split(":", 1)[1] if ":" in image_user else ""
    if group and not group.isdigit():  # USER node:staff: the group's gid, from /etc/group
        found = files.files.get("etc/group")
        try:
            groups, _ = passwd.parse_group(found.data) if found else ([], [])
        except passwd.PasswdError:
            groups = []
        g = next((x for x in groups if x.name == group), None)
        if g is not None and found is not None:
            out["group"] = {"name": g.name, "gid": g.gid, "layer": found.layer, "line": g.line}
    return out
