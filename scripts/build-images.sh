#!/usr/bin/env bash
# Build the local test images (no registry is reachable): a busybox base made from Debian's
# busybox-static with `docker import`, then the images under images/ on top of it.
set -euo pipefail
cd "$(dirname "$0")/.."
bash "$(dirname "$0")/ensure-debs.sh"  # busybox-static, gcc, libc6-dev
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
