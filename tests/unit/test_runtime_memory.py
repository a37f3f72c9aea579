"""The ContainerRuntime contract on the in-memory fake, and pure helpers of DockerRuntime."""

from __future__ import annotations

import itertools
import queue
import subprocess
import sys
import threading

import pytest
import requests.exceptions

from sonm_p2p.errors import (
    ImageNotFound,
    ImageNotRunnable,
    InvalidRequest,
    Refused,
    RuntimeFailure,
    TaskNotFound,
    Timeout,
)
from sonm_p2p.miner import docker_runtime as dr
from sonm_p2p.miner import runtime as rt
from sonm_p2p.miner.runtime import (
    TASK_LABEL,
    ContainerRuntime,
    MemoryRuntime,
    PublishedPort,
    PullProgress,
    RunSpec,
    TaskUsage,
)

WEB = "sonm-test/web:latest"
NOENTRY = "sonm-test/noentry"
IMAGES = {WEB: (["8080/tcp", "9090/udp"], True), NOENTRY: ([], False)}


@pytest.fixture
def runtime() -> MemoryRuntime:
    clock = itertools.count(1000.0)
    return MemoryRuntime(
        images=IMAGES,
        publish_ip="127.0.0.1",
        labels={"sonm.miner": "0xabc"},
        clock=lambda: float(next(clock)),
        pull_errors={"slow/image": Timeout("pulling slow/image took too long")},
    )


def test_is_a_container_runtime(runtime):
    assert isinstance(runtime, ContainerRuntime)
    assert runtime.info().cpu_cores > 0


def test_run_publishes_exposed_ports_and_labels(runtime):
    runtime.ensure_image("sonm-test/web")  # no tag means latest
    state = runtime.run(
        "t1",
        RunSpec(WEB, env={"A": "1"}, cpus=0.5, memory_bytes=64 << 20),
        labels={"sonm.hub": "0xhub", "sonm.miner": "spoofed", TASK_LABEL: "spoofed"},
    )
    assert state.status == "running"
    assert state.exit_code is None
    assert state.started_at == 1000.0
    assert [(p.container_port, p.protocol, p.host_ip) for p in state.ports] == [
        (8080, "tcp", "127.0.0.1"),
        (9090, "udp", "127.0.0.1"),
    ]
    assert len({p.host_port for p in state.ports}) == 2
    # The runtime's own labels win over the caller's.
    assert state.labels == {"sonm.hub": "0xhub", "sonm.miner": "0xabc", TASK_LABEL: "t1"}
    assert runtime.spec_of("t1").memory_bytes == 64 << 20
    assert runtime.status("t1") == state
    assert runtime.pulled == ["sonm-test/web"]
    assert "tasks=1" in repr(runtime)


def test_ensure_image_is_idempotent(runtime):
    runtime.ensure_image(WEB)
    runtime.ensure_image("sonm-test/web")
    assert runtime.pulled == [WEB]


def test_stop_returns_final_state_and_forgets_the_task(runtime):
    runtime.ensure_image(WEB)
    runtime.run("t1", RunSpec(WEB), labels={})
    final = runtime.stop("t1", grace=0.1)
    assert final.status == "exited"
    assert final.exit_code == 143
    assert final.finished_at is not None
    assert runtime.list() == []
    with pytest.raises(TaskNotFound):
        runtime.status("t1")


def test_exit_on_its_own_is_reported(runtime):
    runtime.ensure_image(WEB)
    runtime.run("t1", RunSpec(WEB), labels={})
    runtime.exit("t1", 3)
    state = runtime.status("t1")
    assert (state.status, state.exit_code) == ("exited", 3)
    # A later stop keeps the exit code the process ended with.
    assert runtime.stop("t1").exit_code == 3


def test_list_sees_every_task_in_order(runtime):
    runtime.ensure_image(WEB)
    for task in ("b", "a", "c"):
        runtime.run(task, RunSpec(WEB), labels={})
    runtime.exit("c", 0)
    assert [(s.task_id, s.status) for s in runtime.list()] == [
        ("a", "running"),
        ("b", "running"),
        ("c", "exited"),
    ]


