"""`sonmcli forward` classifies the user's NAT (STUN against the hub) and, behind a symmetric NAT,
skips the hole punch that cannot work (root only: network namespaces behind Linux NAT routers).

No Docker: the miner runs the in-memory runtime, and the task's published port is served by a
small TCP listener in the miner's namespace at the address the miner reports for it, so the
bytes that come back through the forward prove the whole path works.
"""

from __future__ import annotations

import json
import socket
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from sonm_p2p.devnet.topology import Greeter, Host, NatKind, NsHub, NsMiner, Topology, UdpEcho
from tests.harness import Proc

pytestmark = pytest.mark.root

#: A forward must print where it listens within this many seconds of starting.
FORWARD_BOUND = 15.0
#: Seconds in which py-libp2p never trims a new connection (ConnectionConfig.grace_period).
LIBP2P_GRACE = 20.0


@dataclass
class World:
    topo: Topology
    hub: NsHub
    miner: NsMiner
    user_eim: Host  # behind an endpoint-independent NAT
    user_sym: Host  # behind a symmetric NAT
    owner: Path  # the client home whose key owns the task
    job: str


@pytest.fixture(scope="module")
def world(_netns_problem, tmp_path_factory) -> Iterator[World]:
    if _netns_problem is not None:
        pytest.skip(f"needs root and network namespaces ({_netns_problem})")
    topo = Topology(tmp_path_factory.mktemp("forward-nat"))
    service: Greeter | None = None
    echo: UdpEcho | None = None
    try:
        hub_host = topo.public_host("hub", addresses=2)  # RFC 5780 STUN: NAT types can be told
        miner_host = topo.nat("mnat", NatKind.ENDPOINT_INDEPENDENT).hosts[0]
        user_eim = topo.nat("unat", NatKind.ENDPOINT_INDEPENDENT).hosts[0]
        user_sym = topo.nat("snat", NatKind.SYMMETRIC).hosts[0]
        hub = hub_host.start_hub()
        miner = miner_host.start_miner(hub.p2p_target)  # the in-memory runtime
        owner = topo.workdir / "owner"

        def listed() -> bool:
            res = user_eim.sonmcli("--hub", hub.grpc_target, "--json", "list", home=owner)
            miners = json.loads(res.stdout)["miners"] if res.returncode == 0 else []
            return any(m["node_id"] == miner.node_id and m["online"] for m in miners)

        topo.wait(listed, "the miner listed", timeout=60)
        res = user_eim.sonmcli(
            "--hub", hub.grpc_target, "--json", "start", "--image", "sonm-test/web",
            f"--miner={miner.node_id}", home=owner,
        )  # fmt: skip
        assert res.returncode == 0, res.stderr
        started = json.loads(res.stdout.strip().splitlines()[-1])
        tcp = next(e for e in started["endpoints"] if e["port"] == "8080/tcp")
        service = Greeter(miner_host, (tcp["host"], tcp["host_port"]), hold=True)
        udp = next(e for e in started["endpoints"] if e["port"] == "9090/udp")
        echo = UdpEcho(miner_host, (udp["host"], udp["host_port"]))
        yield World(topo, hub, miner, user_eim, user_sym, owner, started["id"])
    except BaseException:
        print(topo.logs())
        raise
    finally:
        for server in (service, echo):
            if server is not None:
                server.close()
        topo.close()


def _printed_json(proc: Proc) -> dict | None:
    out = proc.output()
    start = out.find("{\n")  # --json output is indented; log lines never start so
    return json.JSONDecoder().raw_decode(out[start:])[0] if start >= 0 else None


def _printed_text(proc: Proc) -> list[str] | None:
    lines = proc.output().splitlines()
    at = next((i for i, line in enumerate(lines) if line.startswith("forwarding ")), None)
    return lines[at : at + 2] if at is not None and len(lines) > at + 1 else None


def forward(
    w: World,
    user: Host,
    name: str,
    *,
    as_json: bool = True,
    job: str = "",
    ports: tuple[str, ...] = ("8080/tcp",),
) -> tuple[Proc, object]:
    """Start ``sonmcli forward JOB PORTS`` on ``user``; it and what it printed."""
    flags = ["--json"] if as_json else []
    proc = user.spawn_sonmcli(
        name, "--hub", w.hub.grpc_target, *flags, "forward", job or w.job, *ports, home=w.owner
    )
    printed = _printed_json if as_json else _printed_text
    out = w.topo.wait(
        lambda: printed(proc), f"{name} to listen", FORWARD_BOUND, every=0.02, watch=[proc]
    )
    return proc, out


def greeting(user: Host, local: str) -> bytes:
    host, port = local.rsplit(":", 1)
    with user.connect((host, int(port)), timeout=10) as conn:
        conn.shutdown(socket.SHUT_WR)  # a holding greeter closes after its greeting then
        chunks = []
        while chunk := conn.recv(4096):
            chunks.append(chunk)
    return b"".join(chunks)


