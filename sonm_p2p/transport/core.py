"""The trio side of a node: one libp2p host, its nursery and the public async API the protocols
use (relay, forward, gossip). Everything here runs on the node's trio thread, except
:meth:`NodeCore.call_soon` and the read-only queries marked "any thread".

:class:`~sonm_p2p.transport.node.P2PNode` is the thread-safe facade over it: it runs
:meth:`NodeCore.serve` on its own thread and hops each call onto it.

NAT traversal: every node accepts relayed connections (circuit relay v2, STOP) and takes part in
DCUtR hole punches; with ``NodeOptions.relay_service`` it relays for others (a hub). A node behind
NAT reserves on a relay (:meth:`NodeCore.add_reservation`) and advertises the circuit address.
:meth:`NodeCore.connect_peer` reaches a peer by the dial ladder (``dial_ladder.py``: direct IPv6,
direct IPv4, relayed, then a hole-punch upgrade) and :meth:`NodeCore.path` tells which path a
peer is on.
"""

from __future__ import annotations

import contextlib
import logging
import os
import socket
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from functools import partial
from typing import Any

import trio

from sonm_p2p.errors import DialError, SonmError, Timeout
from sonm_p2p.identity import Identity
from sonm_p2p.localsock import private_socket_path
from sonm_p2p.transport import _sessions
from sonm_p2p.transport import addrs as _addrs
from sonm_p2p.transport._birthday import PROTOCOL as BIRTHDAY
from sonm_p2p.transport._birthday import BirthdayPunch
from sonm_p2p.transport._conn import (
    aclose_quietly,
    defer_inbound_identify,
    dial,
    dial_unpinned,
    is_relayed,
    new_host,
    peer_address,
    reason,
)
from sonm_p2p.transport._dcutr import dcutr_service
from sonm_p2p.transport._handles import Session, Tunnel
from sonm_p2p.transport._joins import JoinGate
from sonm_p2p.transport._paths import Path, PeerPaths
from sonm_p2p.transport._splice import splice
from sonm_p2p.transport.birthday import BirthdayOptions
from sonm_p2p.transport.dial_ladder import LadderOptions, UpgradePolicy
from sonm_p2p.transport.heartbeat import Heartbeat
from sonm_p2p.transport.reachability import Reachability, check_reachability, serve_autonat
from sonm_p2p.transport.relay import RelayOptions, RelayReservation, relay_service

__all__ = ["NodeCore", "NodeOptions", "Service", "StreamHandler"]

log = logging.getLogger("sonm_p2p.transport.node")

StreamHandler = Callable[[Any], Awaitable[None]]
#: ``await service(host, task_status=...)``: runs in the node's nursery (see add_service).
Service = Callable[..., Awaitable[None]]


