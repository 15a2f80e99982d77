#!/usr/bin/env bash
# Print the path of a prometheus server binary: `prometheus` from PATH, else
# the one in Debian's `prometheus` package, downloaded (never installed: no
# service is started) and unpacked into var/tools/ once. The KEDA query test
# (services/router/tests/test_router_keda_query.py) runs it against the router.
source "$(dirname "$0")/lib.sh"

if command -v prometheus >/dev/null 2>&1; then
    command -v prometheus
    exit 0
fi
TOOLS="$ROOT/var/tools"
BINARY="$TOOLS/prometheus"
if [ -x "$BINARY" ] && "$BINARY" --version >/dev/null 2>&1; then
    echo "$BINARY"
    exit 0
fi
command -v apt-get >/dev/null || { echo "prometheus: not on PATH and no apt-get to fetch Debian's package" >&2; exit 1; }
mkdir -p "$TOOLS"
work="$(mktemp -d "$TOOLS/prometheus.XXXXXX")"
trap 'rm -rf "$work"' EXIT
say "fetching prometheus from Debian's package (apt-get download prometheus)"
(cd "$work" && apt-get download -q prometheus >/dev/null 2>&1) \
    || { echo "prometheus: apt-get download prometheus failed (run apt-get update?)" >&2; exit 1; }
dpkg-deb -x "$work"/prometheus_*.deb "$work/root"
cp "$work/root/usr/bin/prometheus" "$BINARY.partial"
chmod 755 "$BINARY.partial"
mv "$BINARY.partial" "$BINARY"
"$BINARY" --version >/dev/null
echo "$BINARY"
