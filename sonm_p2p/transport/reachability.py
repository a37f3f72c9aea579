"""Is this node reachable from outside? libp2p AutoNAT v1, with a dial-back that really dials.

A node asks peers it is connected to (a hub asks its bootstrap hubs) to dial it back at its
listen addresses, over ``/libp2p/autonat/1.0.0`` (py-libp2p's protocol messages and its
request gating: only addresses carrying the IP the request came from are dialled, never for a
request that arrived over a relay, so a server cannot be used to flood a third party).

py-libp2p 0.8.1's server "dials back" with ``host.connect``, which returns at once when a
connection to the peer exists, and one always does (the request came over it): every node it
answers looks public. :class:`AutoNATServer` dials a *new* TCP connection instead and runs the
Noise handshake on it, so an answer means the requester's listen port takes connections from
outside and the node there holds the requester's key. Behind NAT the requester's addresses carry
a private IP, not the one observed, and the request is refused: that is a "private" vote too.

One answer decides (the spec asks four servers to agree; a hub typically knows one to three):
reachable through any server means public; refused or failed by all that answered, private.
"""

from __future__ import annotations

import enum
import logging
from typing import Any

import trio

__all__ = ["AUTONAT", "AutoNATServer", "Reachability", "check_reachability", "serve_autonat"]

log = logging.getLogger(__name__)

AUTONAT = "/libp2p/autonat/1.0.0"
_DIAL_BACK_TIMEOUT = 3.0  # seconds for each dial-back (TCP connect and Noise handshake)
_MAX_DIAL_BACKS = 4  # addresses dialled per request
_CONCURRENT_REQUESTS = 4  # requests served at once; more wait their turn


class Reachability(enum.StrEnum):
    PUBLIC = "public"  # others can dial it directly
    PRIVATE = "private"  # behind NAT or a firewall: reach it through a relay
    UNKNOWN = "unknown"  # no server answered (yet)


def _server_class() -> type:
    from libp2p.host.autonat.autonat import AutoNATService

    class _AutoNATServer(AutoNATService):
        def __init__(self, host: Any) -> None:
            super().__init__(host, serve=True, confirmations=1)
            self._slots = trio.Semaphore(_CONCURRENT_REQUESTS)

        async def _try_dial(self, peer_id: Any, addrs: list[bytes]) -> bytes | None:
            import multiaddr

            async with self._slots:
                for raw in addrs[:_MAX_DIAL_BACKS]:
                    try:
                        addr = multiaddr.Multiaddr(raw)
                        with trio.fail_after(_DIAL_BACK_TIMEOUT):
                            seen = await _handshake(self.host, addr)
                    except Exception as exc:
                        log.debug("autonat: dial-back to %s failed: %r", peer_id, exc)
                        continue
                    if seen == peer_id:
                        return bytes(raw)
                    log.info("autonat: %s answered as %s, not %s", addr, seen, peer_id)
            return None

    return _AutoNATServer


def AutoNATServer(host: Any) -> Any:  # noqa: N802 - a class factory (py-libp2p imported lazily)
    """An AutoNAT v1 server on ``host`` whose dial-backs open new connections (see module)."""
    return _server_class()(host)


async def _handshake(host: Any, addr: Any) -> Any:
    """The peer ID that answers a new TCP connection to ``addr`` (Noise handshake, then close)."""
    from libp2p.transport.tcp.tcp import TCP

    raw = await TCP().dial(addr)
    secured = None
    try:
        upgrader = host.get_network().upgrader
        secured = await upgrader.security_multistream.secure_outbound(raw, None)
        return secured.get_remote_peer()
    finally:
        with trio.CancelScope(shield=True):
            for conn in (secured, raw):
                if conn is not None:
                    try:
                        await conn.close()
                    except Exception:
                        pass


async def serve_autonat(host: Any, *, task_status: Any = trio.TASK_STATUS_IGNORED) -> None:
    """(a P2PNode service) Answer AutoNAT dial-back requests until cancelled."""
    AutoNATServer(host)
    task_status.started()
    await trio.sleep_forever()


async def check_reachability(
    host: Any, servers: list[str], addrs: list[str], *, timeout: float = 10.0
) -> tuple[Reachability, dict[str, str]]:
    """Ask each server (connected peer IDs) to dial this node back at ``addrs`` (multiaddrs
    without /p2p). Returns the verdict and each server's answer ("reachable at …", "refused:
    …", "failed: …", or why it could not be asked)."""
    import multiaddr
    from libp2p.host.autonat.autonat import AutoNATService
    from libp2p.host.autonat.pb.autonat_pb2 import Message
    from libp2p.peer.id import ID

    client = AutoNATService(host, serve=False, confirmations=1)
    raw = [multiaddr.Multiaddr(a).to_bytes() for a in addrs]
    answers: dict[str, str] = {}
    yes = no = 0
    for server in servers:
        try:
            status, at = await client.query_server(ID.from_base58(server), raw, timeout=timeout)
        except Exception as exc:
            answers[server] = f"not asked: {exc!r}"
            continue
        if status == Message.OK:
            yes += 1
            answers[server] = f"reachable at {multiaddr.Multiaddr(at) if at else '?'}"
        elif status in (Message.E_DIAL_ERROR, Message.E_DIAL_REFUSED):
            no += 1
            kind = "refused" if status == Message.E_DIAL_REFUSED else "failed"
            answers[server] = f"{kind}: could not dial back"
        else:
            answers[server] = f"no verdict (status {status})"
    if yes:
        return Reachability.PUBLIC, answers
    if no:
        return Reachability.PRIVATE, answers
    return Reachability.UNKNOWN, answers
