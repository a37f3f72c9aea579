"""Circuit relay v2: serving as a relay (every hub), reserving on one (nodes behind NAT), dialling
through one.

py-libp2p 0.8.1 provides the protocol (``CircuitV2Protocol``: the HOP side of a relay and the STOP
side of a relayed peer). This module adds what a production node needs around it:

* :class:`RelayOptions`: limits with production-sized defaults (py-libp2p's default allows 4
  reservations and 8 circuits);
* our own circuit pump: py-libp2p's keys live circuits by peer, so when one of two circuits to
  the same peer ended it closed the *other* one too; ours ends exactly its own circuit, both
  directions together, enforces the byte budget and the duration, and never cancels a write
  half-way (see ``_relay_protocol_class``); relayed connections are also named after the
  relay on the receiving side (py-libp2p names the receiver itself);
* our own RESERVE and CONNECT exchanges (:func:`reserve`, :func:`dial_relayed`), with deadlines,
  clear errors and no side effects: ``CircuitV2Transport.dial`` reserves a slot on the relay for
  the *dialler* (using up relay slots), tries every circuit address it ever stored first, and
  stores circuit addresses in the peerstore forever.

All functions here run on the node's trio thread (see ``core.py``, which keeps a node's
reservations).
"""

from __future__ import annotations

import logging
import random
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import trio

from sonm_p2p.errors import DialError, RelayRefused, SonmError
from sonm_p2p.transport._conn import connections, dial, peer_address
from sonm_p2p.transport._splice import send
from sonm_p2p.transport.addrs import circuit_addr, is_circuit, tcp_multiaddr

__all__ = [
    "HOP",
    "STOP",
    "RelayOptions",
    "RelayRefused",
    "RelayReservation",
    "circuit_addr",
    "dial_relayed",
    "is_circuit",
    "relay_counts",
    "relay_service",
    "reserve",
]

log = logging.getLogger(__name__)

HOP = "/libp2p/circuit/relay/0.2.0/hop"  #: reservations and circuit requests, served by relays
STOP = "/libp2p/circuit/relay/0.2.0/stop"  #: a relay hands a circuit to its target on this

#: How long a RESERVE or CONNECT exchange with the relay may take.
EXCHANGE_TIMEOUT = 10.0
#: Seconds (jittered ±25 %) a keeper whose relay connection went waits before dialling it
#: itself: the connection's other user, if any, redials first.
LOST_GRACE = 2.0


@dataclass(frozen=True, kw_only=True)
class RelayOptions:
    """Limits of a relay (a hub relays for the miners that reserve on it).

    max_reservations: peers that may hold a reservation at once; defaults to 128 (go-libp2p's
        default; py-libp2p's is 4).
    max_circuits: circuits open at once to one reserved peer; defaults to 16. One circuit carries
        every stream between two peers (a relayed connection is one circuit).
    circuit_bytes: bytes one circuit may carry, both directions together, before the relay
        resets it; defaults to 1 GiB. 0 means unlimited.
    circuit_duration: seconds a circuit may live before the relay resets it; defaults to 3600.
        0 means unlimited. A reset circuit is simply dialled again by the next stream.
    reservation_ttl: seconds a reservation lasts; defaults to 3600. Reserving peers refresh at
        half of it, and again whenever they reconnect to the relay.
    """

    max_reservations: int = 128
    max_circuits: int = 16
    circuit_bytes: int = 1 << 30
    circuit_duration: float = 3600.0
    reservation_ttl: float = 3600.0

    def __post_init__(self) -> None:
        if self.max_reservations < 1 or self.max_circuits < 1:
            raise ValueError("max_reservations and max_circuits must be at least 1")
        if self.circuit_bytes < 0 or self.circuit_duration < 0 or self.reservation_ttl <= 0:
            raise ValueError("relay limits must not be negative (reservation_ttl > 0)")


_STATUS_TEXT = {
    200: "reservation refused",
    201: "relay resource limit exceeded",
    202: "permission denied by the relay",
    203: "the relay could not connect to the target",
    204: "the target holds no reservation on this relay (it is not reachable through it)",
    400: "malformed message",
    401: "unexpected message",
}


