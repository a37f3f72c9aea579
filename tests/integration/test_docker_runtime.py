"""What only DockerRuntime does, against the real engine, with the local sonm-test/* images and,
for pulls, a registry of our own on 127.0.0.1 (Debian's docker-registry): nothing is pulled from
elsewhere. The contract it shares with MemoryRuntime is in ``test_runtime_contract.py``."""

from __future__ import annotations

import http.client
import itertools
import os
import queue
import shutil
import socket
import subprocess
import tempfile
import threading
import time
import urllib.request
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TypeVar

import docker
import pytest

from sonm_p2p.errors import ImageNotFound, ImageNotRunnable, InvalidRequest, TaskNotFound, Timeout
from sonm_p2p.miner.docker_runtime import DockerRuntime
from sonm_p2p.miner.runtime import ContainerRuntime
from sonm_p2p.model import LogQuery, PullProgress, RunSpec
from tests.harness import remove_labelled
from tests.streams import next_event, read_in_thread


def _engine_answers() -> bool:
    try:
        return bool(docker.from_env(timeout=5).ping())
    except Exception:
        return False


pytestmark = [
    pytest.mark.docker,
    pytest.mark.skipif(
        not _engine_answers(), reason="needs a Docker engine: run `make docker images`"
    ),
]

WEB = "sonm-test/web:latest"
NOENTRY = "sonm-test/noentry:latest"
BUSYBOX = "sonm-test/busybox:latest"
SLEEP = ("sleep", "300")
REGISTRY = "/usr/bin/docker-registry"
T = TypeVar("T")
NO_PROXY = urllib.request.build_opener(urllib.request.ProxyHandler({}))


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
    remove_labelled(client, value)


def _runtime(client, test_label, miner: str = "0xminer", **kwargs) -> DockerRuntime:
    labels = {"sonm.test": test_label, "sonm.miner": miner}
    return DockerRuntime(publish_ip="127.0.0.1", labels=labels, client=client, **kwargs)


@pytest.fixture
def runtime(client, test_label) -> Iterator[DockerRuntime]:
    made = _runtime(client, test_label)
    yield made
    made.close()


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

    def fetch() -> bytes:
        url = f"http://127.0.0.1:{ports[8080, 'tcp'].host_port}/"
        with NO_PROXY.open(url, timeout=2) as response:
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


def test_restart_policy_reaches_the_host_config(client, test_label, runtime):
    state = runtime.run(_task(), RunSpec(BUSYBOX, command=SLEEP, restart="on-failure:2"), labels={})
    policy = client.api.inspect_container(state.container_id)["HostConfig"]["RestartPolicy"]
    assert policy == {"Name": "on-failure", "MaximumRetryCount": 2}
    with pytest.raises(InvalidRequest, match="restart policy"):
        runtime.run(_task(), RunSpec(BUSYBOX, command=SLEEP, restart="always:2"), labels={})
    assert len(_ours(client, test_label)) == 1


def test_watch_reports_an_exit_on_its_own(client, test_label, runtime):
    other = _runtime(client, test_label, miner="0xother")
    task = _task()
    events: queue.Queue = queue.Queue()
    unwatch = runtime.watch(lambda task_id, action: events.put((task_id, action)))
    try:
        other.run(_task(), RunSpec(BUSYBOX, command=("true",)), labels={})  # not ours: unseen
        runtime.run(task, RunSpec(BUSYBOX, command=("sh", "-c", "sleep 0.3; exit 4")), labels={})
        seen = next_event(events, (task, "die"), within=3)
        assert seen == [(task, "start"), (task, "die")]
        assert runtime.status(task).exit_code == 4
        runtime.remove(task)
        assert next_event(events, (task, "destroy"), within=3) == [(task, "destroy")]
    finally:
        started = time.monotonic()
        unwatch()
        assert time.monotonic() - started < 2  # closes the stream, joins the thread
    unwatch()  # idempotent
    assert not [t for t in threading.enumerate() if t.name == "docker-runtime:watch"]


def test_stream_logs_follow_can_be_closed_from_another_thread(runtime):
    task = _task()
    ticker = "i=0; while true; do echo line $i; i=$((i+1)); sleep 0.1; done"
    runtime.run(task, RunSpec(BUSYBOX, command=("sh", "-c", ticker)), labels={})
    stream = runtime.stream_logs(LogQuery(task, follow=True, stderr=False))
    chunks, reader = read_in_thread(stream)
    got = b"".join(chunks.get(timeout=5) for _ in range(3))
    assert got.startswith(b"line 0\n") and got.count(b"\n") >= 3
    started = time.monotonic()
    stream.close()
    reader.join(5)
    assert not reader.is_alive()
    assert time.monotonic() - started < 2
    # Without follow the stream ends by itself; tail limits where it starts.
    assert b"".join(runtime.stream_logs(LogQuery(task, tail=1))).count(b"\n") == 1
    with pytest.raises(TaskNotFound):
        runtime.stream_logs(LogQuery(_task()))


