"""Decoding the Docker engine's answers and the events watcher, without an engine."""

from __future__ import annotations

import queue
import subprocess
import sys
import threading

import pytest
import requests.exceptions

from sonm_p2p.errors import ImageNotFound, RuntimeFailure
from sonm_p2p.miner import _docker_events as de
from sonm_p2p.miner import _docker_payloads as dp
from sonm_p2p.miner.runtime import TASK_LABEL
from sonm_p2p.model import PublishedPort
from sonm_p2p.supervisor import Supervisor

WEB = "sonm-test/web:latest"


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
        ("write /var/lib/docker/tmp: no space left on device", RuntimeFailure, "miner's log"),
    ],
)
def test_pull_failures_say_why(message, error, says):
    failure = dp._pull_failure("img:tag", message)
    assert type(failure) is error
    assert says in str(failure)
    assert "img:tag" in str(failure)


def test_what_a_registry_answered_is_not_echoed_to_clients():
    body = "<html>internal admin page: secret=hunter2</html>"
    for message in (f"error parsing HTTP 404 response body: {body}", f"unknown: {body}"):
        failure = dp._pull_failure("10.0.0.5/x:1", message)
        assert "hunter2" not in str(failure)


def test_docker_state_from_inspect():
    state = dp._docker_state(
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
    state = dp._docker_state({"State": {"Status": "running", "ExitCode": 0}})
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
    tally = dp._PullTally("img", interval=0)
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
    tally = dp._PullTally("img", interval=0.1)
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
    assert dp._cpu_percent(stats) == pytest.approx(80.0)  # 2000/10000 of 4 cores
    assert dp._memory_used(stats) == 6_000
    assert dp._cpu_percent({"cpu_stats": {}, "precpu_stats": {}}) == 0.0
    assert dp._memory_used({"memory_stats": {"usage": 5, "stats": {"total_inactive_file": 9}}}) == 5
    assert dp._host_limits({"HostConfig": {"NanoCpus": 1_500_000_000, "Memory": 7}}) == (1.5, 7)
    assert dp._host_limits({"HostConfig": {"CpuQuota": 50_000, "CpuPeriod": 100_000}}) == (0.5, 0)
    assert dp._host_limits({}) == (0.0, 0)


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
    monkeypatch.setattr(de, "_WATCH_BACKOFF", (0.01, 0.05))
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
    supervisor = Supervisor("test")
    watch = de._EventWatch(api, {"type": ["container"]}, lambda t, a: seen.put((t, a)), supervisor)
    stop = watch.close
    got = [seen.get(timeout=5) for _ in range(3)]
    assert got == [("t1", "start"), ("t1", "die"), ("t2", "start")]
    assert api.calls[0]["since"] == "1704067200.500000000"  # the engine's time when subscribing
    assert api.calls[2]["since"] == "1704067201.000000007"  # resumes at the last event seen
    stop()
    stop()  # idempotent
    assert last._closed.is_set()
    assert seen.empty()  # the replayed "die" was not reported twice
    assert not [t for t in threading.enumerate() if t.name.startswith("test:")]  # joined
    supervisor.close()


def test_runtime_imports_neither_implementation_nor_docker():
    # runtime.py is what both implementations import: it must not import them back (the old
    # lazy-import circle) nor pull in the docker SDK for code that only names the protocol.
    code = (
        "import sys\n"
        "import sonm_p2p.miner.runtime, sonm_p2p.model, sonm_p2p._convert, sonm_p2p.client\n"
        "assert 'docker' not in sys.modules, 'docker SDK imported'\n"
        "assert 'sonm_p2p.miner.docker_runtime' not in sys.modules\n"
        "assert 'sonm_p2p.miner.memory_runtime' not in sys.modules\n"
        "assert 'sonm_p2p.miner.miner' not in sys.modules\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True, timeout=60)


@pytest.mark.parametrize("first", ["docker_runtime", "memory_runtime", "runtime", "daemon"])
def test_miner_modules_import_in_any_order(first):
    code = (
        f"import sonm_p2p.miner.{first}\n"
        "from sonm_p2p.miner.docker_runtime import DockerRuntime\n"
        "from sonm_p2p.miner.memory_runtime import MemoryRuntime\n"
        "from sonm_p2p.miner.runtime import ContainerRuntime\n"
        "assert isinstance(MemoryRuntime(), ContainerRuntime)\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True, timeout=60)
