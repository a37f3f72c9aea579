"""Birthday-paradox punching between an endpoint-independent NAT and a symmetric one (root only).

Real nodes (``node_agent.py``, one process each) behind real Linux NAT routers: MASQUERADE
(port-preserving) and ``--random-fully`` (symmetric), each router either dropping unsolicited
inbound SYNs or answering them with a RST (``Inbound``). The nodes are told their NAT types as
STUN would have told them (no hub here: ``test_product_nat`` covers the hub telling them).
"""

from __future__ import annotations

import time
from collections.abc import Iterator

import pytest

from sonm_p2p.devnet.topology import Inbound, NatKind, Topology
from tests.harness import wait_for
from tests.netns.node_agent import Agent

pytestmark = pytest.mark.root

EIM, SYM = NatKind.ENDPOINT_INDEPENDENT, NatKind.SYMMETRIC
NAT_TYPE = {EIM: "endpoint-independent", SYM: "symmetric"}
#: Seconds connect_peer may wait for the punch (generous: the machine may be loaded).
WAIT = 20.0


class World:
    def __init__(self, topo: Topology) -> None:
        self.topo = topo
        relay_host = topo.public_host("relay")
        self.relay = Agent(
            relay_host, "relay", {"listen": [f"/ip4/{relay_host.ip}/tcp/4001"], "relay": True}
        )
        self._routers: dict[tuple[NatKind, Inbound, str], object] = {}
        self.agents: list[Agent] = []

    def node(
        self, kind: NatKind, inbound: Inbound, *, router: str = "", **options: object
    ) -> Agent:
        """A fresh node behind a fresh host of the (kind, inbound, router) router."""
        key = (kind, inbound, router)
        name = f"{'e' if kind is EIM else 's'}{inbound.value[0]}{router}"
        router = self._routers.get(key)
        if router is None:
            router = self._routers[key] = self.topo.nat(name, kind, hosts=0, inbound=inbound)
        host = router.add_host()  # type: ignore[attr-defined]
        agent = Agent(host, f"{host.name}", {"nat_type": NAT_TYPE[kind], **options})
        agent.call("serve")
        self.agents.append(agent)
        return agent

    def reachable(self, agent: Agent) -> list[str]:
        agent.call("reserve", relay=self.relay.listen[0])
        return agent.call("advertised")


@pytest.fixture(scope="module")
def world(_netns_problem, tmp_path_factory) -> Iterator[World]:
    if _netns_problem is not None:
        pytest.skip(f"needs root and network namespaces ({_netns_problem})")
    topo = Topology(tmp_path_factory.mktemp("birthday"))
    try:
        yield World(topo)
    finally:
        topo.close()


@pytest.fixture
def net(world: World, request) -> Iterator[World]:
    yield world
    rep = getattr(request.node, "rep_call", None)
    if rep is not None and rep.failed:
        print(world.topo.logs())


def punch(
    net: World, client: Agent, server: Agent, remote_nat: str | None
) -> tuple[dict, dict, dict, float]:
    """``client`` reaches ``server`` by the ladder, told the server's NAT type (as a hub tells a
    client the miner's); the path, each side's punch outcome, and the seconds it took."""
    addrs = net.reachable(server)
    began = time.perf_counter()
    out = client.call(
        "connect_peer", peer=server.peer_id, addrs=addrs, upgrade_wait=WAIT, remote_nat=remote_nat
    )
    took = time.perf_counter() - began
    mine = client.call("birthday", peer=server.peer_id)
    theirs = None
    if mine is not None:  # the server's side ends on its own (its upgrade, its stream)
        theirs = wait_for(
            lambda: server.call("birthday", peer=client.peer_id), "the server's punch to end"
        )
    print(f"\n{out['path']['kind']} after {took:.2f} s; client {mine}; server {theirs}")
    return out, mine, theirs, took


def check_forward(client: Agent, server: Agent) -> None:
    host, port, key = client.call("open_forward", peer=server.peer_id, task="echo", port=7)
    result = client.call("tcp_transfer", addr=[host, port], size=1 << 20, timeout=90)
    assert result["ok"], result
    client.call("close_forward", key=key)


