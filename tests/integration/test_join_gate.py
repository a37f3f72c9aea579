"""Joins on real libp2p hosts: a node with ``max_joining`` serves a crowd of peers that connect
and open sessions at once a few at a time, every one of them to the end; and a dial by address
alone probes the peer's ID once, not at every dial (the hub of a miner started with
``--hub HOST:PORT`` restarting saw three Noise handshakes per miner where one does).
"""

from __future__ import annotations

import socket
import threading
from concurrent import futures

from sonm_p2p.identity import Identity
from sonm_p2p.transport.addrs import parse_target
from sonm_p2p.transport.node import NodeOptions, P2PNode, SharedLoop
from tests.harness import wait_for

PROTO = "/sonm/test-session/1.0.0"
LOCAL = ("/ip4/127.0.0.1/tcp/0",)
LISTEN = NodeOptions(listen=LOCAL)


def _join(node: P2PNode, target: str) -> object:
    return node.open_session(node.connect(target), PROTO)


def test_a_crowd_joins_a_few_at_a_time_and_every_session_opens() -> None:
    crowd, limit = 16, 3
    hub = P2PNode(Identity.generate(), NodeOptions(listen=LOCAL, max_joining=limit))
    lock = threading.Lock()
    opened: list[str] = []
    joining: list[int] = []

    def on_open(peer: str) -> None:
        with lock:
            joining.append(hub.core.joins.joining)  # this one included
            opened.append(peer)

    hub.accept_sessions(PROTO, on_open, lambda peer: None)
    hub.start()
    loop = SharedLoop("joiners")
    nodes = [P2PNode(Identity.generate(), LISTEN, loop=loop) for _ in range(crowd)]
    try:
        for node in nodes:
            node.start()
        target = hub.addrs[0]
        with futures.ThreadPoolExecutor(crowd) as pool:
            jobs = [pool.submit(_join, n, target) for n in nodes]
            sessions = [job.result(timeout=60) for job in jobs]
        wait_for(lambda: len(opened) == crowd, f"{crowd} sessions opened", timeout=30)
        assert sorted(opened) == sorted(n.peer_id for n in nodes)
        assert 1 <= max(joining) <= limit, joining
        assert hub.core.joins.waiting == 0
        wait_for(lambda: hub.core.joins.joining == 0, "every slot given back", timeout=10)
        for session in sessions:
            session.close()
    finally:
        for node in nodes:
            node.close()
        loop.close()
        hub.close()


class CountingProxy:
    """A TCP relay on 127.0.0.1 that counts the connections made through it (each a handshake
    at the node behind it); ``target`` may be changed between connections."""

    def __init__(self, target: tuple[str, int]) -> None:
        self.target = target
        self.accepted = 0
        self._listener = socket.create_server(("127.0.0.1", 0))
        self.port = self._listener.getsockname()[1]
        self._socks: list[socket.socket] = [self._listener]
        self._thread = threading.Thread(target=self._accept, daemon=True)
        self._thread.start()

    def _accept(self) -> None:
        while True:
            try:
                client, _ = self._listener.accept()
            except OSError:
                return
            self.accepted += 1
            try:
                upstream = socket.create_connection(self.target, timeout=5)
            except OSError:
                client.close()
                continue
            self._socks += [client, upstream]
            for a, b in ((client, upstream), (upstream, client)):
                threading.Thread(target=_pump, args=(a, b), daemon=True).start()

    def close(self) -> None:
        for sock in self._socks:
            try:
                sock.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
            sock.close()
        self._thread.join(timeout=5)


def _pump(src: socket.socket, dst: socket.socket) -> None:
    try:
        while data := src.recv(65536):
            dst.sendall(data)
    except OSError:
        pass
    finally:
        try:
            dst.shutdown(socket.SHUT_WR)
        except OSError:
            pass


def _tcp(node: P2PNode) -> tuple[str, int]:
    maddr, _ = parse_target(node.addrs[0])
    parts = maddr.split("/")
    return parts[2], int(parts[4])


def test_a_dial_by_address_probes_the_peer_id_once_and_again_only_when_the_key_changed(
    p2p_nodes: list[P2PNode],
) -> None:
    first, second, dialer = (P2PNode(Identity.generate(), NodeOptions(listen=LOCAL)) for _ in "abc")
    p2p_nodes += [first, second, dialer]
    for node in p2p_nodes:
        node.start()
    proxy = CountingProxy(_tcp(first))
    try:
        target = f"127.0.0.1:{proxy.port}"
        assert dialer.connect(target) == first.peer_id
        assert proxy.accepted == 2  # the probe, then the connection
        dialer.disconnect(first.peer_id)
        wait_for(lambda: not dialer.is_connected(first.peer_id), "disconnected", timeout=10)
        assert dialer.connect(target) == first.peer_id
        assert proxy.accepted == 3  # no probe: the ID learned there
        assert dialer.connect(target) == first.peer_id  # connected already: no dial at all
        assert proxy.accepted == 3

        dialer.disconnect(first.peer_id)
        wait_for(lambda: not dialer.is_connected(first.peer_id), "disconnected", timeout=10)
        proxy.target = _tcp(second)  # another key at the same address now
        assert dialer.connect(target) == second.peer_id  # the old ID failed: probed again
        dialer.disconnect(second.peer_id)
        wait_for(lambda: not dialer.is_connected(second.peer_id), "disconnected", timeout=10)
        before = proxy.accepted
        assert dialer.connect(target) == second.peer_id
        assert proxy.accepted == before + 1  # the new ID learned
    finally:
        proxy.close()
