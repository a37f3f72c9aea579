"""Pubsub answered in kind: a node opens its pubsub stream to a peer that dialled it only once
that peer opens its own.

py-libp2p's pubsub opens a stream (a multistream negotiation, a hello) to every peer the moment
it connects. A hub's miners dialled it, and a miner given its hub (``--hub``) runs no pubsub:
the hub's stream was refused, a negotiation per join for nothing (a few ms of a hub's ~25 ms per
join, ``bench/profile_hub.py``). A peer that does gossip (a miner or client finding hubs, another
hub) opens its own stream as it dials, and is answered then. Peers this node dialled are
opened to at once, as before.
"""

from __future__ import annotations

from typing import Any

__all__ = ["answer_in_kind"]


def answer_in_kind(pubsub: Any, host: Any) -> None:
    """Make ``pubsub`` (not yet started) answer inbound peers in kind (see the module)."""
    from libp2p.rcmgr import Direction

    register = pubsub._handle_new_peer_with_retry

    def dialled_us(peer_id: Any) -> bool:
        conns = host.get_network().get_connections(peer_id)
        return bool(conns) and all(
            getattr(c, "direction", None) == Direction.INBOUND for c in conns
        )

    async def new_peer(peer_id: Any, timeout: float | None = None) -> None:
        if peer_id not in pubsub.peers and dialled_us(peer_id):
            return  # registered when its own stream comes (below), if it gossips at all
        await register(peer_id, timeout)

    read = pubsub.stream_handler

    async def stream_handler(stream: Any) -> None:
        peer_id = stream.muxed_conn.peer_id
        if peer_id not in pubsub.peers:
            pubsub.manager.run_task(register, peer_id)
        await read(stream)

    pubsub._handle_new_peer_with_retry = new_peer
    for protocol in pubsub.protocols:
        host.set_stream_handler(protocol, stream_handler)