def test_usage_and_limits_of_a_running_task(runtime):
    task = _task()
    runtime.run(task, RunSpec(WEB, cpus=0.5, memory_bytes=64 << 20), labels={})
    assert runtime.limits(task) == (0.5, 64 << 20)

    def used():
        usage = runtime.usage(task)
        assert usage.memory_bytes > 0, usage
        return usage

    usage = _poll(used, "memory use")
    assert (usage.task_id, usage.memory_limit, usage.cpus_limit) == (task, 64 << 20, 0.5)
    assert usage.cpu_percent >= 0.0
    with pytest.raises(TaskNotFound):
        runtime.usage(_task())
    with pytest.raises(TaskNotFound):
        runtime.limits(_task())


def test_stop_without_remove_keeps_the_logs(runtime):
    task = _task()
    script = "trap 'echo bye; exit 0' TERM; echo hello; while true; do sleep 0.1; done"
    runtime.run(task, RunSpec(BUSYBOX, command=("sh", "-c", script)), labels={})

    def greeted() -> None:
        assert b"hello" in runtime.logs(task)

    _poll(greeted, "first output")  # the trap is set by then
    final = runtime.stop(task, grace=5, remove=False)
    assert (final.status, final.exit_code) == ("exited", 0)
    assert runtime.logs(task).split() == [b"hello", b"bye"]
    assert runtime.status(task).exit_code == 0
    runtime.remove(task)
    with pytest.raises(TaskNotFound):
        runtime.logs(task)


# --- pulls from a registry of our own ------------------------------------------------------------


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.fixture
def registry() -> Iterator[str]:
    """``127.0.0.1:<port>``: a docker-registry of our own with temporary storage."""
    if not os.access(REGISTRY, os.X_OK):
        pytest.skip(f"{REGISTRY} missing: apt-get install docker-registry")
    workdir = Path(tempfile.mkdtemp(prefix="sonm-registry-"))
    address = f"127.0.0.1:{_free_port()}"
    (workdir / "config.yml").write_text(
        "version: 0.1\n"
        "log:\n  level: error\n"
        f"storage:\n  filesystem:\n    rootdirectory: {workdir / 'data'}\n"
        f"http:\n  addr: {address}\n"
    )
    log = (workdir / "registry.log").open("wb")
    process = subprocess.Popen(
        [REGISTRY, "serve", str(workdir / "config.yml")], stdout=log, stderr=subprocess.STDOUT
    )
    try:

        def answers() -> None:
            assert process.poll() is None, (workdir / "registry.log").read_text()
            with NO_PROXY.open(f"http://{address}/v2/", timeout=2) as response:
                assert response.status == 200

        _poll(answers, "the registry answering", within=15)
        yield address
    finally:
        process.terminate()
        try:
            process.wait(5)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(5)
        log.close()
        shutil.rmtree(workdir, ignore_errors=True)


@pytest.fixture
def pushed_image(client, registry, test_label) -> Iterator[str]:
    """An image only ``registry`` has: sonm-test/web plus a layer of random bytes, pushed, then
    removed locally (its sonm-test/web layers stay local: the engine reports them as present)."""
    ref = f"{registry}/sonm-test/web:1"
    context = Path(tempfile.mkdtemp(prefix="sonm-image-"))
    try:
        (context / "blob").write_bytes(os.urandom(4 << 20))
        (context / "Dockerfile").write_text(f"FROM {WEB}\nCOPY blob /blob\n")
        client.images.build(path=str(context), tag=ref, rm=True, labels={"sonm.test": test_label})
        for message in client.api.push(
            f"{registry}/sonm-test/web", tag="1", stream=True, decode=True
        ):
            assert "error" not in message, message
        client.images.remove(ref)
        yield ref
    finally:
        shutil.rmtree(context, ignore_errors=True)
        for image in client.images.list(filters={"label": f"sonm.test={test_label}"}):
            client.images.remove(image.id, force=True)


def test_pull_reports_progress(client, runtime, pushed_image):
    reports: list[PullProgress] = []
    runtime.ensure_image(pushed_image, timeout=60, progress=reports.append)
    client.images.get(pushed_image)  # local now
    assert reports, "no progress reported"
    assert any(p.layers_total >= 1 for p in reports)
    final = reports[-1]
    assert final.layers_done == final.layers_total >= 2  # sonm-test/web's layers + the blob
    assert final.current_bytes == final.total_bytes >= 1 << 20  # the blob, compressed
    assert {p.image for p in reports} == {pushed_image}
    assert all(a.current_bytes <= b.current_bytes for a, b in itertools.pairwise(reports))
    reports.clear()
    runtime.ensure_image(pushed_image, progress=reports.append)  # local: no pull, no progress
    assert reports == []


def test_pull_of_an_unknown_tag_says_so(runtime, registry):
    image = f"{registry}/sonm-test/web:nope"
    with pytest.raises(ImageNotFound, match="manifest unknown") as caught:
        runtime.ensure_image(image, timeout=30, progress=lambda p: None)
    assert image in str(caught.value)
