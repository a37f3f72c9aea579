"""One libp2p host per process, on its own trio thread, behind a small thread-safe API.

The rest of the process (gRPC servers and clients, click commands) is ordinary threaded code; it
talks to the host only through :class:`P2PNode`, a thin facade that runs the node's trio core
(:class:`~sonm_p2p.transport.core.NodeCore`) on a thread and hops each call onto it with the
host's trio token. Protocols running on the trio thread (relay, forward, gossip) use the core
directly: ``node.core``. Streams are exposed in shapes that need no trio on the caller's side:

* :meth:`P2PNode.serve_tcp` splices every inbound stream of a protocol into a local TCP server
  (the far end of the gRPC bridge, see ``bridge.py``);
* :meth:`P2PNode.open_tunnel` opens a private Unix-socket listener whose every connection becomes
  one new stream to a peer (the near end of the bridge);
* :meth:`P2PNode.accept_sessions` / :meth:`P2PNode.open_session` hold one long-lived stream whose
  end tells both sides that the peer went away.

NAT traversal: see ``core.py``; :meth:`P2PNode.reserve` keeps a relay reservation,
:attr:`P2PNode.advertised_addrs` lists the circuit addresses, :meth:`P2PNode.connect_peer` reaches
a peer by the dial ladder and :meth:`P2PNode.path` tells which path a peer is on, with its RTT.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Awaitable, Callable, Sequence
from functools import partial
from typing import Any

import trio

from sonm_p2p.errors import DialError, SonmError, Timeout
from sonm_p2p.identity import Identity
from sonm_p2p.transport import addrs as _addrs
from sonm_p2p.transport._conn import quiet_libp2p_logs
from sonm_p2p.transport._handles import Session, Tunnel
from sonm_p2p.transport._paths import Path
from sonm_p2p.transport.core import NodeCore, NodeOptions, Service, StreamHandler
from sonm_p2p.transport.heartbeat import Heartbeat
from sonm_p2p.transport.reachability import Reachability
from sonm_p2p.transport.relay import RelayReservation

__all__ = ["NodeOptions", "P2PNode", "Path", "Session", "SharedLoop", "Tunnel"]

log = logging.getLogger(__name__)


class SharedLoop:
    """One trio loop on one thread that many :class:`P2PNode` s run on (``P2PNode(...,
    loop=shared)``): a process hosting hundreds of nodes (the load generator's light miners)
    pays for one thread and one loop instead of one per node. ``start()`` and ``close()`` are
    idempotent; close it after its nodes (it cancels any still running)."""

    def __init__(self, name: str = "p2p-shared") -> None:
        self.name = name
        self._thread: threading.Thread | None = None
        self._token: trio.lowlevel.TrioToken | None = None
        self._nursery: trio.Nursery | None = None
        self._stop: trio.Event | None = None
        self._ready = threading.Event()

    def __repr__(self) -> str:
        return f"<SharedLoop {self.name} {'running' if self._token else 'stopped'}>"

    def start(self) -> None:
        if self._thread is not None:
            return
        quiet_libp2p_logs()
        self._thread = threading.Thread(target=trio.run, args=(self._main,), name=self.name)
        self._thread.daemon = True
        self._thread.start()
        self._ready.wait()

    async def _main(self) -> None:
        async with trio.open_nursery() as nursery:
            self._nursery, self._stop = nursery, trio.Event()
            self._token = trio.lowlevel.current_trio_token()
            self._ready.set()
            await self._stop.wait()
            nursery.cancel_scope.cancel()

    def run(self, fn: Callable[..., Awaitable[Any]], *args: Any) -> Any:
        """Run ``await fn(*args)`` on the loop (from another thread) and return its result."""
        if self._token is None:
            raise SonmError("the shared trio loop is not running")
        return trio.from_thread.run(fn, *args, trio_token=self._token)

    async def start_soon_scoped(self, serve: Callable[..., Awaitable[None]]) -> _Scoped:
        """(on the loop) ``await nursery.start(serve)`` under a scope of its own: the
        returned handle stops that one task. A failure after start is logged, not spread to
        the other nodes of the loop."""
        assert self._nursery is not None
        scoped = _Scoped(trio.CancelScope(), trio.Event())

        async def body(*, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
            started = False

            def ready() -> None:
                nonlocal started
                started = True
                task_status.started()

            try:
                with scoped.scope:
                    await serve(task_status=_Started(ready))
            except Exception:
                if not started:
                    raise
                log.exception("p2p node on the shared loop failed")
            finally:
                scoped.done.set()

        await self._nursery.start(body)
        return scoped

    @property
    def token(self) -> trio.lowlevel.TrioToken | None:
        return self._token

    def close(self) -> None:
        thread, self._thread = self._thread, None
        if thread is None or self._token is None or self._stop is None:
            return
        try:
            trio.from_thread.run_sync(self._stop.set, trio_token=self._token)
        except trio.RunFinishedError:
            pass
        thread.join(timeout=30)
        self._token = None


class _Scoped:
    """One task on a :class:`SharedLoop`: cancel ``scope`` to stop it, then wait ``done``."""

    def __init__(self, scope: trio.CancelScope, done: trio.Event) -> None:
        self.scope, self.done = scope, done

    async def stop(self) -> None:
        self.scope.cancel()
        await self.done.wait()


class _Started:
    """A ``task_status`` that calls ``ready()`` on ``started()``."""

    def __init__(self, ready: Callable[[], None]) -> None:
        self._ready = ready

    def started(self, value: object = None) -> None:
        self._ready()


class P2PNode:
    """The process's libp2p host (Noise, Yamux, TCP over IPv4/IPv6) on a trio thread.

    ``start()`` blocks until the host listens (raises SonmError if it cannot); ``close()`` stops it
    and joins the thread. Both are idempotent. Every other method may be called from any thread.
    ``core`` is the trio side, for code that runs on the node's thread.

    With ``loop`` the node runs on that :class:`SharedLoop` (started if need be) instead of a
    thread of its own; ``close()`` then stops this node only.
    """

    def __init__(
        self,
        identity: Identity,
        options: NodeOptions | None = None,
        *,
        loop: SharedLoop | None = None,
    ) -> None:
        self.core = NodeCore(identity, options)
        self._thread: threading.Thread | None = None
        self._token: trio.lowlevel.TrioToken | None = None
        self._ready = threading.Event()
        self._startup_error: BaseException | None = None
        self._stop: trio.Event | None = None
        self._shared = loop
        self._scoped: _Scoped | None = None

    @property
    def identity(self) -> Identity:
        return self.core.identity

    @property
    def options(self) -> NodeOptions:
        return self.core.options

    @property
    def peer_id(self) -> str:
        """This node's libp2p peer ID ("" before start)."""
        return self.core.peer_id

    # -- lifecycle ---------------------------------------------------------------------------

    def start(self) -> None:
        if self._shared is not None:
            self._start_shared(self._shared)
            return
        if self._thread is not None:
            return
        quiet_libp2p_logs()
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

    def _start_shared(self, shared: SharedLoop) -> None:
        if self._scoped is not None:
            return
        shared.start()
        try:
            self._scoped = shared.run(shared.start_soon_scoped, self.core.serve)
        except SonmError:
            raise
        except Exception as exc:
            listen = list(self.options.listen)
            raise SonmError(f"cannot start the libp2p host on {listen}: {exc}") from exc
        self._token = shared.token

    def close(self) -> None:
        if self._shared is not None:
            scoped, self._scoped = self._scoped, None
            if scoped is not None:
                try:
                    self._shared.run(scoped.stop)
                except (trio.RunFinishedError, SonmError):
                    pass  # the loop stopped first: it took the node with it
            self._token = None
            return
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
        state = "running" if self._token else "stopped"
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
        async with trio.open_nursery() as nursery:
            await nursery.start(self.core.serve)
            self._stop = trio.Event()
            self._token = trio.lowlevel.current_trio_token()
            self._ready.set()
            await self._stop.wait()
            nursery.cancel_scope.cancel()

    def add_service(self, service: Service) -> None:
        """Run ``await service(host, task_status=...)`` in the node's nursery (before start()).

        The service gets the libp2p host, signals readiness with ``task_status.started()``
        (start() waits for it), runs until the node closes and stops by cancellation.
        """
        if self._token is not None:
            raise SonmError("services must be added before the node starts")
        self.core.add_service(service)

    # -- thread hops -------------------------------------------------------------------------

    def run(self, fn: Callable[..., Awaitable[Any]], *args: Any) -> Any:
        """Run ``await fn(*args)`` on the node's trio thread and return its result."""
        if self._token is None:
            raise SonmError("p2p node is not running")
        return trio.from_thread.run(fn, *args, trio_token=self._token)

    def _run_sync(self, fn: Callable[..., Any], *args: Any) -> Any:
        if self._token is None:
            raise SonmError("p2p node is not running")
        return trio.from_thread.run_sync(fn, *args, trio_token=self._token)

    # -- addresses and dialling --------------------------------------------------------------

    @property
    def addrs(self) -> list[str]:
        """Full multiaddrs (with ``/p2p/<peer id>``) this node listens on."""
        if self.core.host is None:
            return []
        return [str(a) for a in self.core.host.get_addrs()]

    def connect(self, target: str, *, timeout: float | None = None) -> str:
        """Connect to ``target`` (host:port, or a multiaddr with or without ``/p2p/``).

        Returns the peer ID. When the address carries no peer ID, the peer's identity is learned
        from a Noise handshake (the remote is still authenticated; only pinning is skipped),
        once per address: later dials there use the ID learned, and probe again only if it fails.
        A relayed (circuit) address ``/…/p2p/<relay>/p2p-circuit/p2p/<peer>`` goes through the
        dial ladder (:meth:`connect_peer`): relayed, then a hole punch to a direct path.
        Raises DialError when the peer cannot be reached, Timeout past ``timeout`` (default the
        node's ``dial_timeout``; a relayed address keeps the dial ladder's own).
        """
        circuit = _addrs.parse_circuit(target)
        if circuit is not None:
            self.connect_peer(circuit.peer_id, [target])
            return circuit.peer_id
        maddr, peer_id = _addrs.parse_target(target)
        return self.run(self.core.connect, maddr, peer_id, timeout)

    def is_connected(self, peer_id: str) -> bool:
        return self.core.is_connected(peer_id)

    def remote_addr(self, peer_id: str) -> str:
        """``ip:port`` (``[v6]:port``) the connection to ``peer_id`` comes from (a direct one
        first), or "" when not connected."""
        return self.core.remote_addr(peer_id)

    def disconnect(self, peer_id: str) -> None:
        self.run(self.core.disconnect, peer_id)

    # -- NAT traversal: relays, the dial ladder, paths -------------------------------------------

    @property
    def nat_type(self) -> str | None:
        """This node's NAT type as STUN reported it (``stun.NatType`` value), if the caller set
        it; a symmetric NAT makes the node skip hole punches it would start."""
        paths = self.core.paths
        return paths.nat_type if paths is not None else None

    @nat_type.setter
    def nat_type(self, value: str | None) -> None:
        paths = self.core.paths
        if paths is None:
            raise SonmError("p2p node is not running")
        paths.nat_type = None if value is None else str(value)

    @property
    def reservations(self) -> list[RelayReservation]:
        """Relay reservations this node keeps (see :meth:`reserve`)."""
        return list(self.core.reservations)

    @property
    def advertised_addrs(self) -> list[str]:
        """What to tell others to reach this node at: its listen addresses (a wildcard replaced
        by each interface address, loopback only when there is nothing else) and the circuit
        address of every active relay reservation (``/…/p2p/<relay>/p2p-circuit/p2p/<self>``)."""
        if self._token is None:
            return []
        # Interface addresses are read on the node's thread: it may live in another network
        # namespace than the caller (tests run nodes in namespaces).
        direct = self._run_sync(self.core.expanded_listen_addrs)
        out = [f"{a}/p2p/{self.peer_id}" for a in direct]
        for res in self.core.reservations:
            out += [a for a in res.circuit_addrs if a not in out]
        return out

    def check_reachability(
        self, servers: Sequence[str], *, timeout: float = 10.0
    ) -> tuple[Reachability, dict[str, str]]:
        """Whether others can dial this node directly: AutoNAT dial-backs by ``servers``
        (connected peer IDs that run the AutoNAT service, e.g. hubs) to this node's listen
        addresses. Returns the verdict and each server's answer (see ``reachability.py``)."""
        return self.run(partial(self.core.check_reachability, servers, timeout=timeout))

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
        res = self.run(self.core.add_reservation, relay_id, _addrs.parse_target(relay)[0])
        deadline = time.monotonic() + timeout
        while wait and not res.granted.wait(0.05):
            if res.failure is not None or time.monotonic() >= deadline:
                res.cancel()
                self.core.drop_reservation(res)
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
            without /p2p); remembered, so later streams redial it the same way (until
            ``NodeOptions.forget_after`` seconds after it went away).
        remote_nat: the peer's NAT type when known (no hole punch towards a symmetric NAT).
        upgrade_wait: seconds to wait for a hole punch of a relayed path (defaults to
            ``NodeOptions.upgrade_wait``); the punch goes on in the background after it.
        Already connected: returns the current path (starting an upgrade if it is relayed).
        Raises DialError naming every attempt when none worked.
        """
        connect = partial(self.core.connect_peer, remote_nat=remote_nat, upgrade_wait=upgrade_wait)
        return self.run(connect, peer_id, list(addrs))

    def path(self, peer_id: str, *, rtt: bool = True) -> Path | None:
        """The path new streams to ``peer_id`` take (None when not connected); with ``rtt`` its
        round-trip time is measured by a libp2p ping on it."""
        if self.core.paths is None:
            return None
        if not rtt:
            return self._run_sync(self.core.path, peer_id)
        return self.run(self.core.measured_path, peer_id)

    def upgrade(self, peer_id: str) -> bool:
        """Try one hole punch now on a relayed path to ``peer_id``; True when it went direct."""
        if self.core.paths is None:
            raise SonmError("p2p node is not running")
        return self.run(self.core.upgrade, peer_id)

    async def open_stream(self, peer_id: str, protocol: str) -> Any:
        """(trio thread) :meth:`NodeCore.open_stream`."""
        return await self.core.open_stream(peer_id, protocol)

    # -- streams -----------------------------------------------------------------------------

    def handle(self, protocol: str, handler: StreamHandler) -> None:
        """Serve ``protocol`` with an async handler run on the trio thread (any time)."""
        self.core.handle(protocol, handler)

    def serve_tcp(
        self,
        protocol: str,
        target: tuple[str, int] | str,
        allow: Callable[[str], bool] | None = None,
    ) -> None:
        """Splice each inbound ``protocol`` stream into a new connection to ``target``:
        ``(host, port)`` over TCP, or the path of a Unix socket.

        ``allow(peer_id)`` decides who may use it; refused streams are reset at once.
        """
        self.core.handle(protocol, self.core.tcp_splicer(protocol, target, allow))

    def open_tunnel(self, peer_id: str, protocol: str) -> Tunnel:
        """A private local socket (``Tunnel.target``, ``unix:…``) whose every connection opens
        one stream to ``peer_id``: only this process can use it."""
        return self.run(self.core.open_tunnel, peer_id, protocol)

    def accept_sessions(
        self,
        protocol: str,
        on_open: Callable[..., None],
        on_close: Callable[[str], None],
        *,
        heartbeat: Heartbeat | None = None,
        messages: bool = False,
    ) -> None:
        """Accept long-lived session streams of ``protocol``.

        ``on_open(peer_id)`` and then, when the stream ends for any reason, ``on_close(peer_id)``
        are called in a worker thread (they may block). With ``heartbeat``, each session is
        pinged from its start, while ``on_open`` runs too (a beat session: see :mod:`.heartbeat`).
        With ``messages`` the stream carries messages both ways (as
        :data:`~.heartbeat.SESSION_MESSAGES` does): ``on_open(peer_id, session)`` gets the
        :class:`Session` to send, receive or listen with.
        """
        handler = self.core.session_acceptor(on_open, on_close, heartbeat, messages)
        self.core.handle(protocol, handler)

    def open_session(
        self,
        peer_id: str,
        protocols: str | Sequence[str],
        on_beat: Callable[[], None] | None = None,
        timeout: float | None = None,
    ) -> Session:
        """Open a session stream to a connected peer on the first of ``protocols`` it speaks
        (``Session.protocol`` says which); on a beat session each of the peer's Yamux pings
        calls ``on_beat()`` (on the node's thread: it must not block). ``timeout``: seconds
        the stream may take to open (default: the node's dial timeout). Raises
        DialError if it cannot."""
        offered = [protocols] if isinstance(protocols, str) else list(protocols)
        return self.run(self.core.open_session, peer_id, offered, on_beat, timeout)
