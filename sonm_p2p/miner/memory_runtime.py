""":class:`MemoryRuntime`: an in-memory :class:`~sonm_p2p.miner.runtime.ContainerRuntime`."""

from __future__ import annotations

import builtins
import itertools
import logging
import threading
import time
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass, field, replace

from sonm_p2p.errors import ImageNotFound, ImageNotRunnable, Refused, SonmError, TaskNotFound
from sonm_p2p.miner.runtime import (
    _NO_COMMAND,
    ContainerState,
    LogStream,
    _check_log_query,
    _check_run,
    _check_tail,
    _last_lines,
    _normalize_image,
    _parse_port_key,
    _restart_policy,
    _task_labels,
)
from sonm_p2p.model import LogQuery, PublishedPort, PullProgress, RunSpec, RuntimeInfo, TaskUsage

__all__ = ["MemoryRuntime"]

log = logging.getLogger(__name__)

#: Exit code :meth:`MemoryRuntime.stop` reports for a running task (128 + SIGTERM).
_SIGTERM_EXIT = 143
#: Exit code of a running task force-removed (128 + SIGKILL).
_SIGKILL_EXIT = 137

_Event = tuple[str, str]  # (task ID, action) for the watchers


@dataclass
class _Chunk:
    at: float
    stderr: bool
    data: bytes


@dataclass
class _FakeContainer:
    state: ContainerState
    spec: RunSpec
    output: list[_Chunk] = field(default_factory=list)
    cpu_percent: float = 0.0
    memory_bytes: int = 0
    restarts: int = 0
    removed: bool = False

    @property
    def running(self) -> bool:
        return self.state.status == "running"


def _restarts(restart: str, code: int, restarts: int) -> bool:
    """Whether Docker restarts a container with policy ``restart`` that exited with ``code``
    after ``restarts`` restarts."""
    policy = _restart_policy(restart)
    if policy is None:
        return False
    if policy["Name"] == "on-failure":
        limit = policy["MaximumRetryCount"]
        return code != 0 and (not limit or restarts < limit)
    return policy["Name"] in ("always", "unless-stopped")