def _limits(options: RelayOptions) -> Any:
    from libp2p.relay.circuit_v2.resources import RelayLimits

    return RelayLimits(
        duration=int(options.circuit_duration),
        data=int(options.circuit_bytes),
        max_circuit_conns=options.max_circuits,
        max_reservations=options.max_reservations,
        reservation_ttl=int(options.reservation_ttl),
    )


def _relay_protocol_class() -> type:
    from libp2p.relay.circuit_v2.protocol import CircuitV2Protocol

    class _RelayProtocol(CircuitV2Protocol):
        """CircuitV2Protocol with a circuit pump that ends only its own circuit.

        py-libp2p 0.8.1 records live circuits in a dict keyed by peer ID and, when one direction
        of a circuit ends, closes whatever that dict holds for the peer: with two clients relayed
        to one miner, the first client to leave took the second one's circuit down. And the
        other direction of an ended circuit stayed blocked for ever, so every circuit kept one
        of the reservation's circuit slots (16 circuits, then "no reservation"). This pump
        closes exactly the two streams it was given, ends both directions together, enforces
        the circuit-wide byte budget and the duration as a deadline (not only when data
        arrives), and forgets the circuit.
        """

        async def _relay_data(  # noqa: ANN202 - overrides a py-libp2p method
            self,
            src_stream: Any,
            dst_stream: Any,
            peer_id: Any,
            deadline: float | None = None,
            circuit_data_limit: list[int] | None = None,
        ):
            # The two directions of a circuit end together: py-libp2p does not wake a reader
            # blocked on a yamux stream that is reset locally, so the other direction is
            # cancelled rather than left waiting (it held the reservation's circuit slot).
            circuits = self.__dict__.setdefault("_sonm_circuits", {})
            key = frozenset((id(src_stream), id(dst_stream)))
            scope = trio.CancelScope()
            circuits.setdefault(key, []).append(scope)
            failed = True
            try:
                timeout = float("inf") if deadline is None else deadline - time.monotonic()
                with scope, trio.move_on_after(max(timeout, 0)):
                    while True:
                        try:
                            data = await src_stream.read(64 * 1024)
                        except Exception:
                            break
                        if not data:
                            failed = False
                            break
                        if circuit_data_limit is not None:
                            if len(data) > circuit_data_limit[0]:
                                log.info("relay: circuit for %s used its byte budget", peer_id)
                                break
                            circuit_data_limit[0] -= len(data)
                        with trio.fail_after(self.write_timeout):
                            await send(dst_stream, data)
            except Exception as exc:  # write timeout or a reset far end
                log.debug("relay: circuit for %s ended: %r", peer_id, exc)
            finally:
                for other in circuits.pop(key, []):
                    other.cancel()
                with trio.CancelScope(shield=True):
                    for stream in (src_stream, dst_stream):
                        await _end_stream(stream, reset=failed)
                    for key_, pair in list(self._active_relays.items()):
                        if src_stream in pair or dst_stream in pair:
                            del self._active_relays[key_]

        async def handle_incoming_connection(  # noqa: ANN202 - overrides a py-libp2p method
            self, stream: Any, remote_peer_id: bytes
        ):
            # py-libp2p names *this* node as the relay in the connection's address; the relay is
            # the peer at the other end of the STOP stream.
            import multiaddr
            from libp2p.connection_types import ConnectionType
            from libp2p.network.connection.raw_connection import RawConnection
            from libp2p.peer.id import ID

            relay = stream.muxed_conn.peer_id.to_base58()
            source = ID(remote_peer_id)
            addr = multiaddr.Multiaddr(f"/p2p/{relay}/p2p-circuit/p2p/{source.to_base58()}")
            raw = RawConnection(
                stream=stream,
                initiator=False,
                connection_type=ConnectionType.RELAYED,
                addresses=[addr],
            )
            try:
                muxed = await self.host.upgrade_inbound_connection(raw, addr)
            except Exception as exc:
                await _end_stream(stream, reset=True)
                raise ConnectionError(f"relayed connection from {source} failed: {exc}") from None
            for conn in self.host.get_network().get_connections(source):
                if getattr(conn, "muxed_conn", None) is muxed:
                    conn.set_transport_info([addr], ConnectionType.RELAYED)

    return _RelayProtocol


