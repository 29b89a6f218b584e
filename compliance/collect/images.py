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
import hashlib
import logging
import time
from dataclasses import dataclass
from datetime import timedelta

from django.conf import settings
from django.core.exceptions import ImproperlyConfigured
from django.db import DatabaseError, IntegrityError, transaction
from django.utils import timezone

from compliance.collect import registry
from compliance.models import ImageCache, ImageUserOverride, Registry
from compliance.rules.runas import CONTAINER_LISTS
from compliance.vocabulary import SOURCE_OPERATOR, SOURCE_REGISTRY

log = logging.getLogger(__name__)

_NOT_CACHED = object()  # _expiry's answer for what must not be cached


def registry_configs() -> dict[str, registry.RegistryConfig]:
    return {
        r.host: registry.RegistryConfig(
            r.host, r.username or None, r.password, r.ca_pem or None, r.plain_http
        )
        for r in Registry.objects.all()
    }


def platform_of(pod: dict) -> registry.Platform:
    """The pod's platform: spec.os, the kubernetes.io/arch node selector, else amd64."""
    spec = pod.get("spec") if isinstance(pod.get("spec"), dict) else {}
    os_ = spec.get("os") if isinstance(spec.get("os"), dict) else {}
    selector = spec.get("nodeSelector") if isinstance(spec.get("nodeSelector"), dict) else {}
    arch = selector.get("kubernetes.io/arch")
    name = os_.get("name") if isinstance(os_.get("name"), str) else "linux"
    return registry.Platform(name or "linux", arch if isinstance(arch, str) and arch else "amd64")


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
        self._done: set[tuple[str, registry.Platform]] = set()
        self._failed_hosts: dict[str, str] = {}
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

    def close(self) -> None:
        self.client.close()

    def _maps(self, platform: registry.Platform) -> tuple[dict[str, str], dict[str, str]]:
        maps = self._users.get(platform)
        if maps is None:
            maps = self._users[platform] = (dict(self._known), {})
        return maps

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
                if self._override(image, key, platform):
                    continue
                try:
                    ref = registry.ImageRef.parse(image)
                except registry.ReferenceError as e:
                    self.notes.setdefault(image, str(e))
                    continue
                # The digest the status reports is what runs; the tag is the fallback when
                # the registry no longer (or never did) serve that digest.
                refs = [ref.with_digest(digest), ref] if digest and not ref.digest else [ref]
                wanted[(key, platform)] = _Wanted(image, refs, platform)
        if wanted:
            self._resolve(wanted)

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


def _cache_key(ref: registry.ImageRef, platform: registry.Platform) -> str:
    """`reference|platform`, or its SHA-256 when that is longer than the column."""
    key = f"{ref}|{platform}"
    if len(key) <= 1000:
        return key
    return "sha256:" + hashlib.sha256(key.encode()).hexdigest()


def _images(pod: dict):
    """(image, status imageID or None) for every container of a pod."""
    spec = pod.get("spec") if isinstance(pod.get("spec"), dict) else {}
    status = pod.get("status") if isinstance(pod.get("status"), dict) else {}
    for spec_key, _, status_key in CONTAINER_LISTS:
        ids = {}
        entries = status.get(status_key)
        if isinstance(entries, list):
            ids = {e.get("name"): e.get("imageID") for e in entries if isinstance(e, dict)}
        containers = spec.get(spec_key)
        if not isinstance(containers, list):
            continue
        for c in containers:
            if isinstance(c, dict) and isinstance(c.get("image"), str) and c["image"]:
                image_id = ids.get(c.get("name"))
                yield c["image"], image_id if isinstance(image_id, str) else None


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
                ],
            )
    except IntegrityError:  # pragma: no cover - a race on the same key
        log.info("image cache write raced; skipped")
