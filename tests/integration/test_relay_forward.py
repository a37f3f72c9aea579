"""Relays, the dial ladder and ``/sonm/forward/1.0.0`` over real libp2p hosts on 127.0.0.1.

Several P2PNodes in this process: a relay, a server that reserves on it (a miner), clients that
dial it directly or through the relay's circuit address (sonmcli). The targets are real TCP/UDP
servers on 127.0.0.1 (an HTTP server, echo servers).
"""

from __future__ import annotations

import contextlib
import hashlib
import http.server
import os
import socket
import threading
import time
import urllib.request
from collections.abc import Iterator
from typing import Any

import pytest

from sonm_p2p.auth import peer_grant
from sonm_p2p.errors import DialError, NotFound, PermissionDenied, TaskNotFound, Unavailable
from sonm_p2p.identity import Identity
from sonm_p2p.transport.dial_ladder import PathKind, UpgradePolicy
from sonm_p2p.transport.forward import (
    ForwardRequest,
    PortSpec,
    TaskForward,
    TaskForwarder,
    open_forward,
    requester,
    serve_forward,
)
from sonm_p2p.transport.node import NodeOptions, P2PNode
from sonm_p2p.transport.relay import RelayOptions, RelayRefused
from tests.harness import wait_for

LOCAL = ("/ip4/127.0.0.1/tcp/0",)
PAGE = b"<html><body>hello from task web</body></html>\n" * 50
NO_UPGRADE = UpgradePolicy(max_attempts=0)
#: Seconds in which py-libp2p never trims a new connection (ConnectionConfig.grace_period).
LIBP2P_GRACE = 20.0


class Targets:
    """An HTTP server, a TCP echo and a UDP echo on 127.0.0.1; a resolver for them."""

    def __init__(self) -> None:
        class Page(http.server.BaseHTTPRequestHandler):
            def do_GET(self) -> None:  # noqa: N802 - http.server's name
                self.send_response(200)
                self.send_header("Content-Length", str(len(PAGE)))
                self.end_headers()
                self.wfile.write(PAGE)

            def log_message(self, *args: Any) -> None:
                pass

        self.http = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Page)
        self.tcp = socket.create_server(("127.0.0.1", 0))
        self.udp = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.udp.bind(("127.0.0.1", 0))
        closed = socket.create_server(("127.0.0.1", 0))
        self.closed_port = closed.getsockname()[1]
        closed.close()
        self.owner: str | None = None
        self._threads = [
            threading.Thread(target=self.http.serve_forever, daemon=True),
            threading.Thread(target=self._tcp_echo, daemon=True),
            threading.Thread(target=self._udp_echo, daemon=True),
        ]
        for t in self._threads:
            t.start()

    def _tcp_echo(self) -> None:
        def serve(conn: socket.socket) -> None:
            with conn:
                while data := conn.recv(1 << 16):
                    conn.sendall(data)
                conn.shutdown(socket.SHUT_WR)

        while True:
            try:
                conn, _ = self.tcp.accept()
            except OSError:
                return
            threading.Thread(target=serve, args=(conn,), daemon=True).start()

    def _udp_echo(self) -> None:
        while True:
            try:
                data, addr = self.udp.recvfrom(65535)
                self.udp.sendto(data, addr)
            except OSError:
                return

    def resolve(self, peer: str, request: ForwardRequest) -> tuple[str, int]:
        """What a miner would do: task ID + container port -> published host port, owner only."""
        if request.task_id not in ("web", "echo", "down"):
            raise TaskNotFound(f"no task {request.task_id}")
        if self.owner is not None and peer != self.owner:
            raise PermissionDenied(f"task {request.task_id} belongs to someone else")
        published = {
            ("web", 80, "tcp"): self.http.server_address[1],
            ("echo", 7, "tcp"): self.tcp.getsockname()[1],
            ("echo", 7, "udp"): self.udp.getsockname()[1],
            ("down", 80, "tcp"): self.closed_port,
        }
        port = published.get((request.task_id, request.port, str(request.proto)))
        if port is None:
            raise NotFound(f"task {request.task_id} publishes no {request.port}/{request.proto}")
        return "127.0.0.1", port

    def close(self) -> None:
        self.http.shutdown()
        self.http.server_close()
        self.tcp.close()
        self.udp.close()