@dataclass(frozen=True, kw_only=True)
class NodeOptions:
    """How a node's host is built.

    listen: multiaddrs to listen on (defaults to an ephemeral TCP port on all IPv4 interfaces).
    dial_timeout: seconds a dial (including the peer-ID probe) may take; defaults to 10.
    relay_service: serve as a circuit relay v2 for others within these limits (hubs); defaults
        to None (not a relay; relayed connections *to* this node are always accepted).
    reserve_on: relays (``host:port`` or multiaddrs) to reserve on from the start, because this
        node is not reachable directly; kept refreshed in the background; defaults to none.
        See :meth:`P2PNode.reserve` to do it later (and learn whether it worked).
    autonat_service: answer other nodes' AutoNAT dial-back requests (hubs do); defaults to False.
        See :meth:`P2PNode.check_reachability` for the asking side.
    hole_punch: take part in DCUtR upgrades of relayed connections; defaults to True.
    punch_dial_timeout: seconds for each hole-punch dial; defaults to 3 (py-libp2p's 10 made an
        upgrade take ~11 s).
    upgrade_wait: seconds :meth:`P2PNode.connect_peer` waits for the first hole punch of a
        relayed path before returning it as relayed (the punch goes on); defaults to 3.
    relay_linger: seconds a relayed connection may keep carrying the streams opened on it before
        an upgrade, once a direct one exists; defaults to 600. New streams always go direct.
    keepalive_interval / keepalive_timeout: every ``interval`` seconds a peer reached by
        :meth:`P2PNode.connect_peer` whose connection carries streams is pinged; one silent for
        ``timeout`` seconds is disconnected, so streams over a cut link end with an error
        instead of hanging; default 10 s and 10 s; an interval of 0 turns it off.
    forget_after: seconds the addresses and NAT type learned for a peer by
        :meth:`P2PNode.connect_peer` are kept after its last connection closed (a stream wanted
        meanwhile redials it by them); defaults to 600. Other per-peer state goes at once.
    birthday_punch: after DCUtR, between an endpoint-independent NAT and a symmetric one, try a
        birthday-paradox punch (``birthday.py``; ``--no-birthday-punch`` turns it off); defaults
        to True. Serving the other side of one is part of it.
    birthday: its budget, rate and per-peer rate limit.
    ladder / upgrade: the dial ladder's timeouts and when to retry hole punches.
    max_connections: connections the host holds at once, inbound and outbound; defaults to 300
        (py-libp2p's). A hub holds one per miner: ``sonmhub --max-connections`` raises it. It
        sizes py-libp2p's connection manager (which prunes above it) and its resource manager.
    max_joining: inbound peers joining at once, the rest waiting their turn (``_joins.py``); 0
        (the default) for no limit. Hubs set it (``sonmhub --max-joining``).
    defer_identify: seconds before a peer that connected is identified; one that opened a
        session by then (a miner at its hub) is not (``defer_inbound_identify``); 0 (the
        default): at once, as py-libp2p does. Hubs set it.
    """

    listen: tuple[str, ...] = ("/ip4/0.0.0.0/tcp/0",)
    dial_timeout: float = 10.0
    relay_service: RelayOptions | None = None
    reserve_on: tuple[str, ...] = ()
    autonat_service: bool = False
    hole_punch: bool = True
    punch_dial_timeout: float = 3.0
    upgrade_wait: float = 3.0
    relay_linger: float = 600.0
    keepalive_interval: float = 10.0
    keepalive_timeout: float = 10.0
    forget_after: float = 600.0
    birthday_punch: bool = True
    birthday: BirthdayOptions = BirthdayOptions()
    ladder: LadderOptions = LadderOptions()
    upgrade: UpgradePolicy = UpgradePolicy()
    max_connections: int = 300
    max_joining: int = 0
    defer_identify: float = 0.0

    def __post_init__(self) -> None:
        if self.max_connections < 1:
            raise ValueError("max_connections must be at least 1")


