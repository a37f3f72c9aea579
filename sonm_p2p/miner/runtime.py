"""Container runtimes: how a miner runs a task as a container.

:class:`ContainerRuntime` is the interface the miner codes against.
:class:`~sonm_p2p.miner.docker_runtime.DockerRuntime` drives a real Docker engine through the
``docker`` SDK; :class:`~sonm_p2p.miner.memory_runtime.MemoryRuntime` is an in-memory fake with
the same contract, for tests of code built on top of a runtime. This module holds what both
share: the protocol, :class:`ContainerState`, :class:`LogStream` and the argument checks. It
imports neither implementation: they import it (the value types they exchange with callers are
in :mod:`sonm_p2p.model`).

Every method is blocking (the Docker one does HTTP calls to the engine); from async code call them
in a worker thread. Every error is one of :mod:`sonm_p2p.errors`; no ``docker`` or ``requests``
exception escapes: any method may raise ``RuntimeFailure`` (the engine failed or is unreachable)
besides the errors it documents.

A task's container is named ``sonm-<task_id>`` and labelled ``sonm.task=<task_id>`` plus the
runtime's fixed labels (e.g. ``sonm.miner``), which scope :meth:`ContainerRuntime.list`,
:meth:`ContainerRuntime.watch` and every lookup by task ID, so several miners on one engine never
see each other's containers.
"""

from __future__ import annotations

import builtins
import re
import threading
from collections.abc import Callable, Iterator, Mapping
from contextlib import suppress
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Protocol, runtime_checkable

from sonm_p2p.errors import InvalidRequest
from sonm_p2p.model import (
    LogQuery,
    PublishedPort,
    PullProgress,
    RunSpec,
    RuntimeInfo,
    TaskUsage,
    parse_restart,
)

if TYPE_CHECKING:
    from types import TracebackType

__all__ = [
    "RESTART_POLICIES",
    "TASK_LABEL",
    "WATCH_ACTIONS",
    "ContainerRuntime",
    "ContainerState",
    "LogStream",
]

#: Label carrying the task ID on every container a runtime creates.
TASK_LABEL = "sonm.task"
#: Values of :attr:`sonm_p2p.model.RunSpec.restart`; ``"on-failure"`` also takes a retry limit:
#: ``on-failure:3``.
RESTART_POLICIES = ("", "no", "always", "unless-stopped", "on-failure")
#: What :meth:`ContainerRuntime.watch` reports.
WATCH_ACTIONS = frozenset({"start", "die", "destroy", "oom"})

# Docker's rule for container names, which embed the task ID.
_TASK_ID = re.compile(r"[a-zA-Z0-9][a-zA-Z0-9_.-]*\Z")
_NO_COMMAND = "image {} has neither ENTRYPOINT nor CMD (nor a command given): nothing to run"


@dataclass(frozen=True)
class ContainerState:
    """A snapshot of one task's container."""

    task_id: str
    container_id: str
    image: str
    #: Docker's status: "created", "running", "paused", "restarting", "exited", "dead", ...
    status: str
    #: Set once the container has run and is no longer running ("exited" or "dead").
    exit_code: int | None
    ports: tuple[PublishedPort, ...]
    labels: Mapping[str, str]
    #: Docker's ``State.Error`` (e.g. why it could not start), empty if none.
    error: str = ""
    #: Unix seconds; None if unknown or not yet.
    started_at: float | None = None
    finished_at: float | None = None
    #: The limits it runs under (CPU cores, memory bytes); 0 means none.
    cpus: float = 0.0
    memory_bytes: int = 0


class LogStream(Iterator[bytes]):
    """Chunks of a task's output, as :meth:`ContainerRuntime.stream_logs` returns them.

    :meth:`close` may be called from any thread, any number of times: it releases the connection
    and a ``next()`` blocked in another thread promptly ends the iteration (StopIteration, no
    error). Also a context manager that closes on exit.
    """

    def __init__(self, chunks: Iterator[bytes], cancel: Callable[[], None], *, what: str) -> None:
        self._chunks = chunks
        self._cancel = cancel
        self._what = what
        self._closed = False
        self._lock = threading.Lock()

    def __repr__(self) -> str:
        return f"<LogStream {self._what} {'closed' if self._closed else 'open'}>"

    def __iter__(self) -> LogStream:
        return self

    def __next__(self) -> bytes:
        if self._closed:
            raise StopIteration
        try:
            return next(self._chunks)
        except StopIteration:
            self.close()
            raise
        except Exception:
            if self._closed:  # the connection was cut under the reader on purpose
                raise StopIteration from None
            raise

    def close(self) -> None:
        """End the stream (idempotent, thread-safe)."""
        with self._lock:
            if self._closed:
                return
            self._closed = True
        with suppress(Exception):  # the connection may be half-gone already
            self._cancel()
        close = getattr(self._chunks, "close", None)
        if close is not None:
            with suppress(ValueError):  # "generator already executing" in another thread
                close()

    def __enter__(self) -> LogStream:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()


