"""Per-peer state of a node's transport is pruned when the peer goes away: many connects and
disconnects (direct and relayed, to many peers) leave nothing behind."""

from __future__ import annotations

import threading
from collections.abc import Iterator

import pytest

from sonm_p2p.identity import Identity
from sonm_p2p.transport.addrs import circuit_addr
from sonm_p2p.transport.node import NodeOptions, P2PNode
from sonm_p2p.transport.relay import RelayOptions
from tests.harness import wait_for

LOCAL = ("/ip4/127.0.0.1/tcp/0",)


@pytest.fixture
def made() -> Iterator[list[P2PNode]]:
    nodes: list[P2PNode] = []
    yield nodes
    for node in reversed(nodes):
        node.close()
    wait_for(
        lambda: not [t for t in threading.enumerate() if t.name == "p2p-node"],
        "every node thread to end",
        timeout=10,
    )


def _node(made: list[P2PNode], **options: object) -> P2PNode:
    node = P2PNode(Identity.generate(), NodeOptions(listen=LOCAL, dial_timeout=5, **options))
    node.start()
    made.append(node)
    return node


def _random_peer_id() -> str:
    from libp2p.peer.id import ID

    return ID.from_pubkey(Identity.generate().libp2p_key_pair().public_key).to_base58()


def _empty(node: P2PNode) -> bool:
    paths = node.core.paths
    return paths is not None and not any(paths.tracked().values())


def test_state_of_peers_that_went_away_is_pruned(made: list[P2PNode]) -> None:
    client = _node(made, forget_after=0, upgrade_wait=0)
    relay = _node(made, relay_service=RelayOptions())
    servers = [_node(made) for _ in range(4)]
    servers[-1].reserve(relay.addrs[0])
    for _ in range(5):
        for server in servers[:-1]:
            path = client.connect_peer(server.peer_id, server.addrs)
            assert path.kind.value == "direct"
            client.disconnect(server.peer_id)
        far = servers[-1]
        relayed = circuit_addr(relay.addrs[0].split("/p2p/")[0], relay.peer_id, far.peer_id)
        assert client.connect_peer(far.peer_id, [relayed]).relay_id == relay.peer_id
        client.disconnect(far.peer_id)
        client.disconnect(relay.peer_id)
    wait_for(lambda: _empty(client), "the client to forget every peer", timeout=10)
    # Peers that were never reached are forgotten too.
    with pytest.raises(Exception):  # noqa: B017 - DialError or Timeout, either way unreachable
        client.connect_peer(_random_peer_id(), ["/ip4/127.0.0.1/tcp/9"])
    wait_for(lambda: _empty(client), "the client to forget the unreachable peer", timeout=10)


def test_addresses_are_kept_for_a_redial_until_forget_after(made: list[P2PNode]) -> None:
    client = _node(made, forget_after=3600)
    server = _node(made)
    client.connect_peer(server.peer_id, server.addrs)
    client.disconnect(server.peer_id)
    paths = client.core.paths
    assert paths is not None
    wait_for(lambda: len(paths.departures) == 1, "the departure to be noticed", timeout=10)
    assert paths.known[server.peer_id]  # a stream wanted now redials it by these
    client.connect_peer(server.peer_id)  # back: no longer departing
    wait_for(lambda: len(paths.departures) == 0, "the return to be noticed", timeout=10)
    assert paths.tracked()["locks"] == 1
