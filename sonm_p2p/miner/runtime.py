"""Container runtimes: how a miner runs a task as a container.

:class:`ContainerRuntime` is the interface the miner codes against. :class:`DockerRuntime` drives a
real Docker engine through the ``docker`` SDK; :class:`MemoryRuntime` is an in-memory fake with the
same contract, for unit tests of code built on top of a runtime.

Every method is blocking (the Docker one does HTTP calls to the engine); from async code call them
in a worker thread. Every error is one of :mod:`sonm_p2p.errors`; no ``docker`` or ``requests``
exception escapes: any method may raise ``RuntimeFailure`` (the engine failed or is unreachable)
besides the errors it documents.

A task's container is named ``sonm-<task_id>`` and labelled ``sonm.task=<task_id>`` plus the
runtime's fixed labels (e.g. ``sonm.miner``), which scope :meth:`ContainerRuntime.list` and every
lookup by task ID, so several miners on one engine never see each other's containers.
"""

from __future__ import annotations

import builtins
import itertools
import math
import re
import threading
import time
from collections.abc import Callable, Iterable, Iterator, Mapping
from contextlib import contextmanager, suppress
from dataclasses import dataclass, field, replace
from datetime import datetime
from typing import Any, Protocol, runtime_checkable

import docker
import docker.errors
import requests.exceptions
from docker.utils import parse_repository_tag

from sonm_p2p.errors import (
    ImageNotFound,
    ImageNotRunnable,
    InvalidRequest,
    Refused,
    RuntimeFailure,
    SonmError,
    TaskNotFound,
    Timeout,
)

__all__ = [
    "TASK_LABEL",
    "ContainerRuntime",
    "ContainerState",
    "DockerRuntime",
    "MemoryRuntime",
    "PublishedPort",
    "RunSpec",
    "RuntimeInfo",
]

#: Label carrying the task ID on every container a runtime creates.
TASK_LABEL = "sonm.task"

# Docker's rule for container names, which embed the task ID.
_TASK_ID = re.compile(r"[a-zA-Z0-9][a-zA-Z0-9_.-]*\Z")
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


@runtime_checkable
class ContainerRuntime(Protocol):
    """Runs tasks as containers; :class:`DockerRuntime` documents each method in full.

    ``ensure_image`` makes an image local (ImageNotFound, Timeout); ``run`` starts a task from a
    local image with its EXPOSEd ports published (ImageNotFound, ImageNotRunnable, Refused);
    ``stop`` ends and removes it, returning its final state; ``remove`` force-removes quietly;
    ``status``/``logs`` read it; ``list`` shows this runtime's tasks. Unknown task: TaskNotFound.
    """

    def info(self) -> RuntimeInfo: ...
    def ensure_image(self, image: str, *, timeout: float | None = None) -> None: ...
    def run(self, task_id: str, spec: RunSpec, *, labels: Mapping[str, str]) -> ContainerState: ...
    def stop(self, task_id: str, *, grace: float = 10.0) -> ContainerState: ...
    def remove(self, task_id: str) -> None: ...
    def status(self, task_id: str) -> ContainerState: ...
    def list(self) -> builtins.list[ContainerState]: ...
    def logs(self, task_id: str, *, tail: int | None = None) -> bytes: ...


# --- helpers shared by both runtimes -------------------------------------------------------------


def _check_run(task_id: str, spec: RunSpec) -> None:
    if not isinstance(task_id, str) or not _TASK_ID.match(task_id):
        raise InvalidRequest(f"task ID {task_id!r} is not usable in a container name")
    if spec.cpus < 0 or spec.memory_bytes < 0:
        raise InvalidRequest(
            f"limits must not be negative: cpus={spec.cpus}, memory_bytes={spec.memory_bytes}"
        )


def _check_tail(tail: int | None) -> None:
    if tail is not None and tail < 0:
        raise InvalidRequest(f"tail must not be negative, got {tail}")


def _split_image(image: str) -> tuple[str, str]:
    """``repo[:tag|@digest]`` -> (repo, tag-or-digest), tag ``latest`` when none is given."""
    if not isinstance(image, str) or not image or any(c.isspace() for c in image):
        raise InvalidRequest(f"invalid image reference {image!r}")
    repo, tag = parse_repository_tag(image)
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


