#!/usr/bin/env bash
# Build the local test images (no registry is reachable): a busybox base made from Debian's
# busybox-static with `docker import`, then the images under images/ on top of it.
set -euo pipefail
cd "$(dirname "$0")/.."
if ! ldd /bin/busybox 2>&1 | grep -q "not a dynamic"; then
    echo "build-images: installing Debian's busybox-static" >&2
    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq busybox-static >/dev/null
fi
if ! command -v gcc >/dev/null 2>&1 || ! compgen -G "/usr/lib/*/libc.a" >/dev/null; then
    echo "build-images: installing gcc and libc6-dev (static UDP echo for the test image)" >&2
    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq gcc libc6-dev >/dev/null
fi
bb=/bin/busybox
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
if ! docker image inspect sonm-test/busybox:latest >/dev/null 2>&1; then
    mkdir -p "$work/root/bin" "$work/root/tmp" "$work/root/www"
    cp "$bb" "$work/root/bin/busybox"
    for app in $("$bb" --list); do
        [ "$app" = busybox ] || ln -sf busybox "$work/root/bin/$app"
    done
    tar -C "$work/root" -c . | docker import -c 'ENV PATH=/bin' -c 'CMD ["sh"]' - sonm-test/busybox:latest >/dev/null
fi
gcc -static -O2 -o images/web/udp-echo images/web/udp-echo.c
docker build -q -t sonm-test/web:latest images/web >/dev/null
docker build -q -t sonm-test/noentry:latest images/noentry >/dev/null
echo "images: sonm-test/busybox sonm-test/web sonm-test/noentry" >&2
