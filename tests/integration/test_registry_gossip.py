"""Discovery on the registry, in one process: real libp2p nodes on 127.0.0.1 and the real
contract on web3's in-process chain (py-evm).

A node requiring registration, with no bootstrap peer and no mDNS, joins the overlay through
the registry alone; it hears the registered hub, counts the unregistered one's announcements as
dropped (``unregistered``) and never chooses it; the registered hub drops out at the first read
after it deregisters, without waiting for its announcement to expire.
"""

from __future__ import annotations

import dataclasses

import pytest

from sonm_p2p.chain import WEI, ChainSettings
from sonm_p2p.discovery import GossipOptions, HubGossip, hub_announcer
from sonm_p2p.discovery.registry_watch import RegistryWatch
from sonm_p2p.identity import Identity
from sonm_p2p.transport.node import NodeOptions, P2PNode
from tests.harness import wait_for

pytest.importorskip("eth_tester", reason="needs the dev dependencies: make venv")

LOCAL = NodeOptions(listen=("/ip4/127.0.0.1/tcp/0",), dial_timeout=5.0)


@dataclasses.dataclass
class Node:
    identity: Identity
    node: P2PNode
    gossip: HubGossip


def start(nodes: list[Node], *, hub: bool, require: bool = False, boot: tuple = ()) -> Node:
    ident = Identity.generate()
    node = P2PNode(ident, LOCAL)
    announce = hub_announcer(ident, node, grpc_endpoint="127.0.0.1:1") if hub else None
    options = GossipOptions(bootstrap=boot, announce_interval=1.0, require_registered=require)
    n = Node(ident, node, HubGossip(node, options, announce=announce))
    nodes.append(n)
    node.start()
    return n


@pytest.fixture
def nodes():
    out: list[Node] = []
    yield out
    for n in reversed(out):
        n.node.close()


def test_a_node_joins_through_the_registry_and_hears_only_registered_hubs(nodes):
    from web3 import EthereumTesterProvider, Web3

    from sonm_p2p.chain.registry import Registry, deploy

    w3 = Web3(EthereumTesterProvider())

    def fund(ident: Identity) -> None:
        tx = {"from": w3.eth.accounts[0], "to": ident.node_id, "value": 10 * WEI}
        w3.eth.wait_for_transaction_receipt(w3.eth.send_transaction(tx))

    deployer = Identity.generate()
    fund(deployer)
    reg = Registry(w3, deploy(w3, deployer, min_stake=WEI, unlock_delay=60))

    staked = start(nodes, hub=True)
    stranger = start(nodes, hub=True, boot=(staked.node.addrs[0],))
    fund(staked.identity)
    reg.register(staked.identity, staked.node.addrs, "127.0.0.1:1", stake=WEI)

    # No bootstrap peer, no mDNS: only the registry.
    miner = start(nodes, hub=False, require=True)
    settings = ChainSettings("eth-tester", reg.address, True)
    watch = RegistryWatch(settings, miner.gossip.set_registered, registry=reg)
    assert miner.gossip.choose() is None and not miner.gossip.trusts(staked.identity.node_id)
    watch.read_once()

    wait_for(lambda: miner.gossip.hubs(), "the registered hub's announcement", timeout=20)
    wait_for(
        lambda: miner.gossip.stats()["dropped"]["unregistered"] >= 2,
        "the stranger's announcements to be dropped",
        timeout=20,
    )
    assert {e.node_id for e in miner.gossip.hubs()} == {staked.identity.node_id}
    assert miner.gossip.choose().node_id == staked.identity.node_id
    assert miner.gossip.stats()["registered"] == 1
    assert miner.node.is_connected(staked.node.peer_id)  # dialled from the registry
    # The registered hub hears the stranger (it requires nothing), the miner never does.
    assert stranger.identity.node_id in {e.node_id for e in staked.gossip.hubs()}

    reg.deregister(staked.identity)
    watch.read_once()  # one poll
    assert miner.gossip.hubs() == [] and miner.gossip.choose() is None
    assert not miner.gossip.trusts(staked.identity.node_id)
