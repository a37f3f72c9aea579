#!/usr/bin/env bash
# `make image`: sonm-p2p:latest with sonmhub, sonmminer, sonmcli and sonm-devnet, built with no
# image registry. The base (Debian bookworm minbase + python3) is made here with debootstrap and
# `docker import` when it is not present; the project and its dependencies are built into wheels
# on this host and installed in the image with `pip --no-index`, so the build itself needs no
# network (and no proxy certificate ever enters the image).
set -euo pipefail
cd "$(dirname "$0")/.."
BASE=${SONM_IMAGE_BASE:-sonm-base/bookworm-python:latest}
IMAGE=${SONM_IMAGE:-sonm-p2p:latest}
MIRROR=${DEBIAN_MIRROR:-http://deb.debian.org/debian}
t0=$(date +%s)

if ! docker image inspect "$BASE" >/dev/null 2>&1; then
    command -v debootstrap >/dev/null || {
        [ "$(id -u)" = 0 ] || { echo "build-image: needs debootstrap (apt-get install debootstrap)" >&2; exit 1; }
        apt-get install -y -qq debootstrap >/dev/null
    }
    root=$(mktemp -d)
    trap 'rm -rf "$root"' EXIT
    echo "build-image: debootstrap bookworm (minbase + python3) into $root" >&2
    debootstrap --variant=minbase --include=python3,python3-venv,ca-certificates \
        bookworm "$root" "$MIRROR" >/dev/null
    rm -rf "$root"/var/cache/apt/archives/*.deb "$root"/var/lib/apt/lists/*
    tar -C "$root" -c . | docker import -c 'ENV LANG=C.UTF-8' -c 'CMD ["bash"]' - "$BASE" >/dev/null
    rm -rf "$root"
    trap - EXIT
fi

# The image's python3 (bookworm: 3.11) must take the host's wheels.
want=$(docker run --rm "$BASE" python3 -c 'import sys; print("%d.%d" % sys.version_info[:2])')
py=${PY:-python3}
have=$("$py" -c 'import sys; print("%d.%d" % sys.version_info[:2])')
[ "$want" = "$have" ] || { echo "build-image: host $py is $have, the base has $want" >&2; exit 1; }

wheels=build/image/wheels
rm -rf build/image && mkdir -p "$wheels"
echo "build-image: wheels of the project and its dependencies into $wheels" >&2
"$py" -m pip wheel -q --wheel-dir "$wheels" . 2>&1 | grep -v '^WARNING: Location' >&2 || true
ls "$wheels"/sonm_p2p-*.whl >/dev/null
cp Dockerfile build/image/

# The legacy builder warns it is deprecated; show the build's output only when it fails.
out=$(docker build -q --build-arg BASE="$BASE" -t "$IMAGE" build/image 2>&1) || { echo "$out" >&2; exit 1; }
size=$(docker image inspect "$IMAGE" --format '{{.Size}}')
echo "image: $IMAGE, $((size / 1000000)) MB, built in $(( $(date +%s) - t0 )) s" >&2