@runtime_checkable
class ContainerRuntime(Protocol):
    """Runs tasks as containers; :class:`DockerRuntime` documents each method in full.

    ``ensure_image`` makes an image local, reporting pull progress (ImageNotFound, Timeout);
    ``run`` starts a task from a local image with its EXPOSEd ports published (ImageNotFound,
    ImageNotRunnable, Refused); ``stop`` ends it (and removes it unless ``remove=False``),
    returning its final state; ``remove`` force-removes quietly; ``status``/``logs``/
    ``stream_logs``/``usage``/``limits`` read it; ``list`` shows this runtime's tasks; ``watch``
    calls back on their lifecycle events until the returned function is called; ``close``
    ends every watch and joins the runtime's threads (containers stay). Unknown task:
    TaskNotFound.
    """

    def close(self) -> None: ...
    def info(self) -> RuntimeInfo: ...
    def ensure_image(
        self,
        image: str,
        *,
        timeout: float | None = None,
        progress: Callable[[PullProgress], None] | None = None,
    ) -> None: ...
    def run(self, task_id: str, spec: RunSpec, *, labels: Mapping[str, str]) -> ContainerState: ...
    def stop(self, task_id: str, *, grace: float = 10.0, remove: bool = True) -> ContainerState: ...
    def remove(self, task_id: str) -> None: ...
    def status(self, task_id: str) -> ContainerState: ...
    def list(self) -> builtins.list[ContainerState]: ...
    def logs(self, task_id: str, *, tail: int | None = None) -> bytes: ...
    def stream_logs(self, query: LogQuery) -> LogStream: ...
    def watch(self, callback: Callable[[str, str], None]) -> Callable[[], None]: ...
    def usage(self, task_id: str) -> TaskUsage: ...
    def limits(self, task_id: str) -> tuple[float, int]: ...


# --- helpers shared by both runtimes -------------------------------------------------------------


def _restart_policy(restart: str) -> dict[str, Any] | None:
    """``RunSpec.restart`` -> Docker's ``RestartPolicy`` (None for the engine's default).

    Raises:
        InvalidRequest: not one of :data:`RESTART_POLICIES` (a count only with on-failure).
    """
    parsed = parse_restart(restart)
    if parsed is None:
        return None
    return {"Name": parsed[0], "MaximumRetryCount": parsed[1]}


def _check_run(task_id: str, spec: RunSpec) -> None:
    if not isinstance(task_id, str) or not _TASK_ID.match(task_id):
        raise InvalidRequest(f"task ID {task_id!r} is not usable in a container name")
    if spec.cpus < 0 or spec.memory_bytes < 0:
        raise InvalidRequest(
            f"limits must not be negative: cpus={spec.cpus}, memory_bytes={spec.memory_bytes}"
        )
    _restart_policy(spec.restart)


def _check_tail(tail: int | None) -> None:
    if tail is not None and tail < 0:
        raise InvalidRequest(f"tail must not be negative, got {tail}")


def _check_log_query(
    tail: int | None, since: float | None, stdout: bool, stderr: bool
) -> float | None:
    """Validate stream_logs arguments; return ``since`` as the engine wants it (None: all)."""
    _check_tail(tail)
    if not (stdout or stderr):
        raise InvalidRequest("stream_logs needs stdout or stderr (or both)")
    if since is not None and since < 0:
        raise InvalidRequest(f"since must not be negative, got {since}")
    return float(since) if since else None


def _last_lines(data: bytes, tail: int | None) -> bytes:
    if tail is None:
        return data
    lines = data.splitlines(keepends=True)
    return b"".join(lines[len(lines) - tail :]) if tail else b""


def _split_image(image: str) -> tuple[str, str]:
    """``repo[:tag|@digest]`` -> (repo, tag-or-digest), tag ``latest`` when none is given."""
    if not isinstance(image, str) or not image or any(c.isspace() for c in image):
        raise InvalidRequest(f"invalid image reference {image!r}")
    # As docker.utils.parse_repository_tag: a ':' after the last '/' starts the tag.
    repo, at, digest = image.rpartition("@")
    if at:
        tag = digest
    else:
        repo, colon, tag = image.rpartition(":")
        if not colon or "/" in tag:
            repo, tag = image, ""
    if not repo:
        raise InvalidRequest(f"invalid image reference {image!r}")
    return repo, tag or "latest"


def _normalize_image(image: str) -> str:
    repo, tag = _split_image(image)
    return f"{repo}@{tag}" if ":" in tag else f"{repo}:{tag}"


def _task_labels(
    given: Mapping[str, str], fixed: Mapping[str, str], task_id: str
) -> dict[str, str]:
    # The runtime's own labels win: list() and lookups depend on them.
    return {**given, **fixed, TASK_LABEL: task_id}


def _parse_port_key(key: str | int) -> tuple[int, str]:
    """``"8080/tcp"`` -> (8080, "tcp"); a bare number is tcp."""
    port, _, proto = str(key).partition("/")
    return int(port), (proto or "tcp").lower()