class Nodes:
    """P2PNodes of one test; closed (and checked to leave no thread) at teardown."""

    def __init__(self) -> None:
        self.nodes: list[P2PNode] = []

    def __call__(self, **options: Any) -> P2PNode:
        node = P2PNode(Identity.generate(), NodeOptions(listen=LOCAL, dial_timeout=5, **options))
        node.start()
        self.nodes.append(node)
        return node

    def close(self) -> None:
        for node in reversed(self.nodes):
            node.close()


@pytest.fixture
def nodes() -> Iterator[Nodes]:
    made = Nodes()
    yield made
    made.close()
    wait_for(
        lambda: not [t for t in threading.enumerate() if t.name == "p2p-node"],
        "every node thread to end",
        timeout=10,
    )


@pytest.fixture
def targets() -> Iterator[Targets]:
    t = Targets()
    yield t
    t.close()


@pytest.fixture
def relayed(nodes: Nodes, targets: Targets) -> tuple[P2PNode, P2PNode, P2PNode]:
    """(relay, server reserved on it and serving forwards, client reaching it relayed only)."""
    relay = nodes(relay_service=RelayOptions())
    server = nodes()
    serve_forward(server, targets.resolve)
    server.reserve(relay.addrs[0])
    client = nodes(upgrade=NO_UPGRADE)
    circuit = [a for a in server.advertised_addrs if "/p2p-circuit" in a]
    assert circuit, server.advertised_addrs
    path = client.connect_peer(server.peer_id, circuit)
    assert path.kind is PathKind.RELAYED and path.relay_id == relay.peer_id
    return relay, server, client


def echo_bytes(addr: tuple[str, int], payload: bytes) -> bytes:
    """Send ``payload``, half-close, and read the echo until the far end closes."""
    with socket.create_connection(addr, timeout=20) as conn:
        sender = threading.Thread(
            target=lambda: (conn.sendall(payload), conn.shutdown(socket.SHUT_WR))
        )
        sender.start()
        got = bytearray()
        while data := conn.recv(1 << 20):
            got += data
        sender.join()
    return bytes(got)


def fetch(addr: tuple[str, int]) -> bytes:
    with urllib.request.urlopen(f"http://{addr[0]}:{addr[1]}/", timeout=20) as resp:
        return resp.read()


def udp_round_trips(addr: tuple[str, int], datagrams: list[bytes]) -> list[bytes]:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        sock.settimeout(10)
        out = []
        for d in datagrams:
            sock.sendto(d, addr)
            out.append(sock.recvfrom(65535)[0])
        return out


def check_forwards(client: P2PNode, server: P2PNode) -> None:
    payload = os.urandom(3 << 20)
    with open_forward(client, server.peer_id, "web", 80) as web:
        assert fetch(web.local_addr) == PAGE
        assert fetch(web.local_addr) == PAGE  # each connection is a new stream
    with open_forward(client, server.peer_id, "echo", 7) as echo:
        assert echo_bytes(echo.local_addr, payload) == payload  # intact, half-close passed on
        assert echo_bytes(echo.local_addr, b"") == b""
        assert echo.connections == 2 and echo.errors == []
    datagrams = [b"", b"x", os.urandom(1400), os.urandom(60000)]
    with open_forward(client, server.peer_id, "echo", 7, "udp") as udp:
        assert udp_round_trips(udp.local_addr, datagrams) == datagrams
        assert udp_round_trips(udp.local_addr, [b"second client"]) == [b"second client"]
        assert udp.connections == 2


def test_forward_tcp_http_and_udp_direct(nodes, targets):
    server = nodes()
    serve_forward(server, targets.resolve)
    client = nodes()
    path = client.connect_peer(server.peer_id, server.advertised_addrs)
    assert path.kind is PathKind.DIRECT
    assert path.remote == server.addrs[0].split("/p2p/")[0]
    check_forwards(client, server)
    measured = client.path(server.peer_id)
    assert measured is not None and measured.kind is PathKind.DIRECT and 0 < measured.rtt < 1


