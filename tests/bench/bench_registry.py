"""`make bench-registry`: what image USER lookups cost a scan.

500 distinct images are pushed to a real registry (docker-registry on loopback); a fake
API server serves 10,000 pods over them (20 each), with the digests a real status
reports. The same cluster is scanned with lookups off, with a cold cache, and with a warm
cache; a second run does the same for pods whose status carries no digest (tags only).
Printed: the whole scan's seconds, the seconds spent on images (cache reads, registry
lookups, cache writes), images looked up, cache hits, and registry HTTP requests.
"""

from __future__ import annotations

import argparse
import os
import random
import time

os.environ.setdefault("DATABASE_URL", "postgres://postgres@127.0.0.1:5432/welkin_bench_scan")
os.environ.setdefault("DEBUG", "1")
os.environ.setdefault("LOG_LEVEL", "WARNING")


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--pods", type=int, default=10_000)
    parser.add_argument("--images", type=int, default=500)
    parser.add_argument("--named", type=int, default=100, help="images with named users")
    args = parser.parse_args()

    from tests.bench.bench_scan import fresh_database, use_environment

    use_environment()
    fresh_database()
    import django

    django.setup()
    from django.conf import settings

    from compliance.collect import clusters, scanning
    from compliance.models import ImageCache, Registry, ScanRun
    from tests import podgen
    from tests.fakekube import FakeKubeServer
    from tests.registries import Registries

    users = ["", "0", "1000:1000", "node", "nobody", "65532"]
    regs = Registries()
    server = FakeKubeServer().start()
    try:
        t = time.perf_counter()
        digests = [
            regs.push_image(f"bench/app-{i}", "1", users[i % len(users)])
            for i in range(args.images)
        ]
        print(f"pushed {args.images} images in {time.perf_counter() - t:.1f} s")
        Registry.objects.create(host=regs.plain.host, plain_http=True)
        host = regs.plain.host

        def load(with_digest: bool) -> None:
            server.state.clear()
            for n in range(args.pods):
                i = n % args.images
                p = podgen.pod(
                    f"team-{i % 20}",
                    f"app-{i}-{n}",
                    f"{host}/bench/app-{i}:1",
                    {"runAsNonRoot": True},
                    {},
                )
                status = p["status"]["containerStatuses"][0]
                status["imageID"] = f"{host}/bench/app-{i}@{digests[i]}" if with_digest else ""
                server.state.put(p)

        cluster = clusters.add_cluster("bench-registry", kubeconfig=server.kubeconfig_yaml())

        def scan(lookups: bool) -> tuple[float, dict]:
            settings.WELKIN_REGISTRY_LOOKUPS = lookups
            r = scanning.scan_cluster(cluster.pk)
            s = ScanRun.objects.get(pk=r.scan_id)
            assert s.status == "succeeded", s.reason
            return (s.finished_at - s.started_at).total_seconds(), s.timings

        print(
            f"{'status digests':<15} {'scan':<9} {'seconds':>8} {'image work':>11} "
            f"{'looked up':>10} {'cache hits':>11} {'requests':>9} {'passwd':>7} "
            f"{'layers':>7} {'layer MB':>9}"
        )
        for with_digest in (True, False):
            load(with_digest)
            ImageCache.objects.all().delete()
            label = "yes" if with_digest else "no (tags)"
            for name, lookups in (("no lookup", False), ("cold", True), ("warm", True)):
                secs, t = scan(lookups)
                print(
                    f"{label:<15} {name:<9} {secs:>7.2f}s {t.get('images_s', 0):>10.2f}s "
                    f"{t['images_looked_up']:>10} {t['image_cache_hits']:>11} "
                    f"{t['registry_requests']:>9} {t['passwd_lookups']:>7} "
                    f"{t['layers_read']:>7} {t['layer_bytes'] / 1e6:>9.2f}",
                    flush=True,
                )
        passwd_lookups(regs, server, args.named, scan)
    finally:
        server.stop()
        regs.stop()


def passwd_lookups(regs, server, count: int, scan) -> None:
    """`count` images whose USER is a name, each a real Debian-sized stack: a shared 2 MB
    base, its own layer adding the user to /etc/passwd, and a 256 KiB application layer.
    Scanned cold (every layer read and hashed) and warm (no layer request)."""
    from compliance.models import ImageCache, ImageLayer
    from tests import podgen
    from tests.registries import tar_layer

    rng = random.Random(7)
    base_passwd = "".join(
        f"sys{i}:x:{i}:{i}::/nonexistent:/usr/sbin/nologin\n" for i in range(1, 20)
    )
    base = tar_layer(
        {
            "etc/passwd": ("root:x:0:0::/root:/bin/bash\n" + base_passwd).encode(),
            "etc/os-release": b"ID=debian\n",
            "usr/lib/libbig.so": rng.randbytes(2 << 20),
        }
    )
    t = time.perf_counter()
    for i in range(count):
        users = tar_layer(
            {
                "etc/passwd": (
                    "root:x:0:0::/root:/bin/bash\n"
                    + base_passwd
                    + f"app{i}:x:{1000 + i}:{1000 + i}::/home/app:/bin/sh\n"
                ).encode()
            }
        )
        app = tar_layer({"srv/app.bin": rng.randbytes(256 << 10)})
        regs.push_layered_image(f"named/app-{i}", "1", [base, users, app], user=f"app{i}")
    print(f"\npushed {count} images with named users in {time.perf_counter() - t:.1f} s")
    server.state.clear()
    host = regs.plain.host
    for i in range(count):
        server.state.put(
            podgen.pod("named", f"named-{i}", f"{host}/named/app-{i}:1", {"runAsNonRoot": True}, {})
        )
    ImageCache.objects.all().delete()
    ImageLayer.objects.all().delete()
    print(
        f"{'named users':<12} {'seconds':>8} {'image work':>11} {'requests':>9} "
        f"{'req/image':>10} {'layers':>7} {'MB read':>8} {'MB/image':>9}"
    )
    for name in ("cold", "warm"):
        secs, t = scan(True)
        print(
            f"{name:<12} {secs:>7.2f}s {t['images_s']:>10.2f}s {t['registry_requests']:>9} "
            f"{t['registry_requests'] / count:>10.1f} {t['layers_read']:>7} "
            f"{t['layer_bytes'] / 1e6:>8.1f} {t['layer_bytes'] / 1e6 / count:>9.2f}",
            flush=True,
        )


if __name__ == "__main__":
    main()
