"""The miner's domain: run, stop, watch and report tasks on a container runtime for its hub."""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field, replace
from pathlib import Path

from sonm_p2p.errors import (
    InvalidRequest,
    MinerUnavailable,
    Refused,
    SonmError,
    TaskNotFound,
    Timeout,
)
from sonm_p2p.events import EventBus, TaskEvent
from sonm_p2p.miner._kept_logs import keep, read_kept
from sonm_p2p.miner.registries import RegistryPolicy
from sonm_p2p.miner.runtime import ContainerRuntime, ContainerState, LogStream
from sonm_p2p.model import (
    MIN_TASK_CPUS,
    MIN_TASK_MEMORY,
    LogQuery,
    MinerStatus,
    PullProgress,
    RunSpec,
    RuntimeInfo,
)
from sonm_p2p.tasks import Endpoint, Task, TaskState

__all__ = ["Miner", "Offer", "task_from_container"]

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
        record=c.labels.get("sonm.record", ""),
    )


@dataclass(frozen=True, kw_only=True)
class Offer:
    """What a miner offers its hub.

    cpus, memory_bytes: in all, for every task together; 0 means "everything the engine has".
    default_cpus, default_memory_bytes: what a task that names no limit gets (and counts against
        the offer); default 1 CPU and 512 MiB, at most the offer. A task never runs unlimited.
    """

    cpus: float = 0.0
    memory_bytes: int = 0
    default_cpus: float = 1.0
    default_memory_bytes: int = 512 << 20


@dataclass
class _HubClock:
    last_ping: float = 0.0


@dataclass
class _StartGate:
    """Serializes starts of one task ID; dropped when its last user leaves."""

    lock: threading.Lock = field(default_factory=threading.Lock)
    users: int = 0


