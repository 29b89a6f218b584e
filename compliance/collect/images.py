"""Image users for a scan: operator-supplied, cached, or looked up in registries.

`ImageResolver.prepare(pods)` runs before each page of pods is evaluated: it collects the
page's images (and the digests their statuses report), answers what it can from the
operator's overrides and the PostgreSQL cache, and looks the rest up concurrently through
registry.py. Results land in `users` / `sources` / `notes`, the mappings the evaluator and
the aggregator read. A registry that fails once in a scan is not asked again in that scan.

Only verified answers are cached (registry.py hashes every manifest and blob against its
digest): an answer that did not match its digest is reported and not kept, so the next
scan asks again; other failures are kept for WELKIN_REGISTRY_FAILURE_TTL.
"""

from __future__ import annotations

import fnmatch
import logging
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from datetime import timedelta

from django.conf import settings
from django.core.exceptions import ImproperlyConfigured
from django.db import DatabaseError, IntegrityError, transaction
from django.utils import timezone

from compliance.collect import layers, registry
from compliance.models import ImageCache, ImageLayer, ImageUserOverride, Registry
from compliance.rules.runas import ImageUser
from compliance.vocabulary import SOURCE_OPERATOR, SOURCE_REGISTRY

log = logging.getLogger(__name__)

# Django-free pieces, shared with welkin-evaluate --resolve after a plain pip install
# (ci/resolve.py): where a pod runs, its images, the cache key, what /etc/passwd says.
platform_of = registry.platform_of
_images = registry.pod_images
_cache_key = registry.cache_key
account_of = layers.account_of

_NOT_CACHED = object()  # _expiry's answer for what must not be cached
# Where /etc/passwd is read from when not from the registries: load_demo's in-memory
# images (demo_images.DemoImages) while it loads, else None.
LOCAL_IMAGES = None


def registry_configs() -> dict[str, registry.RegistryConfig]:
    return {
        r.host: registry.RegistryConfig(
            r.host, r.username or None, r.password, r.ca_pem or None, r.plain_http
        )
        for r in Registry.objects.all()
    }


@dataclass(frozen=True)
class _Wanted:
    image: str  # as written in the pod
    refs: list  # what to try, in order: the status digest, then the tag
    platform: registry.Platform


