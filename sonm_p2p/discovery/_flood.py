"""Flood publishing of a node's own messages: GossipSub v1.1's ``flood_publish``, which
py-libp2p 0.8.1 lacks.

py-libp2p publishes a message, its own included, only to the topic's mesh peers. With a small
D_hi (the cost of gossip is a copy of every message through Noise in Python for each mesh link,
so the mesh is kept sparse: docs/SCALING.md) a node pruned out of the mesh of its only link had
no mesh peer at all, and its announcements reached nobody (``test_announce_flood.py``). The spec's
answer is that a node sends the messages it publishes itself to every peer subscribed to the
topic that it is connected to, mesh or not; messages it forwards still go to its mesh only. A
hub publishes one announcement per interval, so this costs a copy per connected hub of one
message, not of the overlay's traffic.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

__all__ = ["flood_publishing"]


def flood_publishing(router: type) -> type:
    """A subclass of the GossipSub ``router`` class that flood-publishes its own messages."""

    class FloodPublish(router):  # type: ignore[misc, valid-type]
        def _get_peers_to_send(
            self, topic_ids: Iterable[str], msg_forwarder: Any, origin: Any, msg_id: Any = None
        ) -> Iterable[Any]:
            topics = list(topic_ids)
            peers = set(super()._get_peers_to_send(topics, msg_forwarder, origin, msg_id))
            pubsub = self.pubsub
            if pubsub is not None and origin == pubsub.my_id:
                for topic in topics:
                    subscribed = pubsub.peer_topics.get(topic, ())
                    peers.update(p for p in subscribed if p in self.peer_protocol)
                peers.discard(origin)
            return peers

    FloodPublish.__name__ = FloodPublish.__qualname__ = f"FloodPublish{router.__name__}"
    return FloodPublish
