"""Wiring of a miner process: identity, libp2p node, local gRPC server, hub link.

Every thread the daemon starts is owned: the hub link is a service of the daemon's
:class:`~sonm_p2p.supervisor.Supervisor`, the gRPC server's workers are its own pool, and the
runtime's (pulls, the events watcher) belong to the runtime; :meth:`MinerDaemon.close` stops and
joins them all.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Mapping
from concurrent import futures
from dataclasses import dataclass, field
from pathlib import Path

import grpc

from sonm_p2p._grpc_options import MINER_LINK_SERVER_OPTIONS
from sonm_p2p._pb.sonm.v1 import miner_pb2_grpc
from sonm_p2p._status import add_servicer
from sonm_p2p.chain import ChainSettings
from sonm_p2p.discovery import GossipOptions, HubGossip
from sonm_p2p.discovery.registered import RegisteredHubs
from sonm_p2p.discovery.registry_watch import RegistryWatch, check_registry
from sonm_p2p.errors import ConfigError, NotFound, PermissionDenied, SonmError, Timeout
from sonm_p2p.identity import load_or_create
from sonm_p2p.localsock import private_socket_path
from sonm_p2p.miner.docker_runtime import DockerRuntime
from sonm_p2p.miner.hub_link import HubCandidate, HubLink, LinkOptions
from sonm_p2p.miner.hub_session import serve_hub_session
from sonm_p2p.miner.memory_runtime import MemoryRuntime
from sonm_p2p.miner.miner import Miner, Offer
from sonm_p2p.miner.registries import RegistryPolicy
from sonm_p2p.miner.runtime import ContainerRuntime
from sonm_p2p.miner.servicer import AioMinerServicer, MinerServicer
from sonm_p2p.model import RuntimeInfo
from sonm_p2p.supervisor import Supervisor
from sonm_p2p.transport.addrs import is_circuit, parse_circuit
from sonm_p2p.transport.bridge import GRPC_MINER, serve_grpc
from sonm_p2p.transport.forward import ForwardRequest, requester, serve_forward
from sonm_p2p.transport.heartbeat import SESSION_MESSAGES
from sonm_p2p.transport.nat import NatCache
from sonm_p2p.transport.node import NodeOptions, P2PNode, Session, SharedLoop

__all__ = ["MinerDaemon", "MinerOptions", "NatCache"]

log = logging.getLogger(__name__)


@dataclass(frozen=True, kw_only=True)
class MinerOptions:
    """A miner process's settings (the CLI fills them from flags > env > defaults).

    home: where the key lives. hub: the hub to dial (``host:port`` or a multiaddr); "" finds
        one through discovery (bootstrap peers and mDNS) and picks it by policy.
    hub_ids: only these hubs (node IDs) are allowed; with discovery, the first found of them.
    bootstrap: overlay peers for discovery. mdns: browse the LAN for hubs (with discovery).
    listen: libp2p listen multiaddrs (an ephemeral port by default: no inbound port is needed).
    publish_ip: where container ports are published (all interfaces by default).
    labels: extra labels on every container (tests use them to clean up).
    offer: CPUs and memory offered to the hub (0: all the engine has).
    allow_registries: registries (``host`` or ``host:port``) pulled from though internal
        (loopback, private, link-local); defaults to none.
    runtime: "docker" (the default), or "memory": an in-memory fake engine that knows the test
        images, for tests of everything but Docker itself.
    runtime_class: the engine's OCI runtime for tasks ("" the engine's default, runc;
        "runsc" for gVisor), checked against the engine at start.
    chain: the chain and hub registry (see ChainSettings); defaults to none. With one, the
        registered hubs are read every ``registry_poll`` seconds and dialled to join the overlay
        (a miner with nothing else configured finds its hub this way), and unless
        ``require_registered`` is off the miner works only for a registered hub, and leaves one
        that deregisters.
    birthday_punch: take part in birthday-paradox hole punches (``sonmminer
        --no-birthday-punch`` turns them off; ``NodeOptions.birthday_punch``); defaults to True.
    """

    home: Path
    hub: str = ""
    hub_ids: tuple[str, ...] = ()
    bootstrap: tuple[str, ...] = ()
    mdns: bool = True
    mdns_namespace: str = "hub"
    listen: tuple[str, ...] = ("/ip4/0.0.0.0/tcp/0",)
    publish_ip: str = "0.0.0.0"
    labels: Mapping[str, str] = field(default_factory=dict)
    link: LinkOptions = field(default_factory=LinkOptions)
    runtime: str = "docker"
    runtime_class: str = ""
    offer: Offer = field(default_factory=Offer)
    allow_registries: tuple[str, ...] = ()
    chain: ChainSettings = field(default_factory=ChainSettings)
    registry_poll: float = 15.0
    birthday_punch: bool = True


class MinerDaemon:
    """A running miner. ``start()`` returns once it listens; ``close()`` stops it (idempotent)
    and joins every thread it started, the runtime's included (a runtime given to the
    constructor is closed too: the daemon owns it from then on).

    Containers keep running when the daemon stops: a restarted miner adopts them.

    Many daemons in one process (the load generator) share what they can: ``loop`` runs the
    libp2p host on a :class:`SharedLoop` instead of a thread of its own; ``grpc_loop`` (an
    asyncio loop running in another thread) serves the local gRPC with ``grpc.aio`` there
    (:class:`AioMinerServicer`), so that a thousand servers share grpc's one poller instead of
    polling a thread each; and
    ``grpc_pool`` runs the (sync) servicer's calls on a pool the caller owns, which must have a
    worker for each miner's open ``WatchTasks`` stream besides those for calls.
    """

    def __init__(
        self,
        options: MinerOptions,
        runtime: ContainerRuntime | None = None,
        *,
        loop: SharedLoop | None = None,
        grpc_loop: asyncio.AbstractEventLoop | None = None,
        grpc_pool: futures.ThreadPoolExecutor | None = None,
    ) -> None:
        self.options = options
        self.identity = load_or_create(options.home)
        self.node_id = self.identity.node_id
        labels = {"sonm.miner": self.node_id, **options.labels}
        self.runtime = runtime or _make_runtime(options, labels)
        self.supervisor = Supervisor("miner")
        self.node = P2PNode(
            self.identity,
            NodeOptions(listen=options.listen, birthday_punch=options.birthday_punch),
            loop=loop,
        )
        self._nat = NatCache(self.node)
        self.miner = Miner(
            self.node_id,
            self.runtime,
            logs_dir=options.home / "logs",
            offer=options.offer,
            registries=RegistryPolicy(allow=options.allow_registries),
            addresses=lambda: self.node.advertised_addrs,  # [] until the node runs
            nat_type=self._nat.classify,
        )
        self._allowed = {h.lower() for h in options.hub_ids}
        self.gossip: HubGossip | None = None
        if not options.hub:
            self.gossip = HubGossip(self.node, GossipOptions.of(options))
        self.registry_watch: RegistryWatch | None = None
        self._registered: RegisteredHubs | None = None
        self.link = HubLink(
            self.node,
            self._targets,
            lambda: self.miner.hub_clock.last_ping,
            options.link,
            allow_hub=self._allow_hub,
            connected_in=self._connected_in,
            before_session=self._reserve_for_hub,
            on_beat=self.miner.saw_hub,
            serve_session=self._serve_hub_session,
            supervisor=self.supervisor,
        )
        self._server: grpc.Server | None = None
        self._server_pool: futures.ThreadPoolExecutor | None = None
        self._shared_pool = grpc_pool
        self._grpc_loop = grpc_loop
        self._aio_server: grpc.aio.Server | None = None

    def __repr__(self) -> str:
        return f"<MinerDaemon {self.node_id} {self.link!r}>"

    def _allow_hub(self, node_id: str) -> bool:
        if self._allowed and node_id.lower() not in self._allowed:
            return False
        if self.options.chain.trusting:
            registered = self._registered
            return registered is not None and node_id in registered
        return True

    def _read_registry(self, hubs: RegisteredHubs) -> None:
        self._registered = hubs
        if self.gossip is not None:
            self.gossip.set_registered(hubs)

    def _targets(self, avoid: set[str]) -> list[HubCandidate]:
        if self.options.hub:
            return [HubCandidate((self.options.hub,))]
        assert self.gossip is not None
        registered = self._registered
        if not registered:
            try:  # block (briefly) for discovery rather than back off: a hub is usually ~1 s away
                self.gossip.wait_for_hubs(1, timeout=2.0)
            except Timeout:
                return []
        allow = {h for h in (e.node_id for e in self.gossip.hubs()) if h.lower() in self._allowed}
        pick = self.gossip.choose(allow=allow if self._allowed else None, exclude=avoid)
        pick = pick or self.gossip.choose(allow=allow if self._allowed else None)
        if pick is not None:
            return [HubCandidate(pick.multiaddrs, pick.node_id, pick.peer_id)]
        # No announcement heard yet: the registered hubs themselves, largest stake first (those
        # lost recently last), so a miner with only a registry needs no announcement to start.
        ranked = [
            h for h in (registered.by_stake() if registered else []) if self._allow_hub(h.node_id)
        ]
        ranked.sort(key=lambda h: h.node_id in avoid)
        return [HubCandidate(h.multiaddrs, h.node_id, h.peer_id) for h in ranked[:3]]

    def _connected_in(self, node_id: str, seconds: float) -> None:
        if self.gossip is not None:
            self.gossip.record_latency(node_id, seconds)

    def _serve_hub_session(self, session: Session, hub: HubCandidate) -> None:
        if session.protocol == SESSION_MESSAGES:
            # Handshake and task events on the session; and a hub that speaks it relays to
            # its session's miners without a reservation (transport/relay.py).
            serve_hub_session(self.miner, session, self.options.link.session_timeout)
        elif not any(is_circuit(a) for a in hub.addrs):
            # An older hub relays only to peers that reserved: whether others can dial us is
            # unknown (NAT), and a reservation makes the miner reachable through it whatever
            # the NAT; connected already, so no new dial, whichever address this is.
            try:
                self.node.reserve(hub.addrs[0], wait=False)
            except SonmError as exc:
                log.warning("no relay reservation on hub %s: %s", hub, exc)

    def _reserve_for_hub(self, peer_id: str, hub: HubCandidate) -> None:
        # A hub reached through a relay (it is behind NAT: it announces only circuit addresses
        # that others can use) cannot relay for us: we reserve on its relay instead, and wait
        # for it, so the addresses the hub learns from us include it.
        circuits = [c for a in hub.addrs if (c := parse_circuit(a)) is not None]
        if circuits:
            self.node.reserve(circuits[0].relay, wait=True, timeout=5.0)

    def _resolve_forward(self, peer_id: str, request: ForwardRequest) -> tuple[str, int]:
        """Where a forward to ``request.task_id``'s port goes; only its owner (or hub) may."""
        state = self.runtime.status(request.task_id)
        caller = requester(peer_id, request, node_id=self.node_id)
        owner = state.labels.get("sonm.owner", "")
        hub = state.labels.get("sonm.hub", "")
        if caller.lower() not in {owner.lower(), hub.lower()} - {""}:
            raise PermissionDenied(f"only the owner of task {request.task_id} may reach its ports")
        for p in state.ports:
            if p.container_port == request.port and p.protocol == str(request.proto):
                host = "127.0.0.1" if p.host_ip in ("", "0.0.0.0") else p.host_ip
                host = "::1" if host == "::" else host
                return host, p.host_port
        raise NotFound(f"task {request.task_id} publishes no port {request.port}/{request.proto}")

    def start(self) -> None:
        self.miner.info()  # fail early (and clearly) when the container engine is not there
        if isinstance(self.runtime, DockerRuntime):
            self.runtime.check_runtime_class()
            log.info("tasks are isolated by: %s", self.runtime.isolation)
        self.miner.watch_runtime()
        if self._shared_pool is None:
            self._server_pool = futures.ThreadPoolExecutor(
                max_workers=16, thread_name_prefix="miner-grpc"
            )
        pool = self._shared_pool or self._server_pool
        # On a private Unix socket, not a loopback port: no local process but this one can
        # call the miner (start containers as if it were the hub).
        sock = private_socket_path("miner-grpc")
        if self._grpc_loop is not None:
            serve = self._serve_aio(sock, pool)
            self._aio_server = asyncio.run_coroutine_threadsafe(serve, self._grpc_loop).result()
        else:
            self._server = grpc.server(pool, options=MINER_LINK_SERVER_OPTIONS)
            add_servicer(
                miner_pb2_grpc.add_MinerServicer_to_server, MinerServicer(self.miner), self._server
            )
            if not self._server.add_insecure_port(f"unix:{sock}"):
                raise ConfigError(f"cannot serve the miner's gRPC on {sock}")
            self._server.start()
        chain = self.options.chain
        registry = check_registry(chain) if chain.enabled else None  # ConfigError: not one
        self.node.start()
        if chain.enabled:
            self.registry_watch = RegistryWatch(
                chain, self._read_registry, interval=self.options.registry_poll, registry=registry
            )
            self.supervisor.service("registry", self.registry_watch.run)
        serve_grpc(self.node, GRPC_MINER, sock, allow=self.link.allow)
        serve_forward(self.node, self._resolve_forward)
        self.link.start()
        hub = self.options.hub or "from discovery"
        log.info("miner %s (peer %s) started; hub %s", self.node_id, self.node.peer_id, hub)

    async def _serve_aio(self, sock: str, pool: futures.Executor) -> grpc.aio.Server:
        server = grpc.aio.server(migration_thread_pool=pool, options=MINER_LINK_SERVER_OPTIONS)
        servicer = AioMinerServicer(self.miner, pool)
        add_servicer(miner_pb2_grpc.add_MinerServicer_to_server, servicer, server)
        if not server.add_insecure_port(f"unix:{sock}"):
            raise ConfigError(f"cannot serve the miner's gRPC on {sock}")
        await server.start()
        return server

    def close(self) -> None:
        # The link first (no redial while the rest goes), the node last but for the server,
        # whose calls in flight may still use the miner.
        self.supervisor.close()
        self.miner.close()
        self.runtime.close()
        self.node.close()
        if self._server is not None:
            self._server.stop(grace=1).wait()
            self._server = None
        if self._aio_server is not None and self._grpc_loop is not None:
            server, self._aio_server = self._aio_server, None
            try:
                asyncio.run_coroutine_threadsafe(server.stop(1), self._grpc_loop).result(10)
            except (RuntimeError, TimeoutError, futures.TimeoutError) as exc:
                log.debug("stopping the miner's gRPC: %r", exc)
        if self._server_pool is not None:
            self._server_pool.shutdown(wait=True, cancel_futures=True)
            self._server_pool = None


def _make_runtime(options: MinerOptions, labels: Mapping[str, str]) -> ContainerRuntime:
    if options.runtime == "docker":
        return DockerRuntime(
            publish_ip=options.publish_ip, labels=labels, runtime_class=options.runtime_class
        )
    if options.runtime == "memory":
        images = {
            "sonm-test/web:latest": (("8080/tcp", "9090/udp"), True),
            "sonm-test/busybox:latest": ((), True),
            "sonm-test/noentry:latest": ((), False),
        }
        # A fake engine: a machine large enough that tests and load runs are not limited by
        # the default share of every task.
        info = RuntimeInfo(64, 256 << 30, "linux", "amd64", "memory 0")
        return MemoryRuntime(images=images, publish_ip=options.publish_ip, labels=labels, info=info)
    raise ConfigError(f"unknown container runtime {options.runtime!r} (docker or memory)")
