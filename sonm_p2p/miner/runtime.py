"""Container runtimes: how a miner runs a task as a container.

:class:`ContainerRuntime` is the interface the miner codes against. :class:`DockerRuntime`
(``docker_runtime.py``) drives a real Docker engine through the ``docker`` SDK;
:class:`MemoryRuntime` (``memory_runtime.py``) is an in-memory fake with the same contract, for
unit tests of code built on top of a runtime. This module holds what both share: the value types,
the protocol and pure helpers; it imports neither implementation (nor the ``docker`` SDK) until
one of the two names is first used, so the implementation modules can import it freely.

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
import math
import re
import threading
from collections.abc import Callable, Iterator, Mapping
from contextlib import suppress
from dataclasses import dataclass, field
from datetime import datetime
from typing import TYPE_CHECKING, Any, Protocol, runtime_checkable

from sonm_p2p.errors import ImageNotFound, InvalidRequest, RuntimeFailure, SonmError

if TYPE_CHECKING:
    from types import TracebackType

    from sonm_p2p.miner.docker_runtime import DockerRuntime
    from sonm_p2p.miner.memory_runtime import MemoryRuntime

__all__ = [
    "RESTART_POLICIES",
    "TASK_LABEL",
    "WATCH_ACTIONS",
    "ContainerRuntime",
    "ContainerState",
    "DockerRuntime",
    "LogStream",
    "MemoryRuntime",
    "PublishedPort",
    "PullProgress",
    "RunSpec",
    "RuntimeInfo",
    "TaskUsage",
]

#: Label carrying the task ID on every container a runtime creates.
TASK_LABEL = "sonm.task"
#: Values of :attr:`RunSpec.restart`; ``"on-failure"`` also takes a retry limit: ``on-failure:3``.
RESTART_POLICIES = ("", "no", "always", "unless-stopped", "on-failure")
#: What :meth:`ContainerRuntime.watch` reports.
WATCH_ACTIONS = frozenset({"start", "die", "destroy", "oom"})

# Docker's rule for container names, which embed the task ID.
_TASK_ID = re.compile(r"[a-zA-Z0-9][a-zA-Z0-9_.-]*\Z")
_RESTART = re.compile(r"(no|always|unless-stopped|on-failure)(?::([0-9]{1,9}))?\Z")
_NO_COMMAND = "image {} has neither ENTRYPOINT nor CMD (nor a command given): nothing to run"
# Pull-error fragments that mean the registry could not be reached at all.
_UNREACHABLE = re.compile(
    "connection refused|no such host|i/o timeout|handshake timeout|network is unreachable"
    "|no route to host|connection reset|server gave http response to https client|x509"
    "|request canceled|context deadline exceeded"
)


@dataclass(frozen=True)
class PublishedPort:
    """A container port published on the host."""

    container_port: int
    protocol: str  # "tcp" or "udp"
    host_ip: str
    host_port: int


@dataclass(frozen=True)
class RunSpec:
    """What to run. Limits of 0 mean "no limit"."""

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


@dataclass(frozen=True)
class RuntimeInfo:
    """What a runtime offers, for the miner's handshake."""

    cpu_cores: int
    memory_bytes: int
    os: str  # "linux"
    arch: str  # Go naming, as in image platforms: "amd64", "arm64"
    version: str  # "docker 20.10.24"


