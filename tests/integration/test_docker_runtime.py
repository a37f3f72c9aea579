"""DockerRuntime against the real engine, with the local sonm-test/* images (no registry)."""

from __future__ import annotations

import http.client
import socket
import time
import urllib.request
import uuid
from collections.abc import Callable, Iterator
from typing import TypeVar

import docker
import pytest

from sonm_p2p.errors import ImageNotFound, ImageNotRunnable, Refused, TaskNotFound, Timeout
from sonm_p2p.miner.runtime import ContainerRuntime, DockerRuntime, RunSpec


def _engine_answers() -> bool:
    try:
        return bool(docker.from_env(timeout=5).ping())
    except Exception:
        return False


pytestmark = [
    pytest.mark.docker,
    pytest.mark.skipif(
        not _engine_answers(), reason="needs a Docker engine: run `make test`, which starts one"
    ),
]

WEB = "sonm-test/web:latest"
NOENTRY = "sonm-test/noentry:latest"
BUSYBOX = "sonm-test/busybox:latest"
SLEEP = ("sleep", "300")
T = TypeVar("T")


@pytest.fixture(scope="module")
def client() -> Iterator[docker.DockerClient]:
    client = docker.from_env()
    missing = []
    for image in (WEB, NOENTRY, BUSYBOX):
        try:
            client.images.get(image)
        except docker.errors.ImageNotFound:
            missing.append(image)
    if missing:
        pytest.skip(f"test images {missing} missing: run `make images`")
    yield client
    client.close()


@pytest.fixture
def test_label(client) -> Iterator[str]:
    """A label value unique to this test; every container carrying it is removed at the end."""
    value = uuid.uuid4().hex
    yield value
    for container in client.containers.list(all=True, filters={"label": f"sonm.test={value}"}):
        container.remove(force=True, v=True)


def _runtime(client, test_label, miner: str = "0xminer", **kwargs) -> DockerRuntime:
    labels = {"sonm.test": test_label, "sonm.miner": miner}
    return DockerRuntime(publish_ip="127.0.0.1", labels=labels, client=client, **kwargs)


@pytest.fixture
def runtime(client, test_label) -> DockerRuntime:
    return _runtime(client, test_label)


def _task() -> str:
    return f"test-{uuid.uuid4().hex[:12]}"


def _ours(client, test_label) -> list:
    return client.containers.list(all=True, filters={"label": f"sonm.test={test_label}"})


def _poll(attempt: Callable[[], T], what: str, within: float = 20.0) -> T:
    """Retry ``attempt`` until it stops raising OSError/AssertionError; fail at the deadline."""
    deadline = time.monotonic() + within
    while True:
        try:
            return attempt()
        except (OSError, AssertionError, http.client.HTTPException) as exc:
            if time.monotonic() > deadline:
                pytest.fail(f"{what}: not within {within} s: {exc!r}")
        time.sleep(0.05)  # pacing between attempts, not synchronisation


def test_docker_runtime_is_a_container_runtime(runtime):
    assert isinstance(runtime, ContainerRuntime)
    info = runtime.info()
    assert info.cpu_cores > 0 and info.memory_bytes > 0
    assert info.os == "linux"
    assert info.version.startswith("docker ")
    assert "127.0.0.1" in repr(runtime)


def test_web_task_serves_tcp_and_udp_then_stops(client, test_label, runtime):
    task = _task()
    runtime.ensure_image(WEB)  # local already: no pull
    state = runtime.run(task, RunSpec(WEB), labels={"sonm.hub": "0xhub"})
    assert state.status == "running"
    assert state.labels["sonm.task"] == task
    assert state.labels["sonm.hub"] == "0xhub"
    assert client.containers.get(state.container_id).name == f"sonm-{task}"
    ports = {(p.container_port, p.protocol): p for p in state.ports}
    assert set(ports) == {(8080, "tcp"), (9090, "udp")}
    assert all(p.host_ip == "127.0.0.1" and p.host_port > 0 for p in state.ports)

    no_proxy = urllib.request.build_opener(urllib.request.ProxyHandler({}))

    def fetch() -> bytes:
        url = f"http://127.0.0.1:{ports[8080, 'tcp'].host_port}/"
        with no_proxy.open(url, timeout=2) as response:
            return response.read()

    assert b"hello from a sonm task" in _poll(fetch, "http page")

    def echo() -> bytes:
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
            sock.settimeout(0.3)
            sock.sendto(b"ping", ("127.0.0.1", ports[9090, "udp"].host_port))
            return sock.recv(1024)

    assert _poll(echo, "udp echo").strip() == b"echo: ping"

    final = runtime.stop(task, grace=1)
    assert final.status == "exited"
    assert final.exit_code is not None
    assert state.container_id not in {c.id for c in client.containers.list(all=True)}
    with pytest.raises(TaskNotFound):
        runtime.status(task)