def test_image_without_entrypoint_or_cmd_is_refused(runtime):
    runtime.ensure_image(NOENTRY)
    with pytest.raises(ImageNotRunnable, match="sonm-test/noentry"):
        runtime.run("t1", RunSpec(NOENTRY), labels={})
    assert runtime.list() == []
    # ... unless the task brings its own command.
    state = runtime.run("t2", RunSpec(NOENTRY, command=("/marker",)), labels={})
    assert state.ports == ()


def test_unknown_image_is_not_found(runtime):
    with pytest.raises(ImageNotFound, match="nope:missing"):
        runtime.ensure_image("nope:missing")


def test_run_needs_a_local_image(runtime):
    with pytest.raises(ImageNotFound, match="ensure_image"):
        runtime.run("t1", RunSpec(WEB), labels={})


def test_pull_errors_simulate_failed_pulls(runtime):
    with pytest.raises(Timeout):
        runtime.ensure_image("slow/image")


def test_unknown_task_is_not_found(runtime):
    for call in (runtime.status, runtime.stop, runtime.logs, lambda t: runtime.exit(t, 1)):
        with pytest.raises(TaskNotFound):
            call("ghost")
    runtime.remove("ghost")  # no error


def test_remove_forgets_a_running_task(runtime):
    runtime.ensure_image(WEB)
    runtime.run("t1", RunSpec(WEB), labels={})
    runtime.remove("t1")
    assert runtime.list() == []


def test_duplicate_task_is_refused(runtime):
    runtime.ensure_image(WEB)
    runtime.run("t1", RunSpec(WEB), labels={})
    with pytest.raises(Refused):
        runtime.run("t1", RunSpec(WEB), labels={})


@pytest.mark.parametrize("task_id", ["", "-x", "a/b", "a b"])
def test_task_id_must_fit_a_container_name(runtime, task_id):
    runtime.ensure_image(WEB)
    with pytest.raises(InvalidRequest):
        runtime.run(task_id, RunSpec(WEB), labels={})


def test_negative_limits_are_invalid(runtime):
    runtime.ensure_image(WEB)
    with pytest.raises(InvalidRequest):
        runtime.run("t1", RunSpec(WEB, cpus=-1), labels={})


def test_logs_tail(runtime):
    runtime.ensure_image(WEB)
    runtime.run("t1", RunSpec(WEB), labels={})
    runtime.write_output("t1", b"one\ntwo\nthree\n")
    assert runtime.logs("t1") == b"one\ntwo\nthree\n"
    assert runtime.logs("t1", tail=2) == b"two\nthree\n"
    assert runtime.logs("t1", tail=0) == b""
    with pytest.raises(InvalidRequest):
        runtime.logs("t1", tail=-1)


# --- restart policies ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("restart", "policy"),
    [
        ("", None),
        ("no", {"Name": "no", "MaximumRetryCount": 0}),
        ("always", {"Name": "always", "MaximumRetryCount": 0}),
        ("unless-stopped", {"Name": "unless-stopped", "MaximumRetryCount": 0}),
        ("on-failure", {"Name": "on-failure", "MaximumRetryCount": 0}),
        ("on-failure:3", {"Name": "on-failure", "MaximumRetryCount": 3}),
    ],
)
def test_restart_policies(runtime, restart, policy):
    assert rt._restart_policy(restart) == policy
    runtime.ensure_image(WEB)
    runtime.run("t1", RunSpec(WEB, restart=restart), labels={})
    assert runtime.spec_of("t1").restart == restart


@pytest.mark.parametrize(
    "restart", ["sometimes", "always:3", "on-failure:", "on-failure:-1", "on-failure:x", " no"]
)
def test_malformed_restart_policy_is_invalid(runtime, restart):
    runtime.ensure_image(WEB)
    with pytest.raises(InvalidRequest, match="restart policy"):
        runtime.run("t1", RunSpec(WEB, restart=restart), labels={})
    assert runtime.list() == []