@dataclass(frozen=True)
class PullProgress:
    """Where a pull stands, summed over the image's layers.

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
    status: str


@dataclass(frozen=True)
class TaskUsage:
    """A task's resource use now, and its limits (0: none). A task not running uses 0."""

    task_id: str
    #: Percent of one core: 250.0 is two and a half cores busy.
    cpu_percent: float
    #: Memory in use, page cache excluded (as ``docker stats`` counts it).
    memory_bytes: int
    memory_limit: int
    cpus_limit: float


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
    calls back on their lifecycle events until the returned function is called.
    Unknown task: TaskNotFound.
    """

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
    def stream_logs(
        self,
        task_id: str,
        *,
        follow: bool = False,
        tail: int | None = None,
        since: float | None = None,
        stdout: bool = True,
        stderr: bool = True,
    ) -> LogStream: ...
    def watch(self, callback: Callable[[str, str], None]) -> Callable[[], None]: ...
    def usage(self, task_id: str) -> TaskUsage: ...
    def limits(self, task_id: str) -> tuple[float, int]: ...


# --- helpers shared by both runtimes -------------------------------------------------------------


def _restart_policy(restart: str) -> dict[str, Any] | None:
    """``RunSpec.restart`` -> Docker's ``RestartPolicy`` (None for the engine's default).

    Raises:
        InvalidRequest: not one of :data:`RESTART_POLICIES` (a count only with on-failure).
    """
    if restart == "":
        return None
    found = _RESTART.match(restart) if isinstance(restart, str) else None
    if found is None or (found[2] is not None and found[1] != "on-failure"):
        raise InvalidRequest(
            f"restart policy {restart!r} is not one of: no, always, unless-stopped, "
            "on-failure, on-failure:N"
        )
    return {"Name": found[1], "MaximumRetryCount": int(found[2] or 0)}


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


def _parse_time(value: str | None) -> float | None:
    """Docker's RFC 3339 time (nanoseconds, ``Z``) -> unix seconds; None for its zero time."""
    if not value or value.startswith("0001-01-01"):
        return None
    try:
        return datetime.fromisoformat(value).timestamp()  # 3.11+ takes nanoseconds and "Z"
    except ValueError:
        return None


def _pull_failure(image: str, message: str) -> SonmError:
    """Classify a failed pull by the daemon's message."""
    low = message.lower()
    if "invalid reference format" in low:
        return InvalidRequest(f"invalid image reference {image!r}: {message}")
    if re.search("pull access denied|access to the resource is denied|unauthorized", low):
        why = "pull access denied (the repository does not exist or needs a login)"
    elif "manifest unknown" in low or "not found" in low:
        why = "no such repository or tag in the registry (manifest unknown)"
    elif _UNREACHABLE.search(low):
        why = "the registry is unreachable"
    else:
        return RuntimeFailure(f"pulling {image} failed: {message}")
    return ImageNotFound(
        f"image {image} is not present locally and cannot be pulled: {why}: {message}"
    )


# --- decoding the Docker engine's payloads (pure: DockerRuntime does the calls) ------------------

#: Pull progress is reported at most this often (seconds), plus a final report.
_PROGRESS_INTERVAL = 0.1


def _docker_state(attrs: Mapping[str, Any]) -> ContainerState:
    state = attrs.get("State") or {}
    config = attrs.get("Config") or {}
    labels = dict(config.get("Labels") or {})
    status = str(state.get("Status") or "unknown")
    ports: builtins.list[PublishedPort] = []
    for key, bindings in ((attrs.get("NetworkSettings") or {}).get("Ports") or {}).items():
        port, proto = _parse_port_key(key)
        for binding in bindings or ():
            if binding.get("HostPort"):
                ports.append(
                    PublishedPort(port, proto, binding.get("HostIp", ""), int(binding["HostPort"]))
                )
    task_id = labels.get(TASK_LABEL) or str(attrs.get("Name", "")).lstrip("/").removeprefix("sonm-")
    return ContainerState(
        task_id=task_id,
        container_id=str(attrs.get("Id", "")),
        image=str(config.get("Image", "")),
        status=status,
        exit_code=int(state.get("ExitCode", 0)) if status in ("exited", "dead") else None,
        ports=tuple(sorted(ports, key=lambda p: (p.container_port, p.protocol, p.host_ip))),
        labels=labels,
        error=str(state.get("Error") or ""),
        started_at=_parse_time(state.get("StartedAt")),
        finished_at=_parse_time(state.get("FinishedAt")),
    )


def _host_limits(attrs: Mapping[str, Any]) -> tuple[float, int]:
    """(CPU cores, memory bytes) a container is limited to, from its HostConfig; 0: none."""
    host = attrs.get("HostConfig") or {}
    cpus = (host.get("NanoCpus") or 0) / 1e9
    quota, period = host.get("CpuQuota") or 0, host.get("CpuPeriod") or 0
    if not cpus and quota > 0 and period > 0:
        cpus = quota / period
    return float(cpus), int(host.get("Memory") or 0)


