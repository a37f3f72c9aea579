"""DCUtR hole punching as the dial ladder drives it (trio thread only).

py-libp2p's ``DCUtRProtocol`` is used with these changes (:func:`_dcutr_class`):

* ``dial_timeout=3``: its default (10 s) makes an upgrade take ~11 s;
* no auto-drive loop: the side that dialled through the relay initiates the upgrade when the
  ladder says so (py-libp2p's loop makes both sides initiate at once, every 2 s);
* no "unilateral" direct dial first: the ladder has just tried the peer's direct addresses;
* one punch round, in which every usable address gets a tight loop of TCP connects from the
  listen port (``_dial_peer``) for ``dial_timeout`` seconds, instead of three rounds of single
  dials (up to 21 s to give up); unusable addresses (py-libp2p also dials the ``0.0.0.0``
  listen address identify reports) are skipped;
* the punch goes to the addresses the peer sent in this exchange; py-libp2p adds every address
  the peerstore holds, which includes a reconnected peer's old NAT mappings. The peerstore is
  used only when nothing the peer sent is usable, and never for an address the peer has stopped
  sending (:func:`choose_punch_targets`);
* the relayed leg is retired when it carries no stream any more (or after ``linger`` seconds),
  instead of being closed 60 s after the upgrade whatever runs on it. While both legs exist, the
  peer is protected from py-libp2p's per-peer trimming, which would close the older (relayed) leg
  at once. New streams always go on the direct leg (py-libp2p's "best connection" rule).
"""

from __future__ import annotations

import errno
import logging
import socket
import weakref
from collections.abc import Collection, Mapping, Sequence
from typing import Any

import trio

from sonm_p2p.transport._conn import connections, is_relayed, reason
from sonm_p2p.transport.addrs import interface_ips, split_circuit, tcp_target
from sonm_p2p.transport.dial_ladder import Scope, _ip_of, classify

__all__ = [
    "PROTECT_TAG",
    "choose_punch_targets",
    "dcutr_service",
    "listen_sources",
    "retire_relayed",
]

log = logging.getLogger(__name__)

PROTECT_TAG = "sonm-upgrade"


def _punchable(addr: Any, source: tuple[str, int] | None) -> bool:
    """Worth a punch: a public or site address; loopback only from a loopback listener (one
    machine, the tests); never the ``0.0.0.0`` that identify reports for a wildcard listener."""
    ip = _ip_of(str(addr))
    if ip is None:
        return False
    scope = classify(ip)
    if scope is Scope.LOOPBACK:
        return source is not None and source[0].startswith("127.")
    return scope in (Scope.PUBLIC, Scope.SITE)


_BUSY = object()  #: the 4-tuple is taken: the peer's dial made the connection already


async def _connect_from(source: tuple[str, int], target: tuple[str, int]) -> Any:
    """One TCP connect from ``source`` (shared with the listener: SO_REUSEPORT) to ``target``;
    a raw libp2p connection, None when refused, or ``_BUSY``. Kept lean: the punch loop runs it
    back to back (thousands of times a second in the tests' zero-latency internet)."""
    from libp2p.io.trio import TrioTCPStream
    from libp2p.network.connection.raw_connection import RawConnection

    family = socket.AF_INET6 if ":" in target[0] else socket.AF_INET
    if (":" in source[0]) != (family == socket.AF_INET6):
        return None
    sock = trio.socket.socket(family, socket.SOCK_STREAM)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        await sock.bind(source)
        await sock.connect(target)
    except OSError as exc:
        sock.close()
        await trio.sleep(0)
        return _BUSY if exc.errno in (errno.EADDRINUSE, errno.EADDRNOTAVAIL) else None
    except BaseException:
        sock.close()
        raise
    return RawConnection(TrioTCPStream(trio.SocketStream(sock)), True)


