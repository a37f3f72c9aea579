"""Strangers' containers on the real Docker engine: sandboxed by default, kept apart from each
other, and their output bounded."""

from __future__ import annotations

import json
import subprocess

import pytest

from sonm_p2p.client import HubClient
from sonm_p2p.identity import load_or_create
from sonm_p2p.model import RunSpec
from tests.conftest import needs_docker
from tests.harness import wait_for

pytestmark = needs_docker


def _inspect(name: str, kind: str = "container") -> dict:
    out = subprocess.run(
        ["docker", kind, "inspect", name], capture_output=True, text=True, check=True
    ).stdout
    return json.loads(out)[0]


def _start(hub, miner, *argv: str) -> str:
    res = hub.cli("start", "--image", "sonm-test/web", f"--miner={miner.node_id}", *argv)
    assert res.returncode == 0, res.stderr
    return res.stdout.split()[1].rstrip(",")


@pytest.fixture
def hub_and_miner(net):
    hub = net.hub()
    miner = net.miner(hub, "m1")
    wait_for(lambda: miner.node_id in hub.online(), "miner listed", 60)
    return hub, miner


def test_a_task_runs_sandboxed_by_default(hub_and_miner):
    hub, miner = hub_and_miner
    job = _start(hub, miner)
    host = _inspect(f"sonm-{job}")["HostConfig"]
    assert host["CapDrop"] == ["ALL"]
    assert set(host["CapAdd"]) == {
        "CAP_CHOWN", "CAP_DAC_OVERRIDE", "CAP_FOWNER", "CAP_SETUID", "CAP_SETGID", "CAP_KILL",
        "CAP_NET_BIND_SERVICE",
    } or set(host["CapAdd"]) == {
        "CHOWN", "DAC_OVERRIDE", "FOWNER", "SETUID", "SETGID", "KILL", "NET_BIND_SERVICE",
    }  # fmt: skip
    assert "no-new-privileges" in host["SecurityOpt"]
    assert host["PidsLimit"] == 1024
    assert (host["NanoCpus"], host["Memory"]) == (1_000_000_000, 512 << 20)  # the default share
    assert host["LogConfig"] == {
        "Type": "json-file",
        "Config": {"max-file": "2", "max-size": "16m"},
    }  # noqa: E501
    network = host["NetworkMode"]
    assert network.startswith("sonm-tasks-")
    opts = _inspect(network, "network")["Options"]
    assert opts["com.docker.network.bridge.enable_icc"] == "false"
    log = miner.proc.output()
    assert "tasks are isolated by: runtime runc (default); capabilities:" in log, log[-2000:]


def test_one_tenants_container_cannot_reach_anothers(hub_and_miner, tmp_path):
    hub, miner = hub_and_miner
    mine = _start(hub, miner)
    stranger = load_or_create(tmp_path / "stranger")
    with HubClient(hub.grpc_target, identity=stranger, timeout=60) as client:
        theirs = client.start_task(miner.node_id, RunSpec("sonm-test/web")).task_id
    settings = _inspect(f"sonm-{theirs}")["NetworkSettings"]["Networks"]
    (their_ip,) = [n["IPAddress"] for n in settings.values()]
    get = f"printf 'GET / HTTP/1.0\\r\\n\\r\\n' | nc -w 2 {their_ip} 8080"
    fetch = ["sh", "-c", f"{get} | grep -q '200 OK'"]
    # Their page is up (from the host, as its published port is), but not from my container.
    probe = subprocess.run(
        ["docker", "exec", f"sonm-{mine}", *fetch], capture_output=True, text=True, timeout=30
    )
    assert probe.returncode != 0, probe.stdout
    own = subprocess.run(
        ["docker", "exec", f"sonm-{theirs}", *fetch], capture_output=True, text=True, timeout=30
    )
    assert own.returncode == 0, own.stderr  # the address was right


def test_a_chatty_tasks_output_is_bounded_and_still_readable(hub_and_miner):
    hub, miner = hub_and_miner
    line = "x" * 4000
    chatty = f'yes "{line}" | head -n 20000; echo last-line; sleep 600'
    job = _start(hub, miner, "--", "sh", "-c", chatty)
    wait_for(
        lambda: hub.cli("logs", "--tail", "1", job).stdout.strip() == "last-line",
        "the task to write its 80 MB",
        timeout=120,
    )
    assert hub.cli("stop", job).returncode == 0
    kept = hub.cli("logs", job, timeout=120)
    assert kept.returncode == 0, kept.stderr[-500:]  # not "message larger than max"
    assert 8 << 20 <= len(kept.stdout) <= 33 << 20  # the newest 32 MiB at most, of 80 MB
    assert kept.stdout.endswith("last-line\n")
    tail = hub.cli("logs", "--tail", "2", job)
    assert tail.stdout.splitlines() == [line, "last-line"]


def test_a_runtime_class_the_engine_lacks_is_refused_at_start(net):
    hub = net.hub()
    miner = net.miner(hub, "m1", extra=["--runtime-class", "no-such-runtime"])
    wait_for(lambda: not miner.proc.alive(), "the miner to refuse to start", 60)
    assert miner.proc.popen.returncode == 2
    out = miner.proc.output()
    assert "no runtime 'no-such-runtime'" in out and "daemon.json" in out, out[-1000:]
    assert "Traceback" not in out