class Flow:
    """One UDP client of a forward at ``local``: a flow the forward carries on one stream for as
    long as it is used (a game's session)."""

    def __init__(self, user: Host, local: str) -> None:
        host, port = local.rsplit(":", 1)
        self.target = (host, int(port))
        self.sock = user.socket(kind=socket.SOCK_DGRAM)
        self.sock.settimeout(5)
        self.sent = 0

    def ping(self) -> bytes:
        """One datagram there and back (no retry: a lost one is a broken flow)."""
        self.sent += 1
        payload = b"ping %d" % self.sent
        self.sock.sendto(payload, self.target)
        try:
            return self.sock.recvfrom(65535)[0]
        except TimeoutError:
            return b""

    def close(self) -> None:
        self.sock.close()


class Session:
    """One TCP connection through a forward at ``local`` to the holding greeter, kept open (a
    game's session): each :meth:`echo` is a round trip on it."""

    def __init__(self, user: Host, local: str) -> None:
        host, port = local.rsplit(":", 1)
        self.conn = user.connect((host, int(port)), timeout=10)
        self.sent = 0
        got = b""
        while len(got) < len(Greeter.GREETING) and (chunk := self.conn.recv(4096)):
            got += chunk
        assert got == Greeter.GREETING, got

    def echo(self) -> bool:
        self.sent += 1
        payload = b"ping %05d" % self.sent
        try:
            self.conn.sendall(payload)
            got = b""
            while len(got) < len(payload) and (chunk := self.conn.recv(4096)):
                got += chunk
        except OSError:
            return False
        return got == payload

    def close(self) -> None:
        self.conn.close()


@pytest.mark.parametrize("nat", ["eim", "sym"])
def test_two_forwards_of_one_key_at_once_both_keep_working(world, nat):
    """Two `sonmcli forward` processes of one client key (one SONM home) from behind a
    port-preserving NAT (or a symmetric one: both relayed), as a game server's TCP and UDP ports
    need: the second's connections (to the miner, to the hub's relay) must not cost the first
    its own, nor the session it carries. With the client's key as both processes' peer ID, the
    miner kept one connection per peer ID and closed the first's, session and all."""
    user = world.user_eim if nat == "eim" else world.user_sym
    first, a = forward(world, user, f"fwd-pair-tcp-{nat}")
    session = Session(user, a["local"])
    try:
        # In use past the 20 s in which libp2p never trims a new connection.
        until = time.monotonic() + LIBP2P_GRACE + 2
        while time.monotonic() < until:
            assert session.echo(), first.output()
        second, b = forward(world, user, f"fwd-pair-udp-{nat}", ports=("9090/udp",))
        flow = Flow(user, b["local"])
        try:
            # Both keep working through the seconds in which the second upgrades its path.
            until = time.monotonic() + 12
            while time.monotonic() < until:
                assert session.echo(), first.output()
                assert flow.ping() == b"ping %d" % flow.sent, second.output()
            assert first.alive() and second.alive()
            assert a["peer"] != b["peer"], (a, b)  # each process is a peer of its own
        finally:
            flow.close()
            assert second.stop() == 0, second.output()
    finally:
        session.close()
        assert first.stop() == 0, first.output()


def _printed_list(proc: Proc) -> list | None:
    out = proc.output()
    start = out.find("[\n")
    return json.JSONDecoder().raw_decode(out[start:])[0] if start >= 0 else None


def test_one_forward_carries_several_ports(world):
    """`sonmcli forward JOB 8080/tcp 9090/udp --local ...`: a game server's TCP and UDP ports at
    once, one line each (text), one object each (--json: a list), over one connection."""
    user = world.user_eim
    proc = user.spawn_sonmcli(
        "fwd-multi", "--hub", world.hub.grpc_target, "--json", "forward", world.job,
        "8080/tcp", "9090/udp", "--local", "127.0.0.1:28080", home=world.owner,
    )  # fmt: skip
    try:
        tcp, udp = world.topo.wait(
            lambda: _printed_list(proc), "fwd-multi to listen", FORWARD_BOUND, watch=[proc]
        )
        assert (tcp["port"], tcp["local"], udp["port"]) == (
            "8080/tcp", "127.0.0.1:28080", "9090/udp"
        ), (tcp, udp)  # fmt: skip
        assert tcp["peer"] == udp["peer"] and tcp["path"] == udp["path"], (tcp, udp)
        assert greeting(user, tcp["local"]) == Greeter.GREETING
        flow = Flow(user, udp["local"])
        try:
            assert [flow.ping() for _ in range(3)] == [b"ping 1", b"ping 2", b"ping 3"]
        finally:
            flow.close()
    finally:
        assert proc.stop() == 0, proc.output()
    text = user.spawn_sonmcli(
        "fwd-multi-text", "--hub", world.hub.grpc_target, "forward", world.job,
        "8080/tcp", "9090/udp", home=world.owner,
    )  # fmt: skip
    try:
        lines = world.topo.wait(
            lambda: (out := text.output().splitlines()) and any(
                line.startswith("NAT here") for line in out
            ) and out,
            "fwd-multi-text to listen", FORWARD_BOUND, watch=[text],
        )  # fmt: skip
        shown = [line for line in lines if line.startswith(("forwarding ", "NAT here"))]
        assert len(shown) == 3, lines
        assert " 8080/tcp on miner " in shown[0] and " 9090/udp on miner " in shown[1], lines
        assert shown[1].endswith("; Ctrl-C stops") and shown[2].startswith("NAT here: "), lines
    finally:
        assert text.stop() == 0, text.output()


