"""One libp2p host per process, on its own trio thread, behind a small thread-safe API.

The rest of the process (gRPC servers and clients, click commands) is ordinary threaded code; it
talks to the host only through :class:`P2PNode`, whose methods hop onto the trio thread with the
host's trio token. Streams are exposed in two shapes that need no trio on the caller's side:

* :meth:`P2PNode.serve_tcp` splices every inbound stream of a protocol into a local TCP server
  (the far end of the gRPC bridge, see ``bridge.py``);
* :meth:`P2PNode.open_tunnel` opens a loopback TCP listener whose every connection becomes one new
  stream to a peer (the near end of the bridge);
* :meth:`P2PNode.accept_sessions` / :meth:`P2PNode.open_session` hold one long-lived stream whose
  end tells both sides that the peer went away.

NAT traversal: every node accepts relayed connections (circuit relay v2, STOP) and takes part in
DCUtR hole punches; with ``NodeOptions.relay_service`` it relays for others (a hub). A node behind
NAT reserves on a relay (:meth:`P2PNode.reserve`) and advertises the circuit address
(:attr:`P2PNode.advertised_addrs`). :meth:`P2PNode.connect_peer` reaches a peer by the dial ladder
(``dial_ladder.py``: direct IPv6, direct IPv4, relayed, then a hole-punch upgrade) and
:meth:`P2PNode.path` tells which path a peer is on, with its RTT.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from functools import partial
from typing import Any

import trio

from sonm_p2p.errors import DialError, SonmError, Timeout
from sonm_p2p.identity import Identity
from sonm_p2p.transport import addrs as _addrs
from sonm_p2p.transport._dcutr import dcutr_service, dial, is_relayed, peer_address
from sonm_p2p.transport._handles import (
    Session,
    Tunnel,
    _aclose_quietly,
    _quiet_libp2p_logs,
    _read_until_end,
    _reason,
)
from sonm_p2p.transport._paths import Path, PeerPaths
from sonm_p2p.transport._splice import splice
from sonm_p2p.transport.dial_ladder import LadderOptions, UpgradePolicy
from sonm_p2p.transport.reachability import Reachability, check_reachability, serve_autonat
from sonm_p2p.transport.relay import (
    RelayOptions,
    RelayReservation,
    RelayReservations,
    relay_service,
)

__all__ = ["NodeOptions", "P2PNode", "Path", "Session", "Tunnel"]

log = logging.getLogger(__name__)

StreamHandler = Callable[[Any], Awaitable[None]]


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
    ladder / upgrade: the dial ladder's timeouts and when to retry hole punches.
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
    ladder: LadderOptions = LadderOptions()
    upgrade: UpgradePolicy = UpgradePolicy()


class P2PNode:
    """The process's libp2p host (Noise, Yamux, TCP over IPv4/IPv6) on a trio thread.

    ``start()`` blocks until the host listens (raises SonmError if it cannot); ``close()`` stops it
    and joins the thread. Both are idempotent. Every other method may be called from any thread.
    """

    def __init__(self, identity: Identity, options: NodeOptions | None = None) -> None:
        self.identity = identity
        self.options = options or NodeOptions()
        self._thread: threading.Thread | None = None
        self._token: trio.lowlevel.TrioToken | None = None
        self._ready = threading.Event()
        self._startup_error: BaseException | None = None
        self._stop: trio.Event | None = None
        self._nursery: trio.Nursery | None = None
        self._host: Any = None
        self._handlers: dict[str, StreamHandler] = {}
        self._services: list[Callable[..., Awaitable[None]]] = []
        self._paths: PeerPaths | None = None
        self._relays = RelayReservations(self)
        self.peer_id = ""

    # -- lifecycle ---------------------------------------------------------------------------

    def start(self) -> None:
        if self._thread is not None:
            return
        _quiet_libp2p_logs()
        self._thread = threading.Thread(target=self._thread_main, name="p2p-node", daemon=True)
        self._thread.start()
        self._ready.wait()
        if self._startup_error is not None:
            self._thread.join(timeout=5)
            self._thread = None
            err = self._startup_error
            if isinstance(err, SonmError):
                raise err
            raise SonmError(f"cannot start the libp2p host on {list(self.options.listen)}: {err}")

    def close(self) -> None:
        thread = self._thread
        if thread is None or self._token is None:
            return
        try:
            trio.from_thread.run_sync(self._stop.set, trio_token=self._token)
        except trio.RunFinishedError:
            pass
        thread.join(timeout=10)
        self._thread = None

    def __enter__(self) -> P2PNode:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        state = "running" if self._thread else "stopped"
        return f"<P2PNode {self.identity.node_id} {self.peer_id[:16]}… {state}>"

    def _thread_main(self) -> None:
        try:
            trio.run(self._main)
        except BaseException as exc:  # reported to start() when it happens before readiness
            if not self._ready.is_set():
                self._startup_error = exc
                self._ready.set()
            else:
                log.exception("p2p node thread failed")

    async def _main(self) -> None:
        import multiaddr
        from libp2p import new_host
        from libp2p.crypto.x25519 import create_new_key_pair as new_x25519
        from libp2p.network.config import ConnectionConfig
        from libp2p.security.noise.transport import PROTOCOL_ID as NOISE
        from libp2p.security.noise.transport import Transport as NoiseTransport

        key_pair = self.identity.libp2p_key_pair()
        # Noise only: a peer offering plaintext (or anything else) fails to negotiate.
        sec = {NOISE: NoiseTransport(key_pair, noise_privkey=new_x25519().private_key)}
        # One connection per peer: besides being what we want, it skips py-libp2p's 250 ms
        # happy-eyeballs wait on every connect().
        conn_cfg = ConnectionConfig(
            max_connections_per_peer=1, dial_timeout=self.options.dial_timeout
        )
        host = new_host(
            key_pair=key_pair, sec_opt=sec, muxer_preference="YAMUX", connection_config=conn_cfg
        )
        listen = [multiaddr.Multiaddr(a) for a in self.options.listen]
        self._host = host
        self.peer_id = host.get_id().to_string()
        for proto, handler in self._handlers.items():
            host.set_stream_handler(proto, handler)
        async with host.run(listen), trio.open_nursery() as nursery:
            self._nursery = nursery
            self._stop = trio.Event()
            self._token = trio.lowlevel.current_trio_token()
            if not host.get_addrs():
                raise DialError(f"could not listen on {list(self.options.listen)}")
            await nursery.start(relay_service, host, self.options.relay_service)
            if self.options.autonat_service:
                await nursery.start(serve_autonat, host)
            dcutr = None
            if self.options.hole_punch:
                dcutr = await nursery.start(
                    partial(
                        dcutr_service,
                        host,
                        dial_timeout=self.options.punch_dial_timeout,
                        linger=self.options.relay_linger,
                    )
                )
            self._paths = PeerPaths(
                host,
                nursery,
                dcutr=dcutr,
                ladder=self.options.ladder,
                policy=self.options.upgrade,
                local_ips=self._local_ips,
            )
            if self.options.keepalive_interval > 0:
                await nursery.start(
                    self._paths.keepalive,
                    self.options.keepalive_interval,
                    self.options.keepalive_timeout,
                )
            for target in self.options.reserve_on:
                nursery.start_soon(self._relays.add_when_reachable, target)
            for service in self._services:
                await nursery.start(service, host)
            self._ready.set()
            await self._stop.wait()
            nursery.cancel_scope.cancel()
            # py-libp2p leaves the connections' sockets open when the host stops: peers would
            # keep a dead connection (and its streams) until they next write to it.
            network = host.get_network()
            with trio.CancelScope(shield=True), trio.move_on_after(3):
                for peer in list(network.connections):
                    try:
                        await network.close_peer(peer)
                    except Exception as exc:
                        log.debug("closing the connection to %s: %r", peer, exc)

    def add_service(self, service: Callable[..., Awaitable[None]]) -> None:
        """Run ``await service(host, task_status=...)`` in the node's nursery (before start()).

        The service gets the libp2p host, signals readiness with ``task_status.started()``
        (start() waits for it), runs until the node closes and stops by cancellation.
        """
        if self._thread is not None:
            raise SonmError("services must be added before the node starts")
        self._services.append(service)

    # -- thread hops -------------------------------------------------------------------------

    def run(self, fn: Callable[..., Awaitable[Any]], *args: Any) -> Any:
        """Run ``await fn(*args)`` on the node's trio thread and return its result."""
        if self._token is None:
            raise SonmError("p2p node is not running")
        return trio.from_thread.run(fn, *args, trio_token=self._token)

    def _spawn(self, fn: Callable[..., Awaitable[Any]], *args: Any) -> None:
        """(trio thread) Run ``fn(*args)`` in the node's nursery; it ends when the node closes."""
        if self._nursery is None:
            raise SonmError("p2p node is not running")
        self._nursery.start_soon(fn, *args)

    def _call_soon(self, fn: Callable[[], Any]) -> None:
        if self._token is None:
            return
        try:
            self._token.run_sync_soon(fn)
        except trio.RunFinishedError:
            pass

    # -- addresses and dialling --------------------------------------------------------------

    @property
    def addrs(self) -> list[str]:
        """Full multiaddrs (with ``/p2p/<peer id>``) this node listens on."""
        if self._host is None:
            return []
        return [str(a) for a in self._host.get_addrs()]

    def connect(self, target: str) -> str:
        """Connect to ``target`` (host:port, or a multiaddr with or without ``/p2p/``).

        Returns the peer ID. When the address carries no peer ID, the peer's identity is learned
        from a Noise handshake (the remote is still authenticated; only pinning is skipped).
        A relayed (circuit) address ``/…/p2p/<relay>/p2p-circuit/p2p/<peer>`` goes through the
        dial ladder (:meth:`connect_peer`): relayed, then a hole punch to a direct path.
        Raises DialError when the peer cannot be reached, Timeout past ``dial_timeout``.
        """
        circuit = _addrs.parse_circuit(target)
        if circuit is not None:
            self.connect_peer(circuit.peer_id, [target])
            return circuit.peer_id
        maddr, peer_id = _addrs.parse_target(target)
        return self.run(self._connect, maddr, peer_id)

    async def _connect(self, maddr: str, peer_id: str | None) -> str:
        import multiaddr
        from libp2p.peer.id import ID
        from libp2p.peer.peerinfo import PeerInfo

        addr = multiaddr.Multiaddr(maddr)
        try:
            with trio.fail_after(self.options.dial_timeout):
                if peer_id is None:
                    peer_id = await self._probe_peer_id(addr)
                pid = ID.from_base58(peer_id)
                await dial(self._host, PeerInfo(pid, [addr]))
        except trio.TooSlowError:
            raise Timeout(f"no answer from {maddr} within {self.options.dial_timeout:g}s") from None
        except SonmError:
            raise
        except Exception as exc:
            raise DialError(f"cannot connect to {maddr}: {_reason(exc)}") from None
        return peer_id

    async def _probe_peer_id(self, addr: Any) -> str:
        from libp2p.transport.tcp.tcp import TCP

        raw = await TCP().dial(addr)
        try:
            upgrader = self._host.get_network().upgrader
            secured = await upgrader.security_multistream.secure_outbound(raw, None)
        except BaseException:
            await _aclose_quietly(raw)
            raise
        peer = secured.get_remote_peer().to_string()
        await _aclose_quietly(secured)
        return peer

    def is_connected(self, peer_id: str) -> bool:
        if self._host is None:
            return False
        return any(p.to_string() == peer_id for p in self._host.get_network().get_connections_map())

    def remote_addr(self, peer_id: str) -> str:
        """``ip:port`` (``[v6]:port``) the connection to ``peer_id`` comes from (a direct one
        first), or "" when not connected."""
        from libp2p.peer.id import ID

        if self._host is None:
            return ""
        conns = self._host.get_network().get_connections(ID.from_base58(peer_id))
        for conn in sorted(conns, key=is_relayed):
            far = peer_address(conn)
            if far is not None:
                return f"[{far[0]}]:{far[1]}" if ":" in far[0] else f"{far[0]}:{far[1]}"
        return ""

    def disconnect(self, peer_id: str) -> None:
        from libp2p.peer.id import ID

        self.run(self._host.disconnect, ID.from_base58(peer_id))

    # -- NAT traversal: relays, the dial ladder, paths -------------------------------------------

    @property
    def nat_type(self) -> str | None:
        """This node's NAT type as STUN reported it (``stun.NatType`` value), if the caller set
        it; a symmetric NAT makes the node skip hole punches it would start."""
        return self._paths.nat_type if self._paths is not None else None

    @nat_type.setter
    def nat_type(self, value: str | None) -> None:
        if self._paths is None:
            raise SonmError("p2p node is not running")
        self._paths.nat_type = None if value is None else str(value)

    @property
    def reservations(self) -> list[RelayReservation]:
        """Relay reservations this node keeps (see :meth:`reserve`)."""
        return list(self._relays.all)

    @property
    def advertised_addrs(self) -> list[str]:
        """What to tell others to reach this node at: its listen addresses (a wildcard replaced
        by each interface address, loopback only when there is nothing else) and the circuit
        address of every active relay reservation (``/…/p2p/<relay>/p2p-circuit/p2p/<self>``)."""
        if self._token is None:
            return []
        # Interface addresses are read on the node's thread: it may live in another network
        # namespace than the caller (tests run nodes in namespaces).
        direct = self.run(self._expanded_listen_addrs)
        out = [f"{a}/p2p/{self.peer_id}" for a in direct]
        for res in self._relays.all:
            out += [a for a in res.circuit_addrs if a not in out]
        return out

    def _listen_addrs(self) -> list[str]:
        if self._host is None:
            return []
        return [str(a) for a in self._host.get_transport_addrs()]

    async def _expanded_listen_addrs(self) -> list[str]:
        return _addrs.expand_listen(self._listen_addrs())

    def _local_ips(self) -> list[str]:
        return _addrs.local_ips_of(_addrs.expand_listen(self._listen_addrs()))

    def check_reachability(
        self, servers: Sequence[str], *, timeout: float = 10.0
    ) -> tuple[Reachability, dict[str, str]]:
        """Whether others can dial this node directly: AutoNAT dial-backs by ``servers``
        (connected peer IDs that run the AutoNAT service, e.g. hubs) to this node's listen
        addresses. Returns the verdict and each server's answer (see ``reachability.py``)."""
        direct = self.run(self._expanded_listen_addrs)
        return self.run(
            partial(check_reachability, self._host, list(servers), direct, timeout=timeout)
        )

    def reserve(
        self, relay: str, *, wait: bool = True, timeout: float | None = None
    ) -> RelayReservation:
        """Reserve a slot on ``relay`` (``host:port`` or a multiaddr, /p2p optional) and keep it.

        This node becomes reachable at the relay's circuit address (see :attr:`advertised_addrs`);
        the reservation is refreshed before it expires and renewed whenever the connection to
        the relay comes back, until ``cancel()`` or close. With ``wait`` this blocks until the
        first reservation is granted, or raises what prevented it (DialError, RelayRefused,
        Timeout) and stops. Reserving twice on one relay returns the existing reservation.
        """
        timeout = self.options.dial_timeout if timeout is None else timeout
        relay_id = self.connect(relay)
        res = self.run(self._relays.add, relay_id, _addrs.parse_target(relay)[0])
        deadline = time.monotonic() + timeout
        while wait and not res.granted.wait(0.05):
            if res.failure is not None or time.monotonic() >= deadline:
                res.cancel()
                self._relays.drop(res)
                if isinstance(res.failure, SonmError):
                    raise res.failure
                if res.failure is not None:
                    raise DialError(f"cannot reserve on relay {relay}: {res.error}")
                raise Timeout(f"relay {relay} granted no reservation within {timeout:g}s")
        return res

    def connect_peer(
        self,
        peer_id: str,
        addrs: Sequence[str] = (),
        *,
        remote_nat: str | None = None,
        upgrade_wait: float | None = None,
    ) -> Path:
        """Reach ``peer_id`` by the dial ladder and return the path it is on.

        addrs: what the peer advertises (direct multiaddrs and circuit addresses, with or
            without /p2p); remembered, so later streams redial it the same way.
        remote_nat: the peer's NAT type when known (no hole punch towards a symmetric NAT).
        upgrade_wait: seconds to wait for a hole punch of a relayed path (defaults to
            ``NodeOptions.upgrade_wait``); the punch goes on in the background after it.
        Already connected: returns the current path (starting an upgrade if it is relayed).
        Raises DialError naming every attempt when none worked.
        """
        wait = self.options.upgrade_wait if upgrade_wait is None else upgrade_wait
        return self.run(self._connect_peer, peer_id, list(addrs), remote_nat, wait)

    async def _connect_peer(
        self, peer_id: str, addrs: list[str], remote_nat: str | None, wait: float
    ) -> Path:
        assert self._paths is not None
        return await self._paths.connect(peer_id, addrs, remote_nat=remote_nat, upgrade_wait=wait)

    def path(self, peer_id: str, *, rtt: bool = True) -> Path | None:
        """The path new streams to ``peer_id`` take (None when not connected); with ``rtt`` its
        round-trip time is measured by a libp2p ping on it."""
        if self._paths is None:
            return None
        if not rtt:
            return self.run(self._path_now, peer_id)
        return self.run(self._paths.measured_path, peer_id)

    async def _path_now(self, peer_id: str) -> Path | None:
        assert self._paths is not None
        return self._paths.path(peer_id)

    def upgrade(self, peer_id: str) -> bool:
        """Try one hole punch now on a relayed path to ``peer_id``; True when it went direct."""
        if self._paths is None:
            raise SonmError("p2p node is not running")
        return self.run(self._paths.upgrade_once, peer_id)

    async def open_stream(self, peer_id: str, protocol: str) -> Any:
        """(trio thread) A new ``protocol`` stream to ``peer_id`` on its best connection: direct
        over relayed; redialled by the ladder when the connection is gone and its addresses
        were given to :meth:`connect_peer`."""
        if self._paths is None:
            raise SonmError("p2p node is not running")
        return await self._paths.open_stream(peer_id, [protocol])

    # -- streams -----------------------------------------------------------------------------

    def handle(self, protocol: str, handler: StreamHandler) -> None:
        """Serve ``protocol`` with an async handler run on the trio thread (any time)."""
        self._handlers[protocol] = handler
        if self._host is not None:
            self._call_soon(lambda: self._host.set_stream_handler(protocol, handler))

    def serve_tcp(
        self, protocol: str, target: tuple[str, int], allow: Callable[[str], bool] | None = None
    ) -> None:
        """Splice each inbound ``protocol`` stream into a new TCP connection to ``target``.

        ``allow(peer_id)`` decides who may use it; refused streams are reset at once.
        """

        async def handler(stream: Any) -> None:
            peer = stream.muxed_conn.peer_id.to_string()
            if allow is not None and not allow(peer):
                log.warning("refused %s stream from %s", protocol, peer)
                await _aclose_quietly(stream, reset=True)
                return
            try:
                tcp = await trio.open_tcp_stream(*target)
            except OSError as exc:
                log.warning("%s: local service %s:%d unreachable: %s", protocol, *target, exc)
                await _aclose_quietly(stream, reset=True)
                return
            await splice(stream, tcp)

        self.handle(protocol, handler)

    def open_tunnel(self, peer_id: str, protocol: str) -> Tunnel:
        """Listen on an ephemeral loopback port; each connection there opens one stream."""
        return self.run(self._open_tunnel, peer_id, protocol)

    async def _open_tunnel(self, peer_id: str, protocol: str) -> Tunnel:
        listeners = await trio.open_tcp_listeners(0, host="127.0.0.1")
        port = listeners[0].socket.getsockname()[1]
        tunnel = Tunnel(self, peer_id, protocol, port)
        scope = trio.CancelScope()
        tunnel._scope = scope

        async def on_conn(tcp: trio.SocketStream) -> None:
            try:
                stream = await self.open_stream(peer_id, protocol)
            except Exception as exc:
                log.debug("tunnel %s: cannot open stream: %r", protocol, exc)
                await _aclose_quietly(tcp)
                return
            await splice(stream, tcp)

        async def serve() -> None:
            with scope:
                try:
                    await trio.serve_listeners(on_conn, listeners)
                finally:
                    for lst in listeners:
                        await _aclose_quietly(lst)

        self._nursery.start_soon(serve)
        return tunnel

    def accept_sessions(
        self,
        protocol: str,
        on_open: Callable[[str], None],
        on_close: Callable[[str], None],
    ) -> None:
        """Accept long-lived session streams of ``protocol``.

        ``on_open(peer_id)`` and then, when the stream ends for any reason, ``on_close(peer_id)``
        are called in a worker thread (they may block).
        """

        async def handler(stream: Any) -> None:
            peer = stream.muxed_conn.peer_id.to_string()
            try:
                await trio.to_thread.run_sync(on_open, peer)
                await _read_until_end(stream)
            finally:
                with trio.CancelScope(shield=True):
                    await _aclose_quietly(stream, reset=True)
                    await trio.to_thread.run_sync(on_close, peer)

        self.handle(protocol, handler)

    def open_session(self, peer_id: str, protocol: str) -> Session:
        """Open a session stream to a connected peer. Raises DialError if it cannot."""
        return self.run(self._open_session, peer_id, protocol)

    async def _open_session(self, peer_id: str, protocol: str) -> Session:
        from libp2p.peer.id import ID

        session = Session(self, peer_id)
        try:
            with trio.fail_after(self.options.dial_timeout):
                stream = await self._host.new_stream(ID.from_base58(peer_id), [protocol])
        except Exception as exc:
            raise DialError(f"cannot open {protocol} to {peer_id}: {_reason(exc)}") from None
        scope = trio.CancelScope()
        session._scope = scope

        async def hold() -> None:
            try:
                with scope:
                    await _read_until_end(stream)
            finally:
                with trio.CancelScope(shield=True):
                    await _aclose_quietly(stream, reset=True)
                session.closed.set()

        self._nursery.start_soon(hold)
        return session