def test_on_failure_restarts_at_most_n_times(runtime):
    runtime.ensure_image(WEB)
    runtime.run("t1", RunSpec(WEB, restart="on-failure:1"), labels={})
    events = []
    runtime.watch(lambda task, action: events.append(action))
    assert runtime.exit("t1", 1).status == "running"  # restarted
    assert runtime.exit("t1", 1).exit_code == 1  # no retries left
    assert events == ["die", "start", "die"]


# --- pulls ---------------------------------------------------------------------------------------


def test_progress_is_reported_for_a_pull_only(runtime):
    seen: list[PullProgress] = []
    runtime.ensure_image(WEB, progress=seen.append)
    assert seen[0].layers_total >= 1
    assert (seen[-1].layers_done, seen[-1].layers_total) == (1, 1)
    assert {p.image for p in seen} == {WEB}
    seen.clear()
    runtime.ensure_image("sonm-test/web", progress=seen.append)  # local already
    assert seen == []


# --- stop and remove -----------------------------------------------------------------------------


def test_stop_without_remove_keeps_the_container_until_remove(runtime):
    runtime.ensure_image(WEB)
    runtime.run("t1", RunSpec(WEB), labels={})
    runtime.write_output("t1", b"last words\n")
    final = runtime.stop("t1", remove=False)
    assert (final.status, final.exit_code) == ("exited", 143)
    assert runtime.status("t1") == final
    assert [s.task_id for s in runtime.list()] == ["t1"]
    assert runtime.logs("t1") == b"last words\n"
    runtime.remove("t1")
    with pytest.raises(TaskNotFound):
        runtime.logs("t1")


# --- streaming logs ------------------------------------------------------------------------------


def test_stream_logs_picks_streams_tail_and_since(runtime):
    runtime.ensure_image(WEB)
    runtime.run("t1", RunSpec(WEB), labels={})
    runtime.write_output("t1", b"one\n")  # written at clock 1001
    runtime.write_output("t1", b"two\n", stderr=True)  # 1002
    runtime.write_output("t1", b"three\n")  # 1003
    assert b"".join(runtime.stream_logs("t1")) == b"one\ntwo\nthree\n"
    assert b"".join(runtime.stream_logs("t1", stderr=False)) == b"one\nthree\n"
    assert b"".join(runtime.stream_logs("t1", stdout=False)) == b"two\n"
    assert b"".join(runtime.stream_logs("t1", tail=1)) == b"three\n"
    assert b"".join(runtime.stream_logs("t1", since=1002)) == b"two\nthree\n"
    for bad in ({"tail": -1}, {"since": -1.0}, {"stdout": False, "stderr": False}):
        with pytest.raises(InvalidRequest):
            runtime.stream_logs("t1", **bad)
    with pytest.raises(TaskNotFound):
        runtime.stream_logs("ghost")


def _reader(stream) -> tuple[queue.Queue, threading.Thread]:
    """Read ``stream`` in a thread; chunks go to the queue, then None when it ends."""
    chunks: queue.Queue = queue.Queue()

    def read() -> None:
        for chunk in stream:
            chunks.put(chunk)
        chunks.put(None)

    thread = threading.Thread(target=read, daemon=True)
    thread.start()
    return chunks, thread


def test_stream_logs_follow_ends_when_the_task_exits(runtime):
    runtime.ensure_image(WEB)
    runtime.run("t1", RunSpec(WEB), labels={})
    runtime.write_output("t1", b"before\n")
    chunks, thread = _reader(runtime.stream_logs("t1", follow=True))
    assert chunks.get(timeout=5) == b"before\n"
    runtime.write_output("t1", b"after\n")
    assert chunks.get(timeout=5) == b"after\n"
    runtime.exit("t1", 0)
    assert chunks.get(timeout=5) is None
    thread.join(5)