def _not_behind_nat(host: Any) -> bool:
    """Whether peers (the relay, through identify) see us at one of our own addresses."""
    manager = getattr(host, "_observed_addr_manager", None)
    try:
        observed = [str(a).split("/")[2] for a in manager.addrs(min_observers=1)]
    except Exception:
        return False
    if not observed:  # py-libp2p ignores loopback observations: a loopback node has no NAT
        ips = [ip for ip, _ in listen_sources(host).values()]
        return bool(ips) and all(ip.startswith("127.") or ip == "::1" for ip in ips)
    return set(observed) <= set(interface_ips())


def listen_sources(host: Any) -> dict[int, tuple[str, int]]:
    """Our TCP listen (ip, port) per IP version: hole-punch SYNs leave from it, so the NAT maps
    them where the relay saw us (port-preserving NATs)."""
    sources: dict[int, tuple[str, int]] = {}
    for addr in host.get_transport_addrs():
        target = tcp_target(addr)
        if target is not None:
            sources.setdefault(6 if ":" in target[0] else 4, target)
    return sources


def choose_punch_targets(
    sent: Sequence[Any],
    known: Sequence[Any],
    sources: Mapping[int, tuple[str, int]],
    *,
    avoid: Collection[tuple[str, int]] = (),
    superseded: Collection[tuple[str, int]] = (),
) -> list[tuple[str, tuple[str, int]]]:
    """What to hole-punch to (pure): ``(/ipN/IP/tcp/PORT, source)`` pairs, in order.

    sent: the addresses the peer sent in this DCUtR exchange (its CONNECT), its current view of
        where it can be reached; they come first and, when one of them is usable, alone.
    known: the direct addresses the peerstore holds for the peer; used only when nothing it sent
        is usable. The peerstore keeps what earlier exchanges and connections taught (py-libp2p
        stores every CONNECT's addresses for 10 min): a peer that came back from another NAT
        mapping is listed at its old ones too, and punching those only costs dials.
    sources: our TCP listen (ip, port) per IP version (4, 6); a target of a version with no
        source is skipped.
    avoid: (ip, port) of the relays in between (a relay may observe itself as the peer).
    superseded: (ip, port) the peer sent in an earlier exchange and no longer sends: stale,
        never punched, even from the peerstore.
    Unusable addresses (not TCP, ``0.0.0.0``, link-local, loopback unless our source is
    loopback) are left out, and each (ip, port) appears once.
    """

    def usable(
        addrs: Sequence[Any], skip: Collection[tuple[str, int]]
    ) -> list[tuple[str, tuple[str, int]]]:
        out: list[tuple[str, tuple[str, int]]] = []
        seen: set[tuple[str, int]] = set()
        for addr in addrs:
            if "/p2p-circuit" in str(addr):
                continue
            target = tcp_target(addr)
            if target is None or target in seen or target in avoid or target in skip:
                continue
            version = 6 if ":" in target[0] else 4
            source = sources.get(version)
            if source is None or not _punchable(addr, source):
                continue
            seen.add(target)
            out.append((f"/ip{version}/{target[0]}/tcp/{target[1]}", source))
        return out

    return usable(sent, ()) or usable(known, superseded)


def _punch_targets(
    host: Any,
    peer: Any,
    sent: list[Any],
    sources: dict[int, tuple[str, int]],
    superseded: Collection[tuple[str, int]] = (),
) -> list[tuple[Any, tuple[str, int]]]:
    """:func:`choose_punch_targets` for ``peer``, with the relays in between and the peerstore
    read from ``host``; the addresses as multiaddrs."""
    import multiaddr
    from libp2p.peer.id import ID

    store = host.get_peerstore()
    avoid: set[tuple[str, int]] = set()
    for conn in connections(host, peer):
        if not is_relayed(conn):
            continue
        circuit = split_circuit(str(conn.get_transport_addresses()[0]))
        try:
            relay = ID.from_base58(circuit.relay_id if circuit else "")
            avoid |= {t for a in store.addrs(relay) if (t := tcp_target(a))}
        except Exception:
            pass
    try:
        known = list(store.addrs(peer))
    except Exception:
        known = []
    chosen = choose_punch_targets(sent, known, sources, avoid=avoid, superseded=superseded)
    return [(multiaddr.Multiaddr(addr), source) for addr, source in chosen]


