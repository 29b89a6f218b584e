"""Image references as containerd and CRI-O read them: `nginx` is
docker.io/library/nginx:latest. One parser for the scanner (registry lookups, cache keys)
and welkin-evaluate (--image-user entries, image-users files), so both spell an image the
same way. Pure: standard library only.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

DOCKER_HUB = "docker.io"
DOCKER_HUB_API = "registry-1.docker.io"
# The OCI digest grammar, bounded: sha512's 128 hex digits are the longest in use.
_DIGEST_RE = re.compile(r"^[a-z0-9]+(?:[.+_-][a-z0-9]+)*:[a-zA-Z0-9=_-]{32,128}$")
_REPO_RE = re.compile(
    r"^[a-z0-9]+(?:(?:[._]|__|-+)[a-z0-9]+)*(?:/[a-z0-9]+(?:(?:[._]|__|-+)"
    r"[a-z0-9]+)*)*$"
)
_TAG_RE = re.compile(r"^[\w][\w.-]{0,127}$")


class ReferenceError(ValueError):
    """An image reference that is not valid."""


@dataclass(frozen=True)
class ImageRef:
    """A normalised image reference, as containerd and CRI-O read one."""

    domain: str  # docker.io, ghcr.io, registry.example.com:5000
    repository: str  # library/nginx
    tag: str | None
    digest: str | None

    @classmethod
    def parse(cls, ref: str) -> ImageRef:
        if not ref or len(ref) > 4096 or ref != ref.strip():
            raise ReferenceError(f"invalid image reference {ref!r}")
        name, digest = ref, None
        if "@" in ref:
            name, digest = ref.split("@", 1)
            if not _DIGEST_RE.match(digest):
                raise ReferenceError(f"invalid digest in {ref!r}")
        tag = None
        last = name.rsplit("/", 1)[-1]
        if ":" in last:
            name, tag = name.rsplit(":", 1)
            if not _TAG_RE.match(tag):
                raise ReferenceError(f"invalid tag in {ref!r}")
        first, _, rest = name.partition("/")
        if rest and ("." in first or ":" in first or first == "localhost"):
            domain, repo = first, rest
        else:
            domain, repo = DOCKER_HUB, name
        if domain in ("index.docker.io", "registry-1.docker.io"):
            domain = DOCKER_HUB
        if domain == DOCKER_HUB and "/" not in repo:
            repo = "library/" + repo
        if not _REPO_RE.match(repo):
            raise ReferenceError(f"invalid repository {repo!r} in {ref!r}")
        if tag is None and digest is None:
            tag = "latest"
        return cls(domain, repo, tag, digest)

    @property
    def api_host(self) -> str:
        return DOCKER_HUB_API if self.domain == DOCKER_HUB else self.domain

    @property
    def reference(self) -> str:
        """What to ask the manifest endpoint for: the digest when known."""
        return self.digest or self.tag  # type: ignore[return-value]

    def with_digest(self, digest: str) -> ImageRef:
        return ImageRef(self.domain, self.repository, None, digest)

    def __str__(self) -> str:
        s = f"{self.domain}/{self.repository}"
        if self.tag:
            s += f":{self.tag}"
        if self.digest:
            s += f"@{self.digest}"
        return s


def digest_from_image_id(image_id: str | None) -> str | None:
    """The manifest digest in a status imageID (`docker.io/library/x@sha256:...`,
    `docker-pullable://x@sha256:...`), or None."""
    if not image_id or "@" not in image_id:
        return None
    digest = image_id.rsplit("@", 1)[1]
    return digest if _DIGEST_RE.match(digest) else None


def normalised(ref: str) -> ImageRef | None:
    """The reference as Docker reads it, or None when it is not a valid one."""
    try:
        return ImageRef.parse(ref)
    except ReferenceError:
        return None
