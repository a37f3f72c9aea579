"""The ContainerRuntime contract, asserted once and run against both runtimes: the in-memory fake
(``MemoryRuntime``) and the real engine (``DockerRuntime``, with the local sonm-test/* images).

Each runtime comes with a small rig that makes a task do something (print, exit, keep running)
in its own way; the assertions are the same. What only one runtime has is tested in
``tests/unit/test_runtime_memory.py`` and ``tests/integration/test_docker_runtime.py``.
"""

from __future__ import annotations

import queue
import shlex
import socket
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager

import pytest

from sonm_p2p.errors import (
    ImageNotFound,
    ImageNotRunnable,
    InvalidRequest,
    Refused,
    TaskNotFound,
    Timeout,
)
from sonm_p2p.miner.memory_runtime import MemoryRuntime
from sonm_p2p.miner.runtime import TASK_LABEL, ContainerRuntime, ContainerState
from sonm_p2p.model import LogQuery, RunSpec, TaskUsage
from tests.harness import remove_labelled
from tests.streams import next_event, read_in_thread

WEB = "sonm-test/web:latest"
NOENTRY = "sonm-test/noentry:latest"
BUSYBOX = "sonm-test/busybox:latest"
MINER = "0xminer"


def _engine_answers() -> bool:
    try:
        import docker

        return bool(docker.from_env(timeout=5).ping())
    except Exception:
        return False


def _wait(cond: Callable[[], bool], what: str, within: float = 20.0) -> None:
    deadline = time.monotonic() + within
    while not cond():
        if time.monotonic() > deadline:
            pytest.fail(f"{what}: not within {within} s")
        time.sleep(0.05)  # pacing between polls, not synchronisation


class MemoryRig:
    """Tasks on the fake: the test drives their output and exits."""

    def __init__(self) -> None:
        images = {WEB: (["8080/tcp", "9090/udp"], True), NOENTRY: ([], False)}
        self.runtime = MemoryRuntime(
            images=images,
            publish_ip="127.0.0.1",
            labels={"sonm.miner": MINER},
            pull_errors={"slow/image": Timeout("pulling slow/image took longer than 0.5 s")},
        )
        self.missing_image = "nope:missing"
        self.runtime.ensure_image(NOENTRY)

    def sleeper(self, **limits: object) -> RunSpec:
        """A task that runs until stopped."""
        self.runtime.ensure_image(WEB)
        return RunSpec(WEB, **limits)  # type: ignore[arg-type]

    def run_printing(self, task: str, out: bytes, err: bytes = b"") -> ContainerState:
        """Run a task that prints and keeps running."""
        state = self.runtime.run(task, self.sleeper(), labels={})
        if out:
            self.runtime.write_output(task, out)
        if err:
            self.runtime.write_output(task, err, stderr=True)
        return state

    def run_exited(self, task: str, out: bytes = b"", err: bytes = b"", code: int = 0) -> None:
        """Run a task that prints, then exits with ``code``; return once it has."""
        self.run_printing(task, out, err)
        self.runtime.exit(task, code)

    def run_exiting_after(self, task: str, out: bytes, seconds: float) -> None:
        self.run_printing(task, out)
        timer = threading.Timer(seconds, self.runtime.exit, (task, 0))
        timer.daemon = True
        timer.start()

    @contextmanager
    def stalled_image(self) -> Iterator[str]:
        yield "slow/image"

    def close(self) -> None:
        self.runtime.close()


class DockerRig:
    """Tasks on the engine: busybox shell scripts do the printing and exiting."""

    def __init__(self, client: object, test_label: str) -> None:
        from sonm_p2p.miner.docker_runtime import DockerRuntime

        labels = {"sonm.test": test_label, "sonm.miner": MINER}
        self.runtime = DockerRuntime(publish_ip="127.0.0.1", labels=labels, client=client)
        self.missing_image = "127.0.0.1:1/nope:missing"  # port 1 on loopback refuses at once

    def sleeper(self, **limits: object) -> RunSpec:
        return RunSpec(BUSYBOX, command=("sleep", "300"), **limits)  # type: ignore[arg-type]

    def _script(self, out: bytes, err: bytes) -> str:
        script = f"printf %s {shlex.quote(out.decode())}"
        return script + (f"; printf %s {shlex.quote(err.decode())} >&2" if err else "")

    def run_printing(self, task: str, out: bytes, err: bytes = b"") -> ContainerState:
        script = self._script(out, err) + "; while true; do sleep 0.1; done"
        state = self.runtime.run(task, RunSpec(BUSYBOX, command=("sh", "-c", script)), labels={})
        _wait(lambda: self.runtime.logs(task).count(b"\n") >= (out + err).count(b"\n"), "output")
        return state

    def run_exited(self, task: str, out: bytes = b"", err: bytes = b"", code: int = 0) -> None:
        script = self._script(out, err) + f"; exit {code}"
        self.runtime.run(task, RunSpec(BUSYBOX, command=("sh", "-c", script)), labels={})
        _wait(lambda: self.runtime.status(task).status == "exited", "the task's exit")

    def run_exiting_after(self, task: str, out: bytes, seconds: float) -> None:
        script = self._script(out, b"") + f"; sleep {seconds}"
        self.runtime.run(task, RunSpec(BUSYBOX, command=("sh", "-c", script)), labels={})

    @contextmanager
    def stalled_image(self) -> Iterator[str]:
        # A "registry" that accepts connections and never answers.
        with socket.create_server(("127.0.0.1", 0)) as registry:
            yield f"127.0.0.1:{registry.getsockname()[1]}/stalled:latest"

    def close(self) -> None:
        self.runtime.close()


