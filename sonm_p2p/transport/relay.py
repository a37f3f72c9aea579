"""Circuit relay v2: serving as a relay (every hub), reserving on one (nodes behind NAT), dialling
through one.

py-libp2p 0.8.1 provides the protocol (``CircuitV2Protocol``: the HOP side of a relay and the STOP
side of a relayed peer). This module adds what a production node needs around it:

* :class:`RelayOptions`: limits with production-sized defaults (py-libp2p's default allows 4
  reservations and 8 circuits);
* a fix for py-libp2p's circuit pump, which keys live circuits by peer: when one of two circuits to
  the same peer ended, it closed the *other* one too (see :class:`_RelayProtocol`);
* our own RESERVE and CONNECT exchanges (:func:`reserve`, :func:`dial_relayed`), with deadlines,
  clear errors and no side effects: ``CircuitV2Transport.dial`` reserves a slot on the relay for
  the *dialler* (using up relay slots), tries every circuit address it ever stored first, and
  stores circuit addresses in the peerstore forever.

All functions here run on the node's trio thread (see ``node.py``).
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from typing import Any

import trio

from sonm_p2p.errors import DialError, SonmError

__all__ = [
    "HOP",
    "STOP",
    "RelayOptions",
    "RelayRefused",
    "circuit_addr",
    "dial_relayed",
    "is_circuit",
    "relay_service",
    "reserve",
]

log = logging.getLogger(__name__)

HOP = "/libp2p/circuit/relay/0.2.0/hop"  #: reservations and circuit requests, served by relays
STOP = "/libp2p/circuit/relay/0.2.0/stop"  #: a relay hands a circuit to its target on this

#: How long a RESERVE or CONNECT exchange with the relay may take.
EXCHANGE_TIMEOUT = 10.0


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


class RelayRefused(DialError):
    """The relay answered a RESERVE or CONNECT with an error status (see ``status``)."""

    def __init__(self, message: str, status: int) -> None:
        super().__init__(message)
        self.status = status


_STATUS_TEXT = {
    200: "reservation refused",
    201: "relay resource limit exceeded",
    202: "permission denied by the relay",
    203: "the relay could not connect to the target",
    204: "the target holds no reservation on this relay (it is not reachable through it)",
    400: "malformed message",
    401: "unexpected message",
}


def circuit_addr(relay_addr: str, relay_id: str, target_id: str) -> str:
    """``<relay addr>/p2p/<relay>/p2p-circuit/p2p/<target>`` (``relay_addr`` without /p2p)."""
    base = relay_addr.split("/p2p/")[0].rstrip("/")
    return f"{base}/p2p/{relay_id}/p2p-circuit/p2p/{target_id}"


def is_circuit(addr: str) -> bool:
    return "/p2p-circuit" in addr


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
        to one miner, the first client to leave took the second one's circuit down. This pump
        closes exactly the two streams it was given, enforces the circuit-wide byte budget and
        the duration as a deadline (not only when data arrives), and forgets the circuit.
        """

        async def _relay_data(  # noqa: ANN202 - overrides a py-libp2p method
            self,
            src_stream: Any,
            dst_stream: Any,
            peer_id: Any,
            deadline: float | None = None,
            circuit_data_limit: list[int] | None = None,
        ):
            failed = True
            try:
                timeout = float("inf") if deadline is None else deadline - time.monotonic()
                with trio.move_on_after(max(timeout, 0)):
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
                            await dst_stream.write(data)
            except Exception as exc:  # write timeout or a reset far end
                log.debug("relay: circuit for %s ended: %r", peer_id, exc)
            finally:
                with trio.CancelScope(shield=True):
                    for stream in (src_stream, dst_stream):
                        await _end_stream(stream, reset=failed)
                    for key, pair in list(self._active_relays.items()):
                        if src_stream in pair or dst_stream in pair:
                            del self._active_relays[key]

    return _RelayProtocol


async def _end_stream(stream: Any, *, reset: bool) -> None:
    try:
        with trio.move_on_after(2):
            if reset:
                await stream.reset()
            else:
                await stream.close()
    except Exception:
        pass


async def relay_service(
    host: Any,
    options: RelayOptions | None,
    *,
    task_status: trio.TaskStatus[Any] = trio.TASK_STATUS_IGNORED,
) -> None:
    """Run circuit relay v2 on ``host`` until cancelled; ``started()`` with the protocol object.

    Every node runs it: it accepts circuits relayed to this node (STOP). With ``options`` the node
    is also a relay for others (HOP) within those limits.
    """
    from libp2p.tools.anyio_service import background_trio_service

    cls = _relay_protocol_class()
    if options is not None:
        proto = cls(host, limits=_limits(options), allow_hop=True)
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

