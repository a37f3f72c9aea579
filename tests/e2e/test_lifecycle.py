"""Task lifecycle on the real engine: crashes of hub and miner, Docker events, logs, limits."""

from __future__ import annotations

import json
import subprocess
import time
from datetime import datetime

import pytest

from sonm_p2p.client import HubClient
from tests.conftest import needs_docker
from tests.harness import wait_for

pytestmark = needs_docker

BUSYBOX = "sonm-test/busybox"


def _start(hub, miner, image, *command, extra=()):
    argv = ["start", "--image", image, f"--miner={miner.node_id}", *extra]
    if command:
        argv += ["--", *command]
    res = hub.cli(*argv)
    assert res.returncode == 0, res.stderr
    return res.stdout.split()[1].rstrip(",")


def _inspect(net, job):
    out = subprocess.run(
        ["docker", "inspect", f"sonm-{job}"], capture_output=True, text=True, check=True
    ).stdout
    return json.loads(out)[0]


@pytest.fixture
def fast_hub(net):
    return net.hub(extra=["--ping-interval", "1s", "--ping-timeout", "1s"])


def test_hub_killed_and_restarted_loses_nothing(net, fast_hub):
    hub = fast_hub
    m1, m2 = net.miner(hub, "m1"), net.miner(hub, "m2")
    wait_for(lambda: hub.online() == {m1.node_id, m2.node_id}, "two miners")
    jobs = [_start(hub, m1, "sonm-test/web"), _start(hub, m2, "sonm-test/web")]
    before = {j: hub.cli_json("status", j) for j in jobs}

    hub.proc.kill9()
    for j in jobs:  # containers keep running without their hub
        assert _inspect(net, j)["State"]["Running"] is True
    hub.restart()
    wait_for(lambda: hub.online() == {m1.node_id, m2.node_id}, "miners reconnected", timeout=30)
    for j in jobs:
        after = hub.cli_json("status", j)
        assert after["state"] == "RUNNING"
        for key in ("owner", "endpoints", "miner", "image"):
            assert after[key] == before[j][key], key
    assert sorted(t["id"] for t in hub.cli_json("tasks")["tasks"]) == sorted(jobs)


def test_miner_killed_then_back_adopts_its_containers(net, fast_hub):
    hub = fast_hub
    m1 = net.miner(hub, "m1")
    wait_for(lambda: m1.node_id in hub.online(), "miner listed")
    keeps = _start(hub, m1, "sonm-test/web")
    dies = _start(hub, m1, "sonm-test/web")

    m1.proc.kill9()
    wait_for(lambda: m1.node_id not in hub.online(), "miner offline", timeout=15)
    assert {hub.cli_json("status", j)["state"] for j in (keeps, dies)} == {"LOST"}
    subprocess.run(["docker", "kill", f"sonm-{dies}"], check=True, capture_output=True)

    m1.restart()
    wait_for(lambda: m1.node_id in hub.online(), "miner back", timeout=30)
    wait_for(lambda: hub.cli_json("status", keeps)["state"] == "RUNNING", "adopted task running")
    died = hub.cli_json("status", dies)
    assert died["state"] == "EXITED" and died["exit_code"] == 137


def test_container_exit_is_reported_within_a_second(net, fast_hub):
    hub = fast_hub
    m1 = net.miner(hub, "m1")
    wait_for(lambda: m1.node_id in hub.online(), "miner listed")
    job = _start(hub, m1, BUSYBOX, "sh", "-c", "sleep 1; echo bye; exit 3")
    # follow the task the way `sonmcli start` does, and note when the hub says it ended
    with HubClient(hub.grpc_target, timeout=30) as client:
        ended = None
        for event in client.watch_task(job, timeout=30):
            if event.task is not None and event.task.terminal:
                ended = (event.task, time.time())
    assert ended is not None
    task, seen_at = ended
    assert task.state.value == "EXITED" and task.exit_code == 3
    assert hub.cli_json("status", job)["exit_code"] == 3
    finished = datetime.fromisoformat(
        _inspect(net, job)["State"]["FinishedAt"][:26].rstrip("Z") + "+00:00"
    ).timestamp()
    assert seen_at - finished < 1.0, seen_at - finished
    # its output outlives it
    logs = hub.cli("logs", job)
    assert logs.returncode == 0 and logs.stdout == "bye\n"


def test_logs_follow_tail_and_after_stop(net, fast_hub):
    hub = fast_hub
    m1 = net.miner(hub, "m1")
    wait_for(lambda: m1.node_id in hub.online(), "miner listed")
    job = _start(
        hub,
        m1,
        BUSYBOX,
        "sh",
        "-c",
        "for i in 1 2 3 4 5; do echo out$i; echo err$i >&2; sleep 0.2; done",
    )
    follow = hub.cli("logs", "-f", "--stdout", job, timeout=30)
    assert follow.returncode == 0, follow.stderr
    assert follow.stdout.split() == [f"out{i}" for i in range(1, 6)]  # ended with the task

    tail = hub.cli("logs", "--tail", "2", job)
    assert sorted(tail.stdout.split()) == ["err5", "out5"]
    errors = hub.cli("logs", "--stderr", job)
    assert errors.stdout.split() == [f"err{i}" for i in range(1, 6)]
    recent = hub.cli("logs", "--since", "1h", "--stdout", job)
    assert recent.stdout.split() == [f"out{i}" for i in range(1, 6)]
    later = hub.cli("logs", "--since", str(time.time() + 5), job)
    assert later.returncode == 0 and later.stdout == ""

    web = _start(hub, m1, "sonm-test/web")
    assert hub.cli("stop", web).returncode == 0
    kept = hub.cli("logs", web)
    assert kept.returncode == 0  # the container is gone; its (empty) output was kept
    missing = hub.cli("logs", "no-such-task")
    assert missing.returncode == 3


def test_limits_are_enforced_and_refused_beyond_the_offer(net, fast_hub):
    hub = fast_hub
    m1 = net.miner(hub, "m1", extra=["--max-cpu", "1", "--max-memory", "256m"])
    wait_for(lambda: m1.node_id in hub.online(), "miner listed")
    job = _start(
        hub,
        m1,
        "sonm-test/web",
        extra=["--cpu", "0.5", "--memory", "64m", "--env", "A=b", "--restart", "on-failure:2"],
    )
    host = _inspect(net, job)["HostConfig"]
    assert host["NanoCpus"] == 500_000_000 and host["Memory"] == 64 << 20
    assert host["RestartPolicy"] == {"Name": "on-failure", "MaximumRetryCount": 2}
    assert "A=b" in _inspect(net, job)["Config"]["Env"]

    too_much = hub.cli("start", "--image", "sonm-test/web", f"--miner={m1.node_id}", "--cpu", "2")
    assert too_much.returncode == 6 and "offers 1" in too_much.stderr
    full = hub.cli("start", "--image", "sonm-test/web", f"--miner={m1.node_id}", "--memory", "200m")
    assert full.returncode == 6 and "free" in full.stderr

    st = hub.cli_json("miner-status", m1.node_id[:8])
    assert st["online"] and st["offered"] == {"cpus": 1.0, "memory_bytes": 256 << 20}
    assert st["allocated"] == {"cpus": 0.5, "memory_bytes": 64 << 20}
    [usage] = st["usage"]
    assert usage["task_id"] == job and usage["memory_bytes"] > 0
    text = hub.cli("miner-status", m1.node_id)
    assert text.returncode == 0 and "Allocated  0.5 CPUs" in text.stdout