def test_forward_through_a_relay(nodes, targets, relayed):
    relay, server, client = relayed
    check_forwards(client, server)
    path = client.path(server.peer_id)
    assert path is not None and path.kind is PathKind.RELAYED and 0 < path.rtt < 1
    # The server sees the same circuit, named after the relay (py-libp2p names itself).
    back = server.path(client.peer_id, rtt=False)
    assert back.kind is PathKind.RELAYED and back.relay_id == relay.peer_id


def test_two_processes_of_one_key_forward_at_once_each_with_its_own_peer_id(nodes, targets):
    """What `sonmcli forward` does (two of them, one client key): each process's node has a peer
    ID of its own and sends the owner's grant for it; the serving side takes the owner as the
    requester (``requester``, as the miner does), and both forwards, a held TCP connection and a
    UDP flow, work at once."""
    owner = Identity.generate()
    server = nodes()
    served = server.identity.node_id

    def resolve(peer: str, request: ForwardRequest) -> tuple[str, int]:
        if requester(peer, request, node_id=served) != owner.node_id:
            raise PermissionDenied(f"task {request.task_id} belongs to someone else")
        return targets.resolve(peer, request)

    serve_forward(server, resolve)
    first, second = nodes(), nodes()  # two processes
    for node in (first, second):
        node.connect_peer(server.peer_id, server.advertised_addrs)
        assert node.peer_id != server.peer_id

    def grant(node: P2PNode, audience: str = served) -> str:
        return peer_grant(owner, node.peer_id, audience)

    with open_forward(first, server.peer_id, "echo", 7, grant=grant(first)) as tcp:
        with socket.create_connection(tcp.local_addr, timeout=10) as held:
            held.sendall(b"before")
            assert held.recv(6) == b"before"
            udp = open_forward(second, server.peer_id, "echo", 7, "udp", grant=grant(second))
            with udp:
                assert udp_round_trips(udp.local_addr, [b"a", b"b"]) == [b"a", b"b"]
                held.sendall(b"after")
                assert held.recv(5) == b"after"
    assert server.is_connected(first.peer_id) and server.is_connected(second.peer_id)
    # A grant holds for its own peer and node only; without one a process is only itself.
    for bad in (grant(first), grant(second, audience=first.identity.node_id)):
        with pytest.raises(PermissionDenied, match="grant"):
            open_forward(second, server.peer_id, "echo", 7, grant=bad)
    with pytest.raises(PermissionDenied, match="someone else"):
        open_forward(second, server.peer_id, "echo", 7)


def test_two_task_forwarders_of_one_key_keep_each_others_sessions(nodes, targets):
    """`sonmcli forward` twice with one client key (TaskForwarder, as the CLI runs it): a TCP
    session held through the first survives the second's connection past libp2p's 20 s grace,
    after which a second connection of one peer ID makes the server close the older one (when
    each process used the client's key as its peer ID, the first's session was reset)."""
    owner = Identity.generate()
    server = nodes()

    def resolve(peer: str, request: ForwardRequest) -> tuple[str, int]:
        if requester(peer, request, node_id=server.identity.node_id) != owner.node_id:
            raise PermissionDenied(f"task {request.task_id} belongs to someone else")
        return targets.resolve(peer, request)

    serve_forward(server, resolve)
    forwarders = []

    def forward(proto: str) -> TaskForward:
        forwarder = TaskForwarder(list, listen=LOCAL)
        forwarders.append(forwarder)
        (opened,) = forwarder.open(
            owner, peer_id=server.peer_id, multiaddrs=server.advertised_addrs,
            miner_id=server.identity.node_id, miner_nat_type="", task_id="echo",
            ports=[PortSpec(7, proto)],
        )  # fmt: skip
        return opened

    try:
        first = forward("tcp")
        with socket.create_connection(first.forward.local_addr, timeout=10) as held:

            def echo(data: bytes) -> bytes:
                held.sendall(data)
                return held.recv(len(data))

            until = time.monotonic() + LIBP2P_GRACE + 1
            while time.monotonic() < until:  # in use past the grace period
                assert echo(b"first") == b"first"
            second = forward("udp")
            assert udp_round_trips(second.forward.local_addr, [b"second"]) == [b"second"]
            until = time.monotonic() + 2
            while time.monotonic() < until:
                assert echo(b"still") == b"still"
        assert second.peer != first.peer  # each a peer of its own, neither the owner's key
    finally:
        for forwarder in forwarders:
            forwarder.close()


