"""`sonmcli forward`: a task's ports through the overlay, as a user behind anything reaches them."""

from __future__ import annotations

import json
import socket
import subprocess
import urllib.request

from tests.conftest import needs_docker
from tests.harness import BIN, sonmcli, wait_for

pytestmark = needs_docker


def _forward(hub, home, *args) -> tuple[subprocess.Popen, str, int]:
    """Start `sonmcli --json forward ...`; return it and the local address it printed."""
    proc = subprocess.Popen(
        [
            str(BIN / "sonmcli"),
            "--home",
            str(home),
            "--hub",
            hub.grpc_target,
            "--json",
            "forward",
            *args,
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    lines: list[str] = []
    while not lines or lines[-1].strip() != "}":
        line = proc.stdout.readline()
        if not line:
            proc.wait(10)
            raise AssertionError(f"forward exited {proc.returncode}: {proc.stderr.read()}")
        lines.append(line)
    info = json.loads("".join(lines))
    assert info["path"] in ("direct", "relayed", "hole-punched"), info
    host, port = info["local"].rsplit(":", 1)
    return proc, host, int(port)


def test_forward_tcp_and_udp_to_a_task(net):
    hub = net.hub()
    m1 = net.miner(hub, "m1")
    wait_for(lambda: m1.node_id in hub.online(), "miner listed")
    res = hub.cli("start", "--image", "sonm-test/web", f"--miner={m1.node_id}")
    assert res.returncode == 0, res.stderr
    job = res.stdout.split()[1].rstrip(",")

    tcp, host, port = _forward(hub, net.root / "client", job, "8080/tcp")
    udp = None
    try:
        page = wait_for(
            lambda: urllib.request.urlopen(f"http://{host}:{port}/", timeout=3).read(),
            "the page through the forward",
        )
        assert b"hello from a sonm task" in page
        udp, uhost, uport = _forward(hub, net.root / "client", job, "9090/udp")
        _check_udp(uhost, uport)
    finally:
        for proc in (tcp, udp):
            if proc is not None:
                proc.terminate()
                assert proc.wait(10) is not None

    # someone else's forward is refused, with a clear error
    other = sonmcli(
        "--hub", hub.grpc_target, "forward", job, "8080/tcp", home=net.root / "mallory", timeout=60
    )
    assert other.returncode == 8, other.stderr
    assert "owner" in other.stderr
    missing = sonmcli(
        "--hub", hub.grpc_target, "forward", job, "1234/tcp", home=net.root / "client", timeout=60
    )
    assert missing.returncode == 3 and "1234/tcp" in missing.stderr


def _check_udp(uhost: str, uport: int) -> None:
    def ask() -> bytes:
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
            s.settimeout(1)
            s.sendto(b"ping", (uhost, uport))
            return s.recv(2048)

    assert wait_for(ask, "the UDP echo through the forward") == b"echo: ping"