@pytest.fixture(scope="module")
def docker_client() -> Iterator[object]:
    if not _engine_answers():
        pytest.skip("needs a Docker engine: run `make docker images`")
    import docker

    client = docker.from_env()
    for image in (WEB, NOENTRY, BUSYBOX):
        try:
            client.images.get(image)
        except docker.errors.ImageNotFound:
            pytest.skip(f"test image {image} missing: run `make images`")
    yield client
    client.close()


@pytest.fixture(params=["memory", "docker"])
def rig(request: pytest.FixtureRequest) -> Iterator[MemoryRig | DockerRig]:
    if request.param == "memory":
        made: MemoryRig | DockerRig = MemoryRig()
        yield made
        made.close()
        return
    client = request.getfixturevalue("docker_client")
    label = uuid.uuid4().hex  # every container carrying it is removed at the end
    made = DockerRig(client, label)
    try:
        yield made
    finally:
        made.close()
        remove_labelled(client, label)


def _task() -> str:
    return f"test-{uuid.uuid4().hex[:12]}"


# --- running and stopping ------------------------------------------------------------------------


def test_is_a_container_runtime(rig):
    assert isinstance(rig.runtime, ContainerRuntime)
    info = rig.runtime.info()
    assert info.cpu_cores > 0 and info.memory_bytes > 0
    assert info.os == "linux"


def test_run_publishes_exposed_ports_and_labels(rig):
    rt, task = rig.runtime, _task()
    rt.ensure_image("sonm-test/web")  # no tag means latest; local already or pulled
    spoofed = {"sonm.hub": "0xhub", "sonm.miner": "spoofed", TASK_LABEL: "spoofed"}
    state = rt.run(task, RunSpec(WEB, env={"A": "1"}), labels=spoofed)
    assert (state.task_id, state.status, state.exit_code) == (task, "running", None)
    assert state.started_at is not None
    assert [(p.container_port, p.protocol, p.host_ip) for p in state.ports] == [
        (8080, "tcp", "127.0.0.1"),
        (9090, "udp", "127.0.0.1"),
    ]
    assert all(p.host_port > 0 for p in state.ports)  # tcp and udp may share a number
    # The runtime's own labels win over the caller's.
    assert state.labels["sonm.hub"] == "0xhub"
    assert (state.labels["sonm.miner"], state.labels[TASK_LABEL]) == (MINER, task)
    now = rt.status(task)
    assert (now.container_id, now.status, now.ports) == (state.container_id, "running", state.ports)


def test_ensure_image_of_a_local_image_is_a_no_op(rig):
    rig.runtime.ensure_image(WEB)
    seen: list = []
    rig.runtime.ensure_image("sonm-test/web", progress=seen.append)
    assert seen == []  # no pull, no progress


def test_stop_returns_the_final_state_and_removes_the_task(rig):
    rt, task = rig.runtime, _task()
    rt.run(task, rig.sleeper(), labels={})
    final = rt.stop(task, grace=1)
    assert final.status == "exited"
    assert final.exit_code is not None
    assert final.finished_at is not None
    assert rt.list() == []
    with pytest.raises(TaskNotFound):
        rt.status(task)


def test_exit_on_its_own_is_reported_with_its_output(rig):
    rt, task = rig.runtime, _task()
    rig.run_exited(task, out=b"out\n", err=b"err\n", code=3)
    state = rt.status(task)
    assert (state.status, state.exit_code) == ("exited", 3)
    assert state.started_at is not None and state.finished_at is not None
    assert sorted(rt.logs(task).split()) == [b"err", b"out"]  # stdout and stderr
    assert rt.logs(task, tail=1).strip() in (b"out", b"err")
    # A later stop keeps the exit code the process ended with.
    assert rt.stop(task).exit_code == 3