@pytest.mark.parametrize(
    ("client_kind", "client_inbound", "server_kind", "server_inbound", "first"),
    [
        # neither NAT rejects: the hard side opens its mappings first
        (EIM, Inbound.DROP, SYM, Inbound.DROP, "hard"),
        (SYM, Inbound.DROP, EIM, Inbound.DROP, "hard"),
        # the side behind the rejecting NAT must move first
        (EIM, Inbound.REJECT, SYM, Inbound.DROP, "easy"),
        (SYM, Inbound.DROP, EIM, Inbound.REJECT, "easy"),
        (SYM, Inbound.REJECT, EIM, Inbound.DROP, "hard"),
        (EIM, Inbound.DROP, SYM, Inbound.KERNEL, "hard"),
    ],
    ids=["eim-sym", "sym-eim", "eim_rej-sym", "sym-eim_rej", "sym_rej-eim", "eim-sym_rst"],
)
def test_birthday_punch_makes_a_direct_path(
    net, client_kind, client_inbound, server_kind, server_inbound, first
):
    client = net.node(client_kind, client_inbound)
    server = net.node(server_kind, server_inbound)
    out, mine, theirs, _ = punch(net, client, server, NAT_TYPE[server_kind])
    assert mine is not None and mine["tried"], mine
    assert mine["first"] == first and theirs["first"] == first, (mine, theirs)
    assert mine["ok"] and theirs["ok"], (mine, theirs)
    assert out["path"]["kind"] == "hole-punched", out
    # the far end is the other NAT's public address, not the relay
    assert not out["path"]["remote"].startswith(f"/ip4/{net.relay.listen[0].split('/')[2]}/")
    assert server.call("path", peer=client.peer_id)["kind"] == "hole-punched"
    hard = mine if mine["side"] == "hard" else theirs
    easy = theirs if hard is mine else mine
    assert 0 < hard["sockets"] <= 256 and 0 < easy["sockets"] <= 2048, (mine, theirs)
    check_forward(client, server)
    assert client.call("path", peer=server.peer_id)["kind"] == "hole-punched"


def test_both_nats_rejecting_keep_the_relay_quickly(net):
    client = net.node(EIM, Inbound.REJECT)
    server = net.node(SYM, Inbound.REJECT)
    out, mine, theirs, took = punch(net, client, server, "symmetric")
    assert out["path"]["kind"] == "relayed", out
    assert mine is not None and not mine["tried"] and "RST" in mine["reason"], mine
    assert theirs is not None and not theirs["tried"], theirs
    assert mine["sockets"] == 0 and theirs["sockets"] == 0
    # no sweep: the coordination only (a probe's RST comes back at once); the 2 s sweep window
    # plus its coordination would be well above this even on an idle machine
    assert mine["seconds"] < 5.0, mine
    check_forward(client, server)


def test_no_birthday_punch_keeps_the_relay(net):
    client = net.node(EIM, Inbound.DROP, birthday_punch=False)
    server = net.node(SYM, Inbound.DROP)
    out, mine, theirs, _ = punch(net, client, server, "symmetric")
    assert out["path"]["kind"] == "relayed", out
    assert mine is None and theirs is None
    check_forward(client, server)


def test_two_symmetric_nats_never_try(net):
    client = net.node(SYM, Inbound.DROP)
    server = net.node(SYM, Inbound.DROP, router="2")  # not on one LAN: no direct path
    out, mine, theirs, _ = punch(net, client, server, "symmetric")
    assert out["path"]["kind"] == "relayed", out
    assert mine is None and theirs is None


def test_a_peer_of_unknown_nat_type_is_asked_after_dcutr_failed(net):
    """The client knows only its own NAT type: DCUtR is tried, fails, then the coordination
    learns that the server is symmetric and the birthday punch goes direct."""
    client = net.node(EIM, Inbound.DROP)
    server = net.node(SYM, Inbound.DROP)
    out, mine, theirs, _ = punch(net, client, server, None)
    assert mine is not None and mine["ok"] and theirs["ok"], (mine, theirs)
    assert out["path"]["kind"] == "hole-punched", out
    check_forward(client, server)
