"""The value types every layer shares: what a task runs, what a miner offers and reports.

Neutral ground: the miner, the hub, the typed client, the proto conversions and the CLI all
import these from here, so none of them needs the miner package (or the ``docker`` SDK behind
it) to name a spec or a status. Plain frozen dataclasses, no behaviour; each mirrors one proto
message (named in its docstring), converted in ``sonm_p2p/_convert.py``.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass, field

from sonm_p2p.errors import InvalidRequest
from sonm_p2p.tasks import Task

__all__ = [
    "MIN_TASK_CPUS",
    "MIN_TASK_MEMORY",
    "parse_restart",
    "LogQuery",
    "MinerStatus",
    "PublishedPort",
    "PullProgress",
    "RunSpec",
    "RuntimeInfo",
    "TaskUsage",
]


#: The least a task may ask for: a share of nothing would count nothing against an offer.
MIN_TASK_CPUS = 0.01
MIN_TASK_MEMORY = 6 << 20  # Docker refuses less

_RESTART = re.compile(r"(no|always|unless-stopped|on-failure)(?::([0-9]{1,9}))?\Z")


def parse_restart(restart: str) -> tuple[str, int] | None:
    """``RunSpec.restart`` as (policy, most retries); None for "" (the engine's default).

    Raises InvalidRequest unless it is no, always, unless-stopped, on-failure or on-failure:N.
    """
    if restart == "":
        return None
    found = _RESTART.match(restart) if isinstance(restart, str) else None
    if found is None or (found[2] is not None and found[1] != "on-failure"):
        shown = repr(restart if len(restart) <= 40 else restart[:40] + "…")
        raise InvalidRequest(
            f"restart policy {shown} is not one of: no, always, unless-stopped, "
            "on-failure, on-failure:N"
        )
    return found[1], int(found[2] or 0)


@dataclass(frozen=True)
class RunSpec:
    """What to run (``sonm.v1.TaskSpec``). Limits of 0 mean "no limit"."""

    image: str
    #: Replaces the image's CMD when non-empty (the ENTRYPOINT, if any, stays).
    command: tuple[str, ...] = ()
    env: Mapping[str, str] = field(default_factory=dict)
    #: CPU cores the task may use (fractions allowed); defaults to 0, no limit.
    cpus: float = 0.0
    #: Memory limit in bytes; defaults to 0, no limit.
    memory_bytes: int = 0
    #: Docker's restart policy: "", "no", "always", "unless-stopped", "on-failure" or
    #: "on-failure:N" (at most N restarts); defaults to "", the engine's default ("no").
    #: A stopped task is never restarted, whatever the policy.
    restart: str = ""


@dataclass(frozen=True)
class PublishedPort:
    """A container port published on the host."""

    container_port: int
    protocol: str  # "tcp" or "udp"
    host_ip: str
    host_port: int


@dataclass(frozen=True)
class RuntimeInfo:
    """What a miner's container engine offers (``sonm.v1.Resources``)."""

    cpu_cores: int
    memory_bytes: int
    os: str  # "linux"
    arch: str  # Go naming, as in image platforms: "amd64", "arm64"
    version: str  # "docker 20.10.24"


@dataclass(frozen=True)
class PullProgress:
    """Where an image pull stands, summed over the image's layers (``sonm.v1.PullProgress``).

    Byte counts are those of the compressed layers the engine reports sizes for (layers that
    already exist locally count 0); a layer counts in full in ``current_bytes`` once downloaded.
    Totals grow as the engine learns the layers' sizes.
    """

    image: str
    current_bytes: int
    total_bytes: int
    #: Layers pulled or already present locally.
    layers_done: int
    layers_total: int
    #: The engine's latest status line ("Downloading", "Extracting", "Pull complete", ...).
    status: str = ""


@dataclass(frozen=True)
class TaskUsage:
    """A task's resource use now, and its limits (0: none); ``sonm.v1.TaskUsage``.
    A task not running uses 0."""

    task_id: str
    #: Percent of one core: 250.0 is two and a half cores busy.
    cpu_percent: float
    #: Memory in use, page cache excluded (as ``docker stats`` counts it).
    memory_bytes: int
    memory_limit: int
    cpus_limit: float


@dataclass(frozen=True)
class LogQuery:
    """Which output of a task to read (``sonm.v1.LogsRequest``)."""

    task_id: str
    follow: bool = False
    tail: int | None = None
    since: float | None = None
    stdout: bool = True
    stderr: bool = True


@dataclass(frozen=True)
class MinerStatus:
    """A miner's offer, allocation, per-task usage and tasks (``sonm.v1.MinerStatusReply``)."""

    node_id: str
    info: RuntimeInfo
    cpus_offered: float
    memory_offered: int
    cpus_allocated: float
    memory_allocated: int
    load: tuple[TaskUsage, ...]
    tasks: tuple[Task, ...]