class ImageResolver:
    """Image users for one scan (or one `evaluate --resolve` run)."""

    def __init__(
        self,
        client: registry.RegistryClient | None = None,
        *,
        use_registry: bool = True,
        use_cache: bool = True,
        known: dict[str, str] | None = None,
        overrides: list[tuple[str, str]] | None = None,
    ):
        """known: image users given up front (they win over everything else)."""
        self.client = client or registry.RegistryClient(
            registry_configs(),
            timeout=settings.WELKIN_REGISTRY_TIMEOUT,
            concurrency=settings.WELKIN_REGISTRY_CONCURRENCY,
        )
        self.use_registry = use_registry
        self.use_cache = use_cache
        self._known = dict(known or {})
        # Per platform: one image (or index digest) can run a different USER per arch.
        self._users: dict[registry.Platform, tuple[dict[str, str], dict[str, str]]] = {}
        self.users, self.sources = self._maps(registry.Platform())
        self.notes: dict[str, str] = {}  # spec image -> digest it resolved to, or why not
        # Per platform, spec image -> what its /etc/passwd says (one image can hold
        # another /etc/passwd per architecture).
        self.accounts: dict[registry.Platform, dict[str, dict]] = {}
        self._done: set[tuple[str, registry.Platform]] = set()
        self._failed_hosts: dict[str, str] = {}
        self._answered: dict[tuple, registry.ImageRef] = {}  # the reference that answered
        self._overrides = (
            overrides
            if overrides is not None
            else [(o.pattern, o.user) for o in ImageUserOverride.objects.all()]
        )
        self.cache_hits = 0
        self.lookups = 0
        self.failures = 0  # lookups the registry did not answer with a user
        self.seconds = 0.0  # spent in prepare: cache reads, registry lookups, cache writes
        self.offline_note = ""  # why `evaluate --resolve` runs without the database
        self.read_passwd = True  # read /etc/passwd of named and root images (for the fix)
        self.files_client = LOCAL_IMAGES  # where layers come from, when not the registries
        self.passwd_lookups = 0  # images whose layers were walked
        self.layers_read = 0  # layer blobs fetched
        self.layer_bytes = 0

    def close(self) -> None:
        self.client.close()

    def _maps(self, platform: registry.Platform) -> tuple[dict[str, str], dict[str, str]]:
        maps = self._users.get(platform)
        if maps is None:
            maps = self._users[platform] = (dict(self._known), {})
        return maps

    def accounts_for(self, pod: dict) -> dict[str, dict]:
        """image (its status imageID when known, else as written in the pod) -> what its
        /etc/passwd says (fix.Account), for the pod's platform."""
        return self.accounts.get(platform_of(pod), {})

    def users_for(self, pod: dict) -> tuple[dict[str, str], dict[str, str]]:
        """(image users, their sources) for the pod's platform."""
        return self._maps(platform_of(pod))

    def prepare(self, pods: list[dict]) -> None:
        """Make the users of every image in these pods known, as far as possible."""
        start = time.perf_counter()
        try:
            self._prepare(pods)
        finally:
            self.seconds += time.perf_counter() - start

    def _prepare(self, pods: list[dict]) -> None:
        wanted: dict[tuple[str, registry.Platform], _Wanted] = {}
        supplied: dict[tuple[str, registry.Platform], _Wanted] = {}
        for pod in pods:
            if not isinstance(pod, dict):
                continue
            platform = platform_of(pod)
            users, _ = self._maps(platform)
            for image, image_id in _images(pod):
                digest = registry.digest_from_image_id(image_id)
                key = image_id if digest else image
                if (key, platform) in self._done or image in users:
                    continue
                self._done.add((key, platform))
                overridden = self._override(image, key, platform)
                try:
                    ref = registry.ImageRef.parse(image)
                except registry.ReferenceError as e:
                    if not overridden:
                        self.notes.setdefault(image, str(e))
                    continue
                # The digest the status reports is what runs; the tag is the fallback when
                # the registry no longer (or never did) serve that digest.
                refs = [ref.with_digest(digest), ref] if digest and not ref.digest else [ref]
                # An operator-supplied user still has the image's /etc/passwd behind it.
                (supplied if overridden else wanted)[(key, platform)] = _Wanted(
                    image, refs, platform
                )
        if wanted:
            self._resolve(wanted)
        if (
            (wanted or supplied)
            and self.read_passwd
            and (self.use_registry or self.files_client is not None)
        ):
            self._accounts({**wanted, **supplied})

    def _override(self, image: str, key: str, platform: registry.Platform) -> bool:
        for pattern, user in self._overrides:
            if fnmatch.fnmatchcase(image, pattern):
                users, sources = self._maps(platform)
                users[key] = user
                sources[key] = SOURCE_OPERATOR
                self.notes[image] = f"operator-supplied ({pattern})"
                return True
        return False

    def _resolve(self, wanted: dict[tuple, _Wanted]) -> None:
        now = timezone.now()
        pending = dict(wanted)
        while pending:  # round 1: digests (or tags); round 2: tags where a digest failed
            retry: dict[tuple, _Wanted] = {}
            for key, w, res in self._lookup_round(pending, now):
                # A registry that answered the digest with other bytes is not asked by tag
                # instead: the answer stays about what runs, and unverified.
                if (
                    res is not None
                    and res.user is None
                    and len(w.refs) > 1
                    and not res.integrity_failure
                ):
                    retry[key] = _Wanted(w.image, w.refs[1:], w.platform)
                elif res is not None:
                    self._apply(key, w.image, res.user, res.digest or "", res.error or "")
                    if res.user is not None:
                        self._answered[key] = w.refs[0]  # what /etc/passwd is read from
            pending = retry

    def _lookup_round(self, wanted: dict[tuple, _Wanted], now):
        """(key, wanted, resolution) for each, from the cache or the registries."""
        cache_keys = {key: _cache_key(w.refs[0], w.platform) for key, w in wanted.items()}
        cached = {}
        if self.use_cache:
            cached = {
                c.key: c
                for c in ImageCache.objects.filter(key__in=list(cache_keys.values()))
                if c.expires_at is None or c.expires_at > now
            }
        todo = []
        for key, w in wanted.items():
            hit = cached.get(cache_keys[key])
            ref = w.refs[0]
            if hit is not None:
                self.cache_hits += 1
                yield (
                    key,
                    w,
                    registry.Resolution(hit.user, hit.digest or None, error=hit.error or None),
                )
            elif not self.use_registry:
                self.notes.setdefault(w.image, "not looked up")
            elif ref.domain in self._failed_hosts:
                yield key, w, registry.Resolution(None, error=self._failed_hosts[ref.domain])
            else:
                todo.append((key, w))
        if not todo:
            return
        self.lookups += len(todo)
        results = registry.resolve_many(
            self.client,
            [(w.refs[0], w.platform) for _, w in todo],
            workers=settings.WELKIN_REGISTRY_CONCURRENCY,
        )
        rows = []
        for key, w in todo:
            ref = w.refs[0]
            res = results[(ref, w.platform)]
            if res.error:
                self.failures += 1
            if res.error and ("unreachable" in res.error or "timed out" in res.error):
                self._failed_hosts[ref.domain] = res.error
            expires_at = self._expiry(ref, res, now)
            if expires_at is _NOT_CACHED:
                log.warning("not caching %s: %s", ref, res.error)
                yield key, w, res
                continue
            rows.append(
                ImageCache(
                    key=cache_keys[key],
                    user=res.user,
                    digest=res.digest or "",
                    config_digest=res.config_digest or "",
                    error=res.error or "",
                    resolved_at=now,
                    expires_at=expires_at,
                )
            )
            yield key, w, res
        if self.use_cache:
            _store(rows)

    def _accounts(self, wanted: dict[tuple, _Wanted]) -> None:
        """What each named or root image's /etc/passwd says (fix.Account), for the fix:
        from the image cache when read before, else from its layers (each layer's facts
        cached for good). A failure is kept for this scan only and retried next scan."""
        todo: dict[tuple, tuple[registry.ImageRef, registry.Platform, str]] = {}
        for (key, platform), w in wanted.items():
            users, _ = self._maps(platform)
            user = users.get(key)
            known = self.accounts.setdefault(platform, {})
            # Keyed as the users are (the status digest when known): two builds behind one
            # tag have two /etc/passwd files.
            if user is None or key in known or (key, platform) in todo:
                continue
            parsed = ImageUser.parse(user)
            if parsed.name is None and not parsed.is_root:
                continue  # a numeric non-root uid: /etc/passwd adds nothing to the fix
            ref = self._answered.get((key, platform), w.refs[0])
            todo[(key, platform)] = (ref, platform, user)
        if not todo:
            return
        keys = {item: _cache_key(ref, platform) for item, (ref, platform, _) in todo.items()}
        if self.use_cache:
            stored = dict(
                ImageCache.objects.filter(
                    key__in=list(keys.values()), passwd__isnull=False
                ).values_list("key", "passwd")
            )
            for item in list(todo):
                if isinstance(stored.get(keys[item]), dict):
                    self.accounts[item[1]][item[0]] = stored[keys[item]]
                    del todo[item]
        if not todo:
            return
        for item, (ref, platform, _) in list(todo.items()):
            if ref.domain in self._failed_hosts and self.files_client is None:
                self.accounts[platform][item[0]] = {"error": self._failed_hosts[ref.domain]}
                del todo[item]
        if not todo:
            return
        memo = _ManifestMemo(self.files_client or self.client)
        manifests = _pool_map(
            lambda item: memo.layer_digests(item[0], item[1]),
            list(todo.values()),
            settings.WELKIN_REGISTRY_CONCURRENCY,
        )
        digests = sorted({d for found in manifests for d in found})
        cache = _LayerDict(
            {
                row.digest: facts
                for row in ImageLayer.objects.filter(digest__in=digests)
                if (facts := _facts(row.facts)) is not None
            }
            if self.use_cache
            else {}
        )
        limits = layers.Limits(
            max_compressed=settings.WELKIN_PASSWD_MAX_BYTES,
            seconds=float(settings.WELKIN_PASSWD_SECONDS),
        )
        results = _pool_map(
            lambda item: layers.read_image_files(
                memo, item[0], item[1], limits=limits, cache=cache
            ),
            list(todo.values()),
            settings.WELKIN_REGISTRY_CONCURRENCY,
        )
        for item, files in zip(todo, results, strict=True):
            ref, platform, user = todo[item]
            self.passwd_lookups += 1
            self.layers_read += files.layers_read
            self.layer_bytes += files.bytes_read
            if files.error and ("unreachable" in files.error or "timed out" in files.error):
                self._failed_hosts.setdefault(ref.domain, files.error)
            account = account_of(files, user, ref.repository)
            self.accounts[platform][item[0]] = account
            if files.error is None and self.use_cache:
                ImageCache.objects.filter(key=keys[item]).update(passwd=account)
        if cache.new and self.use_cache:
            now = timezone.now()
            ImageLayer.objects.bulk_create(
                [
                    ImageLayer(digest=d, facts=f.to_json(), read_at=now)
                    for d, f in cache.new.items()
                ],
                ignore_conflicts=True,
            )

    @staticmethod
    def _expiry(ref: registry.ImageRef, res: registry.Resolution, now):
        """When a cached answer expires: None for good, _NOT_CACHED for an answer that did
        not verify (a registry, or something between, answering other bytes)."""
        if res.integrity_failure:
            return _NOT_CACHED
        if res.error:
            return now + timedelta(seconds=settings.WELKIN_REGISTRY_FAILURE_TTL)
        if ref.digest:
            return None  # what a digest names never changes
        return now + timedelta(seconds=settings.WELKIN_REGISTRY_TAG_TTL)

    def _apply(
        self,
        key: tuple[str, registry.Platform],
        image: str,
        user: str | None,
        digest: str,
        error: str,
    ) -> None:
        if user is not None:
            users, sources = self._maps(key[1])
            users[key[0]] = user
            sources[key[0]] = SOURCE_REGISTRY
            self.notes[image] = f"registry ({digest})" if digest else "registry"
        else:
            self.notes[image] = error or "unknown"


