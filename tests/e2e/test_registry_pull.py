"""Image pulls through the real pull path: Debian's docker-registry on 127.0.0.1."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import urllib.request

import pytest

from tests.conftest import needs_docker
from tests.harness import free_port, wait_for

pytestmark = [
    needs_docker,
    pytest.mark.skipif(
        shutil.which("docker-registry") is None,
        reason="needs Debian's docker-registry: `make test` installs it",
    ),
]


@pytest.fixture
def registry(tmp_path, net):
    port = free_port()
    config = tmp_path / "registry.yml"
    config.write_text(
        f"version: 0.1\nstorage:\n  filesystem:\n    rootdirectory: {tmp_path / 'storage'}\n"
        f"http:\n  addr: 127.0.0.1:{port}\n"
    )
    proc = net.spawn("registry", ["docker-registry", "serve", str(config)])
    wait_for(
        lambda: urllib.request.urlopen(f"http://127.0.0.1:{port}/v2/", timeout=1),
        "the registry to answer",
    )
    ref = f"127.0.0.1:{port}/sonm-test/web:1"
    # a layer of our own on top of sonm-test/web, so the pull really downloads something
    ctx = tmp_path / "image"
    ctx.mkdir()
    (ctx / "blob").write_bytes(os.urandom(2 << 20))
    (ctx / "Dockerfile").write_text("FROM sonm-test/web\nCOPY blob /blob\n")
    subprocess.run(["docker", "build", "-q", "-t", ref, str(ctx)], check=True, capture_output=True)
    subprocess.run(["docker", "push", ref], check=True, capture_output=True)
    subprocess.run(["docker", "rmi", ref], check=True, capture_output=True)
    yield port
    subprocess.run(["docker", "rmi", "-f", ref], capture_output=True)
    proc.stop()


def test_start_pulls_from_a_registry_with_progress(net, registry):
    hub = net.hub()
    m1 = net.miner(hub, "m1")
    wait_for(lambda: m1.node_id in hub.online(), "miner listed")
    image = f"127.0.0.1:{registry}/sonm-test/web:1"
    res = hub.cli("--json", "start", "--image", image, f"--miner={m1.node_id}")
    assert res.returncode == 0, res.stderr
    lines = [json.loads(line) for line in res.stdout.splitlines()]
    progress = [x for x in lines if x.get("event") == "progress"]
    assert progress, lines
    assert progress[-1]["layers_done"] == progress[-1]["layers_total"] >= 1
    result = lines[-1]
    assert {e["port"] for e in result["endpoints"]} == {"8080/tcp", "9090/udp"}

    plain = hub.cli(
        "start", "--image", f"127.0.0.1:{registry}/sonm-test/web:nope", f"--miner={m1.node_id}"
    )
    assert plain.returncode == 3, plain.stderr
    assert "sonm-test/web:nope" in plain.stderr and "Traceback" not in plain.stderr

    gone = hub.cli("start", "--image", "127.0.0.1:1/sonm-test/web:1", f"--miner={m1.node_id}")
    assert gone.returncode == 3 and "unreachable" in gone.stderr, gone.stderr