def test_stream_logs_follow_closed_from_another_thread(runtime):
    runtime.ensure_image(WEB)
    runtime.run("t1", RunSpec(WEB), labels={})
    stream = runtime.stream_logs("t1", follow=True)
    chunks, thread = _reader(stream)
    runtime.write_output("t1", b"x\n")
    assert chunks.get(timeout=5) == b"x\n"
    stream.close()  # the reader is blocked waiting for more
    assert chunks.get(timeout=5) is None
    stream.close()  # idempotent
    thread.join(5)
    assert "closed" in repr(stream)


# --- watch ---------------------------------------------------------------------------------------


def test_watch_reports_the_lifecycle(runtime):
    events: list[tuple[str, str]] = []
    unwatch = runtime.watch(lambda task, action: events.append((task, action)))
    runtime.ensure_image(WEB)
    for task in ("a", "b", "c", "d"):
        runtime.run(task, RunSpec(WEB), labels={})
    runtime.exit("a", 1, oom=True)
    runtime.stop("b")
    runtime.stop("c", remove=False)
    runtime.remove("c")
    runtime.remove("d")
    assert events == [
        ("a", "start"),
        ("b", "start"),
        ("c", "start"),
        ("d", "start"),
        ("a", "oom"),
        ("a", "die"),
        ("b", "die"),
        ("b", "destroy"),
        ("c", "die"),
        ("c", "destroy"),
        ("d", "die"),
        ("d", "destroy"),
    ]
    assert runtime.exit("a", 2).exit_code == 1  # not running: nothing happens
    unwatch()
    unwatch()  # idempotent
    runtime.run("e", RunSpec(WEB), labels={})
    assert len(events) == 12


def test_watch_callbacks_may_call_the_runtime_and_fail(runtime):
    statuses = []

    def callback(task: str, action: str) -> None:
        statuses.append(runtime.status(task).status)  # no deadlock: the lock is released
        raise RuntimeError("a broken callback is logged, not raised")

    runtime.watch(callback)
    runtime.ensure_image(WEB)
    runtime.run("t1", RunSpec(WEB), labels={})
    runtime.exit("t1", 0)
    assert statuses == ["running", "exited"]


# --- usage and limits ----------------------------------------------------------------------------


def test_usage_and_limits(runtime):
    runtime.ensure_image(WEB)
    runtime.run("t1", RunSpec(WEB, cpus=1.5, memory_bytes=64 << 20), labels={})
    runtime.run("t2", RunSpec(WEB), labels={})
    assert runtime.limits("t1") == (1.5, 64 << 20)
    assert runtime.limits("t2") == (0.0, 0)
    runtime.set_usage("t1", cpu_percent=120.0, memory_bytes=10 << 20)
    assert runtime.usage("t1") == TaskUsage("t1", 120.0, 10 << 20, 64 << 20, 1.5)
    runtime.exit("t1", 0)
    assert runtime.usage("t1") == TaskUsage("t1", 0.0, 0, 64 << 20, 1.5)
    for call in (runtime.usage, runtime.limits):
        with pytest.raises(TaskNotFound):
            call("ghost")


# --- pure helpers of DockerRuntime ---------------------------------------------------------------


@pytest.mark.parametrize(
    ("message", "error", "says"),
    [
        (
            "pull access denied for nope, repository does not exist or may require "
            "'docker login': denied: requested access to the resource is denied",
            ImageNotFound,
            "pull access denied",
        ),
        ("manifest for web:nope not found: manifest unknown", ImageNotFound, "manifest unknown"),
        (
            'Get "http://127.0.0.1:1/v2/": dial tcp 127.0.0.1:1: connect: connection refused',
            ImageNotFound,
            "registry is unreachable",
        ),
        ("write /var/lib/docker/tmp: no space left on device", RuntimeFailure, "no space left"),
    ],
)
def test_pull_failures_say_why(message, error, says):
    failure = rt._pull_failure("img:tag", message)
    assert type(failure) is error
    assert says in str(failure)
    assert "img:tag" in str(failure)


