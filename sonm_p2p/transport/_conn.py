"""Generic helpers on py-libp2p connections and streams (trio thread only).

Used by every layer of the transport (the node's core, the dial ladder, relay, DCUtR, forward);
they know nothing about any of them.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Awaitable, Callable
from typing import Any

import trio

from sonm_p2p.transport import _task_index

__all__ = [
    "aclose_quietly",
    "connections",
    "defer_inbound_identify",
    "dial",
    "dial_unpinned",
    "is_relayed",
    "new_host",
    "peer_address",
    "quiet_libp2p_logs",
    "read_until_end",
    "reason",
    "resource_manager",
    "tcp_socket",
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
    sock = tcp_socket(secured)
    if sock is None:
        return None
    try:
        ip, port = sock.getpeername()[:2]
        return str(ip), int(port)
    except (OSError, ValueError):
        return None


def tcp_socket(layer: Any) -> Any | None:
    """The socket under a py-libp2p connection layer (Noise session > read-writer > raw
    connection > TrioTCPStream > trio stream > socket), or None."""
    for _ in range(8):
        if hasattr(layer, "getpeername"):
            return layer
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


async def dial_unpinned(
    host: Any, addr: Any, learned: dict[str, str], probe: Callable[[Any], Awaitable[str]]
) -> str:
    """Connect to ``addr`` (a multiaddr) whose peer ID the caller does not pin; returns it.

    ``probe`` learns the ID with a throw-away Noise handshake, so a first dial costs both ends
    two handshakes. ``learned`` (address -> ID) saves it from then on: a restarted hub keeps its
    key, so in a restarted hub's herd each miner redials with the ID it learned instead of
    probing again. A dial with a learned ID that fails (the hub down, or another key there now)
    probes once, which tells the two apart and learns the new ID.
    """
    from libp2p.peer.id import ID
    from libp2p.peer.peerinfo import PeerInfo

    key = str(addr)
    known = learned.get(key)
    if known is not None:
        try:
            await dial(host, PeerInfo(ID.from_base58(known), [addr]))
            return known
        except Exception as exc:
            log.debug("dial %s as %s: %s; probing", key, known[:16], reason(exc))
    peer_id = await probe(addr)
    learned[key] = peer_id
    await dial(host, PeerInfo(ID.from_base58(peer_id), [addr]))
    return peer_id


def defer_inbound_identify(
    host: Any, spawn: Callable[..., Any], delay: float, skip: Callable[[str], bool]
) -> None:
    """Identify a peer that connected to ``host`` only ``delay`` seconds later, and not at all
    if by then ``skip(peer_id)`` (or it is gone). Peers ``host`` dialled are identified at once.

    py-libp2p identifies every peer the moment it connects, both ways. A hub has no use for its
    miners' answers (their listen addresses and protocols; what it needs comes in the session's
    handshake), and asking cost it ~10 ms of its ~45 ms per join (``bench/profile_hub.py``, 300
    miners, 3 runs each way). Other inbound peers (hubs, clients) are identified as before, a
    little later. The miner's own identify of its hub, which tells the miner its observed
    address (hole punching needs it), is untouched.
    """
    schedule = host._schedule_identify

    def deferred(peer_id: Any, *, reason: str) -> None:
        if reason != "notifee-connected":  # host.connect(): our dial, identified at once
            schedule(peer_id, reason=reason)
            return

        async def later() -> None:
            await trio.sleep(delay)
            if connections(host, peer_id) and not skip(peer_id.to_string()):
                schedule(peer_id, reason=reason)

        spawn(later)

    host._schedule_identify = deferred


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
    RTT only sizes receive windows; :data:`YAMUX_RTT_INTERVAL`). The env variable alone did not
    stop the per-read updates, so every stream is a ``_yamux.HalfWindowStream``, and every
    connection a ``_yamux.KeepaliveYamux``, whose pings are also the hub's heartbeats
    (``heartbeat.py``): :func:`_yamux.install`, here, before any host runs.
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

    from sonm_p2p.transport import _yamux

    os.environ.setdefault("PY_YAMUX_RELEASE_ON_READ", "0")
    yamux.RTT_MEASURE_INTERVAL = YAMUX_RTT_INTERVAL
    _yamux.install()


def new_host(key_pair: Any, dial_timeout: float, max_connections: int) -> Any:
    """A py-libp2p host: TCP, Noise only (a peer offering plaintext, or anything else, fails to
    negotiate), Yamux, one connection per peer, limits sized for ``max_connections``."""
    from libp2p import new_host as libp2p_host

    _task_index.install()  # each run_task of its managers finds its parent at once
    from libp2p.crypto.x25519 import create_new_key_pair as new_x25519
    from libp2p.network.config import ConnectionConfig
    from libp2p.security.noise.transport import PROTOCOL_ID as NOISE
    from libp2p.security.noise.transport import Transport as NoiseTransport

    sec = {NOISE: NoiseTransport(key_pair, noise_privkey=new_x25519().private_key)}
    # One connection per peer: besides being what we want, it skips py-libp2p's 250 ms
    # happy-eyeballs wait on every connect().
    n = max_connections
    conn_cfg = ConnectionConfig(
        max_connections_per_peer=1,
        dial_timeout=dial_timeout,
        max_connections=n,
        min_connections=min(50, n // 2),
        low_watermark=min(100, n),
        high_watermark=n,
    )
    return libp2p_host(
        key_pair=key_pair,
        sec_opt=sec,
        muxer_preference="YAMUX",
        connection_config=conn_cfg,
        resource_manager=resource_manager(n),
    )


def resource_manager(max_connections: int) -> Any:
    """py-libp2p's resource manager sized for ``max_connections``. Its defaults cap a host at
    1,000 connections and, worse, have a circuit breaker that after 5 refused admissions
    refuses *every* connection for 60 s: a hub at its limit (or a peer hammering it) would
    lock out all its miners. The breaker is off; the limits scale with ``max_connections``
    (streams: a miner's session, event stream, pings and log follows at once), and so do its
    per-direction connection limits, whose defaults held a hub at 256 inbound connections, so
    at 256 miners whatever ``max_connections`` said (issue 14). Handshakes under way stay at
    py-libp2p's 64 (a herd of redialling miners is admitted 64 at a time)."""
    from libp2p.rcmgr import new_resource_manager
    from libp2p.rcmgr.connection_limits import ConnectionLimits
    from libp2p.rcmgr.manager import ResourceLimits

    limits = ResourceLimits(
        max_connections=max_connections,
        max_memory_mb=max(512, max_connections // 2),
        max_streams=max(10_000, 32 * max_connections),
    )
    connections = ConnectionLimits(
        max_pending_inbound=64,
        max_pending_outbound=64,
        max_established_inbound=max_connections,
        max_established_outbound=max_connections,
        max_established_per_peer=8,
        max_established_total=max_connections,
    )
    return new_resource_manager(
        limits=limits, connection_limits=connections, enable_circuit_breaker=False
    )