def relay_counts(proto: Any) -> tuple[int, int]:
    """(reservations held, circuits open) on a node's relay protocol (from ``relay_service``),
    for metrics: read from any thread (sizes of dicts only the node's trio thread changes)."""
    if proto is None:
        return 0, 0
    reservations = len(getattr(proto.resource_manager, "_reservations", {}))
    circuits = sum(len(v) for v in list(proto.__dict__.get("_sonm_circuits", {}).values()))
    return reservations, circuits


async def _end_stream(stream: Any, *, reset: bool) -> None:
    try:
        with trio.move_on_after(2):
            if reset:
                await stream.reset()
            else:
                await stream.close()
    except Exception:
        pass


def _implied_reservations(resources: Any, implied: Callable[[str], bool]) -> None:
    """A peer for which ``implied(peer_id)`` holds is reachable through the relay as if it had
    reserved: its reservation is made at the first circuit to it (the voucher signed then, and
    only for peers someone dials), with the same limits as any other, and dropped at the next
    circuit asked for once ``implied`` no longer holds."""
    can_accept = resources.can_accept_connection
    made: set[Any] = set()  # peers holding a reservation made here

    def can_accept_connection(peer_id: Any) -> bool:
        holds = implied(peer_id.to_base58())
        if peer_id in made and not holds:
            made.discard(peer_id)
            resources._reservations.pop(peer_id, None)
        elif (
            holds
            and resources.get_reservation(peer_id) is None
            and resources.can_accept_reservation(peer_id)
        ):
            resources.reserve(peer_id)
            made.add(peer_id)
        return bool(can_accept(peer_id))

    resources.can_accept_connection = can_accept_connection


async def relay_service(
    host: Any,
    options: RelayOptions | None,
    *,
    implied: Callable[[str], bool] | None = None,
    task_status: trio.TaskStatus[Any] = trio.TASK_STATUS_IGNORED,
) -> None:
    """Run circuit relay v2 on ``host`` until cancelled; ``started()`` with the protocol object.

    Every node runs it: it accepts circuits relayed to this node (STOP). With ``options`` the node
    is also a relay for others (HOP) within those limits. ``implied(peer_id)``: peers that
    need not reserve to be relayed to (a hub's miners holding a message session, which asks
    no RESERVE exchange of each joining miner: see :func:`_implied_reservations`).
    """
    from libp2p.tools.anyio_service import background_trio_service

    cls = _relay_protocol_class()
    if options is not None:
        proto = cls(host, limits=_limits(options), allow_hop=True)
        if implied is not None:
            _implied_reservations(proto.resource_manager, implied)
    else:
        proto = cls(host, allow_hop=False)
    async with background_trio_service(proto):
        await proto.event_started.wait()
        task_status.started(proto)
        await trio.sleep_forever()


def _status_error(what: str, relay_id: str, status: int) -> RelayRefused:
    text = _STATUS_TEXT.get(status, f"status {status}")
    return RelayRefused(f"{what} via relay {relay_id[:16]}… refused: {text}", status)


async def _hop_stream(host: Any, relay: Any) -> Any:
    try:
        return await host.new_stream(relay, [HOP])
    except Exception as exc:
        raise DialError(f"relay {relay.to_base58()[:16]}… does not relay: {exc}") from None


async def reserve(host: Any, relay_id: str) -> tuple[float, list[str]]:
    """Reserve a slot on a connected relay; returns (expiry as unix time, relay addrs).

    The relay addresses are those the relay reports (its specific listen addresses, with
    ``/p2p/<relay>``); they may be empty when it listens on a wildcard only.
    Raises RelayRefused (the relay said no), DialError (no relay there), Timeout.
    """
    import multiaddr
    from libp2p.peer.id import ID
    from libp2p.relay.circuit_v2.pb.circuit_pb2 import HopMessage, PeerId
    from libp2p.relay.circuit_v2.utils import read_delimited_msg, write_delimited_msg

    relay = ID.from_base58(relay_id)
    with trio.fail_after(EXCHANGE_TIMEOUT):
        stream = await _hop_stream(host, relay)
        try:
            msg = HopMessage(type=HopMessage.RESERVE, peer=PeerId(id=host.get_id().to_bytes()))
            with trio.CancelScope(shield=True):  # see _splice.send
                await write_delimited_msg(stream, msg)
            resp = await read_delimited_msg(stream, HopMessage)
        finally:
            await _end_stream(stream, reset=False)
    status = resp.status if resp.HasField("status") else 100
    if status != 100:
        raise _status_error("reservation", relay_id, status)
    expire = float(resp.reservation.expire) if resp.HasField("reservation") else 0.0
    if expire <= time.time():
        raise RelayRefused(f"relay {relay_id[:16]}… granted an already expired reservation", 200)
    addrs: list[str] = []
    for raw in resp.reservation.addrs:
        try:
            addrs.append(str(multiaddr.Multiaddr(raw)))
        except Exception:
            continue
    return expire, addrs


