""":class:`DockerRuntime`: the :class:`~sonm_p2p.miner.runtime.ContainerRuntime` on a Docker engine.

The class only makes the calls; the engine's payloads (container inspection, pull messages,
stats) are decoded by pure helpers in :mod:`sonm_p2p.miner._docker_payloads`, tested without an
engine. Its background work (pulls, the events watcher) belongs to a
:class:`~sonm_p2p.supervisor.Supervisor` of its own, joined by :meth:`DockerRuntime.close`.
"""

from __future__ import annotations

import builtins
import hashlib
import logging
import math
import threading
import time
from collections.abc import Callable, Iterator, Mapping
from concurrent import futures
from contextlib import suppress
from typing import Any

import docker
import docker.errors

from sonm_p2p.errors import (
    ConfigError,
    ImageNotFound,
    ImageNotRunnable,
    InvalidRequest,
    Refused,
    RuntimeFailure,
    SonmError,
    TaskNotFound,
    Timeout,
)
from sonm_p2p.miner._docker_events import _EventWatch
from sonm_p2p.miner._docker_payloads import (
    _cpu_percent,
    _docker_state,
    _engine_errors,
    _explain,
    _host_limits,
    _memory_used,
    _pull_failure,
    _PullTally,
)
from sonm_p2p.miner.runtime import (
    _NO_COMMAND,
    TASK_LABEL,
    WATCH_ACTIONS,
    ContainerState,
    LogStream,
    _check_log_query,
    _check_run,
    _check_tail,
    _restart_policy,
    _split_image,
    _task_labels,
)
from sonm_p2p.model import LogQuery, PullProgress, RunSpec, RuntimeInfo, TaskUsage
from sonm_p2p.supervisor import Supervisor

__all__ = ["TASK_CAPABILITIES", "DockerRuntime"]

log = logging.getLogger(__name__)

#: Output the engine keeps per task at most (two rotated 16 MiB files): a task that writes
#: without end costs its miner that much disk, and its kept logs that much, never more.
TASK_LOG_BYTES = 32 << 20

#: What a task keeps of root's capabilities (all others dropped): enough for ordinary images
#: (files owned by other users, dropping privileges, low ports), not NET_RAW, SYS_* or MKNOD.
TASK_CAPABILITIES = (
    "CHOWN",
    "DAC_OVERRIDE",
    "FOWNER",
    "SETUID",
    "SETGID",
    "KILL",
    "NET_BIND_SERVICE",
)