def _cpu_percent(stats: Mapping[str, Any]) -> float:
    """CPU use between the two samples of a ``stats(stream=False)`` answer, in % of one core
    (as ``docker stats`` computes it)."""
    cpu, pre = stats.get("cpu_stats") or {}, stats.get("precpu_stats") or {}
    if not pre.get("system_cpu_usage"):
        return 0.0  # no first sample
    total = (cpu.get("cpu_usage") or {}).get("total_usage", 0)
    cpu_delta = total - (pre.get("cpu_usage") or {}).get("total_usage", 0)
    system_delta = cpu.get("system_cpu_usage", 0) - pre["system_cpu_usage"]
    cores = cpu.get("online_cpus") or len((cpu.get("cpu_usage") or {}).get("percpu_usage") or ())
    if cpu_delta <= 0 or system_delta <= 0:
        return 0.0
    return cpu_delta / system_delta * (cores or 1) * 100.0


def _memory_used(stats: Mapping[str, Any]) -> int:
    """Memory in use without the page cache, as ``docker stats`` counts it (cgroup v1 and v2)."""
    memory = stats.get("memory_stats") or {}
    usage = int(memory.get("usage") or 0)
    detail = memory.get("stats") or {}
    cache = detail.get("total_inactive_file", detail.get("inactive_file", 0))
    return usage - cache if 0 < cache < usage else usage


@dataclass
class _Layer:
    current: int = 0  # bytes downloaded
    total: int = 0  # compressed size, once the engine said
    downloaded: bool = False
    done: bool = False


class _PullTally:
    """Sums the engine's per-layer pull messages into :class:`PullProgress`, throttled.

    Docker reports each layer by ID: "Pulling fs layer", "Waiting", "Downloading" (with
    ``progressDetail`` current/total), "Verifying Checksum", "Download complete", "Extracting"
    (current/total again), then "Pull complete"; or "Already exists". Other messages ("Pulling
    from ...", "Digest: ...", "Status: ...") only update the status line.
    """

    def __init__(self, image: str, *, interval: float = _PROGRESS_INTERVAL) -> None:
        self.image = image
        self.interval = interval
        self.status = ""
        self._layers: dict[str, _Layer] = {}
        self._last_report = -math.inf

    def __repr__(self) -> str:
        return f"<_PullTally {self.snapshot()}>"

    def feed(self, message: Mapping[str, Any], now: float) -> PullProgress | None:
        """Take one message; return the progress to report if one is due at ``now``."""
        status = str(message.get("status") or "")
        if not status:
            return None
        self.status = status
        layer_id = message.get("id")
        if layer_id and not status.startswith("Pulling from"):
            layer = self._layers.setdefault(str(layer_id), _Layer())
            detail = message.get("progressDetail") or {}
            if status in ("Downloading", "Extracting") and detail.get("total"):
                layer.total = max(layer.total, int(detail["total"]))
                if status == "Downloading":
                    layer.current = int(detail.get("current") or 0)
            if status in ("Download complete", "Extracting", "Pull complete", "Already exists"):
                layer.downloaded = True
            if status in ("Pull complete", "Already exists"):
                layer.done = True
        if now - self._last_report < self.interval:
            return None
        self._last_report = now
        return self.snapshot()

    def snapshot(self) -> PullProgress:
        layers = self._layers.values()
        return PullProgress(
            image=self.image,
            current_bytes=sum(x.total if x.downloaded else min(x.current, x.total) for x in layers),
            total_bytes=sum(x.total for x in layers),
            layers_done=sum(x.done for x in layers),
            layers_total=len(self._layers),
            status=self.status,
        )

    def final(self) -> PullProgress:
        """The progress once the pull succeeded: every layer is present."""
        for layer in self._layers.values():
            layer.downloaded = layer.done = True
        return self.snapshot()


# The implementations import this module, so it imports them only on first use (PEP 562): either
# side may then be imported first without a cycle.
_IMPLEMENTATIONS = {
    "DockerRuntime": "sonm_p2p.miner.docker_runtime",
    "MemoryRuntime": "sonm_p2p.miner.memory_runtime",
}


def __getattr__(name: str) -> Any:
    module = _IMPLEMENTATIONS.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    import importlib

    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value


def __dir__() -> builtins.list[str]:
    return sorted({*globals(), *_IMPLEMENTATIONS})
