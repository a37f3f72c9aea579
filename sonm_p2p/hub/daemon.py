"""Wiring of a hub process: identity, state, libp2p node, the client gRPC server."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Coroutine
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Any, TypeVar

import grpc

from sonm_p2p import __version__
from sonm_p2p._grpc_options import SERVER_OPTIONS
from sonm_p2p._pb.sonm.v1 import hub_pb2_grpc
from sonm_p2p._status import add_servicer
from sonm_p2p.chain import ChainSettings
from sonm_p2p.client import HubClient
from sonm_p2p.discovery import GossipOptions, HubGossip, hub_announcer
from sonm_p2p.discovery.registry_watch import RegistryWatch, check_registry
from sonm_p2p.errors import ConfigError
from sonm_p2p.hub.hub import Hub, HubOptions
from sonm_p2p.hub.limits import StreamLimits
from sonm_p2p.hub.metrics import HubMetrics, HubReadings
from sonm_p2p.hub.reachability import HubReachability
from sonm_p2p.hub.registration import HubRegistration
from sonm_p2p.hub.servicer import HubServicer
from sonm_p2p.hub.state import HubState
from sonm_p2p.hub.stun_peers import StunPeers
from sonm_p2p.hub.web import HubWeb, network_view
from sonm_p2p.identity import load_or_create
from sonm_p2p.localsock import private_socket_path
from sonm_p2p.supervisor import Supervisor
from sonm_p2p.transport.addrs import format_hostport, interface_ips, parse_hostport
from sonm_p2p.transport.bridge import GRPC_HUB, SESSION
from sonm_p2p.transport.heartbeat import SESSION_BEAT, SESSION_MESSAGES, Heartbeat
from sonm_p2p.transport.node import NodeOptions, P2PNode
from sonm_p2p.transport.reachability import Reachability
from sonm_p2p.transport.relay import RelayOptions, relay_counts
from sonm_p2p.transport.stun import ResponderAddresses, StunResponder

__all__ = ["HubDaemon", "HubDaemonOptions"]

_PEER_STUN_TTL = 600.0  # seconds another hub's STUN endpoint (or its absence) is remembered
_PEER_STUN_EVERY = 5.0  # seconds between looks for hubs whose STUN endpoint is not known

log = logging.getLogger(__name__)

#: Relay reservations a hub grants by default: one for each miner of a full hub (as many as
#: ``max_connections``' default).
HUB_RESERVATIONS = 10_000

#: Seconds a hub waits before identifying a peer that connected to it: its miners have opened
#: their sessions by then and are not asked at all (transport/_conn.defer_inbound_identify).
IDENTIFY_AFTER = 5.0

T = TypeVar("T")


@dataclass(frozen=True, kw_only=True)
class HubDaemonOptions:
    """A hub process's settings (the CLI fills them from flags > env > defaults).

    grpc_listen: ``host:port`` of the plain-gRPC client API; defaults to 0.0.0.0:10001.
    p2p_listen: libp2p listen multiaddrs; defaults to TCP 10002 on IPv4.
    announce_grpc: the client-API endpoint put in announcements; defaults to ``grpc_listen``
        with an unspecified host replaced by this machine's first address.
    bootstrap: overlay peers to stay connected to (other hubs); defaults to none.
    mdns: advertise on the LAN with mDNS; defaults to True. mdns_namespace: see GossipOptions.
    announce_interval: seconds between this hub's announcements on the overlay, or None (the
        default) for ``auto``: 3 s up to 10 hubs, then 0.3 s per hub (100 hubs: 30 s), at most
        90 s; each announcement lives 10/3 of it (see discovery/cadence.py).
    stun_listen: ``host:port`` of the STUN responder (UDP); defaults to 0.0.0.0:3478; it also
        answers on the next port (3479; any free port for port 0), so clients tell a symmetric
        NAT from one that keeps its mapping; "" turns it off. stun_alternate: a second
        ``ip:port`` (other IP and port) for RFC 5780's CHANGE-REQUEST and OTHER-ADDRESS (then
        the responder takes the four combinations, no next port); defaults to none. Clients
        and miners are also given other hubs' STUN endpoints (``StunPeers``).
    relay: circuit relay v2 limits (every hub relays for its miners); None turns it off. A
        reservation for each miner it may hold (``HUB_RESERVATIONS``), not a public relay's
        128: every miner reserves on its hub, and one refused retries every 30 s, a new
        stream each time (at 400 miners that doubled the hub's steady CPU per miner).
    tls_cert, tls_key: PEM files: the client API on ``grpc_listen`` serves TLS (overlay clients
        are unaffected: their path is Noise-encrypted already); defaults to plain gRPC.
    streams: bounds on open WatchTask/TaskLogs streams (see StreamLimits).
    http_listen: ``host:port`` of the read-only page and /metrics (see hub/web.py); defaults
        to "" (none).
    chain: the chain and hub registry (see ChainSettings); defaults to none. With one, the hub
        reads the registry every ``registry_poll`` seconds (and, unless ``require_registered``
        is off, hears only registered hubs); with ``stake`` (wei) > 0 it also registers itself
        and keeps its registered endpoints current (see hub/registration.py).
    max_connections: overlay connections held at once (a miner holds one); defaults to 10,000.
    max_joining: peers joining at once, the rest waiting their turn (transport/_joins.py);
        defaults to 32; 0 for no limit.
    birthday_punch: take part in birthday-paradox hole punches (``--no-birthday-punch``);
        defaults to True.
    """

    home: Path
    grpc_listen: str = "0.0.0.0:10001"
    p2p_listen: tuple[str, ...] = ("/ip4/0.0.0.0/tcp/10002",)
    announce_grpc: str = ""
    bootstrap: tuple[str, ...] = ()
    mdns: bool = True
    mdns_namespace: str = "hub"
    announce_interval: float | None = None
    stun_listen: str = "0.0.0.0:3478"
    stun_alternate: str = ""
    relay: RelayOptions | None = field(
        default_factory=lambda: RelayOptions(max_reservations=HUB_RESERVATIONS)
    )
    reachability: str = "auto"
    relay_via: tuple[str, ...] = ()
    recheck_interval: float = 300.0
    hub: HubOptions = field(default_factory=HubOptions)
    tls_cert: Path | None = None
    tls_key: Path | None = None
    streams: StreamLimits = field(default_factory=StreamLimits)
    http_listen: str = ""
    chain: ChainSettings = field(default_factory=ChainSettings)
    stake: int = 0
    registry_poll: float = 15.0
    max_connections: int = 10_000
    max_joining: int = 32
    birthday_punch: bool = True


class HubDaemon:
    """A running hub. ``start()`` returns once both ports listen; ``close()`` is idempotent."""

    def __init__(self, options: HubDaemonOptions) -> None:
        self.options = options
        self.identity = load_or_create(options.home)
        self.node_id = self.identity.node_id
        self.state = HubState(options.home)
        #: Owns every background thread of the hub but the node's own (see supervisor.py).
        self.supervisor = Supervisor("hub", workers=16)
        self.node = P2PNode(
            self.identity,
            NodeOptions(
                listen=options.p2p_listen,
                relay_service=options.relay,
                autonat_service=True,
                max_connections=options.max_connections,
                max_joining=options.max_joining,
                defer_identify=IDENTIFY_AFTER,
                birthday_punch=options.birthday_punch,
            ),
        )
        self.reachability = HubReachability(
            self.node,
            mode=options.reachability,
            relays=options.relay_via or options.bootstrap,
            recheck_interval=options.recheck_interval,
            supervisor=self.supervisor,
        )
        self.hub = Hub(
            self.identity,
            self.node,
            self.state,
            options.hub,
            supervisor=self.supervisor,
            stun_for_miners=self._stun_for_miners,
        )
        self.grpc_port = 0
        self.gossip = HubGossip(
            self.node,
            GossipOptions.of(options),
            announce=hub_announcer(
                self.identity,
                self.node,
                grpc_endpoint=lambda: self.grpc_endpoint,
                version=__version__,
                load=lambda: (len(self.hub.online_miners()), 0),
                multiaddrs=lambda: self.node.advertised_addrs,
            ),
        )
        self._server: grpc.aio.Server | None = None
        self.stun: StunResponder | None = None
        self.stun_endpoint = ""  # its primary address
        self.stun_own: list[str] = []  # every address it answers on, the primary first
        self.stun_peers = StunPeers(_ask_stun, ttl=_PEER_STUN_TTL)
        self.web: HubWeb | None = None
        self.registry_watch: RegistryWatch | None = None
        self.registration: HubRegistration | None = None

    def __repr__(self) -> str:
        return f"<HubDaemon {self.node_id} grpc={self.options.grpc_listen}>"

    def start(self) -> None:
        host, port = parse_hostport(self.options.grpc_listen)
        endpoint = format_hostport(host, port)
        self.hub.start()  # its loop serves the client API too
        self._server, self.grpc_port = self._on_loop(self._bind(endpoint))
        if not self.grpc_port:
            raise ConfigError(f"cannot listen for gRPC on {endpoint}: address in use or invalid")
        self.grpc_endpoint = self.options.announce_grpc or _announced(host, self.grpc_port)
        self._start_stun()
        servicer = HubServicer(
            self.hub,
            self.grpc_endpoint,
            self.gossip,
            reachability=lambda: self.reachability.state,
            stun_endpoint=self.stun_endpoint,
            stun_endpoints=self.stun_endpoints,
            streams=self.options.streams,
        )
        add_servicer(hub_pb2_grpc.add_HubServicer_to_server, servicer, self._server)
        if self.options.http_listen:
            self._start_web(servicer)
        # Miners that speak it hold a message session (handshake and task events on it),
        # pinged on its connection; older ones a beat session (pinged the same way, the rest
        # over gRPC), or the first session, pinged over gRPC (see transport/heartbeat.py).
        beat = Heartbeat(
            interval=self.hub.options.ping_interval,
            timeout=self.hub.options.ping_timeout,
            report=self.hub.beat_results,
        )
        self.node.accept_sessions(
            SESSION_MESSAGES,
            self.hub.miner_opened_messaging,
            self.hub.miner_closed,
            heartbeat=beat,
            messages=True,
        )
        self.node.accept_sessions(
            SESSION_BEAT, self.hub.miner_opened_beating, self.hub.miner_closed, heartbeat=beat
        )
        self.node.accept_sessions(SESSION, self.hub.miner_opened, self.hub.miner_closed)
        self.node.start()
        # Overlay clients (already Noise-encrypted) reach the same server on a private Unix
        # socket: plain gRPC there, whether the public port serves TLS or not.
        overlay_sock = private_socket_path("hub-grpc")
        if not self._server.add_insecure_port(f"unix:{overlay_sock}"):
            raise ConfigError(f"cannot serve the overlay's gRPC on {overlay_sock}")
        self.node.serve_tcp(GRPC_HUB, overlay_sock)
        self._on_loop(self._server.start())
        self.reachability.start()
        self.supervisor.every(
            "stun-peers",
            _PEER_STUN_EVERY,
            lambda: self.stun_peers.refresh(self._other_hubs(), besides=self.stun_own),
        )
        self._start_chain()
        log.info(
            "hub %s: gRPC on %s (announced as %s), overlay on %s",
            self.node_id, self.options.grpc_listen, self.grpc_endpoint, " ".join(self.node.addrs),
        )  # fmt: skip

    def _start_web(self, servicer: HubServicer) -> None:
        """The page and /metrics (``--http-listen``); the servicer counts its calls for them."""
        metrics = HubMetrics(
            HubReadings(
                miners_online=lambda: len(self.hub.online_miners()),
                tasks_by_state=self.state.count_tasks_by_state,
                relay=lambda: relay_counts(self.node.core.relay),
                gossip=self.gossip.stats,
            )
        )
        servicer.observe_call = metrics.rpc_done
        view = partial(
            network_view,
            node_id=self.node_id,
            reachability=lambda: str(self.reachability.state),
            hub=self.hub,
            node=self.node,
            gossip=self.gossip,
        )
        self.web = HubWeb(self.options.http_listen, view, metrics.exposition)
        self.web.start()

    def _start_chain(self) -> None:
        o = self.options
        if not o.chain.enabled:
            return
        # Last in start(): the client API already answers while web3 loads (over a second).
        registry = check_registry(o.chain)  # ConfigError (exit 2) when there is no registry
        self.registry_watch = RegistryWatch(
            o.chain, self.gossip.set_registered, interval=o.registry_poll, registry=registry
        )
        self.supervisor.service("registry", self.registry_watch.run)
        if o.stake > 0:
            self.registration = HubRegistration(
                o.chain,
                self.identity,
                o.stake,
                lambda: (self.node.advertised_addrs, self.grpc_endpoint),
                interval=o.registry_poll,
            )  # its own client: the two loops run on two threads
            self.supervisor.service("registration", self.registration.run)

    def _on_loop(self, coro: Coroutine[Any, Any, T]) -> T:
        assert self.hub.loop is not None
        return asyncio.run_coroutine_threadsafe(coro, self.hub.loop).result(timeout=30)

    async def _bind(self, endpoint: str) -> tuple[grpc.aio.Server, int]:
        # Short calls run on the supervisor's bounded pool; long ones are coroutines (servicer).
        server = grpc.aio.server(
            migration_thread_pool=self.supervisor.executor(), options=SERVER_OPTIONS
        )
        try:
            if self.options.tls_cert or self.options.tls_key:
                creds = grpc.ssl_server_credentials([_read_pair(self.options)])
                return server, server.add_secure_port(endpoint, creds)
            return server, server.add_insecure_port(endpoint)
        except RuntimeError:
            return server, 0

    def _other_hubs(self) -> list[Any]:
        """The other hubs this hub knows from discovery (``HubEntry``)."""
        return [e for e in self.gossip.hubs() if e.node_id.lower() != self.node_id.lower()]

    def stun_endpoints(self) -> list[str]:
        """The STUN responders clients classify their NAT against (``Info.stun_endpoints``):
        this hub's own (two ports by default), then other hubs' (other IPs)."""
        own = self.stun_own
        return own + self.stun_peers.known(self._other_hubs(), besides=own)

    def _stun_for_miners(self) -> list[str]:
        """The STUN responders miners classify their NAT against: this hub's, unless the hub is
        behind NAT (its responder is then out of their reach): a relay hub's, from its Info;
        then other hubs' (see :meth:`stun_endpoints`)."""
        if self.reachability.state != Reachability.PRIVATE:
            return self.stun_endpoints()
        relays = {r.relay_id for r in self.reachability.reservations}
        others = self._other_hubs()
        first = [
            endpoint
            for entry in others
            if entry.peer_id in relays and (endpoint := self.stun_peers.endpoint(entry))
        ][:1]
        return (first + self.stun_peers.known(others, besides=first)) if first else self.stun_own

    def _start_stun(self) -> None:
        if not self.options.stun_listen:
            return
        primary = parse_hostport(self.options.stun_listen, allow_zero=True)
        alternate, second = None, None
        where = f"{self.options.stun_listen}/udp"
        if self.options.stun_alternate:
            alternate = parse_hostport(self.options.stun_alternate, allow_zero=True)
        else:  # a second port of the same IP tells a symmetric NAT from one that keeps its mapping
            second = primary[1] + 1 if primary[1] else 0
            where = f"{self.options.stun_listen} and port {second or 'any'} (udp)"
        try:
            self.stun = StunResponder(ResponderAddresses(primary, alternate, second))
            bound = self.stun.start()
        except (OSError, ValueError) as exc:
            raise ConfigError(
                f"cannot run the STUN responder on {where}: {exc} (another hub on this "
                "machine? give this one other ports with --stun-listen HOST:PORT, which takes "
                "PORT and PORT+1, or --stun-listen '' for none)"
            ) from None
        announced = parse_hostport(self.grpc_endpoint)[0]
        self.stun_own = [
            format_hostport(announced if host in ("0.0.0.0", "::") else host, port)
            for host, port in bound.local_addresses
        ]
        self.stun_endpoint = self.stun_own[0]

    def close(self) -> None:
        """Stop serving and join every thread the hub started. Idempotent."""
        if self.web is not None:
            self.web.close()
        if self.stun is not None:
            self.stun.close()
        if self._server is not None and self.hub.loop is not None:
            server, self._server = self._server, None
            try:
                self._on_loop(server.stop(grace=1))
            except RuntimeError:
                pass  # the loop is gone already
        self.hub.close()
        self.supervisor.close()
        self.node.close()
        self.state.close()


def _read_pair(options: HubDaemonOptions) -> tuple[bytes, bytes]:
    """(key, certificate) for grpc's TLS credentials; ConfigError naming a file that is not
    there, or a key without its certificate."""
    if not (options.tls_cert and options.tls_key):
        raise ConfigError("TLS needs both --tls-cert and --tls-key")
    out = []
    for flag, path in (("--tls-key", options.tls_key), ("--tls-cert", options.tls_cert)):
        try:
            out.append(Path(path).read_bytes())
        except OSError as exc:
            raise ConfigError(f"{flag} {path}: {exc.strerror}") from None
    return out[0], out[1]


def _ask_stun(grpc_endpoint: str) -> str:
    """Another hub's STUN endpoint, by its Info ("" when it runs none)."""
    with HubClient(grpc_endpoint, timeout=2.0) as client:
        return client.info().stun_endpoint


def _announced(host: str, port: int) -> str:
    if host in ("0.0.0.0", "::", ""):
        ips = [ip for ip in interface_ips(loopback=False) if ":" not in ip] or ["127.0.0.1"]
        host = ips[0]
    return format_hostport(host, port)
