#!/usr/bin/env bash
# Make sure PostgreSQL and Redis answer on 127.0.0.1; start them (installing with apt-get
# when missing) on a fresh machine. Used by `make test`, `make run-services` and .ci/run.
set -euo pipefail

apt_updated=0
apt_install() {
  if [ "$apt_updated" = 0 ]; then apt-get update -qq; apt_updated=1; fi
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "$@" >/dev/null
}

pg_up() { pg_isready -q -h 127.0.0.1 -p 5432 2>/dev/null; }
redis_up() { (exec 3<>/dev/tcp/127.0.0.1/6379 && printf 'PING\r\n' >&3 && head -c 5 <&3 | grep -q PONG) 2>/dev/null; }

if ! pg_up; then
  if ! ls /etc/postgresql/*/main >/dev/null 2>&1; then
    echo "services: installing PostgreSQL" >&2
    apt_install postgresql
  fi
  ver=$(ls /etc/postgresql | sort -n | tail -1)
  conf=/etc/postgresql/$ver/main
  # Trust local connections for the postgres role (a test machine; never for production).
  if ! grep -q '^host all all 127.0.0.1/32 trust' "$conf/pg_hba.conf"; then
    sed -i '1i host all all 127.0.0.1/32 trust\nhost all all ::1/128 trust\nlocal all all trust' "$conf/pg_hba.conf"
  fi
  echo "services: starting PostgreSQL $ver" >&2
  pg_ctlcluster --skip-systemctl-redirect "$ver" main start || true
  for _ in $(seq 1 30); do pg_up && break; sleep 1; done
  pg_up || { echo "services: PostgreSQL did not start on 127.0.0.1:5432" >&2; exit 1; }
fi

if ! redis_up; then
  command -v redis-server >/dev/null || { echo "services: installing Redis" >&2; apt_install redis-server; }
  echo "services: starting Redis" >&2
  redis-server --daemonize yes --bind 127.0.0.1 --port 6379 --save "" --appendonly no
  for _ in $(seq 1 30); do redis_up && break; sleep 0.5; done
  redis_up || { echo "services: Redis did not start on 127.0.0.1:6379" >&2; exit 1; }
fi
# Tools the tests start themselves: a real OCI registry.
command -v docker-registry >/dev/null || { echo "services: installing docker-registry" >&2; apt_install docker-registry; }
# ... and a real browser for the page tests (Playwright drives Debian's Chromium).
# The tests' timestamp authority is `openssl ts -reply` (tests/tsa.py).
command -v openssl >/dev/null || { echo "services: installing openssl" >&2; apt_install openssl; }
command -v chromium >/dev/null || { echo "services: installing chromium" >&2; apt_install chromium; }
# ... and promtool, to check the alert rules in deploy/ (tests/test_deploy.py). Only the tool
# is taken from Debian's prometheus package: installing the package would start a server.
if ! command -v promtool >/dev/null; then
  echo "services: installing promtool (from Debian's prometheus package)" >&2
  if [ "$apt_updated" = 0 ]; then apt-get update -qq; apt_updated=1; fi
  tmp=$(mktemp -d)
  (cd "$tmp" && apt-get download -qq prometheus 2>/dev/null) \
    && dpkg-deb -x "$tmp"/prometheus_*.deb "$tmp/x" \
    && install -m 0755 "$tmp/x/usr/bin/promtool" /usr/local/bin/promtool
  rm -rf "$tmp"
  command -v promtool >/dev/null || { echo "services: could not install promtool" >&2; exit 1; }
fi
echo "services: PostgreSQL and Redis are up" >&2
