"""The demo's images as real layers, so its fixes read uids from real /etc/passwd files.

The demo registry does not exist, so `load_demo` serves these images from memory through
the same code a scan uses (collect/layers.py walks the layers newest first, decompresses,
parses the tar and hashes every blob against its digest; collect/images.account_of reads
/etc/passwd). Each image is a base layer with its OS files and an application layer on top.
"""

from __future__ import annotations

import gzip
import hashlib
import io
import tarfile

import orjson

from compliance.collect import registry

DEBIAN_PASSWD = """root:x:0:0:root:/root:/bin/bash
daemon:x:1:1:daemon:/usr/sbin:/usr/sbin/nologin
bin:x:2:2:bin:/bin:/usr/sbin/nologin
sys:x:3:3:sys:/dev:/usr/sbin/nologin
sync:x:4:65534:sync:/bin:/bin/sync
games:x:5:60:games:/usr/games:/usr/sbin/nologin
man:x:6:12:man:/var/cache/man:/usr/sbin/nologin
lp:x:7:7:lp:/var/spool/lpd:/usr/sbin/nologin
mail:x:8:8:mail:/var/mail:/usr/sbin/nologin
news:x:9:9:news:/var/spool/news:/usr/sbin/nologin
uucp:x:10:10:uucp:/var/spool/uucp:/usr/sbin/nologin
proxy:x:13:13:proxy:/bin:/usr/sbin/nologin
www-data:x:33:33:www-data:/var/www:/usr/sbin/nologin
backup:x:34:34:backup:/var/backups:/usr/sbin/nologin
list:x:38:38:Mailing List Manager:/var/list:/usr/sbin/nologin
irc:x:39:39:ircd:/run/ircd:/usr/sbin/nologin
_apt:x:42:65534::/nonexistent:/usr/sbin/nologin
nobody:x:65534:65534:nobody:/nonexistent:/usr/sbin/nologin
"""
ALPINE_PASSWD = """root:x:0:0:root:/root:/bin/sh
bin:x:1:1:bin:/bin:/sbin/nologin
daemon:x:2:2:daemon:/sbin:/sbin/nologin
nobody:x:65534:65534:nobody:/:/sbin/nologin
"""
DEBIAN_RELEASE = 'PRETTY_NAME="Debian GNU/Linux 12 (bookworm)"\nID=debian\n'
ALPINE_RELEASE = 'NAME="Alpine Linux"\nID=alpine\n'

# repository (in the demo registry) -> layers, base first: path -> content
IMAGES: dict[str, list[dict[str, str]]] = {
    "payments/worker": [  # node: the user `node` (uid 1000), added above the base
        {"etc/passwd": DEBIAN_PASSWD, "etc/os-release": DEBIAN_RELEASE},
        {"etc/passwd": DEBIAN_PASSWD + "node:x:1000:1000::/home/node:/bin/bash\n"},
        {"app/server.js": "// the application\n"},
    ],
    "web/nginx": [  # stock nginx: runs as root, and has the user nginx (101)
        {"etc/passwd": DEBIAN_PASSWD, "etc/os-release": DEBIAN_RELEASE},
        {
            "etc/passwd": DEBIAN_PASSWD
            + "nginx:x:101:101:nginx user:/nonexistent:/usr/sbin/nologin\n"
        },
    ],
    "search/indexer": [  # Debian, no user for the application: one must be created
        {"etc/passwd": DEBIAN_PASSWD, "etc/os-release": DEBIAN_RELEASE},
        {"opt/indexer/bin": "indexer\n"},
    ],
    "data/etl": [  # Alpine, no user for the application
        {"etc/passwd": ALPINE_PASSWD, "etc/os-release": ALPINE_RELEASE},
        {"etl/run.py": "print('etl')\n"},
    ],
    "data/postgres": [  # postgres (999)
        {
            "etc/passwd": DEBIAN_PASSWD + "postgres:x:999:999::/var/lib/postgresql:/bin/bash\n",
            "etc/os-release": DEBIAN_RELEASE,
        },
    ],
}


def _layer(files: dict[str, str]) -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.PAX_FORMAT) as tar:
        for path, text in files.items():
            data = text.encode()
            info = tarfile.TarInfo(path)
            info.size, info.mtime, info.mode = len(data), 0, 0o644
            tar.addfile(info, io.BytesIO(data))
    return gzip.compress(buf.getvalue(), mtime=0)


def _digest(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


class _Blob:
    """A blob in memory, read as registry.BlobStream reads one (hashed as it goes)."""

    def __init__(self, data: bytes, digest: str):
        self._data, self.digest, self.received, self.done = data, digest, 0, False
        self._hash = hashlib.sha256()

    def read1(self, amount: int = 1 << 16) -> bytes:
        chunk = self._data[self.received : self.received + amount]
        self._hash.update(chunk)
        self.received += len(chunk)
        self.done = not chunk
        return chunk

    read = read1

    def verify(self) -> None:
        if not self.done or "sha256:" + self._hash.hexdigest() != self.digest:
            raise registry.RegistryError(f"demo: blob {self.digest} does not verify", True)

    def close(self) -> None:
        pass


class DemoImages:
    """The registry client's two calls layers.read_image_files makes, over IMAGES."""

    def __init__(self, host: str):
        self.host = host
        self._blobs: dict[str, bytes] = {}
        self._manifests: dict[str, tuple[dict, str]] = {}
        for repo, layers in IMAGES.items():
            entries = []
            for files in layers:
                blob = _layer(files)
                self._blobs[_digest(blob)] = blob
                entries.append(
                    {
                        "mediaType": "application/vnd.oci.image.layer.v1.tar+gzip",
                        "digest": _digest(blob),
                        "size": len(blob),
                    }
                )
            manifest = {"schemaVersion": 2, "layers": entries}
            self._manifests[repo] = (manifest, _digest(orjson.dumps(manifest)))

    def image_manifest(self, ref: registry.ImageRef, platform=None) -> tuple[dict, str]:
        found = self._manifests.get(ref.repository) if ref.domain == self.host else None
        if found is None:
            raise registry.RegistryError(f"{ref.domain}: 404 not found for {ref}")
        return found

    def open_blob(self, ref, digest: str, limit: int, deadline: float) -> _Blob:
        return _Blob(self._blobs[digest], digest)
