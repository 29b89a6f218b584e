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
import time

os.environ.setdefault("DATABASE_URL", "postgres://postgres@127.0.0.1:5432/welkin_bench_scan")
os.environ.setdefault("DEBUG", "1")
os.environ.setdefault("LOG_LEVEL", "WARNING")


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--pods", type=int, default=10_000)
    parser.add_argument("--images", type=int, default=500)
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
            f"{'looked up':>10} {'cache hits':>11} {'requests':>9}"
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
                    f"{t['registry_requests']:>9}",
                    flush=True,
                )
    finally:
        server.stop()
        regs.stop()


if __name__ == "__main__":
    main()