class _SentAddrs:
    """The (ip, port) each peer has sent in its DCUtR exchanges, to tell which of the peerstore's
    addresses it has stopped sending (:func:`choose_punch_targets`' ``superseded``)."""

    def __init__(self, max_peers: int = 1024) -> None:
        self._sent: dict[str, set[tuple[str, int]]] = {}
        self._max_peers = max_peers

    def exchange(self, peer: Any, addrs: Sequence[Any]) -> set[tuple[str, int]]:
        """Record what ``peer`` sent now; what it sent before and not now."""
        key = str(peer)
        now = {t for a in addrs if (t := tcp_target(a)) is not None}
        before = self._sent.pop(key, set())
        self._sent[key] = before | now  # re-inserted: the dict is oldest first
        while len(self._sent) > self._max_peers:
            del self._sent[next(iter(self._sent))]
        return before - now

    def forget(self, peer: Any) -> None:
        """Drop what ``peer`` sent (it went away; a new connection starts afresh)."""
        self._sent.pop(str(peer), None)

    def __len__(self) -> int:
        return len(self._sent)

    def __contains__(self, peer: object) -> bool:
        return str(peer) in self._sent


async def retire_relayed(host: Any, peer_id: Any, linger: float) -> None:
    """Close the relayed connections to ``peer_id`` once a direct one exists and they carry no
    stream (all of them after ``linger`` seconds); then lift the protection (``PROTECT_TAG``)
    that kept both legs alive through py-libp2p's per-peer trimming. Shared by DCUtR and the
    birthday punch (``_birthday.py``)."""
    network = host.get_network()
    deadline = trio.current_time() + linger
    try:
        while True:
            relayed = [c for c in connections(host, peer_id) if is_relayed(c)]
            direct = [c for c in connections(host, peer_id) if not is_relayed(c)]
            if not relayed or not direct:
                return
            idle = [c for c in relayed if not c.get_streams()]
            if trio.current_time() >= deadline:
                idle = relayed
            for conn in idle:
                log.debug("closing the relayed leg to %s", peer_id)
                await conn.close()
            if len(idle) == len(relayed):
                return
            await trio.sleep(1.0)
    except Exception as exc:
        log.debug("retiring the relayed leg to %s: %r", peer_id, exc)
    finally:
        network.unprotect(peer_id, PROTECT_TAG)


