"""The gRPC bridge: stock grpcio on both ends, libp2p streams in the middle.

The serving side splices each inbound ``/sonm/grpc/<service>/1.0.0`` stream into its local gRPC
server; the calling side gets a ``grpc.Channel`` to a loopback tunnel whose every TCP connection is
one such stream. HTTP/2 runs end to end, so deadlines, status codes and streaming calls behave as
over plain TCP. Channels are opened on the connection that already exists to the peer (the miner
dialled its hub), which is why a miner behind NAT needs no inbound port.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Sequence

import grpc

from sonm_p2p._grpc_options import CLIENT_OPTIONS
from sonm_p2p.transport.node import P2PNode, Tunnel

__all__ = ["GRPC_HUB", "GRPC_MINER", "SESSION", "PeerChannel", "serve_grpc"]

GRPC_HUB = "/sonm/grpc/hub/1.0.0"
GRPC_MINER = "/sonm/grpc/miner/1.0.0"
#: A miner holds one of these open to its hub; its end means the miner (or hub) went away.
SESSION = "/sonm/session/1.0.0"

# One HTTP/2 connection carries every call; keepalive notices a dead path between calls.
_CHANNEL_OPTIONS = [
    *CLIENT_OPTIONS,
    ("grpc.keepalive_timeout_ms", 5_000),
    ("grpc.initial_reconnect_backoff_ms", 200),
    ("grpc.max_reconnect_backoff_ms", 2_000),
]


def serve_grpc(
    node: P2PNode,
    protocol: str,
    server: int | str,
    allow: Callable[[str], bool] | None = None,
) -> None:
    """Serve a local gRPC server to peers over ``protocol``: ``server`` is its port on
    127.0.0.1, or the path of its Unix socket (which only this process can reach)."""
    target = server if isinstance(server, str) else ("127.0.0.1", server)
    node.serve_tcp(protocol, target, allow)


class PeerChannel:
    """gRPC channels to a peer's service over the overlay. Close it when done (idempotent).

    ``channel`` (a sync channel) is made on first use, and :meth:`aio_channel` makes a
    ``grpc.aio`` one: each is an HTTP/2 connection of its own (a stream of its own on the libp2p
    connection), so a caller that needs only one should use only one. ``options``: the
    channels' gRPC options (by default HTTP/2 keepalive as on any other link; the hub's channels
    to its miners rely on its pings instead: see ``_grpc_options``).
    """

    def __init__(
        self,
        node: P2PNode,
        peer_id: str,
        protocol: str,
        *,
        options: Sequence[tuple[str, int]] = _CHANNEL_OPTIONS,
    ) -> None:
        self.peer_id = peer_id
        self._options = list(options)
        self._tunnel: Tunnel = node.open_tunnel(peer_id, protocol)
        self._channel: grpc.Channel | None = None
        self._lock = threading.Lock()

    @property
    def channel(self) -> grpc.Channel:
        with self._lock:
            if self._channel is None:
                self._channel = grpc.insecure_channel(self._tunnel.target, options=self._options)
            return self._channel

    def aio_channel(self) -> grpc.aio.Channel:
        """A ``grpc.aio`` channel over the same tunnel (call it on the loop that will use it;
        close it there before :meth:`close`)."""
        return grpc.aio.insecure_channel(self._tunnel.target, options=self._options)

    def close(self) -> None:
        with self._lock:
            channel, self._channel = self._channel, None
        if channel is not None:
            channel.close()
        self._tunnel.close()

    def __repr__(self) -> str:
        return f"<PeerChannel {self._tunnel!r}>"