class MemoryRuntime:
    """An in-memory :class:`~sonm_p2p.miner.runtime.ContainerRuntime` with the same contract as
    :class:`~sonm_p2p.miner.docker_runtime.DockerRuntime`.

    Args:
        images: the fake registry: image reference -> (EXPOSEd ports such as ``"8080/tcp"``,
            whether the image has an ENTRYPOINT or CMD). Images are pulled (made local) by
            :meth:`ensure_image`, and :meth:`run` refuses images not pulled yet, as Docker does.
        pull_errors: image reference -> the error :meth:`ensure_image` raises for it (to
            simulate a ``Timeout`` or ``RuntimeFailure``).
        publish_ip: host address reported in published ports.
        labels: fixed labels put on every container.
        info: what :meth:`info` returns; defaults to 4 cores, 8 GiB, linux/amd64.
        clock: unix time source for ``started_at``/``finished_at`` and log times.
        first_host_port: fake host ports are handed out counting up from here.

    Thread-safe. Watch callbacks are called synchronously, in the thread that caused the event,
    after the runtime's lock is released (so they may call the runtime). Besides the contract it
    has :meth:`exit`, :meth:`write_output`, :meth:`set_usage`, :meth:`spec_of` and
    :attr:`pulled` (images pulled so far, in order) for tests.
    """

    def __init__(
        self,
        *,
        images: Mapping[str, tuple[Iterable[str | int], bool]] | None = None,
        pull_errors: Mapping[str, SonmError] | None = None,
        publish_ip: str = "0.0.0.0",
        labels: Mapping[str, str] | None = None,
        info: RuntimeInfo | None = None,
        clock: Callable[[], float] = time.time,
        first_host_port: int = 32768,
    ) -> None:
        self._registry = {
            _normalize_image(ref): (tuple(_parse_port_key(p) for p in exposed), bool(runnable))
            for ref, (exposed, runnable) in (images or {}).items()
        }
        self._pull_errors = {_normalize_image(k): v for k, v in (pull_errors or {}).items()}
        self._local: set[str] = set()
        self.pulled: builtins.list[str] = []
        self.publish_ip = publish_ip
        self.labels: Mapping[str, str] = dict(labels or {})
        self._info = info or RuntimeInfo(4, 8 << 30, "linux", "amd64", "memory 0")
        self._clock = clock
        self._host_ports = itertools.count(first_host_port)
        self._container_ids = itertools.count(1)
        self._containers: dict[str, _FakeContainer] = {}
        self._watchers: builtins.list[Callable[[str, str], None]] = []
        # One lock; waiting on it wakes followers of stream_logs on any change.
        self._changed = threading.Condition(threading.Lock())

    def __repr__(self) -> str:
        with self._changed:
            running = sum(c.running for c in self._containers.values())
            tasks = len(self._containers)
        return f"<MemoryRuntime local={sorted(self._local)} {tasks=} {running=}>"

    def close(self) -> None:
        """Stop calling watchers (idempotent); the fake's tasks stay, as containers would."""
        with self._changed:
            self._watchers.clear()

    def info(self) -> RuntimeInfo:
        """The ``info`` given to the constructor."""
        return self._info

    def ensure_image(
        self,
        image: str,
        *,
        timeout: float | None = None,
        progress: Callable[[PullProgress], None] | None = None,
    ) -> None:
        """Make a registered image local at once (recorded in :attr:`pulled`). Raises its
        ``pull_errors`` entry if any, else ImageNotFound for an unregistered image.

        ``progress`` gets a one-layer pull: (0 of 1 layers, "Pulling fs layer"), then the final
        (1 of 1, "Pull complete"); it is not called for an image that is local already.
        """
        ref = _normalize_image(image)
        with self._changed:
            if ref in self._local:
                return
            if ref in self._pull_errors:
                raise self._pull_errors[ref]
            if ref not in self._registry:
                raise ImageNotFound(
                    f"image {image} is not present locally and cannot be pulled: "
                    "no such repository or tag in the registry (manifest unknown)"
                )
        if progress is not None:
            progress(PullProgress(image, 0, 0, 0, 1, "Pulling fs layer"))
        with self._changed:
            if ref not in self._local:
                self._local.add(ref)
                self.pulled.append(image)
        if progress is not None:
            progress(PullProgress(image, 0, 0, 1, 1, "Pull complete"))

    def run(self, task_id: str, spec: RunSpec, *, labels: Mapping[str, str]) -> ContainerState:
        """As :meth:`DockerRuntime.run`; the task is "running" until :meth:`exit` or
        :meth:`stop`. Raises the same errors."""
        _check_run(task_id, spec)
        ref = _normalize_image(spec.image)
        with self._changed:
            if ref not in self._local:
                raise ImageNotFound(
                    f"image {spec.image} is not present locally (ensure_image first)"
                )
            exposed, runnable = self._registry[ref]
            if not runnable and not spec.command:
                raise ImageNotRunnable(_NO_COMMAND.format(spec.image))
            if task_id in self._containers:
                raise Refused(f"task {task_id}: a container sonm-{task_id} already exists")
            ports = tuple(
                PublishedPort(port, proto, self.publish_ip, next(self._host_ports))
                for port, proto in sorted(exposed)
            )
            state = ContainerState(
                task_id=task_id,
                container_id=f"{next(self._container_ids):064x}",
                image=spec.image,
                status="running",
                exit_code=None,
                ports=ports,
                labels=_task_labels(labels, self.labels, task_id),
                started_at=self._clock(),
                cpus=spec.cpus,
                memory_bytes=spec.memory_bytes,
            )
            self._containers[task_id] = _FakeContainer(state, spec)
        self._notify([(task_id, "start")])
        return state

    def exit(self, task_id: str, code: int, *, oom: bool = False) -> ContainerState:
        """Simulate the task exiting on its own with ``code`` (no-op if not running): watchers
        see "oom" (if ``oom``) then "die". Then its restart policy applies as Docker's would
        (at once): the task is running again and watchers see "start".

        Raises:
            TaskNotFound: no such task.
        """
        with self._changed:
            fake = self._get(task_id)
            events = self._finish(fake, code, oom=oom)
            if events and _restarts(fake.spec.restart, code, fake.restarts):
                fake.restarts += 1
                fake.state = replace(
                    fake.state, status="running", exit_code=None, started_at=self._clock()
                )
                events.append((task_id, "start"))
            state = fake.state
        self._notify(events)
        return state

    def write_output(self, task_id: str, data: bytes, *, stderr: bool = False) -> None:
        """Append ``data`` to the task's stdout (or stderr), as :meth:`logs` and
        :meth:`stream_logs` read it. Raises TaskNotFound if no such task."""
        with self._changed:
            self._get(task_id).output.append(_Chunk(self._clock(), stderr, bytes(data)))
            self._changed.notify_all()

    def set_usage(self, task_id: str, *, cpu_percent: float = 0.0, memory_bytes: int = 0) -> None:
        """What :meth:`usage` reports while the task runs. Raises TaskNotFound if no such task."""
        with self._changed:
            fake = self._get(task_id)
            fake.cpu_percent, fake.memory_bytes = cpu_percent, memory_bytes

    def spec_of(self, task_id: str) -> RunSpec:
        """The spec the task was run with. Raises TaskNotFound if no such task."""
        with self._changed:
            return self._get(task_id).spec

    def stop(self, task_id: str, *, grace: float = 10.0, remove: bool = True) -> ContainerState:
        """As :meth:`DockerRuntime.stop`; a running task exits with 143 (SIGTERM). With
        ``remove=False`` the task stays (logs readable) until :meth:`remove`."""
        with self._changed:
            fake = self._get(task_id)
            events = self._finish(fake, _SIGTERM_EXIT)
            if remove:
                events += self._forget(task_id)
            state = fake.state
        self._notify(events)
        return state

    def remove(self, task_id: str) -> None:
        """Forget the task (a running one dies with 137, SIGKILL); no error if there is none."""
        with self._changed:
            fake = self._containers.get(task_id)
            if fake is None:
                return
            events = self._finish(fake, _SIGKILL_EXIT) + self._forget(task_id)
        self._notify(events)

    def status(self, task_id: str) -> ContainerState:
        """The task's current state. Raises TaskNotFound if no such task."""
        with self._changed:
            return self._get(task_id).state

    def list(self) -> builtins.list[ContainerState]:
        """Every task's state, by task ID."""
        with self._changed:
            return [self._containers[t].state for t in sorted(self._containers)]

    def logs(self, task_id: str, *, tail: int | None = None) -> bytes:
        """What :meth:`write_output` wrote (both streams), the last ``tail`` lines if given.
        Raises as :meth:`DockerRuntime.logs`."""
        _check_tail(tail)
        with self._changed:
            out = b"".join(c.data for c in self._get(task_id).output)
        return _last_lines(out, tail)

    def stream_logs(self, query: LogQuery) -> LogStream:
        """As :meth:`DockerRuntime.stream_logs`: first the matching output so far (one chunk),
        then, with ``follow``, each :meth:`write_output` as a chunk until the task stops or is
        removed. ``since`` compares with the ``clock`` at the time of writing. Raises the same
        errors."""
        task_id, follow, tail, stdout, stderr = (
            query.task_id, query.follow, query.tail, query.stdout, query.stderr
        )  # fmt: skip
        since = _check_log_query(tail, query.since, stdout, stderr)
        with self._changed:
            fake = self._get(task_id)
            backlog = len(fake.output)
        closed = threading.Event()

        def wanted(chunk: _Chunk) -> bool:
            return (stderr if chunk.stderr else stdout) and (since is None or chunk.at >= since)

        def chunks() -> Iterator[bytes]:
            with self._changed:
                first = b"".join(c.data for c in fake.output[:backlog] if wanted(c))
            first = _last_lines(first, tail)
            if first:
                yield first
            seen = backlog
            while follow:
                with self._changed:
                    while not closed.is_set() and seen == len(fake.output):
                        if fake.removed or not fake.running:
                            return
                        self._changed.wait()
                    if closed.is_set():
                        return
                    fresh, seen = fake.output[seen:], len(fake.output)
                data = b"".join(c.data for c in fresh if wanted(c))
                if data:
                    yield data

        def cancel() -> None:
            closed.set()
            with self._changed:
                self._changed.notify_all()

        return LogStream(chunks(), cancel, what=f"logs of {task_id}")

    def watch(self, callback: Callable[[str, str], None]) -> Callable[[], None]:
        """As :meth:`DockerRuntime.watch`, but synchronous: :meth:`run` reports "start",
        :meth:`exit` "die" (after "oom" if asked), :meth:`stop` "die" if it was running (and
        "destroy" if removed), :meth:`remove` "die" if running, then "destroy". Returns the
        (idempotent) function that stops watching."""
        with self._changed:
            self._watchers.append(callback)

        def unwatch() -> None:
            with self._changed:
                if callback in self._watchers:
                    self._watchers.remove(callback)

        return unwatch

    def usage(self, task_id: str) -> TaskUsage:
        """What :meth:`set_usage` set (0 when not running), with the spec's limits. Raises
        TaskNotFound if no such task."""
        with self._changed:
            fake = self._get(task_id)
            cpu, memory = (fake.cpu_percent, fake.memory_bytes) if fake.running else (0.0, 0)
            return TaskUsage(task_id, cpu, memory, fake.spec.memory_bytes, fake.spec.cpus)

    def limits(self, task_id: str) -> tuple[float, int]:
        """The spec's (cpus, memory_bytes); 0 means none. Raises TaskNotFound if no such task."""
        with self._changed:
            spec = self._get(task_id).spec
            return spec.cpus, spec.memory_bytes

    # Callers hold the lock; they return the watch events to hand to _notify after releasing it.

    def _finish(
        self, fake: _FakeContainer, code: int, *, oom: bool = False
    ) -> builtins.list[_Event]:
        if not fake.running:
            return []
        now = self._clock()
        fake.state = replace(fake.state, status="exited", exit_code=code, finished_at=now)
        self._changed.notify_all()
        task_id = fake.state.task_id
        return [(task_id, "oom"), (task_id, "die")] if oom else [(task_id, "die")]

    def _forget(self, task_id: str) -> builtins.list[_Event]:
        self._containers.pop(task_id).removed = True
        self._changed.notify_all()
        return [(task_id, "destroy")]

    def _notify(self, events: builtins.list[_Event]) -> None:
        if not events:
            return
        with self._changed:
            watchers = builtins.list(self._watchers)
        for task_id, action in events:
            for callback in watchers:
                try:
                    callback(task_id, action)
                except Exception:
                    log.exception("watch callback failed on task %s %s", task_id, action)

    def _get(self, task_id: str) -> _FakeContainer:
        try:
            return self._containers[task_id]
        except KeyError:
            raise TaskNotFound(f"no task {task_id} on this runtime") from None