def test_image_without_entrypoint_or_cmd_is_refused(client, test_label, runtime):
    with pytest.raises(ImageNotRunnable, match="sonm-test/noentry"):
        runtime.run(_task(), RunSpec(NOENTRY), labels={})
    assert _ours(client, test_label) == []


def test_command_that_cannot_start_leaves_no_container(client, test_label, runtime):
    with pytest.raises(ImageNotRunnable, match="/nope"):
        runtime.run(_task(), RunSpec(BUSYBOX, command=("/nope",)), labels={})
    assert _ours(client, test_label) == []


def test_missing_image_is_not_found_quickly(runtime):
    image = "127.0.0.1:1/nope:missing"  # port 1 on loopback refuses at once
    started = time.monotonic()
    with pytest.raises(ImageNotFound) as caught:
        runtime.ensure_image(image, timeout=30)
    assert time.monotonic() - started < 10
    assert image in str(caught.value)
    assert "unreachable" in str(caught.value)


def test_stalled_pull_times_out_promptly(runtime):
    # A "registry" that accepts connections and never answers.
    with socket.create_server(("127.0.0.1", 0)) as registry:
        image = f"127.0.0.1:{registry.getsockname()[1]}/stalled:latest"
        started = time.monotonic()
        with pytest.raises(Timeout, match="stalled"):
            runtime.ensure_image(image, timeout=0.5)
        assert time.monotonic() - started < 5


def test_list_sees_only_this_runtimes_containers(client, test_label, runtime):
    other = _runtime(client, test_label, miner="0xother")
    mine, theirs = _task(), _task()
    runtime.run(mine, RunSpec(BUSYBOX, command=SLEEP), labels={})
    other.run(theirs, RunSpec(BUSYBOX, command=SLEEP), labels={})
    assert [s.task_id for s in runtime.list()] == [mine]
    assert [s.task_id for s in other.list()] == [theirs]
    with pytest.raises(TaskNotFound):
        runtime.status(theirs)
    with pytest.raises(TaskNotFound):
        runtime.stop(theirs)
    runtime.remove(theirs)  # not ours: untouched
    assert other.status(theirs).status == "running"


def test_limits_reach_the_host_config(client, test_label):
    runtime = _runtime(client, test_label, pids_limit=64)
    spec = RunSpec(BUSYBOX, command=SLEEP, cpus=0.5, memory_bytes=64 << 20)
    state = runtime.run(_task(), spec, labels={})
    host_config = client.api.inspect_container(state.container_id)["HostConfig"]
    assert host_config["NanoCpus"] == 500_000_000
    assert host_config["Memory"] == 64 << 20
    assert host_config["PidsLimit"] == 64


def test_exit_on_its_own_is_reported_with_logs(runtime):
    task = _task()
    command = ("sh", "-c", "echo out; echo err >&2; exit 3")
    runtime.run(task, RunSpec(BUSYBOX, command=command, env={"X": "1"}), labels={})

    def exited():
        state = runtime.status(task)
        assert state.status == "exited", state.status
        return state

    state = _poll(exited, "container exit")
    assert state.exit_code == 3
    assert state.finished_at is not None and state.started_at is not None
    assert sorted(runtime.logs(task).split()) == [b"err", b"out"]  # stdout and stderr
    assert runtime.logs(task, tail=1).strip() in (b"out", b"err")
    assert runtime.stop(task).exit_code == 3


def test_duplicate_task_is_refused(runtime):
    task = _task()
    runtime.run(task, RunSpec(BUSYBOX, command=SLEEP), labels={})
    with pytest.raises(Refused):
        runtime.run(task, RunSpec(BUSYBOX, command=SLEEP), labels={})


def test_unknown_task(runtime):
    with pytest.raises(TaskNotFound):
        runtime.stop(_task())
    with pytest.raises(TaskNotFound):
        runtime.logs(_task())
    runtime.remove(_task())  # no error