async def dial_relayed(host: Any, relay_id: str, target_id: str) -> Any:
    """Open a relayed connection to ``target_id`` through a connected relay; returns it.

    The connection is Noise-authenticated end to end (the relay sees only ciphertext) and joins
    the host's swarm like any other, typed ``RELAYED``.
    Raises RelayRefused (e.g. the target holds no reservation there), DialError, Timeout.
    """
    import multiaddr
    from libp2p.connection_types import ConnectionType
    from libp2p.network.connection.raw_connection import RawConnection
    from libp2p.peer.id import ID
    from libp2p.relay.circuit_v2.pb.circuit_pb2 import HopMessage, PeerId
    from libp2p.relay.circuit_v2.utils import read_delimited_msg, write_delimited_msg

    relay, target = ID.from_base58(relay_id), ID.from_base58(target_id)
    with trio.fail_after(EXCHANGE_TIMEOUT):
        stream = await _hop_stream(host, relay)
        try:
            msg = HopMessage(type=HopMessage.CONNECT, peer=PeerId(id=target.to_bytes()))
            with trio.CancelScope(shield=True):  # see _splice.send
                await write_delimited_msg(stream, msg)
            resp = await read_delimited_msg(stream, HopMessage)
            status = resp.status if resp.HasField("status") else 100
            if status != 100:
                raise _status_error(f"circuit to {target_id[:16]}…", relay_id, status)
            addr = multiaddr.Multiaddr(f"/p2p/{relay_id}/p2p-circuit/p2p/{target_id}")
            raw = RawConnection(
                stream=stream,
                initiator=True,
                connection_type=ConnectionType.RELAYED,
                addresses=[addr],
            )
            return await host.upgrade_outbound_connection(raw, target)
        except BaseException as exc:
            with trio.CancelScope(shield=True):
                await _end_stream(stream, reset=True)
            if isinstance(exc, SonmError | trio.Cancelled | trio.TooSlowError):
                raise
            if isinstance(exc, Exception):
                raise DialError(f"circuit to {target_id[:16]}… failed: {exc}") from None
            raise