class Miner:
    """Runs tasks for its hub. Thread-safe: the gRPC servicer calls it from worker threads.

    ``events`` carries every task's state changes (from the engine's events) and pull progress.
    Output of stopped tasks is kept under ``logs_dir`` (their containers are removed).

    ``addresses()`` says where this miner listens on the overlay (its node's advertised
    addresses, which change as relays are reserved); ``nat_type(stun_endpoints)`` classifies its
    NAT against the STUN responders the hub names ("" unknown). Both are what the handshake reports;
    they default to nothing known.
    """

    def __init__(
        self,
        node_id: str,
        runtime: ContainerRuntime,
        *,
        logs_dir: Path | None = None,
        offer: Offer | None = None,
        status_ttl: float = 2.0,
        registries: RegistryPolicy | None = None,
        addresses: Callable[[], list[str]] = list,
        nat_type: Callable[[Sequence[str]], str] = lambda stun_endpoints: "",
    ) -> None:
        self.node_id = node_id
        self.runtime = runtime
        self.logs_dir = logs_dir
        self.offer = offer or Offer()
        self.events = EventBus()
        self.hub_clock = _HubClock()
        self._starting: dict[str, _StartGate] = {}  # task ID -> gate, while a start runs
        self._allocating = threading.Lock()  # the offer's check and hold
        self._held: dict[str, tuple[float, int]] = {}  # task ID -> share, while it starts
        self.status_ttl = status_ttl
        self.registries = registries or RegistryPolicy()
        self._status: tuple[float, MinerStatus] | None = None  # (monotonic time, last sample)
        self._sampling = threading.Lock()
        self._stopping: set[str] = set()  # their "die" is a stop, reported by stop() itself
        self._lock = threading.Lock()
        self._info: RuntimeInfo | None = None
        self._unwatch: Callable[[], None] | None = None
        self.addresses = addresses
        self.nat_type = nat_type

    def __repr__(self) -> str:
        return f"<Miner {self.node_id} runtime={self.runtime!r}>"

    def watch_runtime(self) -> None:
        """Turn the engine's container events into task events (until :meth:`close`)."""
        if self._unwatch is None:
            self._unwatch = self.runtime.watch(self._on_runtime_event)

    def close(self) -> None:
        if self._unwatch is not None:
            self._unwatch()
            self._unwatch = None
        self.events.close()

    def _on_runtime_event(self, task_id: str, action: str) -> None:
        if action not in ("start", "die", "oom") or task_id in self._stopping:
            return
        try:
            task = self.status(task_id)
        except SonmError:
            return  # removed meanwhile: whoever removed it reports the final state
        log.info("task %s: %s (%s)", task_id, task.state.value, action)
        self._publish(task)

    def _publish(
        self, task: Task | None = None, *, task_id: str = "", progress: PullProgress | None = None
    ) -> None:
        tid = task.task_id if task is not None else task_id
        self.events.publish(TaskEvent(tid, time.time(), task=task, progress=progress))
        self._status = None  # a task changed: the next status is sampled anew

    def info(self) -> RuntimeInfo:
        if self._info is None:
            self._info = self.runtime.info()
        return self._info

    def tasks(self) -> list[Task]:
        """Every task this miner's runtime holds (adopted containers too)."""
        return [task_from_container(c, self.node_id) for c in self.runtime.list()]

    def saw_hub(self) -> None:
        self.hub_clock.last_ping = time.monotonic()

    # -- limits --------------------------------------------------------------------------------

    def _offered(self) -> tuple[float, int]:
        info = self.info()
        return (
            self.offer.cpus or float(info.cpu_cores),
            self.offer.memory_bytes or info.memory_bytes,
        )

    def _allocated(self) -> tuple[float, int]:
        """What running tasks hold, and starts in progress (their share is held at once)."""
        cpus, memory = 0.0, 0
        containers = self.runtime.list()
        listed = {c.task_id for c in containers}
        for task_id, (c_cpus, c_mem) in list(self._held.items()):
            if task_id not in listed:
                cpus += c_cpus
                memory += c_mem
        for c in containers:  # one listing: each state carries its limits
            if c.status not in _ENDED:
                cpus += c.cpus
                memory += c.memory_bytes
        return cpus, memory

    def _sized(self, spec: RunSpec) -> RunSpec:
        """``spec`` with the default share where it names no limit; refused below the least a
        task may ask (a share of nothing would count nothing against the offer)."""
        cpus_offered, mem_offered = self._offered()
        cpus = spec.cpus or min(self.offer.default_cpus, cpus_offered)
        memory = spec.memory_bytes or min(self.offer.default_memory_bytes, mem_offered)
        if cpus < MIN_TASK_CPUS or memory < MIN_TASK_MEMORY:
            raise InvalidRequest(
                f"a task needs at least {MIN_TASK_CPUS} CPUs and {_mib(MIN_TASK_MEMORY)}; "
                f"asked for {cpus:g} CPUs and {_mib(memory)}"
            )
        return replace(spec, cpus=cpus, memory_bytes=memory)

    def _check_fits(self, spec: RunSpec) -> None:
        cpus_offered, mem_offered = self._offered()
        if spec.cpus > cpus_offered:
            raise Refused(f"asked for {spec.cpus:g} CPUs; this miner offers {cpus_offered:g}")
        if spec.memory_bytes > mem_offered:
            raise Refused(
                f"asked for {_mib(spec.memory_bytes)} of memory; this miner offers "
                f"{_mib(mem_offered)}"
            )
        cpus_used, mem_used = self._allocated()
        if cpus_used + spec.cpus > cpus_offered:
            raise Refused(
                f"asked for {spec.cpus:g} CPUs; {cpus_offered - cpus_used:g} of "
                f"{cpus_offered:g} are free"
            )
        if mem_used + spec.memory_bytes > mem_offered:
            raise Refused(
                f"asked for {_mib(spec.memory_bytes)} of memory; {_mib(mem_offered - mem_used)} "
                f"of {_mib(mem_offered)} are free"
            )

    # -- tasks ---------------------------------------------------------------------------------

    def start(
        self,
        task_id: str,
        spec: RunSpec,
        *,
        owner: str,
        hub_id: str,
        timeout: float | None,
        still_wanted: Callable[[], bool] = lambda: True,
        record: str = "",
    ) -> Task:
        """Pull (if needed) and run ``spec`` as task ``task_id``; return it RUNNING.

        Starting the same task ID twice returns the existing task. When the caller is gone by
        the time the container runs (``still_wanted()`` is false: the hub disconnected or gave
        up), the container is removed and MinerUnavailable raised: no orphan is left.
        A spec that names no CPU or memory limit gets the offer's default share; the share is
        held against the offer from the check on, so concurrent starts cannot exceed it.
        Raises Refused (limits beyond the offer), InvalidRequest (below the least a task may
        ask), ImageNotFound, ImageNotRunnable, Timeout, RuntimeFailure.
        """
        with self._start_gate(task_id):
            try:
                return task_from_container(self.runtime.status(task_id), self.node_id)
            except TaskNotFound:
                pass
            self.registries.check(spec.image)
            spec = self._sized(spec)
            with self._allocating:  # check and hold at once: two starts cannot both fit
                self._check_fits(spec)
                self._held[task_id] = (spec.cpus, spec.memory_bytes)
            try:
                return self._run(task_id, spec, owner, hub_id, record, timeout, still_wanted)
            finally:
                with self._allocating:
                    self._held.pop(task_id, None)  # its container counts from now on

    def _run(
        self,
        task_id: str,
        spec: RunSpec,
        owner: str,
        hub_id: str,
        record: str,
        timeout: float | None,
        still_wanted: Callable[[], bool],
    ) -> Task:
        """The body of :meth:`start` once its share of the offer is held."""
        deadline = None if timeout is None else time.monotonic() + timeout
        log.info("task %s: preparing image %s", task_id, spec.image)

        def progress(p: PullProgress) -> None:
            self._publish(task_id=task_id, progress=p)

        self.runtime.ensure_image(spec.image, timeout=timeout, progress=progress)
        if not still_wanted():
            raise MinerUnavailable(f"task {task_id}: the hub went away during the pull")
        if deadline is not None and time.monotonic() > deadline:
            raise Timeout(f"task {task_id}: image {spec.image} took longer than the deadline")
        labels = {"sonm.hub": hub_id, "sonm.owner": owner}
        if record:  # the hub's signed record: what lets it adopt the task later
            labels["sonm.record"] = record
        state = self.runtime.run(task_id, spec, labels=labels)
        if not still_wanted():
            self.runtime.remove(task_id)
            raise MinerUnavailable(
                f"task {task_id}: the hub went away during the start; container removed"
            )
        log.info("task %s: running as %s", task_id, state.container_id[:12])
        task = task_from_container(state, self.node_id)
        self._publish(task)
        return task

    @contextmanager
    def _start_gate(self, task_id: str) -> Iterator[None]:
        """Hold ``task_id``'s start lock; the entry goes once no start of it runs or waits, so
        the table holds only starts in progress, however many tasks come and go."""
        with self._lock:
            gate = self._starting.setdefault(task_id, _StartGate())
            gate.users += 1
        try:
            with gate.lock:
                yield
        finally:
            with self._lock:
                gate.users -= 1
                if not gate.users:
                    del self._starting[task_id]

    def stop(self, task_id: str) -> Task:
        """Stop gracefully (then kill), keep its output, remove the container."""
        self._stopping.add(task_id)
        try:
            final = self.runtime.stop(task_id, remove=False)
            self._save_logs(task_id)
            self.runtime.remove(task_id)
        finally:
            self._stopping.discard(task_id)
        task = replace(
            task_from_container(final, self.node_id),
            state=TaskState.STOPPED,
            exit_code=final.exit_code,
            updated_at=time.time(),
        )
        log.info("task %s: stopped (exit code %s)", task_id, final.exit_code)
        self._publish(task)
        return task

    def status(self, task_id: str) -> Task:
        return task_from_container(self.runtime.status(task_id), self.node_id)

    def _log_file(self, task_id: str) -> Path | None:
        return None if self.logs_dir is None else self.logs_dir / f"{task_id}.log"

    def _save_logs(self, task_id: str) -> None:
        path = self._log_file(task_id)
        if path is None:
            return
        try:
            with self.runtime.stream_logs(LogQuery(task_id)) as output:
                keep(output, path)  # chunk by chunk: a chatty task cannot balloon the miner
        except (SonmError, OSError) as exc:
            log.warning("task %s: could not keep its output: %s", task_id, exc)

    def logs(self, q: LogQuery) -> LogStream:
        """The task's output: live from its container, or kept from a stopped one.

        The returned iterator has ``close()``; closing it from another thread ends a follow.
        Raises TaskNotFound (no container and no kept output), InvalidRequest.
        """
        try:
            self.runtime.status(q.task_id)
        except TaskNotFound:
            path = self._log_file(q.task_id)
            if path is None or not path.exists():
                raise
        else:
            return self.runtime.stream_logs(q)
        chunks = read_kept(path, q.tail)
        return LogStream(chunks, chunks.close, what=f"kept logs of {q.task_id}")

    def status_report(self) -> MinerStatus:
        """Offer, allocation, usage and tasks, sampled at most every ``status_ttl`` seconds.

        Sampling asks the engine for every task's stats (about a second with Docker): callers
        within the TTL share the last sample, and while one caller samples the others get the
        previous one instead of waiting, so a flood of reads never takes the threads that
        answer the hub's pings.
        """
        cached = self._status
        if cached is not None and time.monotonic() - cached[0] < self.status_ttl:
            return cached[1]
        got = self._sampling.acquire() if cached is None else self._sampling.acquire(blocking=False)
        if not got:
            assert cached is not None
            return cached[1]
        try:
            report = self._sample_status()
            self._status = (time.monotonic(), report)
            return report
        finally:
            self._sampling.release()

    def _sample_status(self) -> MinerStatus:
        cpus_offered, mem_offered = self._offered()
        cpus_used, mem_used = self._allocated()
        loads = []
        tasks = self.tasks()
        for t in tasks:
            if t.state is not TaskState.RUNNING:
                continue
            try:
                loads.append(self.runtime.usage(t.task_id))
            except SonmError:
                continue
        return MinerStatus(
            node_id=self.node_id,
            info=self.info(),
            cpus_offered=cpus_offered,
            memory_offered=mem_offered,
            cpus_allocated=cpus_used,
            memory_allocated=mem_used,
            load=tuple(loads),
            tasks=tuple(tasks),
        )


def _mib(n: int) -> str:
    return f"{n / (1 << 20):.0f} MiB"
