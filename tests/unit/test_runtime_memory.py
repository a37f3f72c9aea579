"""The ContainerRuntime contract on the in-memory fake, and pure helpers of DockerRuntime."""

from __future__ import annotations

import itertools

import pytest

from sonm_p2p.errors import (
    ImageNotFound,
    ImageNotRunnable,
    InvalidRequest,
    Refused,
    RuntimeFailure,
    TaskNotFound,
    Timeout,
)
from sonm_p2p.miner import runtime as rt
from sonm_p2p.miner.runtime import (
    TASK_LABEL,
    ContainerRuntime,
    MemoryRuntime,
    PublishedPort,
    RunSpec,
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