class RelayReservation:
    """A reservation on one relay, kept refreshed in the background until cancelled.

    The keeper re-reserves at half the remaining TTL, and at once whenever the connection to the
    relay comes back (a relay honours a reservation only while the peer is connected to it, and a
    restarted relay has forgotten it). Read the state from any thread.
    """

    def __init__(self, relay_id: str, relay_addrs: list[str], self_id: str) -> None:
        self.relay_id = relay_id
        self.self_id = self_id
        self._given = [a for a in relay_addrs if a]
        self._reported: list[str] = []
        self._seen: str | None = None
        self._lock = threading.Lock()
        #: Unix time the current reservation expires (0 before the first one).
        self.expires_at = 0.0
        #: Set when a reservation was granted at least once.
        self.granted = threading.Event()
        #: Why the last attempt failed (None after a success).
        self.failure: BaseException | None = None
        self.refreshes = 0
        self._connected = False
        self._cancel: Callable[[], None] | None = None

    @property
    def active(self) -> bool:
        """Whether the relay holds a live reservation for us (and we are connected to it)."""
        return self._connected and self.expires_at > time.time()

    @property
    def error(self) -> str | None:
        """Why the last attempt failed (None after a success)."""
        exc = self.failure
        return None if exc is None else (str(exc) or type(exc).__name__)

    @property
    def relay_addrs(self) -> list[str]:
        """Transport addresses of the relay (no /p2p): given, reported by it, and dialled."""
        out: list[str] = []
        with self._lock:
            candidates = [*self._given, *self._reported, *([self._seen] if self._seen else [])]
        for addr in candidates:
            base = addr.split("/p2p/")[0].rstrip("/")
            parts = base.split("/")
            if len(parts) < 3 or parts[2] in ("0.0.0.0", "::") or base in out:
                continue
            out.append(base)
        return out

    @property
    def circuit_addrs(self) -> list[str]:
        """The addresses others reach us at through this relay (empty while not active)."""
        if not self.active:
            return []
        return [circuit_addr(a, self.relay_id, self.self_id) for a in self.relay_addrs]

    def on_cancel(self, cancel: Callable[[], None]) -> None:
        """What :meth:`cancel` does (set by whoever runs :meth:`keep`; thread-safe)."""
        self._cancel = cancel

    def cancel(self) -> None:
        """Stop refreshing (the relay lets the reservation expire). Idempotent."""
        cancel, self._cancel = self._cancel, None
        if cancel is not None:
            cancel()

    def __repr__(self) -> str:
        state = "active" if self.active else f"inactive ({self.error or 'pending'})"
        return f"<RelayReservation on {self.relay_id[:16]}… {state}>"

    # -- trio side ----------------------------------------------------------------------------

    async def keep(
        self, host: Any, *, task_status: trio.TaskStatus[Any] = trio.TASK_STATUS_IGNORED
    ) -> None:
        """Reserve and refresh until cancelled (runs in the node's nursery)."""
        import multiaddr
        from libp2p.peer.id import ID
        from libp2p.peer.peerinfo import PeerInfo

        relay = ID.from_base58(self.relay_id)
        task_status.started()
        backoff = 0.5
        while True:
            try:
                if not _connected(host, relay):
                    self._connected = False
                    info = PeerInfo(relay, [multiaddr.Multiaddr(a) for a in self.relay_addrs])
                    with trio.fail_after(EXCHANGE_TIMEOUT):
                        await dial(host, info)
                expire, reported = await reserve(host, self.relay_id)
                with self._lock:
                    self._reported = reported
                    self._seen = _remote_tcp_addr(host, relay) or self._seen
                self.expires_at, self.failure, self._connected = expire, None, True
                self.refreshes += 1
                self.granted.set()
                backoff = 0.5
                refresh_at = time.time() + max(1.0, (expire - time.time()) / 2)
                # Until the refresh is due or the relay's connection goes (woken by its
                # closing, not by polling: a load generator keeps 1,000 of these).
                while time.time() < refresh_at and _connected(host, relay):
                    closing = _closing(host, relay)
                    with trio.move_on_after(max(refresh_at - time.time(), 0.01)):
                        await (closing.wait() if closing is not None else trio.sleep(1.0))
                if not _connected(host, relay):
                    # Lost: whoever else holds this peer (a miner's link to its hub, which is
                    # its relay) redials it first, and the reservation is renewed on that
                    # connection; dialling at once too added a second dial per miner to a
                    # restarted hub's herd.
                    await trio.sleep(LOST_GRACE * (0.75 + random.random() / 2))
                continue
            except trio.Cancelled:
                raise
            except Exception as exc:
                self.failure = exc
                self._connected = _connected(host, relay)
                log.debug("reservation on %s: %s (retry in %.1fs)", self.relay_id, exc, backoff)
            await trio.sleep(backoff)
            backoff = min(backoff * 2, 30.0)


def _connected(host: Any, peer: Any) -> bool:
    return bool(connections(host, peer))


def _closing(host: Any, peer: Any) -> trio.Event | None:
    """An event set when a connection to ``peer`` starts closing (its Yamux's), if any."""
    for conn in connections(host, peer):
        event = getattr(getattr(conn, "muxed_conn", None), "event_shutting_down", None)
        if isinstance(event, trio.Event):
            return event
    return None


def _remote_tcp_addr(host: Any, peer: Any) -> str | None:
    for conn in host.get_network().get_connections(peer):
        far = peer_address(conn)
        if far is not None:
            return tcp_multiaddr(*far)
    return None
