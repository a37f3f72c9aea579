"""The seed's whole job as a user runs it: installed executables, the real Docker engine."""

from __future__ import annotations

import re
import socket
import subprocess
import threading
import time
import urllib.request

import pytest

from tests.conftest import needs_docker
from tests.harness import wait_for

pytestmark = needs_docker

_ENDPOINT = re.compile(r"(\d+)/(tcp|udp)->([\d.]+):(\d+)")


def _containers(net, *, all_: bool = True) -> list[str]:
    args = ["docker", "ps", "-q", "--filter", f"label=sonm.test={net.test_label}"]
    if all_:
        args.insert(2, "-a")
    return subprocess.run(args, capture_output=True, text=True, check=True).stdout.split()


def _udp_ask(host: str, port: int, payload: bytes) -> bytes:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.settimeout(0.5)
        s.sendto(payload, (host, port))
        return s.recv(2048)


@pytest.fixture
def hub_and_miner(net):
    hub = net.hub()
    miner = net.miner(hub, "m1")
    wait_for(lambda: miner.node_id in hub.online(), "miner listed")
    return hub, miner


def test_start_reach_and_stop_a_container(net, hub_and_miner):
    hub, miner = hub_and_miner
    res = hub.cli(
        "--timeout=3000s", "start", "--image", "sonm-test/web", f"--miner={miner.node_id}"
    )
    assert res.returncode == 0, res.stderr
    line = res.stdout.strip()
    m = re.fullmatch(r"ID (\S+), Endpoint \[(.*)\]", line)
    assert m, line
    job = m.group(1)
    eps = {f"{p}/{proto}": (ip, int(port)) for p, proto, ip, port in _ENDPOINT.findall(m.group(2))}
    assert set(eps) == {"8080/tcp", "9090/udp"}, line

    web_host, web_port = eps["8080/tcp"]
    page = wait_for(
        lambda: urllib.request.urlopen(f"http://{web_host}:{web_port}/", timeout=2).read(),
        "the task's web page",
    )
    assert b"hello from a sonm task" in page
    answer = wait_for(lambda: _udp_ask(*eps["9090/udp"], b"ping"), "the task's UDP echo")
    assert answer == b"echo: ping"

    # the container is the miner's, labelled with the task and the miner
    [cid] = _containers(net, all_=False)
    labels = subprocess.run(
        ["docker", "inspect", "-f", "{{json .Config.Labels}}", cid],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    assert job in labels and miner.node_id in labels

    listed = hub.cli_json("list")["miners"]
    assert [m["task_ids"] for m in listed if m["node_id"] == miner.node_id] == [[job]]

    stop = hub.cli("stop", job)
    assert stop.returncode == 0, stop.stderr
    assert _containers(net) == []  # gone from `docker ps -a`
    status = hub.cli_json("status", job)
    assert status["state"] == "STOPPED" and status["exit_code"] == 0  # stopped gracefully


def test_bad_images_are_refused_and_leave_nothing(net, hub_and_miner):
    hub, miner = hub_and_miner
    noentry = hub.cli("start", "--image", "sonm-test/noentry", f"--miner={miner.node_id}")
    assert noentry.returncode == 6, noentry.stderr
    assert "neither ENTRYPOINT nor CMD" in noentry.stderr

    t0 = time.monotonic()
    missing = hub.cli("start", "--image", "127.0.0.1:1/nope:missing", f"--miner={miner.node_id}")
    assert missing.returncode == 3, missing.stderr
    assert "127.0.0.1:1/nope:missing" in missing.stderr and "Traceback" not in missing.stderr
    assert time.monotonic() - t0 < 30
    assert _containers(net) == []


class _SilentRegistry:
    """A TCP server on 127.0.0.1 that accepts and never answers: a pull from it hangs."""

    def __init__(self) -> None:
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(16)
        self.port = self.sock.getsockname()[1]
        self.conns: list[socket.socket] = []
        self.accepted = threading.Event()
        threading.Thread(target=self._serve, daemon=True).start()

    def _serve(self) -> None:
        while True:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            self.conns.append(conn)
            self.accepted.set()

    def close(self) -> None:
        self.sock.close()
        for c in self.conns:
            c.close()


def test_miner_that_dies_during_a_start_fails_the_call_without_orphans(net, hub_and_miner):
    hub, miner = hub_and_miner
    registry = _SilentRegistry()
    try:
        image = f"127.0.0.1:{registry.port}/slow/image:1"
        start = subprocess.Popen(
            hub.cli_argv(
                "--timeout", "120s", "start", "--image", image, f"--miner={miner.node_id}"
            ),
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        assert registry.accepted.wait(30), "the miner never started pulling"
        miner.proc.kill9()
        out, err = start.communicate(timeout=30)  # fails promptly, no hang
        assert start.returncode == 4, (start.returncode, err)
        assert "miner" in err and "Traceback" not in err
        tasks = hub.cli_json("tasks")["tasks"]
        assert [t["state"] for t in tasks] == ["FAILED"]
    finally:
        registry.close()
    assert _containers(net) == []
