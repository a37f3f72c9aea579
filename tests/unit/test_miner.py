"""The miner's domain on the in-memory runtime: logs, per-task start gates, and a whole miner
daemon in-process leaving no thread behind when closed."""

from __future__ import annotations

import socket
import threading
import time
from concurrent import futures

import pytest

from sonm_p2p.errors import ImageNotFound, InvalidRequest, Refused, TaskNotFound
from sonm_p2p.miner.daemon import MinerDaemon, MinerOptions
from sonm_p2p.miner.memory_runtime import MemoryRuntime
from sonm_p2p.miner.miner import Miner, Offer
from sonm_p2p.miner.runtime import LogStream
from sonm_p2p.model import LogQuery, RunSpec

WEB = "sonm-test/web:latest"


@pytest.fixture
def runtime() -> MemoryRuntime:
    return MemoryRuntime(images={WEB: (["8080/tcp"], True)}, labels={"sonm.miner": "0xminer"})


@pytest.fixture
def miner(runtime, tmp_path) -> Miner:
    made = Miner("0xminer", runtime, logs_dir=tmp_path / "logs")
    yield made
    made.close()


def _start(miner: Miner, task_id: str) -> None:
    miner.start(task_id, RunSpec(WEB), owner="0xowner", hub_id="0xhub", timeout=10)


# --- logs ----------------------------------------------------------------------------------------


def test_logs_of_a_running_task_is_a_closable_stream(miner, runtime):
    _start(miner, "t1")
    runtime.write_output("t1", b"one\ntwo\n")
    stream = miner.logs(LogQuery("t1", tail=1))
    assert isinstance(stream, LogStream)
    assert b"".join(stream) == b"two\n"
    follow = miner.logs(LogQuery("t1", follow=True))
    assert next(follow) == b"one\ntwo\n"
    follow.close()  # ends the follow, as the servicer does when the hub goes away
    assert list(follow) == []


@pytest.mark.parametrize(("tail", "expected"), [(None, b"a\nb\nc\n"), (2, b"b\nc\n"), (0, b"")])
def test_logs_of_a_stopped_task_come_from_its_kept_file_as_a_stream(miner, runtime, tail, expected):
    _start(miner, "t1")
    runtime.write_output("t1", b"a\nb\nc\n")
    miner.stop("t1")  # the container is gone; its output is kept
    with pytest.raises(TaskNotFound):
        runtime.status("t1")
    stream = miner.logs(LogQuery("t1", tail=tail))
    assert isinstance(stream, LogStream)  # what the docstring promises: close() on every path
    assert b"".join(stream) == expected
    stream.close()
    stream.close()  # idempotent
    closed = miner.logs(LogQuery("t1"))
    closed.close()
    assert list(closed) == []


def test_logs_of_an_unknown_task_is_not_found(miner):
    with pytest.raises(TaskNotFound):
        miner.logs(LogQuery("ghost"))


# --- start gates ---------------------------------------------------------------------------------


def test_start_gates_are_dropped_after_many_starts_and_stops(miner, runtime):
    for i in range(200):
        _start(miner, f"t{i}")
        miner.stop(f"t{i}")
    with pytest.raises(ImageNotFound):  # a failed start leaves nothing either
        miner.start("bad", RunSpec("nope:1"), owner="", hub_id="", timeout=10)
    assert miner._starting == {}


def test_concurrent_starts_of_one_task_share_a_gate_then_drop_it(miner, runtime):
    entered = threading.Event()
    release = threading.Event()
    real_ensure = runtime.ensure_image

    def slow_ensure(image, **kwargs):
        entered.set()
        release.wait(5)
        return real_ensure(image, **kwargs)

    runtime.ensure_image = slow_ensure  # type: ignore[method-assign]
    with futures.ThreadPoolExecutor(4) as pool:
        starts = [pool.submit(_start, miner, "same") for _ in range(4)]
        assert entered.wait(5)
        assert list(miner._starting) == ["same"]  # one gate for every caller of this ID
        release.set()
        for start in starts:
            start.result(timeout=10)
    assert [s.task_id for s in runtime.list()] == ["same"]  # started once
    assert miner._starting == {}


# --- a whole daemon ------------------------------------------------------------------------------


def _unused_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def test_miner_daemon_close_leaves_no_thread_it_started(tmp_path):
    before = set(threading.enumerate())
    options = MinerOptions(
        home=tmp_path,
        hub=f"127.0.0.1:{_unused_port()}",  # nobody there: the link keeps retrying
        mdns=False,
        listen=("/ip4/127.0.0.1/tcp/0",),
        publish_ip="127.0.0.1",
        runtime="memory",
    )
    daemon = MinerDaemon(options)
    daemon.start()
    time.sleep(0.5)  # the link has dialled and is backing off
    assert set(threading.enumerate()) - before, "the daemon runs threads of its own"
    daemon.close()
    daemon.close()  # idempotent
    # grpc's Server.stop() returns a moment before its own helper thread has ended.
    deadline = time.monotonic() + 2.0
    while (left := [t for t in set(threading.enumerate()) - before if t.is_alive()]) and (
        time.monotonic() < deadline and all("after_grace" in t.name for t in left)
    ):
        time.sleep(0.01)
    assert left == [], left


# --- the offer -----------------------------------------------------------------------------------


def test_a_task_that_names_no_limit_gets_and_counts_the_default_share(runtime):
    miner = Miner("0xminer", runtime, offer=Offer(cpus=2, memory_bytes=4 << 30))
    try:
        for task_id in ("t1", "t2"):
            _start(miner, task_id)
            assert runtime.limits(task_id) == (1.0, 512 << 20)  # never unlimited
        with pytest.raises(Refused, match="0 of 2 are free"):
            _start(miner, "t3")
        assert miner.status_report().cpus_allocated == 2.0
    finally:
        miner.close()


@pytest.mark.parametrize(("cpus", "memory"), [(1e-12, 0), (0, 1)])
def test_a_share_of_nothing_is_refused(miner, cpus, memory):
    spec = RunSpec(WEB, cpus=cpus, memory_bytes=memory)
    with pytest.raises(InvalidRequest, match="at least 0.01 CPUs and 6 MiB"):
        miner.start("t1", spec, owner="0xowner", hub_id="0xhub", timeout=10)


def test_concurrent_starts_cannot_exceed_the_offer(runtime):
    miner = Miner("0xminer", runtime, offer=Offer(cpus=4, memory_bytes=4 << 30, default_cpus=1))
    try:
        with futures.ThreadPoolExecutor(16) as pool:
            results = list(pool.map(lambda i: _outcome(lambda: _start(miner, f"t{i}")), range(16)))
        assert results.count("ok") == 4 and results.count("Refused") == 12
    finally:
        miner.close()


def _outcome(fn) -> str:
    try:
        fn()
        return "ok"
    except Exception as exc:
        return type(exc).__name__
