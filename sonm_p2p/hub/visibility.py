"""What an open read shows to whom (pure).

Anyone who can reach a hub may ask what runs there, but a task's details are its owner's
business: the image, where its ports are, why it failed, its container and resource use. A read
signed by the task's owner (or by the hub's operator) sees everything; any other read sees the
task's ID, miner, owner ID, state, exit code and times — enough to see the market, not to probe
someone's service or learn what it runs.
"""

from __future__ import annotations

from dataclasses import replace

from sonm_p2p.model import MinerStatus
from sonm_p2p.tasks import Task

__all__ = ["sees_all", "visible", "visible_status"]


def sees_all(task: Task, reader: str | None, operator: str) -> bool:
    """Whether ``reader`` (a verified node ID, None when unsigned) owns ``task`` or runs the
    hub."""
    return reader is not None and reader.lower() in (task.owner.lower(), operator.lower())


def visible(task: Task, reader: str | None, operator: str) -> Task:
    """``task`` as ``reader`` may see it."""
    if sees_all(task, reader, operator):
        return task
    return replace(task, image="", endpoints=(), error="", container_id="", record="")


def visible_status(status: MinerStatus, reader: str | None, operator: str) -> MinerStatus:
    """A miner's status with others' tasks shown as :func:`visible` and their usage left out."""
    mine = {t.task_id for t in status.tasks if sees_all(t, reader, operator)}
    return replace(
        status,
        tasks=tuple(visible(t, reader, operator) for t in status.tasks),
        load=tuple(u for u in status.load if u.task_id in mine),
    )
