#!/usr/bin/env bash
# Make sure a Docker engine answers on /var/run/docker.sock: install Debian's docker.io when
# there is no dockerd, start dockerd in the background when none runs, wait for its socket.
set -euo pipefail
if docker info >/dev/null 2>&1; then exit 0; fi
if ! command -v dockerd >/dev/null 2>&1; then
    if [ "$(id -u)" != 0 ]; then
        echo "ensure-docker: no Docker engine and not root: install docker.io or run as root" >&2
        exit 1
    fi
    echo "ensure-docker: installing Debian's docker.io" >&2
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq docker.io >/dev/null
fi
if ! docker info >/dev/null 2>&1; then
    echo "ensure-docker: starting dockerd (log: /var/log/sonm-dockerd.log)" >&2
    nohup dockerd >/var/log/sonm-dockerd.log 2>&1 &
    for _ in $(seq 1 120); do
        if docker info >/dev/null 2>&1; then break; fi
        sleep 0.5
    done
fi
docker info >/dev/null 2>&1 || { echo "ensure-docker: dockerd did not come up; see /var/log/sonm-dockerd.log" >&2; tail -20 /var/log/sonm-dockerd.log >&2; exit 1; }
