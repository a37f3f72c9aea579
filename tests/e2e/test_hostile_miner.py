"""A miner's word is not enough: a container it reports that the hub never created (labelled
with an owner of the miner's choosing) is not adopted, and a hostile miner process cannot touch
another miner's task, on the real Docker engine."""

from __future__ import annotations

import json
import socket
import sys
from pathlib import Path

import docker

from sonm_p2p.identity import load_or_create
from tests.conftest import needs_docker
from tests.harness import wait_for
from tests.hostile_miner import FORGED_HOST

ROOT = Path(__file__).resolve().parents[2]

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


def _page(host: str, port: int) -> bytes:
    with socket.create_connection((host, port), timeout=5) as sock:
        sock.sendall(b"GET / HTTP/1.0\r\n\r\n")
        return b"".join(iter(lambda: sock.recv(65536), b""))


def test_a_hostile_miner_cannot_rewrite_or_claim_another_miners_task(net, tmp_path):
    hub = net.hub()
    honest = net.miner(hub, "honest")
    wait_for(lambda: honest.node_id in hub.online(), "the honest miner listed", 60)
    started = hub.cli("start", "--image", "sonm-test/web", f"--miner={honest.node_id}")
    assert started.returncode == 0, started.stderr
    job = started.stdout.split()[1].rstrip(",")
    before = hub.cli_json("status", job)
    assert before["state"] == "RUNNING" and before["endpoints"], before
    victim = load_or_create(tmp_path / "victim").node_id  # the owner the liar names

    # A real sonmminer process with lies added (tests/hostile_miner.py): it claims the honest
    # miner's task at its handshake, reports it moved and then EXITED, and reports a task the
    # hub never created, for an owner of its choosing, with a record it signed itself.
    plan = tmp_path / "plan.json"
    forged = "forged-task-0002"
    plan.write_text(
        json.dumps({"victim_task": job, "forged_task": forged, "claimed_owner": victim})
    )
    home = net.root / "hostile"
    hostile = net.spawn(
        "hostile",
        [
            sys.executable, "-m", "tests.hostile_miner", str(plan), "--",
            "-h", hub.p2p_target, "--home", str(home), "--publish-ip", "127.0.0.1",
            "--label", f"sonm.test={net.test_label}", "--runtime", "memory",
        ],
        PYTHONPATH=str(ROOT),
    )  # fmt: skip
    wait_for(lambda: (home / "key").exists(), "the hostile miner's key", 30)
    hostile_id = load_or_create(home).node_id
    wait_for(lambda: hostile_id in hub.online(), "the hostile miner listed", 60)
    wait_for(
        lambda: hostile.output().count(f"hostile: event {job}") == 2,
        "the hostile miner to send its events",
        30,
    )
    # The hub read every lie and said why it ignored each one.
    ignored = f"ignoring report for {job}: reported by {hostile_id}, runs on {honest.node_id}"
    wait_for(lambda: hub.proc.output().count(ignored) >= 2, "the hub to ignore both events", 30)
    log = hub.proc.output()
    assert f"ignoring report for {job}: a task of {honest.node_id}" in log, log[-3000:]
    assert f"ignoring report for {forged}: no record of this hub creating it" in log

    # What the owner sees is unchanged, and the task still serves where it did.
    after = hub.cli_json("status", job)
    assert after == before, (before, after)
    assert all(e["host"] != FORGED_HOST for e in after["endpoints"])
    (web,) = [e for e in after["endpoints"] if e["port"] == "8080/tcp"]
    assert b"hello from a sonm task" in _page(web["host"], web["host_port"])
    # The forged task exists nowhere: not in the list of tasks, not by ID, not on the liar.
    assert [t["id"] for t in hub.cli_json("tasks")["tasks"]] == [job]
    assert hub.cli("status", forged).returncode == 3
    miners = {m["node_id"]: m for m in hub.cli_json("list")["miners"]}
    assert miners[hostile_id]["online"] and miners[hostile_id]["task_ids"] == []
    assert miners[honest.node_id]["task_ids"] == [job]
    assert hostile.alive() and "Traceback" not in hostile.output()
    # The owner can still stop it.
    stopped = hub.cli("stop", job)
    assert stopped.returncode == 0, stopped.stderr
    assert hub.cli_json("status", job)["state"] == "STOPPED"