def test_list_sees_every_task_by_id(rig):
    rt = rig.runtime
    a, b, c = sorted(_task() for _ in range(3))
    for task in (b, a):
        rt.run(task, rig.sleeper(), labels={})
    rig.run_exited(c, code=0)
    assert [(s.task_id, s.status) for s in rt.list()] == [
        (a, "running"),
        (b, "running"),
        (c, "exited"),
    ]


def test_remove_forgets_a_running_task(rig):
    rt, task = rig.runtime, _task()
    rt.run(task, rig.sleeper(), labels={})
    rt.remove(task)
    assert rt.list() == []
    rt.remove(task)  # gone already: no error


def test_duplicate_task_is_refused(rig):
    rt, task = rig.runtime, _task()
    rt.run(task, rig.sleeper(), labels={})
    with pytest.raises(Refused):
        rt.run(task, rig.sleeper(), labels={})
    assert len(rt.list()) == 1


def test_stop_without_remove_keeps_the_task_until_remove(rig):
    rt, task = rig.runtime, _task()
    rig.run_printing(task, b"last words\n")
    final = rt.stop(task, grace=1, remove=False)
    assert final.status == "exited" and final.exit_code is not None
    kept = rt.status(task)
    assert (kept.status, kept.exit_code) == (final.status, final.exit_code)
    assert [s.task_id for s in rt.list()] == [task]
    assert rt.logs(task) == b"last words\n"
    rt.remove(task)
    with pytest.raises(TaskNotFound):
        rt.logs(task)


# --- refusals ------------------------------------------------------------------------------------


def test_image_without_entrypoint_or_cmd_is_refused(rig):
    with pytest.raises(ImageNotRunnable, match="sonm-test/noentry"):
        rig.runtime.run(_task(), RunSpec(NOENTRY), labels={})
    assert rig.runtime.list() == []


def test_unknown_image_is_not_found(rig):
    with pytest.raises(ImageNotFound) as caught:
        rig.runtime.ensure_image(rig.missing_image, timeout=30)
    assert rig.missing_image in str(caught.value)


def test_run_needs_a_local_image(rig):
    with pytest.raises(ImageNotFound, match="ensure_image"):
        rig.runtime.run(_task(), RunSpec("sonm-test/never-pulled:latest"), labels={})


def test_slow_pull_times_out(rig):
    with rig.stalled_image() as image, pytest.raises(Timeout):
        rig.runtime.ensure_image(image, timeout=0.5)


def test_unknown_task_is_not_found(rig):
    rt = rig.runtime
    calls: list[Callable[[str], object]] = [
        rt.status,
        rt.stop,
        rt.logs,
        lambda task_id: rt.stream_logs(LogQuery(task_id)),
        rt.usage,
        rt.limits,
    ]
    for call in calls:
        with pytest.raises(TaskNotFound):
            call(_task())
    rt.remove(_task())  # no error


@pytest.mark.parametrize("task_id", ["", "-x", "a/b", "a b"])
def test_task_id_must_fit_a_container_name(rig, task_id):
    with pytest.raises(InvalidRequest):
        rig.runtime.run(task_id, rig.sleeper(), labels={})
    assert rig.runtime.list() == []


def test_negative_limits_are_invalid(rig):
    with pytest.raises(InvalidRequest):
        rig.runtime.run(_task(), rig.sleeper(cpus=-1), labels={})
    with pytest.raises(InvalidRequest):
        rig.runtime.run(_task(), rig.sleeper(memory_bytes=-1), labels={})


@pytest.mark.parametrize(
    "restart", ["", "no", "always", "unless-stopped", "on-failure", "on-failure:3"]
)
def test_restart_policies_are_taken(rig, restart):
    state = rig.runtime.run(_task(), rig.sleeper(restart=restart), labels={})
    assert state.status == "running"


@pytest.mark.parametrize(
    "restart", ["sometimes", "always:3", "on-failure:", "on-failure:-1", "on-failure:x", " no"]
)
def test_malformed_restart_policy_is_invalid(rig, restart):
    with pytest.raises(InvalidRequest, match="restart policy"):
        rig.runtime.run(_task(), rig.sleeper(restart=restart), labels={})
    assert rig.runtime.list() == []


# --- output --------------------------------------------------------------------------------------


def test_logs_tail(rig):
    rt, task = rig.runtime, _task()
    rig.run_exited(task, out=b"one\ntwo\nthree\n")
    assert rt.logs(task) == b"one\ntwo\nthree\n"
    assert rt.logs(task, tail=2) == b"two\nthree\n"
    assert rt.logs(task, tail=0) == b""
    with pytest.raises(InvalidRequest):
        rt.logs(task, tail=-1)