def _explain(exc: BaseException) -> str:
    text = getattr(exc, "explanation", None) or str(exc)
    return text.decode(errors="replace") if isinstance(text, bytes) else str(text)


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


# --- Docker --------------------------------------------------------------------------------------


@contextmanager
def _engine_errors(what: str, *, task_id: str | None = None) -> Iterator[None]:
    """Turn whatever the docker SDK raises into a :class:`SonmError` saying ``what`` failed;
    a missing container is ``TaskNotFound`` if ``task_id`` is given."""
    try:
        yield
    except docker.errors.NotFound as exc:
        if task_id is None:
            raise RuntimeFailure(f"{what}: {_explain(exc)}") from exc
        raise TaskNotFound(f"{what}: task {task_id} is gone") from exc
    except docker.errors.APIError as exc:
        raise RuntimeFailure(f"{what}: docker engine error: {_explain(exc)}") from exc
    except docker.errors.DockerException as exc:
        raise RuntimeFailure(f"{what}: {_explain(exc)}") from exc
    except requests.exceptions.Timeout as exc:
        raise Timeout(f"{what}: the docker engine did not answer in time") from exc
    except requests.exceptions.RequestException as exc:
        raise RuntimeFailure(f"{what}: docker engine unreachable: {exc}") from exc


class DockerRuntime:
    """:class:`ContainerRuntime` on a Docker engine.

    Args:
        publish_ip: host address EXPOSEd ports are published on; defaults to all interfaces.
        labels: fixed labels put on every container this runtime creates; they also scope
            :meth:`list` and every lookup by task ID. Defaults to none (then every ``sonm.task``
            container on the engine is this runtime's).
        pids_limit: most processes a container may hold; defaults to 1024.
        client: the engine to use; defaults to ``docker.from_env()``.

    Raises:
        RuntimeFailure: no ``client`` given and no engine answers.
    """

    def __init__(
        self,
        *,
        publish_ip: str = "0.0.0.0",
        labels: Mapping[str, str] | None = None,
        pids_limit: int = 1024,
        client: docker.DockerClient | None = None,
    ) -> None:
        if client is None:
            with _engine_errors("connecting to the docker engine"):
                client = docker.from_env()
        self._client = client
        self.publish_ip = publish_ip
        self.labels: Mapping[str, str] = dict(labels or {})
        self.pids_limit = pids_limit

    def __repr__(self) -> str:
        labels = ",".join(f"{k}={v}" for k, v in self.labels.items())
        url = self._client.api.base_url
        return f"<DockerRuntime {url} publish_ip={self.publish_ip} labels={{{labels}}}>"

    def info(self) -> RuntimeInfo:
        """The engine's cores, memory, OS/arch and version."""
        with _engine_errors("reading docker engine info"):
            info = self._client.api.info()
            version = self._client.api.version()
        return RuntimeInfo(
            cpu_cores=int(info.get("NCPU", 0)),
            memory_bytes=int(info.get("MemTotal", 0)),
            os=str(version.get("Os") or info.get("OSType", "")),
            arch=str(version.get("Arch") or info.get("Architecture", "")),
            version=f"docker {version.get('Version') or info.get('ServerVersion', '?')}",
        )

    def ensure_image(self, image: str, *, timeout: float | None = None) -> None:
        """Make ``image`` present locally: use it if it is, else pull it (tag ``latest`` if none).

        The pull runs in a daemon thread; on timeout this raises at once and abandons the pull:
        the thread stops at the engine's next message (it never delays process exit), and the
        engine may still finish the download in the background.

        Raises:
            ImageNotFound: the repository or tag does not exist, pull access is denied, or the
                registry is unreachable; the message says which.
            InvalidRequest: ``image`` is not a valid reference.
            Timeout: the pull took longer than ``timeout`` seconds (None: wait as long as it takes).
        """
        repo, tag = _split_image(image)
        if self._image_config(image) is not None:
            return  # Docker resolves a missing tag to "latest" too
        abandoned = threading.Event()
        failure: builtins.list[BaseException] = []

        def pull() -> None:
            try:
                self._pull(image, repo, tag, abandoned)
            except Exception as exc:  # handed to the waiting caller
                failure.append(exc)

        thread = threading.Thread(target=pull, name=f"sonm-pull {image}", daemon=True)
        thread.start()
        thread.join(None if timeout is None else max(timeout, 0.0))
        if thread.is_alive():
            abandoned.set()
            raise Timeout(f"pulling {image} took longer than {timeout:g} s; abandoned")
        if failure:
            raise failure[0]

    def _pull(self, image: str, repo: str, tag: str, abandoned: threading.Event) -> None:
        with _engine_errors(f"pulling {image}"):
            try:
                stream = self._client.api.pull(repo, tag=tag, stream=True, decode=True)
                try:
                    for message in stream:
                        if abandoned.is_set():
                            return
                        if isinstance(message, dict) and message.get("error"):
                            raise _pull_failure(image, str(message["error"]))
                finally:
                    stream.close()
            except docker.errors.APIError as exc:
                raise _pull_failure(image, _explain(exc)) from exc

    def _image_config(self, image: str) -> dict[str, Any] | None:
        """The local image's ``Config``, or None if the image is not present."""
        with _engine_errors(f"inspecting image {image}"):
            try:
                attrs = self._client.api.inspect_image(image)
            except docker.errors.NotFound:
                return None
            except docker.errors.APIError as exc:
                # The engine answers 400/500 for malformed references.
                if "invalid reference format" in _explain(exc):
                    raise InvalidRequest(f"invalid image reference {image!r}") from exc
                raise
        return attrs.get("Config") or {}

    def run(self, task_id: str, spec: RunSpec, *, labels: Mapping[str, str]) -> ContainerState:
        """Create and start the task's container ``sonm-<task_id>``; return its running state.

        The image must already be present (call :meth:`ensure_image` first). Every EXPOSEd port
        (tcp and udp) is published on ``publish_ip`` at a random host port; the returned state
        carries the real ports. Limits: ``spec.cpus``, ``spec.memory_bytes``, ``pids_limit``.
        Labels: ``labels``, then this runtime's fixed labels and ``sonm.task=<task_id>`` on top.
        If starting fails the container is removed before raising.

        Raises:
            InvalidRequest: a task ID unusable in a container name, or negative limits.
            ImageNotFound: the image is not present locally.
            ImageNotRunnable: the image has neither ENTRYPOINT nor CMD and ``spec.command`` is
                empty, or its command cannot be executed.
            Refused: a container for this task ID already exists.
        """
        _check_run(task_id, spec)
        config = self._image_config(spec.image)
        if config is None:
            raise ImageNotFound(f"image {spec.image} is not present locally (ensure_image first)")
        if not spec.command and not config.get("Entrypoint") and not config.get("Cmd"):
            raise ImageNotRunnable(_NO_COMMAND.format(spec.image))
        ports = {key: (self.publish_ip,) for key in config.get("ExposedPorts") or {}}
        name = f"sonm-{task_id}"
        with _engine_errors(f"creating container {name}"):
            try:
                container = self._client.containers.create(
                    spec.image,
                    command=list(spec.command) or None,
                    name=name,
                    environment=dict(spec.env),
                    labels=_task_labels(labels, self.labels, task_id),
                    ports=ports,
                    nano_cpus=int(spec.cpus * 1e9) or None,
                    mem_limit=spec.memory_bytes or None,
                    pids_limit=self.pids_limit,
                )
            except docker.errors.ImageNotFound as exc:
                raise ImageNotFound(f"image {spec.image} is not present locally") from exc
            except docker.errors.APIError as exc:
                if exc.status_code == 409:
                    raise Refused(f"task {task_id}: {_explain(exc)}") from exc
                raise
        try:
            with _engine_errors(f"starting container {name}"):
                container.start()
                container.reload()
        except BaseException as exc:
            with suppress(SonmError):  # best effort: already raising
                self._remove_container(container)
            why = _explain(exc.__cause__) if isinstance(exc, RuntimeFailure) else ""
            if "exec" in why:  # 'exec: "x": executable file not found', 'exec format error'
                raise ImageNotRunnable(
                    f"image {spec.image}: cannot run its command: {why}"
                ) from exc
            raise
        return _docker_state(container.attrs)

    def stop(self, task_id: str, *, grace: float = 10.0) -> ContainerState:
        """Stop the task (SIGTERM, SIGKILL after ``grace`` seconds), remove it, return its final
        state (with the exit code). Its logs are gone afterwards: read them first.

        Raises:
            TaskNotFound: this runtime has no container for ``task_id``.
        """
        container = self._find(task_id)
        with _engine_errors("stopping", task_id=task_id):
            container.stop(timeout=max(0, math.ceil(grace)))
            container.reload()
        self._remove_container(container)
        return _docker_state(container.attrs)

    def remove(self, task_id: str) -> None:
        """Force-remove the task's container (killing it if running); no error if there is none."""
        for container in self._containers(task_id):
            self._remove_container(container)

    def _remove_container(self, container: Any) -> None:
        with _engine_errors(f"removing container {container.name}"):
            try:
                container.remove(force=True, v=True)
            except docker.errors.NotFound:
                pass
            except docker.errors.APIError as exc:
                if exc.status_code != 409 or "in progress" not in _explain(exc):
                    raise

    def status(self, task_id: str) -> ContainerState:
        """The task's current state.

        Raises:
            TaskNotFound: this runtime has no container for ``task_id``.
        """
        return _docker_state(self._find(task_id).attrs)

    def list(self) -> builtins.list[ContainerState]:
        """Every container carrying this runtime's labels (running or not), by task ID."""
        states = [_docker_state(c.attrs) for c in self._containers(None)]
        return sorted(states, key=lambda s: s.task_id)

    def logs(self, task_id: str, *, tail: int | None = None) -> bytes:
        """The task's stdout and stderr, interleaved; only the last ``tail`` lines if given.

        Raises:
            TaskNotFound: this runtime has no container for ``task_id``.
            InvalidRequest: a negative ``tail``.
        """
        _check_tail(tail)
        container = self._find(task_id)
        with _engine_errors("reading logs", task_id=task_id):
            out = container.logs(stdout=True, stderr=True, tail="all" if tail is None else tail)
        return bytes(out)

    def _containers(self, task_id: str | None) -> builtins.list[Any]:
        filters = [f"{k}={v}" for k, v in self.labels.items()]
        filters.append(TASK_LABEL if task_id is None else f"{TASK_LABEL}={task_id}")
        with _engine_errors("listing containers"):
            return self._client.containers.list(
                all=True, filters={"label": filters}, ignore_removed=True
            )

    def _find(self, task_id: str) -> Any:
        found = self._containers(task_id)
        if not found:
            raise TaskNotFound(f"no task {task_id} on this runtime")
        return found[0]


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