def test_behind_a_symmetric_nat_the_punch_is_skipped_and_the_relay_used(world):
    proc, info = forward(world, world.user_sym, "fwd-sym")
    try:
        assert info["nat_type"] == "symmetric" and info["nat_error"] is None, info
        assert info["punch_skipped"] is True, info
        assert info["path"] == "relayed", info
        assert "/p2p-circuit" in info["remote"], info
        assert greeting(world.user_sym, info["local"]) == Greeter.GREETING
    finally:
        assert proc.stop() == 0, proc.output()


def test_the_text_output_says_so_too(world):
    proc, lines = forward(world, world.user_sym, "fwd-sym-text", as_json=False)
    try:
        assert "(relayed path)" in lines[0], lines
        assert lines[1].startswith(
            "NAT here: symmetric, at the miner: endpoint-independent; hole punch skipped"
        ), lines
    finally:
        assert proc.stop() == 0, proc.output()


def test_behind_an_endpoint_independent_nat_the_punch_is_tried(world):
    proc, info = forward(world, world.user_eim, "fwd-eim")
    try:
        assert info["nat_type"] == "endpoint-independent" and info["nat_error"] is None, info
        assert info["miner_nat_type"] == "endpoint-independent", info
        assert info["punch_skipped"] is False, info
        # A punch is a race: hole-punched when it wins within the wait, relayed meanwhile if not.
        assert info["path"] in ("hole-punched", "relayed"), info
        assert greeting(world.user_eim, info["local"]) == Greeter.GREETING
    finally:
        assert proc.stop() == 0, proc.output()


def test_a_stun_failure_does_not_stop_the_forward(world):
    user = world.user_eim
    # The hub's STUN answers never arrive, as behind a firewall that blocks UDP.
    drop = ["INPUT", "-p", "udp", "-s", world.hub.host.ip, "-j", "DROP"]
    drop_alt = ["INPUT", "-p", "udp", "-s", world.hub.host.addrs[1], "-j", "DROP"]
    for rule in (drop, drop_alt):
        assert user.run("iptables", "-A", *rule).returncode == 0
    try:
        proc, info = forward(world, user, "fwd-no-stun")
        try:
            assert info["nat_type"] == "unknown", info
            assert "no answer from the hub's STUN responder" in info["nat_error"], info
            assert info["punch_skipped"] is False, info
            assert greeting(user, info["local"]) == Greeter.GREETING
        finally:
            assert proc.stop() == 0, proc.output()
        text, lines = forward(world, user, "fwd-no-stun-text", as_json=False)
        text.stop()
        assert lines[1].startswith("NAT here: unknown (no answer from the hub's STUN"), lines
    finally:
        for rule in (drop, drop_alt):
            user.run("iptables", "-D", *rule)


def test_towards_a_miner_behind_a_symmetric_nat_the_punch_is_skipped(world):
    # These routers answer stray SYNs with a RST (a Linux router with no rule): the birthday
    # punch's coordination finds both NATs rejecting and sends no SYN, so the relay is kept.
    # test_birthday_product.py has routers that drop them, where the path goes direct.
    # The miner classifies its own NAT against the hub's STUN responder when the hub first
    # calls it; the hub lists it, and a forward does not punch towards it.
    host = world.topo.nat("msym", NatKind.SYMMETRIC).hosts[0]
    miner = host.start_miner(world.hub.p2p_target, "miner-sym")
    node_id = miner.node_id
    service = None
    try:

        def listed() -> dict | None:
            res = world.user_eim.sonmcli(
                "--hub", world.hub.grpc_target, "--json", "list", home=world.owner
            )
            miners = json.loads(res.stdout)["miners"] if res.returncode == 0 else []
            return next((m for m in miners if m["node_id"] == node_id and m["online"]), None)

        m = world.topo.wait(listed, "the miner behind a symmetric NAT listed", timeout=60)
        assert m["nat_type"] == "symmetric", m
        res = world.user_eim.sonmcli(
            "--hub", world.hub.grpc_target, "--json", "start", "--image", "sonm-test/web",
            f"--miner={node_id}", home=world.owner,
        )  # fmt: skip
        assert res.returncode == 0, res.stderr
        started = json.loads(res.stdout.strip().splitlines()[-1])
        tcp = next(e for e in started["endpoints"] if e["port"] == "8080/tcp")
        service = Greeter(host, (tcp["host"], tcp["host_port"]))
        proc, info = forward(world, world.user_eim, "fwd-to-sym", job=started["id"])
        try:
            assert info["nat_type"] == "endpoint-independent", info
            assert info["miner_nat_type"] == "symmetric", info
            assert info["punch_skipped"] is True and info["path"] == "relayed", info
            assert greeting(world.user_eim, info["local"]) == Greeter.GREETING
        finally:
            assert proc.stop() == 0, proc.output()
    finally:
        if service is not None:
            service.close()
        miner.proc.stop()
