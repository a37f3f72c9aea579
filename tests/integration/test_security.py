"""An attacker on the same network, against a hub and miner running as processes."""

from __future__ import annotations

import pytest

from sonm_p2p.client import HubClient
from sonm_p2p.errors import InvalidRequest
from sonm_p2p.identity import load_or_create
from sonm_p2p.miner.runtime import RunSpec
from tests.harness import wait_for


def test_another_client_cannot_shadow_or_lock_out_a_tasks_owner(net, tmp_path):
    hub = net.hub()
    miner = net.miner(hub, "m1", runtime="memory")
    wait_for(lambda: miner.node_id in hub.online(), "miner listed")
    started = hub.cli("start", "--image", "sonm-test/web", f"--miner={miner.node_id}")
    assert started.returncode == 0, started.stderr
    job = started.stdout.split()[1].rstrip(",")

    attacker = load_or_create(tmp_path / "attacker")
    with HubClient(hub.grpc_target, identity=attacker, timeout=30) as client:
        # The owner's ID in another case is the same ID: refused, not a second task.
        with pytest.raises(InvalidRequest, match="already used"):
            client.start_task(miner.node_id, RunSpec("sonm-test/web"), task_id=job.upper())
        # A task sharing the owner's prefix is allowed, but cannot make the owner's prefix
        # ambiguous to the owner.
        shadow = client.start_task(
            miner.node_id, RunSpec("sonm-test/web"), task_id=job[:8] + "-shadow-task"
        )
    assert shadow.task_id == job[:8] + "-shadow-task"

    assert hub.cli_json("status", job)["state"] == "RUNNING"
    logs = hub.cli("logs", job[:8])
    assert logs.returncode == 0, logs.stderr
    stopped = hub.cli("stop", job[:8])
    assert stopped.returncode == 0, stopped.stderr
    assert hub.cli_json("status", job)["state"] == "STOPPED"
    assert hub.cli_json("status", shadow.task_id)["state"] == "RUNNING"  # theirs untouched