def _dcutr_class() -> type:
    import multiaddr
    from libp2p.relay.circuit_v2.dcutr import DCUtRProtocol

    class _DCUtR(DCUtRProtocol):
        """DCUtRProtocol driven by the dial ladder (see the module docstring)."""

        def __init__(self, host: Any, *, dial_timeout: float, linger: float) -> None:
            super().__init__(host, dial_timeout=dial_timeout)  # type: ignore[arg-type]
            self.linger = linger
            #: Direct connections made by a hole punch (to report them as such).
            self.punched: weakref.WeakSet[Any] = weakref.WeakSet()
            #: What each peer sent in earlier exchanges (to skip its stale addresses).
            self.sent = _SentAddrs()

        async def _auto_drive_loop(self) -> None:
            await trio.sleep_forever()

        async def _try_unilateral_upgrade(self, peer_id: Any) -> bool:
            return False

        async def _dial_peer(
            self,
            peer_id: Any,
            addr: Any,
            source: tuple[str, int] | None = None,
            as_responder: bool = False,
        ) -> None:
            # py-libp2p dials once (or thrice, 0.1-0.4 s apart). A SYN that reaches the far NAT
            # before the far side's own SYN left it is dropped, or answered with a RST by a
            # router that has no listener on that port (Linux): then only SYNs that cross
            # within about one link latency make a connection. So the TCP connect is retried
            # back to back from the same port until it connects or ``dial_timeout`` passes;
            # only then is the connection upgraded (Noise, Yamux), once.
            network = self.host.get_network()
            target = tcp_target(addr)
            if target is None or source is None or not _punchable(addr, source):
                return
            raw = None
            tries = 0
            began = trio.current_time()
            with trio.move_on_after(self.dial_timeout):
                while raw is None:
                    tries += 1
                    if tries % 64 == 0 and await self._verify_direct_connection(peer_id):
                        return
                    raw = await _connect_from(source, target)
                    if raw is _BUSY:  # the peer's SYN won: its connection is being upgraded
                        raw = None
                        break
            log.debug(
                "punch dial %s: %s after %d connects in %.3fs",
                addr,
                "connected" if raw is not None else "nothing",
                tries,
                trio.current_time() - began,
            )
            if raw is None:
                return
            try:
                with trio.fail_after(self.dial_timeout):
                    if as_responder:
                        full = multiaddr.Multiaddr(f"{addr}/p2p/{peer_id}")
                        muxed = await network.upgrade_inbound_raw_conn(raw, full)
                        if getattr(muxed, "peer_id", None) != peer_id:
                            await muxed.close()
                            return
                    else:
                        await network.upgrade_outbound_raw_conn(raw, peer_id)
            except BaseException as exc:
                with trio.CancelScope(shield=True), trio.move_on_after(1):
                    await raw.close()
                if not isinstance(exc, Exception):
                    raise  # cancelled: another address won the race
                log.debug("punch upgrade %s: %s", addr, reason(exc))
                return
            if await self._verify_direct_connection(peer_id):
                self._direct_connections.add(peer_id)

        async def _perform_hole_punch(
            self, peer_id: Any, addrs: list[Any], as_responder: bool = False
        ) -> bool:
            # One round (py-libp2p runs three of up to 7 s each): every usable address at once,
            # each a tight connect loop for ``dial_timeout`` seconds; the first to connect wins.
            sources = listen_sources(self.host)
            superseded = self.sent.exchange(peer_id, addrs)
            targets = _punch_targets(self.host, peer_id, addrs, sources, superseded)
            if as_responder and _not_behind_nat(self.host):
                # We (the DCUtR initiator) are the Noise responder of the new connection. With
                # no NAT in front of us our own dial would only land on the peer's listener,
                # which is a responder too; the peer's dial reaches our listener by itself.
                targets = []
            elif not targets:
                log.debug("hole punch to %s: no address to punch to", peer_id)
                return False
            network = self.host.get_network()
            # Both legs must survive py-libp2p's per-peer trimming until the relayed one is idle.
            network.protect(peer_id, PROTECT_TAG)
            ok = False
            try:
                async with trio.open_nursery() as race:

                    async def watch() -> None:
                        while not await self._verify_direct_connection(peer_id):
                            await trio.sleep(0.02)
                        race.cancel_scope.cancel()

                    race.start_soon(watch)
                    async with trio.open_nursery() as dials:
                        for addr, source in targets:
                            dials.start_soon(self._dial_peer, peer_id, addr, source, as_responder)
                        if not targets:
                            dials.start_soon(trio.sleep, self.dial_timeout)
                    race.cancel_scope.cancel()
                ok = await self._verify_direct_connection(peer_id)
                if ok:
                    self._schedule_relay_close(peer_id)
                return ok
            finally:
                if not ok:
                    network.unprotect(peer_id, PROTECT_TAG)

        def _schedule_relay_close(self, peer_id: Any) -> None:
            for conn in connections(self.host, peer_id):
                if not is_relayed(conn):
                    self.punched.add(conn)
            if self._nursery is not None:
                self._nursery.start_soon(self._retire_relayed, peer_id)

        async def _retire_relayed(self, peer_id: Any) -> None:
            await retire_relayed(self.host, peer_id, self.linger)

    return _DCUtR


async def dcutr_service(
    host: Any,
    *,
    dial_timeout: float,
    linger: float,
    task_status: trio.TaskStatus[Any] = trio.TASK_STATUS_IGNORED,
) -> None:
    """Run DCUtR on ``host`` until cancelled; ``started()`` with the protocol object."""
    from libp2p.tools.anyio_service import background_trio_service

    proto = _dcutr_class()(host, dial_timeout=dial_timeout, linger=linger)
    async with background_trio_service(proto):
        await proto.event_started.wait()
        task_status.started(proto)
        await trio.sleep_forever()
