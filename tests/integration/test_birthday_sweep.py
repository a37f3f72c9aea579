"""The birthday punch's sweep engine on loopback: connects paced, counted, handed over."""

from __future__ import annotations

import resource
import socket

import trio

from sonm_p2p.transport._sweep import Sweep, raise_open_files, spare_descriptors


def _listener() -> socket.socket:
    srv = socket.socket()
    srv.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    srv.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
    srv.bind(("127.0.0.1", 0))
    srv.listen(16)
    return srv


def _closed_ports(count: int) -> list[int]:
    """Ports nothing listens on (bound, then released)."""
    socks = [socket.socket() for _ in range(count)]
    try:
        for s in socks:
            s.bind(("127.0.0.1", 0))
        return [s.getsockname()[1] for s in socks]
    finally:
        for s in socks:
            s.close()


def test_sweep_hands_over_what_connects_and_counts_the_rest():
    srv = _listener()
    try:
        port = srv.getsockname()[1]
        targets = [("127.0.0.1", p) for p in _closed_ports(20)]
        targets.insert(7, ("127.0.0.1", port))

        async def main() -> tuple[Sweep, bytes]:
            sweep = Sweep()
            with trio.fail_after(10):
                await sweep.run(targets, rate=2000)
                got = sweep.receive().receive_nowait()
                await got.send_all(b"hi")
                peer, _ = srv.accept()
                data = peer.recv(2)
                peer.close()
                await got.aclose()
            return sweep, data

        sweep, data = trio.run(main)
        assert data == b"hi"
        assert sweep.sockets == 21 and sweep.connected_count == 1
        assert sweep.refused == 20 and sweep.failed == 0
        assert (
            sweep.packets == 20
        )  # one SYN each, answered at once (the connected one: not counted)
    finally:
        srv.close()


def test_sweep_from_a_shared_listen_port():
    """The easy side's probes leave from its listen port, shared by SO_REUSEPORT."""
    srv = _listener()
    target = _listener()
    try:
        source = srv.getsockname()
        port = target.getsockname()[1]

        async def main() -> tuple[str, int]:
            sweep = Sweep()
            with trio.fail_after(10):
                await sweep.run([("127.0.0.1", port)], source=source)
                got = sweep.receive().receive_nowait()
                name = got.socket.getsockname()
                await got.aclose()
            return name

        assert trio.run(main) == source
        peer, addr = target.accept()
        peer.close()
        assert addr == source
    finally:
        srv.close()
        target.close()


def test_sweep_is_paced_by_its_rate():
    targets = [("127.0.0.1", p) for p in _closed_ports(50)]

    async def main() -> float:
        sweep = Sweep()
        began = trio.current_time()
        await sweep.run(targets, rate=100)  # 50 connects at 100/s: about 0.5 s
        return trio.current_time() - began

    assert trio.run(main) >= 0.48


def test_open_files_raised_to_the_hard_limit():
    soft = raise_open_files()
    now_soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    assert soft == now_soft
    assert hard == resource.RLIM_INFINITY or soft == hard
    assert spare_descriptors() > 0