def test_refused_requests_raise_clear_errors(nodes, targets):
    server = nodes()
    serve_forward(server, targets.resolve)
    client = nodes()
    client.connect_peer(server.peer_id, server.advertised_addrs)
    with pytest.raises(TaskNotFound, match="no task nope"):
        open_forward(client, server.peer_id, "nope", 80)
    with pytest.raises(NotFound, match="publishes no 81/tcp"):
        open_forward(client, server.peer_id, "web", 81)
    with pytest.raises(Unavailable, match="not reachable"):
        open_forward(client, server.peer_id, "down", 80)
    targets.owner = "16Uiu2HAmSomebodyElse"
    with pytest.raises(PermissionDenied, match="someone else"):
        open_forward(client, server.peer_id, "web", 80)
    # Without the up-front check the user's connection is reset and the forward says why.
    with open_forward(client, server.peer_id, "web", 80, check=False) as fwd:
        with socket.create_connection(fwd.local_addr, timeout=10) as conn:
            conn.sendall(b"GET / HTTP/1.0\r\n\r\n")
            with pytest.raises(ConnectionResetError):
                while conn.recv(1024):
                    pass
        wait_for(lambda: fwd.errors, "the refusal to be recorded", timeout=10)
        assert "someone else" in fwd.errors[-1]


def test_dial_errors_name_every_attempt(nodes):
    relay = nodes(relay_service=RelayOptions())
    lonely = nodes()
    client = nodes()
    circuit = f"{relay.addrs[0]}/p2p-circuit/p2p/{lonely.peer_id}"
    with pytest.raises(DialError) as info:
        client.connect_peer(lonely.peer_id, ["/ip4/127.0.0.1/tcp/1", circuit])
    text = str(info.value)
    assert "direct /ip4/127.0.0.1/tcp/1" in text and "no reservation" in text
    stranger = nodes()
    with pytest.raises(DialError, match="no usable address"):
        client.connect_peer(stranger.peer_id, ["/ip4/0.0.0.0/tcp/5"])


def test_relay_limits_and_reservation_refresh(nodes):
    relay = nodes(relay_service=RelayOptions(max_reservations=1, reservation_ttl=2))
    first, second = nodes(), nodes()
    res = first.reserve(relay.addrs[0])
    assert res.active and res.circuit_addrs == [f"{relay.addrs[0]}/p2p-circuit/p2p/{first.peer_id}"]
    with pytest.raises(RelayRefused, match="resource limit") as info:
        second.reserve(relay.addrs[0])
    assert info.value.status == 201 and second.reservations == []
    # Refreshed at half the TTL, so it never lapses.
    wait_for(lambda: res.refreshes >= 3, "two refreshes", timeout=10)
    assert res.active and res.expires_at > time.time()
    res.cancel()
    wait_for(lambda: first.reservations == [], "the reservation to be dropped", timeout=5)
    assert first.advertised_addrs == [f"{first.addrs[0]}"]


