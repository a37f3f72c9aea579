"""The project as its own container image, used as the Go alpha's users used theirs: a hub in one
container, a miner in another with the host's Docker socket and the host's network, and the host's
`sonmcli` running a task through them.

The image is built by `make image` (scripts/build-image.sh) from this checkout at the start of the
module: a test of a stale image would prove nothing. The first build on a machine also makes the
Debian base with debootstrap (~2 minutes); later builds take about one.
"""

from __future__ import annotations

import json
import subprocess
import urllib.request
import uuid
from pathlib import Path

import pytest

from tests.conftest import needs_docker
from tests.harness import BIN, free_port, remove_labelled, sonmcli, wait_for

pytestmark = needs_docker

REPO = Path(__file__).resolve().parents[2]
IMAGE = "sonm-p2p:test"


@pytest.fixture(scope="module")
def image() -> str:
    res = subprocess.run(
        ["bash", "scripts/build-image.sh"],
        cwd=REPO,
        env={"PATH": f"{BIN}:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin", "SONM_IMAGE": IMAGE},
        capture_output=True,
        text=True,
        timeout=900,
    )
    assert res.returncode == 0, res.stderr[-3000:]
    assert f"image: {IMAGE}" in res.stderr, res.stderr
    return IMAGE


@pytest.fixture
def label():
    import docker

    value = f"t-{uuid.uuid4().hex[:12]}"
    yield value
    remove_labelled(docker.from_env(), value)


def _docker(*args: str) -> str:
    res = subprocess.run(["docker", *args], capture_output=True, text=True, timeout=120)
    assert res.returncode == 0, (args, res.stderr)
    return res.stdout.strip()


def test_every_executable_is_in_the_image(image):
    for prog in ("sonmhub", "sonmminer", "sonmcli", "sonm-devnet"):
        out = _docker("run", "--rm", image, prog, "--version")
        assert out.startswith(f"{prog} "), out


def test_hub_and_miner_containers_run_a_task_for_the_hosts_sonmcli(image, label, tmp_path):
    grpc, overlay = free_port(), free_port()
    _docker(
        "run", "-d", "--label", f"sonm.test={label}",
        "-p", f"127.0.0.1:{grpc}:10001", "-p", f"127.0.0.1:{overlay}:10002",
        image, "sonmhub", "--no-mdns",
    )  # fmt: skip
    _docker(
        "run", "-d", "--label", f"sonm.test={label}", "--net", "host",
        "-v", "/var/run/docker.sock:/var/run/docker.sock",
        image, "sonmminer", "-h", f"127.0.0.1:{overlay}", "--no-mdns",
        "--publish-ip", "127.0.0.1", "--label", f"sonm.test={label}",
        "--listen", f"/ip4/127.0.0.1/tcp/{free_port()}",
    )  # fmt: skip
    hub = f"127.0.0.1:{grpc}"
    home = tmp_path / "client"

    def online() -> list[str]:
        res = sonmcli("--hub", hub, "--json", "list", home=home)
        if res.returncode != 0:
            return []
        return [m["node_id"] for m in json.loads(res.stdout)["miners"] if m["online"]]

    miner = wait_for(online, "the miner container listed by the hub container", timeout=60)[0]
    started = sonmcli(
        "--hub", hub, "--json", "start", "--image", "sonm-test/web", f"--miner={miner}", home=home
    )
    assert started.returncode == 0, started.stderr
    task = json.loads(started.stdout.splitlines()[-1])  # after the pull's progress lines
    web = next(e for e in task["endpoints"] if e["port"] == "8080/tcp")
    url = f"http://{web['host']}:{web['host_port']}/"
    assert b"hello from a sonm task" in urllib.request.urlopen(url, timeout=10).read()
    assert sonmcli("--hub", hub, "stop", task["id"], home=home).returncode == 0
    left = _docker("ps", "-a", "-q", "--filter", f"label=sonm.task={task['id']}")
    assert left == ""
