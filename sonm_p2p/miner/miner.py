"""The miner's domain: run, stop and report tasks on a container runtime for its hub."""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, replace

from sonm_p2p.errors import MinerUnavailable, TaskNotFound, Timeout
from sonm_p2p.miner.runtime import ContainerRuntime, ContainerState, RunSpec, RuntimeInfo
from sonm_p2p.tasks import Endpoint, Task, TaskState

__all__ = ["Miner", "task_from_container"]

log = logging.getLogger(__name__)

# Docker statuses that mean "the process is not running any more".
_ENDED = {"exited", "dead"}


def task_from_container(c: ContainerState, miner_id: str) -> Task:
    """What the miner reports about one of its containers."""
    if c.status == "running":
        state, code = TaskState.RUNNING, None
    elif c.status in _ENDED:
        state, code = TaskState.EXITED, c.exit_code if c.exit_code is not None else -1
    else:  # created, restarting, paused, removing
        state, code = TaskState.STARTING, None
    now = time.time()
    return Task(
        task_id=c.task_id,
        miner_id=miner_id,
        image=c.image,
        owner=c.labels.get("sonm.owner", ""),
        state=state,
        endpoints=tuple(
            Endpoint(p.container_port, p.protocol, p.host_ip, p.host_port) for p in c.ports
        ),
        exit_code=code,
        error=c.error,
        created_at=c.started_at or now,
        updated_at=c.finished_at or c.started_at or now,
        container_id=c.container_id,
    )


@dataclass
class _HubClock:
    last_ping: float = 0.0


class Miner:
    """Runs tasks for its hub. Thread-safe: the gRPC servicer calls it from worker threads."""

    def __init__(self, node_id: str, runtime: ContainerRuntime) -> None:
        self.node_id = node_id
        self.runtime = runtime
        self._starting: dict[str, threading.Lock] = {}
        self._lock = threading.Lock()
        self.hub_clock = _HubClock()
        self._info: RuntimeInfo | None = None

    def __repr__(self) -> str:
        return f"<Miner {self.node_id} runtime={self.runtime!r}>"

    def info(self) -> RuntimeInfo:
        if self._info is None:
            self._info = self.runtime.info()
        return self._info

    def tasks(self) -> list[Task]:
        """Every task this miner's runtime holds (adopted containers too)."""
        return [task_from_container(c, self.node_id) for c in self.runtime.list()]

    def saw_hub(self) -> None:
        self.hub_clock.last_ping = time.monotonic()

    def start(
        self,
        task_id: str,
        spec: RunSpec,
        *,
        owner: str,
        hub_id: str,
        timeout: float | None,
        still_wanted: Callable[[], bool] = lambda: True,
    ) -> Task:
        """Pull (if needed) and run ``spec`` as task ``task_id``; return it RUNNING.

        Starting the same task ID twice returns the existing task. When the caller is gone by
        the time the container runs (``still_wanted()`` is false: the hub disconnected or gave
        up), the container is removed and MinerUnavailable raised: no orphan is left.
        Raises ImageNotFound, ImageNotRunnable, Timeout, RuntimeFailure from the runtime.
        """
        with self._lock:
            gate = self._starting.setdefault(task_id, threading.Lock())
        with gate:
            try:
                return task_from_container(self.runtime.status(task_id), self.node_id)
            except TaskNotFound:
                pass
            deadline = None if timeout is None else time.monotonic() + timeout
            log.info("task %s: preparing image %s", task_id, spec.image)
            self.runtime.ensure_image(spec.image, timeout=timeout)
            if not still_wanted():
                raise MinerUnavailable(f"task {task_id}: the hub went away during the pull")
            if deadline is not None and time.monotonic() > deadline:
                raise Timeout(f"task {task_id}: image {spec.image} took longer than the deadline")
            labels = {"sonm.hub": hub_id, "sonm.owner": owner}
            state = self.runtime.run(task_id, spec, labels=labels)
            if not still_wanted():
                self.runtime.remove(task_id)
                raise MinerUnavailable(
                    f"task {task_id}: the hub went away during the start; container removed"
                )
            log.info("task %s: running as %s", task_id, state.container_id[:12])
            return task_from_container(state, self.node_id)

    def stop(self, task_id: str) -> Task:
        """Stop gracefully (then kill), remove the container; the final state carries the code."""
        final = self.runtime.stop(task_id)
        task = task_from_container(final, self.node_id)
        log.info("task %s: stopped (exit code %s)", task_id, final.exit_code)
        return replace(task, state=TaskState.STOPPED, exit_code=final.exit_code)

    def status(self, task_id: str) -> Task:
        return task_from_container(self.runtime.status(task_id), self.node_id)
