"""NAT traversal at transport level: relays, hole punching, IPv6, and a cut link (root only).

Each node is a P2PNode in its own process inside a namespace (``node_agent.py``: two nodes in one
Python process share a GIL and would take turns instead of racing their SYNs). The internet is
the harness's public segment; the NATs are Linux routers: MASQUERADE (endpoint-independent,
port-preserving) and ``--random-fully`` (symmetric). Such a router answers a SYN that matches no
mapping with a RST, and the emulated links have no latency: the hardest case for a TCP hole
punch, which must then cross the two SYNs within microseconds.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from dataclasses import dataclass

import pytest

from sonm_p2p.devnet.topology import NatKind, Topology
from tests.harness import wait_for
from tests.netns.node_agent import Agent, AgentError

pytestmark = pytest.mark.root

EIM, SYM = NatKind.ENDPOINT_INDEPENDENT, NatKind.SYMMETRIC
UPGRADE_TARGET = 3.0  #: seconds a hole punch between two port-preserving NATs may take


@dataclass
class World:
    topo: Topology
    relay: Agent
    a: Agent  # behind an endpoint-independent NAT
    b: Agent  # behind another endpoint-independent NAT, serves forwards
    s: Agent  # behind a symmetric NAT, serves forwards
    p: Agent  # on the public segment, never hole-punches
    v1: Agent  # IPv6 only
    v2: Agent  # IPv6 only, serves forwards

    @property
    def relay_addr(self) -> str:
        return self.relay.listen[0]

    def reachable(self, agent: Agent) -> list[str]:
        """Reserve ``agent`` on the relay (idempotent); what it advertises then."""
        agent.call("reserve", relay=self.relay_addr)
        return agent.call("advertised")


@pytest.fixture(scope="module")
def world(_netns_problem, tmp_path_factory) -> Iterator[World]:
    if _netns_problem is not None:
        pytest.skip(f"needs root and network namespaces ({_netns_problem})")
    topo = Topology(tmp_path_factory.mktemp("traversal"))
    try:
        relay_host = topo.public_host("relay")
        hosts = {
            "a": topo.nat("eim1", EIM).hosts[0],
            "b": topo.nat("eim2", EIM).hosts[0],
            "s": topo.nat("sym", SYM).hosts[0],
            "p": topo.public_host("pub"),
            "v1": topo.ipv6_host("v6a"),
            "v2": topo.ipv6_host("v6b"),
        }
        v6 = {"listen": ["/ip6/::/tcp/0"]}
        # S never takes part in a birthday punch: these routers answer stray SYNs with a RST
        # (both rejecting: it would not be tried anyway) and here the point is the relay;
        # test_birthday.py punches through routers that drop them.
        no_birthday = {"birthday_punch": False}
        options = {
            "a": {}, "b": {}, "s": no_birthday, "p": {"upgrade_attempts": 0}, "v1": v6, "v2": v6
        }  # fmt: skip
        relay = Agent(
            relay_host, "relay", {"listen": [f"/ip4/{relay_host.ip}/tcp/4001"], "relay": True}
        )
        agents = {k: Agent(h, k, options[k], wait=False) for k, h in hosts.items()}
        for agent in agents.values():
            agent.ready()
        for server in ("b", "s", "v2"):
            agents[server].call("serve")
        yield World(topo, relay, **agents)
    finally:
        topo.close()


@pytest.fixture
def net(world: World, request) -> Iterator[World]:
    """The module's world; its processes' logs are printed when the test fails."""
    yield world
    rep = getattr(request.node, "rep_call", None)
    if rep is not None and rep.failed:
        print(world.topo.logs())


def check_forwards(client: Agent, server: Agent, *, udp: bool = True) -> None:
    host, port, key = client.call("open_forward", peer=server.peer_id, task="echo", port=7)
    result = client.call("tcp_transfer", addr=[host, port], size=2 << 20, timeout=90)
    assert result["ok"], result
    client.call("close_forward", key=key)
    if udp:
        host, port, key = client.call(
            "open_forward", peer=server.peer_id, task="echo", port=7, proto="udp"
        )
        assert client.call("udp_echo", addr=[host, port])["ok"]
        client.call("close_forward", key=key)


def test_hole_punch_between_two_endpoint_independent_nats(net):
    addrs = net.reachable(net.b)
    assert any("/p2p-circuit" in a for a in addrs), addrs
    out = net.a.call("connect_peer", peer=net.b.peer_id, addrs=addrs, upgrade_wait=10)
    tries = [out["upgrade"]]
    # With links of no latency and routers that answer a stray SYN with a RST, a punch is a
    # race the two SYNs sometimes lose (the benchmark counts how often); try again, as the
    # ladder would after its back-off (py-libp2p allows 3 punches per connection).
    while not tries[-1][0] and len(tries) < 3:
        up = net.a.call("upgrade", peer=net.b.peer_id)
        tries.append((up["ok"], up["seconds"]))
    shown = ", ".join(f"{'ok' if ok else 'failed'} {s * 1000:.0f} ms" for ok, s in tries)
    print(f"\nEIM-EIM upgrade: {shown} (connect_peer {out['seconds']:.2f} s)")
    ok, seconds = tries[-1]
    assert ok, tries
    assert seconds < UPGRADE_TARGET + 0.5  # the punch window, plus the DCUtR exchange
    path = net.a.call("path", peer=net.b.peer_id)
    assert path["kind"] == "hole-punched"
    # The far end is B's NAT's public mapping, seen the same way from both sides.
    b_wan = net.topo.routers["eim2"].wan_ip
    assert path["remote"].startswith(f"/ip4/{b_wan}/tcp/")
    assert net.b.call("path", peer=net.a.peer_id)["kind"] == "hole-punched"
    check_forwards(net.a, net.b)
    assert net.a.call("path", peer=net.b.peer_id)["kind"] == "hole-punched"


def test_symmetric_nat_falls_back_to_the_relay(net):
    addrs = net.reachable(net.s)
    out = net.a.call("connect_peer", peer=net.s.peer_id, addrs=addrs, upgrade_wait=10)
    # None: no punch ended within upgrade_wait (a slow machine) or none was tried; either way
    # the relayed path is the one in use
    ok, seconds = out["upgrade"] or (False, None)
    kind = out["path"]["kind"]
    took = "not ended" if seconds is None else f"after {seconds:.2f} s"
    print(f"\nEIM-SYM: punch {'worked' if ok else 'gave up'} ({took}); path {kind}")
    # A punch towards a symmetric NAT nearly always fails (`make bench`: 1 success in 60 tries
    # this session): the relayed path must then be kept, and work. When it does line up, the
    # path is a real direct one, and must work just the same.
    if ok:
        assert kind == "hole-punched", out
    else:
        assert kind == "relayed" and out["path"]["relay_id"] == net.relay.peer_id, out
    check_forwards(net.a, net.s)
    path = net.a.call("path", peer=net.s.peer_id)
    assert path["kind"] == kind and path["rtt_ms"] > 0


def test_node_behind_nat_is_reachable_at_its_relay_address(net):
    addrs = net.reachable(net.s)
    circuit = [a for a in addrs if "/p2p-circuit" in a]
    assert circuit == [f"{net.relay_addr}/p2p-circuit/p2p/{net.s.peer_id}"]
    began = time.monotonic()
    out = net.p.call("connect_peer", peer=net.s.peer_id, addrs=addrs)
    # S's private address is not tried from another network: no dial timeout is paid.
    assert out["path"]["kind"] == "relayed" and time.monotonic() - began < 3
    check_forwards(net.p, net.s, udp=False)


def test_refused_forward_through_the_relay_is_a_clear_error(net):
    addrs = net.reachable(net.s)
    net.p.call("connect_peer", peer=net.s.peer_id, addrs=addrs)
    with pytest.raises(AgentError) as info:
        net.p.call("open_forward", peer=net.s.peer_id, task="secret", port=7)
    assert info.value.kind == "PermissionDenied" and "not yours" in info.value.message
    with pytest.raises(AgentError) as info:
        net.p.call("open_forward", peer=net.s.peer_id, task="echo", port=8)
    assert info.value.kind == "NotFound"


def test_ipv6_peers_connect_directly(net):
    addrs = net.v2.call("advertised")
    assert addrs and all(a.startswith("/ip6/fd00:6e74:") for a in addrs), addrs
    out = net.v1.call("connect_peer", peer=net.v2.peer_id, addrs=addrs)
    assert out["path"]["kind"] == "direct"
    assert out["path"]["remote"].startswith("/ip6/fd00:6e74:")
    check_forwards(net.v1, net.v2)


def test_cut_link_fails_fast_and_the_forward_recovers(topo):
    relay_host = topo.public_host("relay")
    home, office = topo.nat("home", EIM), topo.nat("office", EIM)
    fast = {"keepalive_interval": 1.0, "keepalive_timeout": 2.0}
    listen = {"listen": [f"/ip4/{relay_host.ip}/tcp/4001"], "relay": True}
    relay = Agent(relay_host, "relay", listen)
    user = Agent(home.hosts[0], "user", fast, wait=False)
    miner = Agent(office.hosts[0], "miner", fast, wait=False)
    user.ready()
    miner.ready()
    miner.call("serve")
    miner.call("reserve", relay=relay.listen[0])
    addrs = miner.call("advertised")
    out = user.call("connect_peer", peer=miner.peer_id, addrs=addrs, upgrade_wait=10)
    assert out["path"]["kind"] in ("hole-punched", "relayed")
    host, port, _ = user.call("open_forward", peer=miner.peer_id, task="echo", port=7)
    held = user.call("hold", addr=[host, port])

    office.wan.down()
    try:
        end = user.call("await_end", handle=held, within=20, timeout=30)
    finally:
        office.wan.up()
    print(f"\nlink cut: the user's connection ended ({end['end']}) after {end['after']:.1f} s")
    assert end["end"] in ("ConnectionResetError", "BrokenPipeError", "eof"), end
    assert end["after"] < 10

    def transfer_works() -> bool:
        try:
            result = user.call("tcp_transfer", addr=[host, port], size=1 << 16, within=10)
            return result["ok"]
        except AgentError:
            return False

    began = time.monotonic()
    wait_for(transfer_works, "a forward through the restored link", timeout=40, every=0.5)
    print(f"reconnected {time.monotonic() - began:.1f} s after the link came back")
    assert user.call("path", peer=miner.peer_id)["kind"] in ("hole-punched", "relayed")