class _ManifestMemo:
    """The registry client, with each image's manifest fetched once for both passes."""

    def __init__(self, client: registry.RegistryClient):
        self.client = client
        self._lock = threading.Lock()
        self._manifests: dict = {}

    def image_manifest(self, ref, platform=layers.DEFAULT_PLATFORM):
        with self._lock:
            hit = self._manifests.get((ref, platform))
        if hit is not None:
            return hit
        found = self.client.image_manifest(ref, platform)
        with self._lock:
            self._manifests[(ref, platform)] = found
        return found

    def open_blob(self, *args, **kwargs):
        return self.client.open_blob(*args, **kwargs)

    def layer_digests(self, ref, platform) -> list[str]:
        try:
            manifest, _ = self.image_manifest(ref, platform)
        except registry.RegistryError:
            return []  # the second pass reports it
        found = manifest.get("layers") if isinstance(manifest, dict) else None
        return [
            d["digest"][:200]
            for d in (found if isinstance(found, list) else [])[: layers.MAX_LAYERS]
            if isinstance(d, dict) and isinstance(d.get("digest"), str)
        ]


class _LayerDict:
    """layers.LayerCache over what the database held before the lookups; what they read
    anew is collected in `new`, written by the caller's thread."""

    def __init__(self, known: dict):
        self.known, self.new = known, {}
        self._lock = threading.Lock()

    def get(self, digests):
        with self._lock:
            return {d: self.known[d] for d in digests if d in self.known}

    def put(self, facts):
        with self._lock:
            self.known.update(facts)
            self.new.update(facts)