def test_docker_state_from_inspect():
    state = rt._docker_state(
        {
            "Id": "abc",
            "Name": "/sonm-t1",
            "Config": {"Image": WEB, "Labels": {TASK_LABEL: "t1"}},
            "State": {
                "Status": "exited",
                "ExitCode": 3,
                "Error": "",
                "StartedAt": "2024-01-01T00:00:00.123456789Z",
                "FinishedAt": "0001-01-01T00:00:00Z",
            },
            "NetworkSettings": {
                "Ports": {
                    "9090/udp": [{"HostIp": "127.0.0.1", "HostPort": "32769"}],
                    "8080/tcp": [{"HostIp": "127.0.0.1", "HostPort": "32768"}],
                    "7070/tcp": None,
                }
            },
        }
    )
    assert (state.task_id, state.status, state.exit_code) == ("t1", "exited", 3)
    assert state.ports == (
        PublishedPort(8080, "tcp", "127.0.0.1", 32768),
        PublishedPort(9090, "udp", "127.0.0.1", 32769),
    )
    assert state.started_at == pytest.approx(1704067200.123456)
    assert state.finished_at is None


def test_running_container_has_no_exit_code():
    state = rt._docker_state({"State": {"Status": "running", "ExitCode": 0}})
    assert state.exit_code is None


def _pull_messages() -> list[dict]:
    return [
        {"status": "Pulling from sonm-test/web", "id": "1"},
        {"status": "Already exists", "id": "base"},
        {"status": "Pulling fs layer", "id": "new"},
        {"status": "Downloading", "id": "new", "progressDetail": {"current": 100, "total": 400}},
        {"status": "Downloading", "id": "new", "progressDetail": {"current": 300, "total": 400}},
        {"status": "Download complete", "id": "new", "progressDetail": {}},
        {"status": "Extracting", "id": "new", "progressDetail": {"current": 50, "total": 400}},
        {"status": "Pull complete", "id": "new", "progressDetail": {}},
        {"status": "Digest: sha256:abc"},
        {"status": "Status: Downloaded newer image for sonm-test/web:1"},
    ]


def test_pull_tally_sums_layers():
    tally = rt._PullTally("img", interval=0)
    reports = [tally.feed(m, now=float(i)) for i, m in enumerate(_pull_messages())]
    summary = [(p.current_bytes, p.total_bytes, p.layers_done, p.layers_total) for p in reports]
    assert summary == [
        (0, 0, 0, 0),
        (0, 0, 1, 1),
        (0, 0, 1, 2),
        (100, 400, 1, 2),
        (300, 400, 1, 2),
        (400, 400, 1, 2),
        (400, 400, 1, 2),  # extracting: the download stays counted in full
        (400, 400, 2, 2),
        (400, 400, 2, 2),
        (400, 400, 2, 2),
    ]
    assert reports[3].status == "Downloading"
    final = tally.final()
    assert (final.layers_done, final.layers_total, final.status) == (
        2,
        2,
        "Status: Downloaded newer image for sonm-test/web:1",
    )


def test_pull_tally_is_throttled():
    tally = rt._PullTally("img", interval=0.1)
    times = [0.0, 0.05, 0.09, 0.1, 0.15, 0.3, 0.31, 0.32, 0.33, 0.34]
    reported = [t for t, m in zip(times, _pull_messages(), strict=True) if tally.feed(m, now=t)]
    assert reported == [0.0, 0.1, 0.3]
    assert tally.final().layers_done == 2  # a final report whatever the throttle