# --- in memory -----------------------------------------------------------------------------------

#: Exit code :meth:`MemoryRuntime.stop` reports for a running task (128 + SIGTERM).
_SIGTERM_EXIT = 143


@dataclass
class _FakeContainer:
    state: ContainerState
    spec: RunSpec
    output: bytearray = field(default_factory=bytearray)


class MemoryRuntime:
    """An in-memory :class:`ContainerRuntime` with the same contract as :class:`DockerRuntime`.

    Args:
        images: the fake registry: image reference -> (EXPOSEd ports such as ``"8080/tcp"``,
            whether the image has an ENTRYPOINT or CMD). Images are pulled (made local) by
            :meth:`ensure_image`, and :meth:`run` refuses images not pulled yet, as Docker does.
        pull_errors: image reference -> the error :meth:`ensure_image` raises for it (to
            simulate a ``Timeout`` or ``RuntimeFailure``).
        publish_ip: host address reported in published ports.
        labels: fixed labels put on every container.
        info: what :meth:`info` returns; defaults to 4 cores, 8 GiB, linux/amd64.
        clock: unix time source for ``started_at``/``finished_at``.
        first_host_port: fake host ports are handed out counting up from here.

    Thread-safe. Besides the contract it has :meth:`exit`, :meth:`write_output`,
    :meth:`spec_of` and :attr:`pulled` (images pulled so far, in order) for tests.
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
        self._lock = threading.Lock()

    def __repr__(self) -> str:
        with self._lock:
            running = sum(c.state.status == "running" for c in self._containers.values())
            tasks = len(self._containers)
        return f"<MemoryRuntime local={sorted(self._local)} {tasks=} {running=}>"

    def info(self) -> RuntimeInfo:
        """The ``info`` given to the constructor."""
        return self._info

    def ensure_image(self, image: str, *, timeout: float | None = None) -> None:
        """Make a registered image local at once (recorded in :attr:`pulled`). Raises its
        ``pull_errors`` entry if any, else ImageNotFound for an unregistered image."""
        ref = _normalize_image(image)
        with self._lock:
            if ref in self._local:
                return
            if ref in self._pull_errors:
                raise self._pull_errors[ref]
            if ref not in self._registry:
                raise ImageNotFound(
                    f"image {image} is not present locally and cannot be pulled: "
                    "no such repository or tag in the registry (manifest unknown)"
                )
            self._local.add(ref)
            self.pulled.append(image)

    def run(self, task_id: str, spec: RunSpec, *, labels: Mapping[str, str]) -> ContainerState:
        """As :meth:`DockerRuntime.run`; the task is "running" until :meth:`exit` or
        :meth:`stop`. Raises the same errors."""
        _check_run(task_id, spec)
        ref = _normalize_image(spec.image)
        with self._lock:
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
            )
            self._containers[task_id] = _FakeContainer(state, spec)
            return state

    def exit(self, task_id: str, code: int) -> ContainerState:
        """Simulate the task exiting on its own with ``code`` (no-op if not running); TaskNotFound
        if no such task."""
        with self._lock:
            return self._finish(self._get(task_id), code)

    def write_output(self, task_id: str, data: bytes) -> None:
        """Append ``data`` to what :meth:`logs` returns. Raises TaskNotFound if no such task."""
        with self._lock:
            self._get(task_id).output += data

    def spec_of(self, task_id: str) -> RunSpec:
        """The spec the task was run with. Raises TaskNotFound if no such task."""
        with self._lock:
            return self._get(task_id).spec

    def stop(self, task_id: str, *, grace: float = 10.0) -> ContainerState:
        """As :meth:`DockerRuntime.stop`; a running task exits with 143 (SIGTERM)."""
        with self._lock:
            state = self._finish(self._get(task_id), _SIGTERM_EXIT)
            del self._containers[task_id]
            return state

    def remove(self, task_id: str) -> None:
        """Forget the task; no error if there is none."""
        with self._lock:
            self._containers.pop(task_id, None)

    def status(self, task_id: str) -> ContainerState:
        """The task's current state. Raises TaskNotFound if no such task."""
        with self._lock:
            return self._get(task_id).state

    def list(self) -> builtins.list[ContainerState]:
        """Every task's state, by task ID."""
        with self._lock:
            return [self._containers[t].state for t in sorted(self._containers)]

    def logs(self, task_id: str, *, tail: int | None = None) -> bytes:
        """What :meth:`write_output` wrote, the last ``tail`` lines if given. Raises as
        :meth:`DockerRuntime.logs`."""
        _check_tail(tail)
        with self._lock:
            out = bytes(self._get(task_id).output)
        if tail is None:
            return out
        lines = out.splitlines(keepends=True)
        return b"".join(lines[len(lines) - tail :]) if tail else b""

    def _finish(self, fake: _FakeContainer, code: int) -> ContainerState:
        if fake.state.status == "running":
            now = self._clock()
            fake.state = replace(fake.state, status="exited", exit_code=code, finished_at=now)
        return fake.state

    def _get(self, task_id: str) -> _FakeContainer:
        try:
            return self._containers[task_id]
        except KeyError:
            raise TaskNotFound(f"no task {task_id} on this runtime") from None