class NodeCore:
    """One libp2p host (Noise, Yamux, TCP over IPv4/IPv6) and its nursery, on a trio thread.

    ``await nursery.start(core.serve)`` builds the host, listens, starts the node's services and
    returns once the node is ready; cancelling it stops everything and closes the connections.
    Attributes, set while serving: ``host`` (the py-libp2p host), ``nursery`` (where
    :meth:`spawn` runs tasks), ``paths`` (the dial ladder's state), ``peer_id``.
    """

    def __init__(self, identity: Identity, options: NodeOptions | None = None) -> None:
        self.identity = identity
        self.options = options or NodeOptions()
        self.host: Any = None
        self.nursery: trio.Nursery | None = None
        self.paths: PeerPaths | None = None
        self.peer_id = ""
        #: Relay reservations this node keeps (read from any thread).
        self.reservations: list[RelayReservation] = []
        self.relay: Any = None  # the circuit relay v2 protocol this node serves (relay_counts)
        self._token: trio.lowlevel.TrioToken | None = None
        self._handlers: dict[str, StreamHandler] = {}
        self._services: list[Service] = []
        self._learned: dict[str, str] = {}  # peer IDs probed at addresses (dial_unpinned)
        #: Inbound joins under way (gated when ``options.max_joining``).
        self.joins = JoinGate(self.options.max_joining)
        self.session_peers: set[str] = set()  # peers with a session open to this node

    def __repr__(self) -> str:
        state = "serving" if self.nursery is not None else "idle"
        return f"<NodeCore {self.identity.node_id} {self.peer_id[:16]}… {state}>"

    # -- lifecycle ---------------------------------------------------------------------------

    def add_service(self, service: Service) -> None:
        """Run ``await service(host, task_status=...)`` in the nursery once serving (add before
        :meth:`serve`); :meth:`serve` is ready only when every service has started."""
        if self._token is not None:
            raise SonmError("services must be added before the node starts")
        self._services.append(service)

    async def serve(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Run the host until cancelled; ``started()`` once it listens and its services run.

        Raises DialError when it cannot listen (before ``started()``).
        """
        import multiaddr

        o = self.options
        host = new_host(self.identity.libp2p_key_pair(), o.dial_timeout, o.max_connections)
        self.joins.install(host.get_network())
        listen = [multiaddr.Multiaddr(a) for a in self.options.listen]
        self.host = host
        self.peer_id = host.get_id().to_string()
        for proto, handler in self._handlers.items():
            host.set_stream_handler(proto, handler)
        async with host.run(listen), trio.open_nursery() as nursery:
            try:
                self.nursery = nursery
                self._token = trio.lowlevel.current_trio_token()
                await self._start(host, nursery)
                task_status.started()
                await trio.sleep_forever()
            finally:
                nursery.cancel_scope.cancel()
                self.nursery = None
                # py-libp2p leaves the connections' sockets open when the host stops: peers
                # would keep a dead connection (and its streams) until they next write to it.
                network = host.get_network()
                with trio.CancelScope(shield=True), trio.move_on_after(3):
                    for peer in list(network.connections):
                        try:
                            await network.close_peer(peer)
                        except Exception as exc:
                            log.debug("closing the connection to %s: %r", peer, exc)

    async def _start(self, host: Any, nursery: trio.Nursery) -> None:
        o = self.options
        if not host.get_addrs():
            raise DialError(f"could not listen on {list(o.listen)}")
        if o.defer_identify:
            skip = self.session_peers.__contains__
            defer_inbound_identify(host, nursery.start_soon, o.defer_identify, skip)
        # A peer holding a session with this node is relayed to without a RESERVE of its own.
        implied = self.session_peers.__contains__
        self.relay = await nursery.start(
            partial(relay_service, host, o.relay_service, implied=implied)
        )
        if o.autonat_service:
            await nursery.start(serve_autonat, host)
        dcutr = None
        if o.hole_punch:
            dcutr = await nursery.start(
                partial(
                    dcutr_service, host, dial_timeout=o.punch_dial_timeout, linger=o.relay_linger
                )
            )
        birthday = None
        if o.birthday_punch:
            birthday = BirthdayPunch(
                host,
                options=o.birthday,
                local_nat=lambda: self.paths.nat_type if self.paths is not None else None,
                spawn=nursery.start_soon,
                linger=o.relay_linger,
            )
            host.set_stream_handler(BIRTHDAY, birthday.handle)
        self.paths = PeerPaths(
            host,
            nursery,
            dcutr=dcutr,
            ladder=o.ladder,
            policy=o.upgrade,
            local_ips=self.local_ips,
            forget_after=o.forget_after,
            birthday=birthday,
        )
        host.get_network().register_notifee(self.paths.watch())
        if o.keepalive_interval > 0:
            await nursery.start(self.paths.keepalive, o.keepalive_interval, o.keepalive_timeout)
        for target in o.reserve_on:
            nursery.start_soon(self.reserve_when_reachable, target)
        for service in self._services:
            await nursery.start(service, host)

    # -- scheduling --------------------------------------------------------------------------

    def spawn(self, fn: Callable[..., Awaitable[Any]], *args: Any) -> None:
        """Run ``fn(*args)`` in the node's nursery; it ends when the node closes."""
        if self.nursery is None:
            raise SonmError("p2p node is not running")
        self.nursery.start_soon(fn, *args)

    def call_soon(self, fn: Callable[[], Any]) -> None:
        """(any thread) Run ``fn()`` on the node's trio thread soon; nothing once it stopped."""
        if self._token is None:
            return
        try:
            self._token.run_sync_soon(fn)
        except trio.RunFinishedError:
            pass

    # -- addresses and dialling --------------------------------------------------------------

    def listen_addrs(self) -> list[str]:
        """(any thread) The transport addresses the host listens on (wildcards as such)."""
        if self.host is None:
            return []
        return [str(a) for a in self.host.get_transport_addrs()]

    def expanded_listen_addrs(self) -> list[str]:
        """Listen addresses with a wildcard replaced by each interface address (read here: the
        node may live in another network namespace than its callers, as in the tests)."""
        return _addrs.expand_listen(self.listen_addrs())

    def local_ips(self) -> list[str]:
        return _addrs.local_ips_of(self.expanded_listen_addrs())

    async def probe(self, addr: Any) -> str:
        """The peer ID at ``addr`` (a multiaddr), learned by a Noise handshake on a throw-away
        connection: the remote is authenticated, only pinning is skipped."""
        from libp2p.transport.tcp.tcp import TCP

        raw = await TCP().dial(addr)
        try:
            upgrader = self.host.get_network().upgrader
            secured = await upgrader.security_multistream.secure_outbound(raw, None)
        except BaseException:
            await aclose_quietly(raw)
            raise
        peer = secured.get_remote_peer().to_string()
        await aclose_quietly(secured)
        return peer

    async def connect(
        self, maddr: str, peer_id: str | None = None, timeout: float | None = None
    ) -> str:
        """Connect to ``maddr`` (a multiaddr without /p2p); without ``peer_id`` it is learned by
        :meth:`probe`, once per address (``dial_unpinned``). Returns the peer ID. Raises
        DialError, Timeout past ``timeout`` (default ``dial_timeout``)."""
        import multiaddr
        from libp2p.peer.id import ID
        from libp2p.peer.peerinfo import PeerInfo

        addr = multiaddr.Multiaddr(maddr)
        timeout = timeout or self.options.dial_timeout
        try:
            with trio.fail_after(timeout):
                if peer_id is None:
                    peer_id = await dial_unpinned(self.host, addr, self._learned, self.probe)
                else:
                    await dial(self.host, PeerInfo(ID.from_base58(peer_id), [addr]))
        except trio.TooSlowError:
            raise Timeout(f"no answer from {maddr} within {timeout:g}s") from None
        except SonmError:
            raise
        except Exception as exc:
            raise DialError(f"cannot connect to {maddr}: {reason(exc)}") from None
        return peer_id

    async def connect_peer(
        self,
        peer_id: str,
        addrs: Sequence[str] = (),
        *,
        remote_nat: str | None = None,
        upgrade_wait: float | None = None,
    ) -> Path:
        """Reach ``peer_id`` by the dial ladder; see :meth:`P2PNode.connect_peer`."""
        wait = self.options.upgrade_wait if upgrade_wait is None else upgrade_wait
        return await self._paths().connect(
            peer_id, list(addrs), remote_nat=remote_nat, upgrade_wait=wait
        )

    async def disconnect(self, peer_id: str) -> None:
        from libp2p.peer.id import ID

        await self.host.disconnect(ID.from_base58(peer_id))

    def is_connected(self, peer_id: str) -> bool:
        """(any thread) Whether a connection to ``peer_id`` is open."""
        if self.host is None:
            return False
        return any(p.to_string() == peer_id for p in self.host.get_network().get_connections_map())

    def remote_addr(self, peer_id: str) -> str:
        """(any thread) ``ip:port`` (``[v6]:port``) the connection to ``peer_id`` comes from (a
        direct one first), or "" when not connected."""
        from libp2p.peer.id import ID

        if self.host is None:
            return ""
        conns = self.host.get_network().get_connections(ID.from_base58(peer_id))
        for conn in sorted(conns, key=is_relayed):
            far = peer_address(conn)
            if far is not None:
                return _addrs.format_hostport(*far)
        return ""

    def path(self, peer_id: str) -> Path | None:
        """The path new streams to ``peer_id`` take (None when not connected), without RTT."""
        return self._paths().path(peer_id)

    async def measured_path(self, peer_id: str) -> Path | None:
        """:meth:`path` with its round-trip time measured by a libp2p ping on it."""
        return await self._paths().measured_path(peer_id)

    async def upgrade(self, peer_id: str) -> bool:
        """One hole punch now on a relayed path to ``peer_id``; True when it went direct."""
        return await self._paths().upgrade_once(peer_id)

    def _paths(self) -> PeerPaths:
        if self.paths is None:
            raise SonmError("p2p node is not running")
        return self.paths

    async def check_reachability(
        self, servers: Sequence[str], *, timeout: float = 10.0
    ) -> tuple[Reachability, dict[str, str]]:
        """AutoNAT dial-backs by ``servers`` to this node's listen addresses."""
        direct = self.expanded_listen_addrs()
        return await check_reachability(self.host, list(servers), direct, timeout=timeout)

    # -- relay reservations ------------------------------------------------------------------

    async def add_reservation(self, relay_id: str, relay_addr: str) -> RelayReservation:
        """Start keeping a reservation on a connected relay (the existing one if any)."""
        for res in self.reservations:
            if res.relay_id == relay_id:
                return res
        res = RelayReservation(relay_id, [relay_addr], self.peer_id)
        self.reservations.append(res)
        scope = trio.CancelScope()
        res.on_cancel(lambda: self.call_soon(scope.cancel))

        async def keep() -> None:
            try:
                with scope:
                    await res.keep(self.host)
            finally:
                self.drop_reservation(res)

        self.spawn(keep)
        return res

    def drop_reservation(self, res: RelayReservation) -> None:
        """(any thread) Forget a reservation (after cancelling it)."""
        if res in self.reservations:
            self.reservations.remove(res)

    async def reserve_when_reachable(self, target: str) -> None:
        """Connect to ``target`` (retrying with back-off), then keep a reservation there."""
        maddr, peer_id = _addrs.parse_target(target)
        delay = 0.5
        while True:
            try:
                relay_id = await self.connect(maddr, peer_id)
                break
            except SonmError as exc:
                log.debug("relay %s: %s (retry in %.1fs)", target, exc, delay)
                await trio.sleep(delay)
                delay = min(delay * 2, 30.0)
        await self.add_reservation(relay_id, maddr)

    # -- streams -----------------------------------------------------------------------------

    def handle(self, protocol: str, handler: StreamHandler) -> None:
        """(any thread) Serve ``protocol`` with an async handler run on the trio thread."""
        self._handlers[protocol] = handler
        if self.host is not None:
            self.call_soon(lambda: self.host.set_stream_handler(protocol, handler))

    async def open_stream(self, peer_id: str, protocol: str) -> Any:
        """A new ``protocol`` stream to ``peer_id`` on its best connection: direct over relayed;
        redialled by the ladder when the connection is gone and its addresses were given to
        :meth:`connect_peer`."""
        return await self._paths().open_stream(peer_id, [protocol])

    def tcp_splicer(
        self, protocol: str, target: tuple[str, int] | str, allow: Callable[[str], bool] | None
    ) -> StreamHandler:
        """A stream handler that splices each stream into a new connection to ``target``
        (``(host, port)``, or the path of a Unix socket); ``allow(peer_id)`` decides who may use
        it (refused streams are reset at once)."""

        async def handler(stream: Any) -> None:
            peer = stream.muxed_conn.peer_id.to_string()
            if allow is not None and not allow(peer):
                log.warning("refused %s stream from %s", protocol, peer)
                await aclose_quietly(stream, reset=True)
                return
            try:
                if isinstance(target, str):
                    tcp = await trio.open_unix_socket(target)
                else:
                    tcp = await trio.open_tcp_stream(*target)
            except OSError as exc:
                log.warning("%s: local service %s unreachable: %s", protocol, target, exc)
                await aclose_quietly(stream, reset=True)
                return
            await splice(stream, tcp)

        return handler

    async def open_tunnel(self, peer_id: str, protocol: str) -> Tunnel:
        """Listen on a Unix socket only this process can reach (in a 0700 directory of its
        own); each connection there opens one stream. A loopback TCP port would let any local
        process speak to the peer as this node."""
        path = private_socket_path("t")
        # Bound here, not by trio's ``await sock.bind`` (which binds a Unix socket in a worker
        # thread of trio's default limiter): a hub's session callbacks open tunnels from such
        # threads, and 40 miners connecting at once held every token, so no tunnel could bind
        # and every handshake hung (found by 300 light miners). A local bind does not block.
        raw = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            raw.bind(path)
        except BaseException:
            raw.close()
            raise
        sock = trio.socket.from_stdlib_socket(raw)
        sock.listen(128)
        listeners = [trio.SocketListener(sock)]
        scope = trio.CancelScope()
        tunnel = Tunnel(self.call_soon, peer_id, protocol, path, scope)

        async def on_conn(tcp: trio.SocketStream) -> None:
            try:
                stream = await self.open_stream(peer_id, protocol)
            except Exception as exc:
                log.debug("tunnel %s: cannot open stream: %r", protocol, exc)
                await aclose_quietly(tcp)
                return
            await splice(stream, tcp)

        async def serve() -> None:
            with scope:
                try:
                    await trio.serve_listeners(on_conn, listeners)
                finally:
                    for lst in listeners:
                        await aclose_quietly(lst)
                    with contextlib.suppress(OSError):
                        os.unlink(path)

        self.spawn(serve)
        return tunnel

    def session_acceptor(
        self,
        on_open: Callable[..., None],
        on_close: Callable[[str], None],
        heartbeat: Heartbeat | None = None,
        messages: bool = False,
    ) -> StreamHandler:
        """A handler for session streams (see :func:`._sessions.session_acceptor`)."""
        return _sessions.session_acceptor(self, on_open, on_close, heartbeat, messages)

    async def open_session(
        self,
        peer_id: str,
        protocols: Sequence[str],
        on_beat: Callable[[], None] | None = None,
        timeout: float | None = None,
    ) -> Session:
        """Open a session stream to a connected peer (see :func:`._sessions.open_session`)."""
        return await _sessions.open_session(self, peer_id, protocols, on_beat, timeout)