def test_usage_from_stats_and_host_config():
    stats = {
        "cpu_stats": {
            "cpu_usage": {"total_usage": 3_000},
            "system_cpu_usage": 20_000,
            "online_cpus": 4,
        },
        "precpu_stats": {"cpu_usage": {"total_usage": 1_000}, "system_cpu_usage": 10_000},
        "memory_stats": {"usage": 10_000, "stats": {"inactive_file": 4_000}},
    }
    assert rt._cpu_percent(stats) == pytest.approx(80.0)  # 2000/10000 of 4 cores
    assert rt._memory_used(stats) == 6_000
    assert rt._cpu_percent({"cpu_stats": {}, "precpu_stats": {}}) == 0.0
    assert rt._memory_used({"memory_stats": {"usage": 5, "stats": {"total_inactive_file": 9}}}) == 5
    assert rt._host_limits({"HostConfig": {"NanoCpus": 1_500_000_000, "Memory": 7}}) == (1.5, 7)
    assert rt._host_limits({"HostConfig": {"CpuQuota": 50_000, "CpuPeriod": 100_000}}) == (0.5, 0)
    assert rt._host_limits({}) == (0.0, 0)


class _FakeEvents:
    """A docker events stream: yields its events, then ends (``broken``) or blocks until closed."""

    def __init__(self, events: list[dict], *, broken: bool) -> None:
        self._events = list(events)
        self._broken = broken
        self._closed = threading.Event()

    def __iter__(self):
        return self

    def __next__(self) -> dict:
        if self._events:
            return self._events.pop(0)
        if not self._broken:
            self._closed.wait()
        raise StopIteration

    def close(self) -> None:
        self._closed.set()


class _FakeApi:
    """Just what the event watcher calls of ``docker.APIClient``."""

    def __init__(self, answers: list) -> None:
        self.answers = answers
        self.calls: list[dict] = []

    def info(self) -> dict:
        return {"SystemTime": "2024-01-01T00:00:00.5Z"}

    def events(self, **kwargs):
        self.calls.append(kwargs)
        answer = self.answers.pop(0)
        if isinstance(answer, Exception):
            raise answer
        return answer


def _event(task: str, action: str, nanos: int) -> dict:
    attributes = {TASK_LABEL: task, "sonm.miner": "0xabc"}
    return {
        "Action": action,
        "Actor": {"ID": f"id-{task}", "Attributes": attributes},
        "timeNano": nanos,
    }


def test_event_watch_reconnects_and_resumes(monkeypatch):
    monkeypatch.setattr(dr, "_WATCH_BACKOFF", (0.01, 0.05))
    start = _event("t1", "start", 1_704_067_200_900_000_000)
    die = _event("t1", "die", 1_704_067_201_000_000_007)
    # After a reconnect the engine replays from the last event seen, that one included.
    last = _FakeEvents([dict(die), _event("t2", "start", 1_704_067_202_000_000_000)], broken=False)
    api = _FakeApi(
        [
            _FakeEvents([start, die], broken=True),
            requests.exceptions.ConnectionError("engine restarting"),
            last,
        ]
    )
    seen: queue.Queue = queue.Queue()
    stop = dr._EventWatch(api, {"type": ["container"]}, lambda t, a: seen.put((t, a))).close
    got = [seen.get(timeout=5) for _ in range(3)]
    assert got == [("t1", "start"), ("t1", "die"), ("t2", "start")]
    assert api.calls[0]["since"] == "1704067200.500000000"  # the engine's time when subscribing
    assert api.calls[2]["since"] == "1704067201.000000007"  # resumes at the last event seen
    stop()
    stop()  # idempotent
    assert last._closed.is_set()
    assert seen.empty()  # the replayed "die" was not reported twice


def test_implementation_modules_import_in_any_order():
    for first in ("docker_runtime", "memory_runtime", "runtime"):
        code = (
            f"import sonm_p2p.miner.{first}\n"
            "from sonm_p2p.miner.runtime import DockerRuntime, MemoryRuntime, ContainerRuntime\n"
            "assert isinstance(MemoryRuntime(), ContainerRuntime)\n"
        )
        subprocess.run([sys.executable, "-c", code], check=True, timeout=60)