def test_a_peer_holding_a_session_is_relayed_to_without_reserving(nodes, targets):
    """A hub relays to the miners that hold a session with it, none of which reserves (a
    RESERVE exchange per joining miner was a sixth of a hub's CPU per join); once the session
    ends, the relay refuses circuits to that peer again."""
    relay = nodes(relay_service=RelayOptions())
    relay.accept_sessions("/test/session/1.0.0", lambda peer: None, lambda peer: None)
    server = nodes()
    serve_forward(server, targets.resolve)
    hub_id = server.connect(relay.addrs[0])
    circuit = [f"{relay.addrs[0]}/p2p-circuit/p2p/{server.peer_id}"]
    refused = nodes(upgrade=NO_UPGRADE)
    with pytest.raises(DialError, match="no reservation"):
        refused.connect_peer(server.peer_id, circuit)

    session = server.open_session(hub_id, "/test/session/1.0.0")
    client = nodes(upgrade=NO_UPGRADE)
    path = client.connect_peer(server.peer_id, circuit)
    assert path.kind is PathKind.RELAYED and path.relay_id == relay.peer_id
    assert server.reservations == []  # the server never reserved
    with open_forward(client, server.peer_id, "web", 80) as web:
        assert fetch(web.local_addr) == PAGE

    session.close()
    wait_for(lambda: session.closed.is_set(), "the session to end", timeout=10)
    late = nodes(upgrade=NO_UPGRADE)
    with pytest.raises(DialError, match="no reservation"):
        late.connect_peer(server.peer_id, circuit)


def test_reserve_on_from_node_options(nodes):
    relay = nodes(relay_service=RelayOptions())
    host, port = relay.addrs[0].split("/")[2], relay.addrs[0].split("/")[4]
    server = nodes(reserve_on=(f"{host}:{port}",))
    wait_for(
        lambda: any("/p2p-circuit" in a for a in server.advertised_addrs),
        "the background reservation",
        timeout=10,
    )


def test_a_client_leaving_does_not_cut_another_clients_circuit(nodes, targets, relayed):
    # py-libp2p 0.8.1 keyed circuits by peer: the first client to leave closed the second's.
    relay, server, first = relayed
    second = nodes(upgrade=NO_UPGRADE)
    circuit = [a for a in server.advertised_addrs if "/p2p-circuit" in a]
    assert second.connect_peer(server.peer_id, circuit).kind is PathKind.RELAYED
    with open_forward(second, server.peer_id, "echo", 7) as echo:
        with socket.create_connection(echo.local_addr, timeout=10) as held:
            held.sendall(b"before")
            assert held.recv(6) == b"before"
            fwd = open_forward(first, server.peer_id, "echo", 7)
            assert echo_bytes(fwd.local_addr, b"first") == b"first"
            first.close()  # its circuit ends
            wait_for(lambda: not server.is_connected(first.peer_id), "the first circuit to end", 10)
            held.sendall(b"after")
            assert held.recv(5) == b"after"


def stream_counts(node: P2PNode, peer_id: str) -> dict[str, int]:
    """Streams on ``node``'s connections to ``peer_id``, by kind."""

    async def count() -> dict[str, int]:
        from libp2p.peer.id import ID

        counts = {"relayed": 0, "direct": 0}
        for conn in node.core.host.get_network().get_connections(ID.from_base58(peer_id)):
            relayed = any("/p2p-circuit" in str(a) for a in conn.get_transport_addresses())
            counts["relayed" if relayed else "direct"] += len(conn.get_streams())
        counts["connections"] = len(
            node.core.host.get_network().get_connections(ID.from_base58(peer_id))
        )
        return counts

    return node.run(count)


