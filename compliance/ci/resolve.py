"""`welkin-evaluate --resolve` after `pip install welkin-dash[resolve]`: image users from
their registries, without Django or a database.

The same verified, per-platform answers as the scanner (collect/registry.py hashes every
manifest and blob against its digest; collect/layers.py reads /etc/passwd for the fix),
kept in a cache on disk so a CI job asks each digest once across runs: `--cache DIR`, else
$XDG_CACHE_HOME/welkin-dash (~/.cache/welkin-dash). The cache is trusted like the runner:
keep it outside the checked-out tree, which a pull request controls. An answer about a
digest is kept for good, one about a tag for TAG_TTL; a failure is never kept. What a
layer says about /etc/passwd is kept by its digest. Anonymous registries only (public
ones need nothing); the dashboard's stored credentials are `manage.py evaluate
--resolve`'s.

Imported only for --resolve: the registry client needs urllib3 and zstandard (the
`resolve` extra), which a plain welkin-evaluate run does not load.
"""

from __future__ import annotations

import hashlib
import json
import os
import stat
import tempfile
import time
from pathlib import Path

from compliance.collect import layers, registry
from compliance.rules.runas import ImageUser

MAX_ENTRY = 4 << 20  # bytes of one cache entry (a layer's passwd and group fit)
TAG_TTL = 3600  # seconds an answer about a tag is kept (the tag may move)
SOURCE = "registry"


def cache_dir(given: str | None) -> Path:
    if given:
        return Path(given)
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "welkin-dash"


class DiskCache:
    """JSON files under a folder: images/<sha256 of the key>.json, layers/<digest>.json.
    Written to a temporary file and renamed, so a parallel job never reads half a file;
    an unreadable or foreign file is a miss, never an answer."""

    def __init__(self, root: Path):
        self.root = root
        for sub in ("images", "layers"):
            try:
                (root / sub).mkdir(parents=True, exist_ok=True)
            except OSError as e:
                raise ValueError(f"--cache {root}: cannot use it: {e.strerror or e}") from None

    def _path(self, kind: str, key: str) -> Path:
        return self.root / kind / (hashlib.sha256(key.encode()).hexdigest() + ".json")

    def read(self, kind: str, key: str) -> dict | None:
        """An entry: a regular file (a symbolic link is not followed), at most MAX_ENTRY
        bytes; anything else is a miss."""
        try:
            fd = os.open(self._path(kind, key), os.O_RDONLY | os.O_NOFOLLOW)
        except OSError:
            return None
        try:
            if not stat.S_ISREG(os.fstat(fd).st_mode):
                return None
            data = os.read(fd, MAX_ENTRY + 1)
        except OSError:
            return None
        finally:
            os.close(fd)
        if len(data) > MAX_ENTRY:
            return None
        try:
            doc = json.loads(data)
        except ValueError:
            return None
        if not isinstance(doc, dict) or doc.get("key") != key:
            return None
        expires = doc.get("expires")
        if isinstance(expires, int | float) and expires < time.time():
            return None
        return doc

    def write(self, kind: str, key: str, doc: dict, ttl: float | None = None) -> None:
        doc = {**doc, "key": key, "expires": time.time() + ttl if ttl else None}
        path = self._path(kind, key)
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=".tmp-")
        try:
            with os.fdopen(fd, "w") as f:
                json.dump(doc, f)
            os.replace(tmp, path)
        except OSError:
            Path(tmp).unlink(missing_ok=True)  # a cache that cannot be written: no cache

    # layers.LayerCache
    def get(self, digests: list[str]) -> dict[str, layers.LayerFacts]:
        out = {}
        for d in digests:
            doc = self.read("layers", d)
            try:
                if doc is not None:
                    out[d] = layers.LayerFacts.from_json(doc.get("facts"))
            except ValueError:
                continue
        return out

    def put(self, facts: dict[str, layers.LayerFacts]) -> None:
        for d, f in facts.items():
            self.write("layers", d, {"facts": f.to_json()})