def test_stream_logs_picks_streams_and_tail(rig):
    rt, task = rig.runtime, _task()
    rig.run_exited(task, out=b"one\nthree\n", err=b"two\n")
    assert sorted(b"".join(rt.stream_logs(LogQuery(task))).split()) == [b"one", b"three", b"two"]
    assert b"".join(rt.stream_logs(LogQuery(task, stderr=False))) == b"one\nthree\n"
    assert b"".join(rt.stream_logs(LogQuery(task, stdout=False))) == b"two\n"
    for bad in ({"tail": -1}, {"since": -1.0}, {"stdout": False, "stderr": False}):
        with pytest.raises(InvalidRequest):
            rt.stream_logs(LogQuery(task, **bad))
    # Tail on one stream's output (the engine tails before it picks streams: with both, the
    # last lines may be the other stream's).
    only_out = _task()
    rig.run_exited(only_out, out=b"one\ntwo\nthree\n")
    assert b"".join(rt.stream_logs(LogQuery(only_out, tail=2))) == b"two\nthree\n"
    assert b"".join(rt.stream_logs(LogQuery(only_out, tail=0))) == b""


def test_stream_logs_follow_ends_when_the_task_exits(rig):
    task = _task()
    rig.run_exiting_after(task, b"hi\n", 0.3)
    with rig.runtime.stream_logs(LogQuery(task, follow=True)) as stream:
        assert b"".join(stream) == b"hi\n"  # returns once the task exits


def test_stream_logs_follow_is_closed_from_another_thread(rig):
    rt, task = rig.runtime, _task()
    rig.run_printing(task, b"x\n")
    stream = rt.stream_logs(LogQuery(task, follow=True))
    chunks, thread = read_in_thread(stream)
    assert chunks.get(timeout=5) == b"x\n"
    started = time.monotonic()
    stream.close()  # the reader is blocked waiting for more
    assert chunks.get(timeout=5) is None
    thread.join(5)
    assert not thread.is_alive()
    assert time.monotonic() - started < 2
    stream.close()  # idempotent
    assert "closed" in repr(stream)


# --- watch, usage, close -------------------------------------------------------------------------


def test_watch_reports_start_exit_and_removal(rig):
    rt, task = rig.runtime, _task()
    events: queue.Queue = queue.Queue()
    unwatch = rt.watch(lambda task_id, action: events.put((task_id, action)))
    try:
        rig.run_exited(task, code=4)
        assert next_event(events, (task, "die"), within=3) == [(task, "start"), (task, "die")]
        assert rt.status(task).exit_code == 4
        rt.remove(task)
        assert next_event(events, (task, "destroy"), within=3) == [(task, "destroy")]
    finally:
        unwatch()
    unwatch()  # idempotent
    rt.run(_task(), rig.sleeper(), labels={})
    time.sleep(0.3)  # what a watcher would have had to report it: nothing comes
    assert events.empty()


def test_usage_and_limits(rig):
    rt, running, ended = rig.runtime, _task(), _task()
    rt.run(running, rig.sleeper(cpus=0.5, memory_bytes=64 << 20), labels={})
    assert rt.limits(running) == (0.5, 64 << 20)
    usage = rt.usage(running)
    assert (usage.task_id, usage.memory_limit, usage.cpus_limit) == (running, 64 << 20, 0.5)
    assert usage.cpu_percent >= 0.0 and usage.memory_bytes >= 0
    rig.run_exited(ended)
    assert rt.limits(ended) == (0.0, 0)
    # A listing carries each task's limits: what a miner sums to know what it has left.
    listed = {s.task_id: (s.cpus, s.memory_bytes) for s in rt.list()}
    assert (listed[running], listed[ended]) == ((0.5, 64 << 20), (0.0, 0))
    assert rt.usage(ended) == TaskUsage(ended, 0.0, 0, 0, 0.0)  # not running: uses nothing


def test_close_ends_watches_and_leaves_tasks_running(rig):
    rt, task = rig.runtime, _task()
    before = set(threading.enumerate())
    events: queue.Queue = queue.Queue()
    rt.watch(lambda task_id, action: events.put((task_id, action)))
    rt.run(task, rig.sleeper(), labels={})
    next_event(events, (task, "start"), within=3)
    rt.close()
    rt.close()  # idempotent
    assert not [t for t in set(threading.enumerate()) - before if t.is_alive()]
    rt.remove(task)
    time.sleep(0.3)
    assert events.empty()  # no longer watched
