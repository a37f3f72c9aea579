"""Flood publishing (discovery/_flood.py): a node's own messages go to every connected peer
subscribed to the topic, mesh or not; messages it forwards go to its mesh only, as before.
End to end: tests/integration/test_announce_flood.py, which fails without it."""

from __future__ import annotations

from types import SimpleNamespace

from libp2p.peer.id import ID
from libp2p.pubsub.gossipsub import PROTOCOL_ID_V11, GossipSub

from sonm_p2p.discovery._flood import flood_publishing
from sonm_p2p.identity import Identity

TOPIC = "/sonm/hubs/1"


def peer() -> ID:
    return ID.from_pubkey(Identity.generate().libp2p_key_pair().public_key)


def router_with(me: ID, mesh: set[ID], subscribed: set[ID]) -> GossipSub:
    router = flood_publishing(GossipSub)(
        protocols=[PROTOCOL_ID_V11], degree=3, degree_low=2, degree_high=4
    )
    router.pubsub = SimpleNamespace(my_id=me, peer_topics={TOPIC: set(subscribed)})
    router.mesh[TOPIC] = set(mesh)
    for p in subscribed:
        router.peer_protocol[p] = PROTOCOL_ID_V11
    return router


def test_own_messages_go_to_every_subscribed_peer_forwarded_ones_to_the_mesh() -> None:
    me, a, b, c, d = (peer() for _ in range(5))
    router = router_with(me, mesh={a}, subscribed={a, b, c, d})
    own = set(router._get_peers_to_send([TOPIC], msg_forwarder=me, origin=me))
    assert own == {a, b, c, d}
    forwarded = set(router._get_peers_to_send([TOPIC], msg_forwarder=b, origin=c))
    assert forwarded == {a}


def test_a_node_pruned_out_of_every_mesh_still_publishes_its_own() -> None:
    me, only = peer(), peer()
    router = router_with(me, mesh=set(), subscribed={only})
    assert set(router._get_peers_to_send([TOPIC], msg_forwarder=me, origin=me)) == {only}


def test_peers_on_another_topic_or_not_speaking_gossipsub_are_left_out() -> None:
    me, gossiper, stranger = peer(), peer(), peer()
    router = router_with(me, mesh=set(), subscribed={gossiper})
    router.pubsub.peer_topics[TOPIC].add(stranger)  # subscribed, but no gossipsub stream
    router.pubsub.peer_topics["/other/1"] = {peer()}
    assert set(router._get_peers_to_send([TOPIC], msg_forwarder=me, origin=me)) == {gossiper}