class PipResolver:
    """offline.Lookups for welkin-evaluate --resolve: prepare(pods), users_for(pod),
    accounts_for(pod), notes."""

    def __init__(self, cache: DiskCache, timeout: float = 10.0, workers: int = 8):
        self.client = registry.RegistryClient(timeout=timeout, concurrency=workers)
        self.cache, self.workers = cache, workers
        self.notes: dict[str, str] = {}
        self._users: dict[registry.Platform, dict[str, str]] = {}
        self._sources: dict[registry.Platform, dict[str, str]] = {}
        self._accounts: dict[registry.Platform, dict[str, dict]] = {}
        self._done: set[tuple[str, registry.Platform]] = set()
        self.lookups = self.cache_hits = 0

    def close(self) -> None:
        self.client.close()

    def users_for(self, pod: dict) -> tuple[dict[str, str], dict[str, str]]:
        p = registry.platform_of(pod)
        return self._users.get(p, {}), self._sources.get(p, {})

    def accounts_for(self, pod: dict) -> dict[str, dict]:
        return self._accounts.get(registry.platform_of(pod), {})

    def prepare(self, pods: list[dict]) -> None:
        wanted = []
        for pod in pods:
            if not isinstance(pod, dict):
                continue
            platform = registry.platform_of(pod)
            for image, image_id in registry.pod_images(pod):
                digest = registry.digest_from_image_id(image_id)
                key = image_id if digest else image
                if (key, platform) in self._done:
                    continue
                self._done.add((key, platform))
                try:
                    ref = registry.ImageRef.parse(image)
                except registry.ReferenceError as e:
                    self.notes.setdefault(image, str(e))
                    continue
                refs = [ref.with_digest(digest), ref] if digest and not ref.digest else [ref]
                wanted.append((key, image, refs, platform))
        todo = []
        for key, image, refs, platform in wanted:
            hit = next(
                (
                    (r, doc)
                    for r in refs
                    if (doc := self.cache.read("images", registry.cache_key(r, platform)))
                ),
                None,
            )
            if hit is not None:
                self.cache_hits += 1
                self._known(key, image, platform, hit[0], hit[1])
            else:
                todo.append((key, image, refs, platform))
        if todo:
            self._lookup(todo)

    def _lookup(self, todo: list) -> None:
        self.lookups += len(todo)
        first = registry.resolve_many(
            self.client, [(refs[0], p) for _, _, refs, p in todo], workers=self.workers
        )
        retry = [
            (key, image, refs[1:], p)
            for key, image, refs, p in todo
            if first[(refs[0], p)].user is None
            and len(refs) > 1
            and not first[(refs[0], p)].integrity_failure
        ]
        again = registry.resolve_many(
            self.client, [(refs[0], p) for _, _, refs, p in retry], workers=self.workers
        )
        results = {**first, **again}
        for key, image, refs, platform in todo:
            ref = next((r for r in refs if (r, platform) in again), refs[0])
            res = results[(ref, platform)]
            if res.user is None:
                self.notes[image] = res.error or "unknown"
                continue
            doc = {"user": res.user, "digest": res.digest or ""}
            doc["passwd"] = self._passwd(ref, platform, res.user)
            if doc["passwd"] is not None and "error" in doc["passwd"]:
                self._account(key, platform, doc["passwd"])
                doc.pop("passwd")  # a failed read is not kept: tried again next run
            self.cache.write(
                "images",
                registry.cache_key(ref, platform),
                doc,
                ttl=None if ref.digest else TAG_TTL,
            )
            self._known(key, image, platform, ref, doc)

    def _passwd(self, ref, platform, user: str) -> dict | None:
        parsed = ImageUser.parse(user)
        if parsed.name is None and not parsed.is_root:
            return None  # a numeric non-root uid: /etc/passwd adds nothing to the fix
        files = layers.read_image_files(self.client, ref, platform, cache=self.cache)
        return layers.account_of(files, user, ref.repository)

    def _known(self, key, image, platform, ref, doc) -> None:
        self._users.setdefault(platform, {})[key] = doc["user"]
        self._sources.setdefault(platform, {})[key] = SOURCE
        self.notes[image] = f"registry ({doc.get('digest') or ref})"
        if isinstance(doc.get("passwd"), dict):
            self._account(key, platform, doc["passwd"])

    def _account(self, key, platform, account: dict) -> None:
        self._accounts.setdefault(platform, {})[key] = account
