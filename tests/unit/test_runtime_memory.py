"""What only MemoryRuntime does: its fake clock, exit codes, restart simulation, synchronous
watch and test controls. The contract it shares with DockerRuntime is asserted in
``tests/integration/test_runtime_contract.py`` (run against both)."""

from __future__ import annotations

import itertools

import pytest

from sonm_p2p.errors import (
    ImageNotRunnable,
    InvalidRequest,
    TaskNotFound,
    Timeout,
)
from sonm_p2p.miner import runtime as rt
from sonm_p2p.miner.memory_runtime import MemoryRuntime
from sonm_p2p.miner.runtime import TASK_LABEL
from sonm_p2p.model import LogQuery, PullProgress, RunSpec, TaskUsage
from tests.streams import read_in_thread

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


def test_image_without_entrypoint_or_cmd_is_refused(runtime):
    runtime.ensure_image(NOENTRY)
    with pytest.raises(ImageNotRunnable, match="sonm-test/noentry"):
        runtime.run("t1", RunSpec(NOENTRY), labels={})
    assert runtime.list() == []
    # ... unless the task brings its own command.
    state = runtime.run("t2", RunSpec(NOENTRY, command=("/marker",)), labels={})
    assert state.ports == ()


def test_test_controls_of_an_unknown_task_raise(runtime):
    calls = (
        lambda t: runtime.exit(t, 1),
        lambda t: runtime.write_output(t, b"x"),
        lambda t: runtime.set_usage(t, cpu_percent=1.0),
        runtime.spec_of,
    )
    for call in calls:
        with pytest.raises(TaskNotFound):
            call("ghost")


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
    assert b"".join(runtime.stream_logs(LogQuery("t1"))) == b"one\ntwo\nthree\n"
    assert b"".join(runtime.stream_logs(LogQuery("t1", stderr=False))) == b"one\nthree\n"
    assert b"".join(runtime.stream_logs(LogQuery("t1", stdout=False))) == b"two\n"
    assert b"".join(runtime.stream_logs(LogQuery("t1", tail=1))) == b"three\n"
    assert b"".join(runtime.stream_logs(LogQuery("t1", since=1002))) == b"two\nthree\n"
    for bad in ({"tail": -1}, {"since": -1.0}, {"stdout": False, "stderr": False}):
        with pytest.raises(InvalidRequest):
            runtime.stream_logs(LogQuery("t1", **bad))
    with pytest.raises(TaskNotFound):
        runtime.stream_logs(LogQuery("ghost"))


def test_stream_logs_follow_ends_when_the_task_exits(runtime):
    runtime.ensure_image(WEB)
    runtime.run("t1", RunSpec(WEB), labels={})
    runtime.write_output("t1", b"before\n")
    chunks, thread = read_in_thread(runtime.stream_logs(LogQuery("t1", follow=True)))
    assert chunks.get(timeout=5) == b"before\n"
    runtime.write_output("t1", b"after\n")
    assert chunks.get(timeout=5) == b"after\n"
    runtime.exit("t1", 0)
    assert chunks.get(timeout=5) is None
    thread.join(5)


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
