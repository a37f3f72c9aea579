"""Generic helpers on py-libp2p connections and streams (trio thread only).

Used by every layer of the transport (the node's core, the dial ladder, relay, DCUtR, forward);
they know nothing about any of them.
"""

from __future__ import annotations

import logging
import os
from typing import Any

import trio

__all__ = [
    "aclose_quietly",
    "connections",
    "dial",
    "is_relayed",
    "peer_address",
    "quiet_libp2p_logs",
    "read_until_end",
    "reason",
]

log = logging.getLogger("sonm_p2p.transport.node")


def is_relayed(conn: Any) -> bool:
    try:
        return any("/p2p-circuit" in str(a) for a in conn.get_transport_addresses())
    except Exception:
        return False


def peer_address(conn: Any) -> tuple[str, int] | None:
    """(ip, port) at the far end of a TCP connection; py-libp2p 0.8.1 reports None for IPv6."""
    try:
        secured = conn.muxed_conn.secured_conn
        addr = secured.get_remote_address()
    except Exception:
        return None
    if addr:
        return str(addr[0]), int(addr[1])
    # Noise session > read-writer > raw connection > TrioTCPStream > trio stream > socket.
    layer: Any = secured
    for _ in range(8):
        if hasattr(layer, "getpeername"):
            try:
                ip, port = layer.getpeername()[:2]
                return str(ip), int(port)
            except (OSError, ValueError):
                return None
        layer = next(
            (getattr(layer, a) for a in ("socket", "stream", "conn") if hasattr(layer, a)), None
        )
        if layer is None:
            return None
    return None


async def dial(host: Any, info: Any) -> None:
    """``host.connect(info)`` for a dial the application asked for now.

    py-libp2p refuses every dial to a peer for 60 s after one that failed on all its addresses
    (a "negative cache" meant for its background auto-dialling): a hub restarting, or a relay
    briefly away, would stay unreachable for a minute. Such a dial forgets that first.
    """
    cache = getattr(host.get_network(), "_negative_peer_cache", None)
    if cache is not None:
        cache.evict(str(info.peer_id))
    await host.connect(info)


def connections(host: Any, peer: Any) -> list[Any]:
    """Open connections to ``peer`` (a libp2p ID)."""
    conns = host.get_network().get_connections(peer)
    return [c for c in conns if not getattr(c, "is_closed", False)]


async def read_until_end(stream: Any) -> None:
    """Read and drop until the stream ends (EOF, reset or any error)."""
    while True:
        try:
            data = await stream.read(1024)
        except Exception:
            return
        if not data:
            return


async def aclose_quietly(obj: Any, *, reset: bool = False) -> None:
    """Close (or reset) a stream, connection or listener within 2 s, ignoring errors."""
    try:
        with trio.move_on_after(2):
            if reset and hasattr(obj, "reset"):
                await obj.reset()
            elif hasattr(obj, "aclose"):
                await obj.aclose()
            else:
                await obj.close()
    except Exception as exc:
        log.debug("close failed: %r", exc)


def reason(exc: BaseException) -> str:
    """An exception's message with its cause, for one-line errors."""
    text = str(exc) or type(exc).__name__
    cause = exc.__cause__ or exc.__context__
    if cause is not None and str(cause) and str(cause) not in text:
        text = f"{text}: {cause}"
    return text


#: Seconds between py-libp2p's Yamux RTT probes on each connection (its default is 30): see
#: :func:`quiet_libp2p_logs`.
YAMUX_RTT_INTERVAL = 300


def quiet_libp2p_logs() -> None:
    """Quiet py-libp2p's logs, and tune its Yamux for many mostly idle connections.

    Called before any host runs. The tuning (docs/SCALING.md has the figures): Yamux sends a
    window update when half a stream's window is used up, as go-yamux does, not one after every
    read (py-libp2p's default, ``PY_YAMUX_RELEASE_ON_READ=1``: a frame back, encrypted, for
    every frame received); and measures a connection's RTT every 5 minutes, not every 30 s (a
    ping and a pong each way, which for a hub's idle miners were a third of their frames; the
    RTT only sizes receive windows). Both can be overridden: the env variable, and
    :data:`YAMUX_RTT_INTERVAL`. The env variable alone did not stop the updates: py-libp2p
    0.8.1 has a third path ("partial slack") that credits every read back at once, twice over,
    so about every other frame a gossiping hub sent was a window update (the overlay's
    profile, docs/SCALING.md); :func:`credit_at_half_window` replaces it.
    """
    _tune_yamux()
    # py-libp2p logs expected events (a probe connection closing, a peer going away) at ERROR;
    # they are not errors for us. SONM_DEBUG=1 (see sonm_p2p.config) brings them back.
    # Importing libp2p configures its logger (level WARNING, no propagation): adjust after it.
    import libp2p  # noqa: F401

    lg = logging.getLogger("libp2p")
    if os.environ.get("SONM_DEBUG"):
        lg.setLevel(logging.DEBUG)
        lg.propagate = True
    else:
        lg.setLevel(logging.CRITICAL)


def _tune_yamux() -> None:
    from libp2p.stream_muxer.yamux import yamux

    os.environ.setdefault("PY_YAMUX_RELEASE_ON_READ", "0")
    yamux.RTT_MEASURE_INTERVAL = YAMUX_RTT_INTERVAL
    if yamux.YamuxStream._auto_tune_and_send_window_update is not credit_at_half_window:
        yamux.YamuxStream._auto_tune_and_send_window_update = credit_at_half_window


async def credit_at_half_window(self: Any, *, bytes_read: int = 0) -> None:
    """``YamuxStream._auto_tune_and_send_window_update`` as go-yamux's ``sendWindowUpdate``:
    credit what was read back to the sender only once it is at least half the receive window
    (py-libp2p's own GrowTo and auto-tuning of the window then, as before); a stream that
    reads little sends no window update at all. py-libp2p's version also credits every small
    read at once ("partial slack"), one encrypted frame back per read."""
    total = 0
    async with self.window_lock:
        buffered = len(self.conn.stream_buffers.get(self.stream_id, b""))
        delta = self.target_recv_window - (self.recv_window + buffered)
        if delta > 0 and delta >= self._grow_threshold():
            total = self._grow_to_delta(buffered) + self._apply_autotune_epoch(buffered)
            self._pending_recv_release = 0
    if total > 0:
        await self.send_window_update(total, skip_lock=True)