class DockerRuntime:
    """:class:`~sonm_p2p.miner.runtime.ContainerRuntime` on a Docker engine.

    Args:
        publish_ip: host address EXPOSEd ports are published on; defaults to all interfaces.
        labels: fixed labels put on every container this runtime creates; they also scope
            :meth:`list`, :meth:`watch` and every lookup by task ID. Defaults to none (then every
            ``sonm.task`` container on the engine is this runtime's).
        pids_limit: most processes a container may hold; defaults to 1024.
        client: the engine to use; defaults to ``docker.from_env()``.
        pull_workers: most pulls run at once (more wait their turn); defaults to 8.

    Its threads (pulls, event watchers) are its own, not its caller's: the runtime is used
    without a daemon too (tests, tools), and its work must end when it is closed. :meth:`close`
    stops and joins them; a daemon closes its runtime when it stops.

    Raises:
        RuntimeFailure: no ``client`` given and no engine answers.
    """

    def __init__(
        self,
        *,
        publish_ip: str = "0.0.0.0",
        labels: Mapping[str, str] | None = None,
        pids_limit: int = 1024,
        runtime_class: str = "",
        client: docker.DockerClient | None = None,
        pull_workers: int = 8,
    ) -> None:
        if client is None:
            with _engine_errors("connecting to the docker engine"):
                client = docker.from_env()
        self._client = client
        self.publish_ip = publish_ip
        self.labels: Mapping[str, str] = dict(labels or {})
        self.pids_limit = pids_limit
        self.runtime_class = runtime_class
        self._network: str | None = None  # the tasks' network, once made (see _task_network)
        self._supervisor = Supervisor("docker-runtime", workers=pull_workers)
        self._lock = threading.Lock()
        self._pulls: set[threading.Event] = set()  # the "abandoned" flag of each pull running
        self._watches: set[_EventWatch] = set()

    def __repr__(self) -> str:
        labels = ",".join(f"{k}={v}" for k, v in self.labels.items())
        url = self._client.api.base_url
        return f"<DockerRuntime {url} publish_ip={self.publish_ip} labels={{{labels}}}>"

    def close(self) -> None:
        """Stop every watch, abandon pulls in progress and join the threads (idempotent).

        Containers are left running: a restarted miner adopts them; the tasks' network goes
        only when no container of this runtime is left on it. A pull abandoned here ends
        at the engine's next message, so this may wait that long (a stalled registry: until the
        engine gives up on it; :class:`Supervisor` logs a thread that outlives its timeout).
        """
        with self._lock:
            watches, self._watches = list(self._watches), set()
            for abandoned in self._pulls:
                abandoned.set()
        for watch in watches:
            watch.close()
        self._supervisor.close()
        if self._network:
            try:
                if not self._containers(None):
                    self._client.networks.get(self._network).remove()
            except (SonmError, docker.errors.DockerException) as exc:
                log.debug("leaving network %s: %s", self._network, exc)

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

    def ensure_image(
        self,
        image: str,
        *,
        timeout: float | None = None,
        progress: Callable[[PullProgress], None] | None = None,
    ) -> None:
        """Make ``image`` present locally: use it if it is, else pull it (tag ``latest`` if none).

        The pull runs on this runtime's bounded worker pool; on timeout this raises at once and
        abandons the pull: its worker stops at the engine's next message, and the engine may
        still finish the download in the background.

        ``progress``, if given, is called from the pull's worker with the progress summed over the
        layers (see :class:`~sonm_p2p.model.PullProgress`), at most every 0.1 s, then
        once more when the pull succeeded, with ``layers_done == layers_total``. It is not
        called when the image is local already, nor after this method raised (but for one call
        that may race with a Timeout). An exception it raises aborts the pull and is raised
        here.

        Raises:
            ImageNotFound: the repository or tag does not exist, pull access is denied, or the
                registry is unreachable; the message says which.
            InvalidRequest: ``image`` is not a valid reference.
            Timeout: the pull took longer than ``timeout`` seconds (None: wait as long as it takes).
            RuntimeFailure: the runtime is closed.
        """
        repo, tag = _split_image(image)
        if self._image_config(image) is not None:
            return  # Docker resolves a missing tag to "latest" too
        abandoned = threading.Event()
        with self._lock:
            self._pulls.add(abandoned)
        try:
            try:
                pull = self._supervisor.submit(self._pull, image, repo, tag, abandoned, progress)
            except RuntimeError as exc:  # closed
                raise RuntimeFailure(f"pulling {image}: the container runtime is closed") from exc
            try:
                pull.result(None if timeout is None else max(timeout, 0.0))
            except futures.TimeoutError:
                abandoned.set()
                pull.cancel()  # if still queued behind other pulls
                why = f"pulling {image} took longer than {timeout:g} s; abandoned"
                raise Timeout(why) from None
            except futures.CancelledError as exc:  # queued when the runtime closed
                raise RuntimeFailure(f"pulling {image}: the container runtime closed") from exc
            if abandoned.is_set():  # close() cut the pull short: the image is not there
                raise RuntimeFailure(f"pulling {image}: the container runtime closed")
        finally:
            with self._lock:
                self._pulls.discard(abandoned)

    def _pull(
        self,
        image: str,
        repo: str,
        tag: str,
        abandoned: threading.Event,
        progress: Callable[[PullProgress], None] | None,
    ) -> None:
        tally = _PullTally(image)
        with _engine_errors(f"pulling {image}"):
            try:
                stream = self._client.api.pull(repo, tag=tag, stream=True, decode=True)
                try:
                    for message in stream:
                        if abandoned.is_set():
                            return
                        if not isinstance(message, dict):
                            continue
                        if message.get("error"):
                            raise _pull_failure(image, str(message["error"]))
                        update = tally.feed(message, time.monotonic())
                        if update is not None and progress is not None:
                            progress(update)
                finally:
                    stream.close()
            except docker.errors.APIError as exc:
                raise _pull_failure(image, _explain(exc)) from exc
        if progress is not None and not abandoned.is_set():
            progress(tally.final())

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

    def check_runtime_class(self) -> None:
        """Raise ConfigError unless the engine knows ``runtime_class`` (e.g. runsc)."""
        if not self.runtime_class:
            return
        with _engine_errors("asking the engine for its runtimes"):
            known = set(self._client.info().get("Runtimes") or {})
        if self.runtime_class not in known:
            raise ConfigError(
                f"the engine has no runtime {self.runtime_class!r} (it has: "
                f"{', '.join(sorted(known)) or 'none'}); register it in /etc/docker/daemon.json "
                '("runtimes": {"runsc": {"path": "/usr/bin/runsc"}}, with the "runtimeArgs" '
                "the README's Security model names for older runsc builds) and restart dockerd"
            )

    @property
    def _task_pids_limit(self) -> int:
        # A gVisor sandbox's own processes count against the limit: measured here, a runsc
        # task needs about ten times what runc does.
        return self.pids_limit * (10 if self.runtime_class == "runsc" else 1)

    @property
    def isolation(self) -> str:
        """What keeps tasks apart, in a line for the operator."""
        network = self._task_network()
        apart = (
            f"network {network}, inter-container traffic off"
            if network
            else "the engine's default bridge, shared (the tasks' own network could not be made)"
        )
        return (
            f"runtime {self.runtime_class or 'runc (default)'}; capabilities: "
            f"{', '.join(TASK_CAPABILITIES)} only; no-new-privileges; at most "
            f"{self._task_pids_limit} processes per task; {apart}"
        )

    def _task_network(self) -> str | None:
        """The bridge network this runtime's tasks join, made on first use with
        inter-container traffic off: a task reaches the outside and its published ports work,
        but no other tenant's container. None (the default bridge) if the engine refuses."""
        with self._lock:
            if self._network is not None:
                return self._network or None
            key = ",".join(f"{k}={v}" for k, v in sorted(self.labels.items()))
            name = f"sonm-tasks-{hashlib.sha256(key.encode()).hexdigest()[:12]}"
            try:
                found = self._client.networks.list(names=[name])
                if not any(n.name == name for n in found):
                    self._client.networks.create(
                        name,
                        driver="bridge",
                        labels=dict(self.labels),
                        options={"com.docker.network.bridge.enable_icc": "false"},
                    )
                self._network = name
            except docker.errors.APIError as exc:
                log.warning("tasks share the default bridge: cannot make %s: %s", name, exc)
                self._network = ""
            return self._network or None

    def run(self, task_id: str, spec: RunSpec, *, labels: Mapping[str, str]) -> ContainerState:
        """Create and start the task's container ``sonm-<task_id>``; return its running state.

        The image must already be present (call :meth:`ensure_image` first). Every EXPOSEd port
        (tcp and udp) is published on ``publish_ip`` at a random host port; the returned state
        carries the real ports. Limits: ``spec.cpus``, ``spec.memory_bytes``, ``pids_limit``;
        ``spec.restart`` becomes the container's restart policy. Labels: ``labels``, then this
        runtime's fixed labels and ``sonm.task=<task_id>`` on top. If starting fails the
        container is removed before raising.

        Raises:
            InvalidRequest: a task ID unusable in a container name, negative limits, or a
                malformed restart policy.
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
                    pids_limit=self._task_pids_limit,
                    restart_policy=_restart_policy(spec.restart),
                    # Strangers' code: no capability beyond what ordinary images need, no
                    # setuid escalation, and no path to other tenants' containers.
                    cap_drop=["ALL"],
                    cap_add=list(TASK_CAPABILITIES),
                    security_opt=["no-new-privileges"],
                    network=self._task_network(),
                    runtime=self.runtime_class or None,
                    # The engine keeps at most TASK_LOG_BYTES of output per task (the newest).
                    log_config=docker.types.LogConfig(
                        type="json-file", config={"max-size": "16m", "max-file": "2"}
                    ),
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
            # runc: 'exec: "x": executable file not found', 'exec format error'; runsc (gVisor):
            # 'creating process: failed to load /x: no such file or directory'.
            if "exec" in why or "failed to load" in why:
                raise ImageNotRunnable(
                    f"image {spec.image}: cannot run its command: {why}"
                ) from exc
            raise
        return _docker_state(container.attrs)

    def stop(self, task_id: str, *, grace: float = 10.0, remove: bool = True) -> ContainerState:
        """Stop the task (SIGTERM, SIGKILL after ``grace`` seconds) and return its final state
        (with the exit code); its restart policy no longer applies.

        With ``remove`` (the default) the container is removed too and its logs are gone: read
        them first. With ``remove=False`` the stopped container stays, so :meth:`logs` and
        :meth:`status` still work, until :meth:`remove`.

        Raises:
            TaskNotFound: this runtime has no container for ``task_id``.
        """
        container = self._find(task_id)
        with _engine_errors("stopping", task_id=task_id):
            container.stop(timeout=max(0, math.ceil(grace)))
            container.reload()
        if remove:
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

    def stream_logs(self, query: LogQuery) -> LogStream:
        """The task's output as it comes, in chunks (stdout and stderr interleaved).

        Args:
            follow: keep streaming new output; the stream ends when the container stops.
                Without it the stream ends after the output written so far.
            tail: start with only the last ``tail`` lines of the output so far.
            since: only output written at or after this unix time.
            stdout, stderr: which of the two to include.

        The stream holds a connection to the engine until it ends or is closed: close it (from
        any thread, e.g. when the reader went away; a blocked ``next()`` then ends promptly) or
        use it as a context manager. Iterating raises RuntimeFailure if the engine fails.

        Raises:
            TaskNotFound: this runtime has no container for ``task_id``.
            InvalidRequest: a negative ``tail`` or ``since``, or neither stdout nor stderr.
        """
        task_id, follow, tail, stdout, stderr = (
            query.task_id, query.follow, query.tail, query.stdout, query.stderr
        )  # fmt: skip
        since = _check_log_query(tail, query.since, stdout, stderr)
        container = self._find(task_id)
        with _engine_errors("reading logs", task_id=task_id):
            stream = container.logs(
                stream=True,
                follow=follow,
                tail="all" if tail is None else tail,
                since=since,
                stdout=stdout,
                stderr=stderr,
            )
        return LogStream(_engine_chunks(stream, task_id), stream.close, what=f"logs of {task_id}")

    def watch(self, callback: Callable[[str, str], None]) -> Callable[[], None]:
        """Call ``callback(task_id, action)`` on lifecycle events of this runtime's containers.

        ``action`` is one of "start", "die" (exited on its own, stopped or killed; read
        :meth:`status` for the exit code), "destroy" (removed) or "oom" (hit its memory limit;
        "die" follows). Calls come from one daemon thread, in the engine's order, as the engine
        reports them (a container's exit arrives within milliseconds); an exception raised by
        ``callback`` is logged and ignored. If the connection to the engine breaks, the watcher
        logs it and reconnects after a short backoff, asking the engine to replay what it missed
        meanwhile (the engine keeps a bounded backlog), so an event may occasionally be seen
        twice: treat events as hints and read :meth:`status`.

        Events that happen after this returns are reported. Returns the function that stops
        watching: idempotent, it closes the engine connection and waits (at most 5 s) for the
        thread to end; it may be called from ``callback`` itself. :meth:`close` stops it too.

        Raises:
            RuntimeFailure: the engine cannot be reached to subscribe, or the runtime is closed.
        """
        labels = [f"{k}={v}" for k, v in self.labels.items()] + [TASK_LABEL]
        filters = {"type": ["container"], "event": sorted(WATCH_ACTIONS), "label": labels}
        watch = _EventWatch(self._client.api, filters, callback, self._supervisor)
        with self._lock:
            self._watches.add(watch)

        def unwatch() -> None:
            with self._lock:
                self._watches.discard(watch)
            watch.close()

        return unwatch

    def usage(self, task_id: str) -> TaskUsage:
        """The task's CPU and memory use now, and its limits (from its HostConfig).

        Takes about a second on a running task: the engine samples CPU time twice.

        Raises:
            TaskNotFound: this runtime has no container for ``task_id``.
        """
        container = self._find(task_id)
        cpus, memory = _host_limits(container.attrs)
        if (container.attrs.get("State") or {}).get("Status") != "running":
            return TaskUsage(task_id, 0.0, 0, memory, cpus)
        with _engine_errors("reading usage", task_id=task_id):
            stats = container.stats(stream=False)
        return TaskUsage(task_id, _cpu_percent(stats), _memory_used(stats), memory, cpus)

    def limits(self, task_id: str) -> tuple[float, int]:
        """The task's (CPU cores, memory bytes) limits from its HostConfig; 0 means none.

        Raises:
            TaskNotFound: this runtime has no container for ``task_id``.
        """
        return _host_limits(self._find(task_id).attrs)

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


def _engine_chunks(stream: Iterator[bytes], task_id: str) -> Iterator[bytes]:
    """``stream``'s chunks, with whatever the SDK or the connection raises as RuntimeFailure."""
    try:
        yield from stream
    except SonmError:
        raise
    except Exception as exc:
        raise RuntimeFailure(f"reading logs of task {task_id}: {_explain(exc)}") from exc