def _facts(doc) -> layers.LayerFacts | None:
    try:
        return layers.LayerFacts.from_json(doc)
    except ValueError:
        return None  # not what we wrote: read the layer again


def _pool_map(fn, items: list, workers: int) -> list:
    if len(items) <= 1:
        return [fn(i) for i in items]
    with ThreadPoolExecutor(max_workers=min(workers, len(items))) as pool:
        return list(pool.map(fn, items))


def offline_resolver(known: dict[str, str]) -> ImageResolver:
    """For `manage.py evaluate --resolve`: the stored registry settings, overrides and cache
    when the database is set up, plain anonymous lookups when it is not."""
    try:
        return ImageResolver(known=known)
    except (DatabaseError, ImproperlyConfigured):
        resolver = ImageResolver(
            registry.RegistryClient(timeout=settings.WELKIN_REGISTRY_TIMEOUT),
            use_cache=False,
            known=known,
            overrides=[],
        )
        resolver.offline_note = (
            "no database: looking images up without the cache, stored "
            "registry credentials or operator overrides"
        )
        return resolver


def _store(rows: list[ImageCache]) -> None:
    """Upsert cache rows; a concurrent scan writing the same key is fine."""
    if not rows:
        return
    try:
        with transaction.atomic():
            ImageCache.objects.bulk_create(
                rows,
                update_conflicts=True,
                unique_fields=["key"],
                update_fields=[
                    "user",
                    "digest",
                    "config_digest",
                    "error",
                    "resolved_at",
                    "expires_at",
                    "passwd",  # a new answer: its /etc/passwd is read again
                ],
            )
    except IntegrityError:  # pragma: no cover - a race on the same key
        log.info("image cache write raced; skipped")
