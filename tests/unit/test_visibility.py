"""Open reads: the market is public, a task's details are its owner's (and the operator's)."""

from __future__ import annotations

from sonm_p2p.hub.visibility import visible, visible_status
from sonm_p2p.model import MinerStatus, RuntimeInfo, TaskUsage
from sonm_p2p.tasks import Endpoint, Task, TaskState

OWNER, OTHER, HUB = "0xOwner", "0xOther", "0xHub"
TASK = Task(
    task_id="t1",
    miner_id="0xMiner",
    image="secret/app:1",
    owner=OWNER,
    state=TaskState.FAILED,
    endpoints=(Endpoint(8080, "tcp", "203.0.113.7", 32768),),
    exit_code=None,
    error="pull access denied for secret/app",
    created_at=1.0,
    updated_at=2.0,
    container_id="abc",
)


def test_the_owner_and_the_operator_see_everything() -> None:
    assert visible(TASK, OWNER.lower(), HUB) == TASK
    assert visible(TASK, HUB, HUB) == TASK


def test_others_see_the_market_not_the_details() -> None:
    for reader in (None, OTHER):
        seen = visible(TASK, reader, HUB)
        assert (seen.task_id, seen.state, seen.miner_id, seen.owner) == (
            "t1",
            TaskState.FAILED,
            "0xMiner",
            OWNER,
        )  # noqa: E501
        assert (seen.image, seen.endpoints, seen.error, seen.container_id) == ("", (), "", "")


def test_a_miners_status_hides_others_usage() -> None:
    theirs = Task.create(task_id="t2", miner_id="0xMiner", image="x", owner=OTHER, now=1.0)
    status = MinerStatus(
        node_id="0xMiner",
        info=RuntimeInfo(4, 1 << 30, "linux", "amd64", "28"),
        cpus_offered=4,
        memory_offered=1 << 30,
        cpus_allocated=2,
        memory_allocated=1 << 29,
        load=(TaskUsage("t1", 50.0, 1 << 20, 0, 0.0), TaskUsage("t2", 10.0, 1 << 20, 0, 0.0)),
        tasks=(TASK, theirs),
    )
    seen = visible_status(status, OWNER, HUB)
    assert [u.task_id for u in seen.load] == ["t1"]
    assert seen.tasks[0] == TASK and seen.tasks[1].image == ""
    assert seen.cpus_allocated == 2  # the miner's totals are public
