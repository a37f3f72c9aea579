"""A miner's word is not enough: a container it reports that the hub never created (labelled
with an owner of the miner's choosing) is not adopted, on the real Docker engine."""

from __future__ import annotations

import docker

from sonm_p2p.identity import load_or_create
from tests.conftest import needs_docker
from tests.harness import wait_for

pytestmark = needs_docker


def test_a_container_the_hub_never_created_is_not_adopted(net, tmp_path):
    hub = net.hub()
    miner_key = load_or_create(net.root / "m1")  # the miner's key, before the miner runs
    victim = load_or_create(tmp_path / "victim").node_id
    engine = docker.from_env()
    engine.containers.run(
        "sonm-test/web",
        name=f"sonm-forged-{net.test_label}",
        detach=True,
        labels={
            "sonm.task": "forged-task-0001",
            "sonm.miner": miner_key.node_id,
            "sonm.owner": victim,
            "sonm.hub": load_or_create(hub.home).node_id,
            "sonm.test": net.test_label,
        },
    )
    try:
        miner = net.miner(hub, "m1")
        wait_for(lambda: miner.node_id in hub.online(), "miner listed", 60)
        wait_for(
            lambda: "no record of this hub" in hub.proc.output(),
            "the hub to weigh the miner's report",
        )
        status = hub.cli("status", "forged-task-0001")
        assert status.returncode == 3, status.stdout  # not a task of this hub
        assert hub.cli_json("tasks")["tasks"] == []
        # A task the hub did start is adopted after a restart with a lost database.
        started = hub.cli("start", "--image", "sonm-test/web", f"--miner={miner.node_id}")
        assert started.returncode == 0, started.stderr
        job = started.stdout.split()[1].rstrip(",")
        hub.proc.stop()
        (hub.home / "hub.db").unlink()
        for extra in ("hub.db-wal", "hub.db-shm"):
            (hub.home / extra).unlink(missing_ok=True)
        hub.restart()
        wait_for(lambda: hub.cli("status", job).returncode == 0, "the task adopted again", 60)
        adopted = hub.cli_json("status", job)
        assert adopted["state"] == "RUNNING" and adopted["owner"] != victim
        assert hub.cli("status", "forged-task-0001").returncode == 3
    finally:
        net.remove_containers()
