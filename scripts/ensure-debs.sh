#!/usr/bin/env bash
# Debian packages the tests and test images use; installed only when missing (root only).
# --browser: also chromium, which only the hub page's test needs (headless; `make test`).
set -euo pipefail
need=()
if [ "${1:-}" = "--browser" ]; then
    command -v chromium >/dev/null 2>&1 || need+=(chromium)
fi
command -v docker-registry >/dev/null 2>&1 || need+=(docker-registry)
command -v iptables >/dev/null 2>&1 || need+=(iptables)
command -v ip >/dev/null 2>&1 || need+=(iproute2)
command -v nsenter >/dev/null 2>&1 || need+=(util-linux)
command -v gcc >/dev/null 2>&1 || need+=(gcc)
# gVisor, for the miner's --runtime-class runsc (tests/netns/test_runsc.py registers it with a
# private engine; the machine's own engine is left as it is).
command -v runsc >/dev/null 2>&1 || need+=(runsc)
compgen -G "/usr/lib/*/libc.a" >/dev/null || need+=(libc6-dev)
bb=$(ldd /bin/busybox 2>&1 || true)
[[ "$bb" == *"not a dynamic"* ]] || need+=(busybox-static)
[ ${#need[@]} -eq 0 ] && exit 0
if [ "$(id -u)" != 0 ]; then
    echo "ensure-debs: missing ${need[*]} and not root: install them, or run as root" >&2
    exit 1
fi
echo "ensure-debs: installing ${need[*]}" >&2
apt-get update -qq
DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${need[@]}" >/dev/null