def test_upgrade_moves_new_streams_and_lets_old_ones_finish(nodes, targets, relayed):
    relay, server, client = relayed
    with open_forward(client, server.peer_id, "echo", 7) as echo:
        with socket.create_connection(echo.local_addr, timeout=10) as held:
            held.sendall(b"relayed")
            assert held.recv(7) == b"relayed"
            assert stream_counts(server, client.peer_id)["relayed"] >= 1
            assert client.upgrade(server.peer_id) is True
            path = client.path(server.peer_id)
            assert path.kind is PathKind.HOLE_PUNCHED
            assert server.path(client.peer_id, rtt=False).kind is PathKind.HOLE_PUNCHED
            # A new connection through the same forward goes on the direct path ...
            with socket.create_connection(echo.local_addr, timeout=10) as fresh:
                fresh.sendall(b"direct")
                assert fresh.recv(6) == b"direct"
                counts = stream_counts(server, client.peer_id)
                assert counts["direct"] >= 1 and counts["relayed"] >= 1
            # ... and the one opened before the upgrade carries on, on the relayed leg.
            held.sendall(b"still here")
            assert held.recv(10) == b"still here"
        # Once it ends, the idle relayed leg is retired.
        wait_for(
            lambda: stream_counts(client, server.peer_id)["connections"] == 1,
            "the relayed leg to close",
            timeout=10,
        )
        assert client.path(server.peer_id, rtt=False).kind is PathKind.HOLE_PUNCHED
        assert echo_bytes(echo.local_addr, b"x" * 100000) == b"x" * 100000


def test_connect_peer_upgrades_by_itself(nodes, targets):
    relay = nodes(relay_service=RelayOptions())
    server = nodes()
    serve_forward(server, targets.resolve)
    server.reserve(relay.addrs[0])
    client = nodes()
    circuit = [a for a in server.advertised_addrs if "/p2p-circuit" in a]
    path = client.connect_peer(server.peer_id, circuit, upgrade_wait=5)
    assert path.kind is PathKind.HOLE_PUNCHED
    with open_forward(client, server.peer_id, "web", 80) as web:
        assert fetch(web.local_addr) == PAGE


def test_forward_redials_after_the_connection_is_lost(nodes, targets):
    server = nodes()
    serve_forward(server, targets.resolve)
    client = nodes()
    client.connect_peer(server.peer_id, server.advertised_addrs)
    with open_forward(client, server.peer_id, "echo", 7) as echo:
        assert echo_bytes(echo.local_addr, b"one") == b"one"
        client.disconnect(server.peer_id)
        wait_for(lambda: not client.is_connected(server.peer_id), "the disconnect", 5)
        assert echo_bytes(echo.local_addr, b"two") == b"two"  # the ladder dialled again


def test_a_large_relayed_transfer_arrives_intact(nodes, targets, relayed):
    # 32 MiB each way at once through the echo and the relay's pump, checked by hash.
    relay, server, client = relayed
    payload = os.urandom(32 << 20)
    with open_forward(client, server.peer_id, "echo", 7) as echo:
        got = echo_bytes(echo.local_addr, payload)
        assert len(got) == len(payload)
        assert hashlib.sha256(got).digest() == hashlib.sha256(payload).digest()
        assert echo_bytes(echo.local_addr, b"small, after") == b"small, after"
        assert echo.errors == []


def test_the_relay_resets_a_circuit_over_its_byte_budget(nodes):
    # A source that sends 8 MiB to whoever connects, through a relay allowing 2 MiB a circuit.
    source = socket.create_server(("127.0.0.1", 0))

    def send_all() -> None:
        with contextlib.suppress(OSError):
            conn, _ = source.accept()
            with conn:
                conn.sendall(os.urandom(8 << 20))

    threading.Thread(target=send_all, daemon=True).start()
    relay = nodes(relay_service=RelayOptions(circuit_bytes=2 << 20))
    server = nodes()
    serve_forward(server, lambda peer, request: source.getsockname())
    server.reserve(relay.addrs[0])
    client = nodes(upgrade=NO_UPGRADE)
    circuit = [a for a in server.advertised_addrs if "/p2p-circuit" in a]
    assert client.connect_peer(server.peer_id, circuit).kind is PathKind.RELAYED
    try:
        with open_forward(client, server.peer_id, "source", 1, check=False) as fwd:
            with socket.create_connection(fwd.local_addr, timeout=20) as conn:
                got = 0
                with pytest.raises(OSError):  # reset, not a normal end
                    while data := conn.recv(1 << 20):
                        got += len(data)
                    raise AssertionError(f"the circuit ended normally after {got} bytes")
            assert got < 2 << 20
        wait_for(lambda: not client.is_connected(server.peer_id), "the circuit to be reset", 10)
    finally:
        source.close()
