"""Hub discovery over GossipSub: the I/O around the validator and the directory.

:class:`HubGossip` runs inside a :class:`~sonm_p2p.transport.node.P2PNode` as one of its
services: GossipSub v1.1 (1 s heartbeat) and Pubsub on the node's trio thread, subscribed to
``/sonm/hubs/1`` with the topic validator; verified announcements land in a
:class:`HubDirectory`. It keeps the node connected to its bootstrap peers (retrying, so a node
may start before them), finds hubs on the LAN with mDNS when asked, and, on a hub, publishes the
hub's announcement every few seconds and once at start. Every public method is thread-safe.

Once a node has one overlay connection, GossipSub's mesh forwarding brings it every hub's
announcements, however far away (a chain A-B-C-D works): nobody needs to dial the hubs it learns.

py-libp2p 0.8.1 settings that matter here (measured, unless said otherwise):

* ``heartbeat_interval`` defaults to 120 s: the mesh would take minutes to form; we use 1 s;
* ``adaptive_gossip_enabled`` (default on) rewrites ``heartbeat_interval`` to 30-60 s whenever
  its "network health" score is below 0.7, which a small mesh (fewer peers than the target
  degree 6) always is: in a 3-node chain the heartbeat went from 1 s to 30 s at the first health
  update, 30 s after start (health 0.27-0.33); we turn it off;
* ``spam_protection_enabled`` (default on; read in the source, not measured) stops forwarding
  more than 10 messages/s per neighbour and topic, which caps the overlay at ~30 hubs
  announcing every 3 s; our validator rate-limits instead;
* GossipSub v1.2 (``/meshsub/1.2.0``) makes a publisher send an IDONTWANT for its own message
  to each mesh peer along with the message: two RPCs per publish in a per-peer outbound queue of
  32, so a burst of 60 publishes lost 20 at the sender (none over v1.1). Our messages are
  smaller than the IDONTWANTs would save; we speak v1.1 only;
* every RPC carries the sender's signed peer record, verified by the receiver each time (a
  secp256k1 check per copy of a message): ``_peer_records`` checks a record once per peer;
* ``Pubsub`` starts a cleanup thread for its seen-messages cache in its constructor and never
  stops it (it sleeps 60 s at a time); we stop it when the service ends.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import trio

from sonm_p2p.discovery import _peer_records
from sonm_p2p.discovery._flood import flood_publishing
from sonm_p2p.discovery._in_kind import answer_in_kind
from sonm_p2p.discovery.announcement import DEFAULT_TTL, TOPIC, HubAnnouncement
from sonm_p2p.discovery.cadence import HubCountPeak, announce_ttl, interval_for
from sonm_p2p.discovery.directory import HubDirectory, HubEntry
from sonm_p2p.discovery.mdns import DEFAULT_NAMESPACE, LanDiscovery, LanPeer
from sonm_p2p.discovery.registered import RegisteredHubs
from sonm_p2p.discovery.validator import AnnouncementValidator, ValidatorOptions
from sonm_p2p.errors import SonmError, Timeout
from sonm_p2p.identity import Identity, node_id_from_peer_id
from sonm_p2p.transport import addrs as _addrs
from sonm_p2p.transport.node import P2PNode

__all__ = ["GossipOptions", "HubGossip", "expand_addrs", "hub_announcer"]

log = logging.getLogger(__name__)

#: Returns the hub's current signed announcement, living ``ttl`` seconds (see hub_announcer).
Announcer = Callable[[float], HubAnnouncement]


@dataclass(frozen=True, kw_only=True)
class GossipOptions:
    """How a node takes part in hub discovery.

    bootstrap: peers to stay connected to: multiaddrs with ``/p2p/<peer id>``, or ``host:port``
        / multiaddrs without it (the peer ID is then learned by a Noise handshake). Defaults to
        none. Checked when the HubGossip is created (ConfigError on a bad one).
    mdns: browse the LAN for hubs with mDNS (and advertise, on a hub); defaults to False.
    mdns_namespace: nodes only see hubs of their namespace; 1-9 of ``a-z0-9-``; defaults to
        "hub". Tests pass a random one so that parallel tests do not see each other.
    announce_interval: seconds between a hub's announcements, or None (the default) for
        ``auto``: 3 s up to 10 live hubs, then 0.3 s per hub (at most 90 s), so each hub's
        gossip work stays flat as the overlay grows (see cadence.py). Each announcement lives
        10/3 of the interval it was made at (at least 10 s).
    heartbeat_interval: GossipSub heartbeat, seconds; defaults to 1 (py-libp2p's is 120).
    degree, degree_low, degree_high: GossipSub's mesh degree D (peers each message is pushed
        to), and the bounds past which the heartbeat grafts or prunes (D_lo, D_hi); D is also
        how many non-mesh peers get IHAVE gossip each heartbeat. Defaults to 3, 2 and 4
        (py-libp2p's and the spec's are 6, 4 and 12): every copy of a message costs its sender
        and its receiver a few Noise frames in Python, and a hub takes each announcement in
        about D - 1 times; 20 hubs in one process took 68 % of a core with 6/4/12, 49 % with
        3/2/4, and 100 hubs on two cores 75 % with 3/2/4, 153 % with 3/2/12 (docs/SCALING.md).
        A hub pruned out of the mesh of its only link still reaches it: its own announcements
        are flood-published to every subscribed peer (``_flood.py``; py-libp2p publishes only
        to the mesh, and ``test_announce_flood.py`` failed without it); 2/1/3 took a minute to
        converge.
    redial_interval: longest wait between attempts to reach a bootstrap peer; defaults to 5
        (attempts start at 0.25 s apart and double).
    validator: limits of the topic validator; see ValidatorOptions.
    drop_report_interval: at most one log line per this many seconds counting the announcements
        dropped since the last one, by reason (none when nothing was dropped); defaults to 10.
    require_registered: only hubs registered on the chain are accepted (their announcements
        counted as dropped, ``unregistered``, and LAN hubs not dialled); until the first read of
        the registry (:meth:`HubGossip.set_registered`) none is. Defaults to False.
    registry_peers: how many registered hubs (largest stake first) to stay connected to once
        the registry is read: the overlay's bootstrap when nothing else is known; defaults to 8.
    """

    bootstrap: tuple[str, ...] = ()
    mdns: bool = False
    mdns_namespace: str = DEFAULT_NAMESPACE
    announce_interval: float | None = None
    heartbeat_interval: float = 1.0
    degree: int = 3
    degree_low: int = 2
    degree_high: int = 4
    redial_interval: float = 5.0
    validator: ValidatorOptions = field(default_factory=ValidatorOptions)
    drop_report_interval: float = 10.0
    require_registered: bool = False
    registry_peers: int = 8

    @classmethod
    def of(cls, daemon: Any) -> GossipOptions:
        """The options a daemon's settings name (its ``bootstrap``, ``mdns``,
        ``mdns_namespace``, ``announce_interval`` if it has one, and ``chain``'s
        ``trusting``); the rest default."""
        chain = getattr(daemon, "chain", None)
        return cls(
            bootstrap=daemon.bootstrap,
            mdns=daemon.mdns,
            mdns_namespace=daemon.mdns_namespace,
            announce_interval=getattr(daemon, "announce_interval", None),
            require_registered=bool(chain is not None and chain.trusting),
        )


class HubGossip:
    """Hub discovery on one node. Create it before ``node.start()``; it adds itself as a service.

    announce: on a hub, a callable returning the hub's current signed announcement with the
        TTL it is given (see :func:`hub_announcer`); it is called in a worker thread every
        ``announce_interval`` and the result published. Nodes that announce also advertise on mDNS.

    The service stops when the node closes; nothing is left running (threads included).
    """

    def __init__(
        self,
        node: P2PNode,
        options: GossipOptions | None = None,
        *,
        announce: Announcer | None = None,
    ) -> None:
        self.node = node
        self.options = options or GossipOptions()
        self._announce = announce
        self._targets = [_addrs.parse_target(t) for t in self.options.bootstrap]
        self._lock = threading.Condition()
        self._directory = HubDirectory()
        self._hub_peak = HubCountPeak()
        self._validator = AnnouncementValidator(
            self.options.validator,
            registered=frozenset() if self.options.require_registered else None,
        )
        self._registered: RegisteredHubs | None = None
        self._registry_dials: dict[str, tuple[trio.CancelScope, tuple[str, ...]]] = {}
        self._nursery: trio.Nursery | None = None
        self._published = 0
        self._pubsub: Any = None
        self._router: Any = None
        self._token: trio.lowlevel.TrioToken | None = None
        self._lan_send: trio.MemorySendChannel[LanPeer] | None = None
        self._dialling: set[str] = set()
        self._self_id = ""
        node.add_service(self.serve)

    # -- thread-safe API -----------------------------------------------------------------------

    def publish(self, announcement: HubAnnouncement | bytes) -> None:
        """Publish one announcement now (from any thread but the node's).

        Raises SonmError when the node is not running.
        """
        data = announcement.encode() if isinstance(announcement, HubAnnouncement) else announcement
        if self._pubsub is None:
            raise SonmError("hub gossip is not running")
        self.node.run(self._publish, data)

    def hubs(self) -> list[HubEntry]:
        """Live hubs, by node ID (on a hub, itself included)."""
        with self._lock:
            return self._directory.live(time.time())

    def directory(self) -> HubDirectory:
        """A copy of the directory (pure: query it with your own ``now``)."""
        with self._lock:
            return self._directory.copy()

    def choose(
        self, *, allow: set[str] | None = None, exclude: tuple[str, ...] | set[str] = ()
    ) -> HubEntry | None:
        """The hub to use now, by :meth:`HubDirectory.choose`'s policy, or None."""
        with self._lock:
            return self._directory.choose(time.time(), allow=allow, exclude=exclude)

    def record_latency(self, node_id: str, seconds: float) -> None:
        """Tell the choice policy how long a round trip to hub ``node_id`` took."""
        with self._lock:
            self._directory.record_latency(node_id, seconds)

    def wait_for_hubs(self, count: int = 1, timeout: float = 10.0) -> list[HubEntry]:
        """Block until at least ``count`` hubs are live; return them. Raises Timeout."""
        deadline = time.monotonic() + timeout
        with self._lock:
            while True:
                live = self._directory.live(time.time())
                if len(live) >= count:
                    return live
                left = deadline - time.monotonic()
                if left <= 0:
                    raise Timeout(f"found {len(live)} of {count} hubs within {timeout:g}s")
                self._lock.wait(min(left, 1.0))

    def set_registered(self, hubs: RegisteredHubs) -> list[str]:
        """Take a new read of the registry: with ``require_registered``, hubs no longer in it
        leave the directory now (returned) and their announcements are dropped from now on;
        either way the node stays connected to the registered hubs with the largest stake."""
        with self._lock:
            self._registered = hubs
            gone: list[str] = []
            if self.options.require_registered:
                self._validator.registered = hubs.ids()
                gone = self._directory.retain(hubs.ids())
            self._lock.notify_all()
        token = self._token
        if token is not None:
            try:
                trio.from_thread.run_sync(self._dial_registered, trio_token=token)
            except trio.RunFinishedError:
                pass
        if gone:
            log.info("hubs left the registry: %s", ", ".join(gone))
        return gone

    def registered(self) -> RegisteredHubs | None:
        """The last read of the registry (None before the first, or with no registry)."""
        with self._lock:
            return self._registered

    def trusts(self, node_id: str) -> bool:
        """Whether hub ``node_id`` may be used: always, unless a registry is required, then
        only while it is registered (as of the last read)."""
        if not self.options.require_registered:
            return True
        with self._lock:
            return self._registered is not None and node_id in self._registered

    def stats(self) -> dict[str, Any]:
        """Counters for ``sonmcli``/metrics: ``accepted``, ``dropped`` (reason -> count, every
        reason present), ``published``, ``hubs`` (live), ``peers`` (pubsub peers), ``mesh``
        (peers in this node's mesh for the topic) and ``registered`` (hubs in the last read of
        the registry; None without one)."""
        with self._lock:
            out = {
                "registered": None if self._registered is None else len(self._registered),
                "accepted": self._validator.accepted,
                "dropped": dict(self._validator.drops),
                "published": self._published,
                "hubs": len(self._directory.live(time.time())),
            }
        pubsub, router = self._pubsub, self._router
        out["peers"] = len(pubsub.peers) if pubsub is not None else 0
        out["mesh"] = len(router.mesh.get(TOPIC, ())) if router is not None else 0
        return out

    def __repr__(self) -> str:
        state = "running" if self._pubsub is not None else "stopped"
        with self._lock:
            return f"<HubGossip {state} {self._directory!r} {self._validator!r}>"

    # -- the service ---------------------------------------------------------------------------

    async def serve(self, host: Any, *, task_status: Any = trio.TASK_STATUS_IGNORED) -> None:
        """Run discovery on ``host`` until cancelled (P2PNode calls this; see add_service)."""
        from libp2p.pubsub.gossipsub import PROTOCOL_ID_V11, GossipSub
        from libp2p.pubsub.pubsub import Pubsub
        from libp2p.tools.anyio_service import background_trio_service

        _peer_records.install()  # the signed peer record in every RPC: made once, checked once
        o = self.options
        router = flood_publishing(GossipSub)(
            protocols=[PROTOCOL_ID_V11],
            degree=o.degree,
            degree_low=o.degree_low,
            degree_high=o.degree_high,
            heartbeat_interval=o.heartbeat_interval,  # type: ignore[arg-type]  # float works
            adaptive_gossip_enabled=False,
            spam_protection_enabled=False,
        )
        self._self_id = host.get_id().to_base58()
        pubsub = Pubsub(host, router, allowed_topics={TOPIC})
        answer_in_kind(pubsub, host)  # no stream to a peer that dialled us and does not gossip
        try:
            async with background_trio_service(pubsub), background_trio_service(router):
                await pubsub.wait_until_ready()
                pubsub.set_topic_validator(TOPIC, self._validate, False)
                subscription = await pubsub.subscribe(TOPIC)
                lan_send, lan_recv = trio.open_memory_channel[LanPeer](64)
                async with trio.open_nursery() as nursery:
                    self._token = trio.lowlevel.current_trio_token()
                    self._lan_send = lan_send
                    self._pubsub, self._router = pubsub, router
                    self._nursery = nursery
                    self._dial_registered()
                    nursery.start_soon(self._read, subscription)
                    nursery.start_soon(self._expire)
                    for maddr, peer_id in self._targets:
                        nursery.start_soon(self._keep_connected, maddr, peer_id)
                    if o.mdns:
                        nursery.start_soon(self._run_mdns, host, lan_recv, nursery)
                    if self._announce is not None:
                        nursery.start_soon(self._announce_forever)
                    task_status.started()
        finally:
            self._pubsub = self._router = self._lan_send = self._nursery = None
            self._registry_dials.clear()
            # Pubsub never stops its seen-cache thread itself; it would outlive the node.
            pubsub.seen_messages.stop()

    async def _publish(self, data: bytes) -> None:
        await self._pubsub.publish(TOPIC, data)
        with self._lock:
            self._published += 1

    def _validate(self, forwarder: Any, msg: Any) -> bool:
        # Runs on the trio thread for every new message, ours included: must not raise or block.
        try:
            from libp2p.peer.id import ID

            fwd = forwarder.to_base58()
            origin = ID(msg.from_id).to_base58()
            with self._lock:
                verdict = self._validator.check(
                    msg.data,
                    now=time.time(),
                    origin="" if origin == self._self_id else origin,
                    forwarder="" if fwd == self._self_id else fwd,
                )
            return bool(verdict)
        except Exception:
            log.exception("hub announcement validator failed; message dropped")
            return False

    async def _read(self, subscription: Any) -> None:
        while True:
            msg = await subscription.get()
            try:
                ann = HubAnnouncement.decode(msg.data)
            except Exception:  # validated already; cannot happen, must not kill the reader
                continue
            with self._lock:
                if self._directory.update(ann, time.time()):
                    self._lock.notify_all()

    async def _expire(self) -> None:
        reported = dict(self._validator.drops)
        reported_at = time.monotonic()
        while True:
            await trio.sleep(1.0)
            with self._lock:
                gone = self._directory.expire(time.time())
                drops, accepted = dict(self._validator.drops), self._validator.accepted
            if gone:
                log.info("hubs expired: %s", ", ".join(gone))
            if time.monotonic() - reported_at >= self.options.drop_report_interval:
                new = {k: v - reported[k] for k, v in drops.items() if v > reported[k]}
                if new:
                    _report_drops(new, time.monotonic() - reported_at, accepted)
                    reported, reported_at = drops, time.monotonic()

    def announce_interval(self) -> float:
        """Seconds until this hub's next announcement: the fixed interval, or with ``auto``
        the one for the most live hubs it knew in the last 10 minutes (see cadence.py)."""
        with self._lock:
            hubs = self._hub_peak.note(len(self._directory.live(time.time())), time.monotonic())
        return interval_for(self.options.announce_interval, hubs)

    async def _announce_forever(self) -> None:
        announce = self._announce
        assert announce is not None
        while True:
            interval = self.announce_interval()
            try:
                ann = await trio.to_thread.run_sync(announce, announce_ttl(interval))
                await self._publish(ann.encode())
            except Exception:
                log.exception("cannot publish the hub announcement")
            await trio.sleep(interval)

    # -- staying connected ---------------------------------------------------------------------

    async def _keep_connected(self, maddr: str, peer_id: str | None) -> None:
        """Connect to a bootstrap peer, and again whenever the connection is lost."""
        import multiaddr

        node = self.node
        delay = 0.25
        learned = peer_id
        while True:
            if learned is not None and node.is_connected(learned):
                await trio.sleep(1.0)
                continue
            try:
                if learned is None:
                    with trio.fail_after(node.options.dial_timeout):
                        learned = await node.core.probe(multiaddr.Multiaddr(maddr))
                if learned == self._self_id:
                    log.debug("bootstrap %s is this node", maddr)
                    return
                await node.core.connect(maddr, learned)
                log.debug("connected to bootstrap %s", maddr)
                delay = 0.25
                await trio.sleep(1.0)
                continue
            except Exception as exc:  # DialError, Timeout, and whatever a half-open peer throws
                log.debug("bootstrap %s: %s (retry in %.2gs)", maddr, exc, delay)
                if peer_id is None:
                    learned = None  # host:port may now be someone else: probe again
            await trio.sleep(delay)
            delay = min(delay * 2, self.options.redial_interval)

    def _trusts_peer(self, peer_id: str) -> bool:
        if not self.options.require_registered:
            return True
        try:
            node_id = node_id_from_peer_id(peer_id)
        except Exception:
            return False
        return node_id is not None and self.trusts(node_id)

    def _dial_registered(self) -> None:
        """(trio thread) Keep connected to the registered hubs with the largest stake; stop
        dialling those that left or fell out of the first ``registry_peers``."""
        nursery, hubs = self._nursery, self._registered
        if nursery is None or hubs is None:
            return
        want = {
            h.peer_id: h.multiaddrs
            for h in hubs.by_stake(self.options.registry_peers)
            if h.peer_id != self._self_id
        }
        for peer_id, (scope, addrs) in list(self._registry_dials.items()):
            if want.get(peer_id) != addrs:
                scope.cancel()
                del self._registry_dials[peer_id]
        for peer_id, addrs in want.items():
            if peer_id not in self._registry_dials:
                scope = trio.CancelScope()
                self._registry_dials[peer_id] = (scope, addrs)
                nursery.start_soon(self._keep_registered, scope, peer_id, addrs)

    async def _keep_registered(
        self, scope: trio.CancelScope, peer_id: str, addrs: tuple[str, ...]
    ) -> None:
        """Stay connected to a registered hub (the dial ladder over its registered addresses)."""
        node = self.node
        delay = 0.25
        with scope:
            while True:
                if node.is_connected(peer_id):
                    await trio.sleep(1.0)
                    continue
                try:
                    with trio.fail_after(node.options.dial_timeout):
                        await node.core.connect_peer(peer_id, list(addrs))
                    log.debug("connected to registered hub %s", peer_id)
                    delay = 0.25
                    continue
                except Exception as exc:  # DialError, Timeout, a half-open peer's surprises
                    log.debug("registered hub %s: %s (retry in %.2gs)", peer_id, exc, delay)
                await trio.sleep(delay)
                delay = min(delay * 2, self.options.redial_interval)

    async def _run_mdns(
        self, host: Any, lan_recv: trio.MemoryReceiveChannel[LanPeer], nursery: trio.Nursery
    ) -> None:
        advertise = None
        if self._announce is not None:
            advertise = [str(a) for a in host.get_addrs()]
        lan = LanDiscovery(
            peer_id=self._self_id,
            on_found=self._lan_found,
            advertise=advertise,
            namespace=self.options.mdns_namespace,
        )
        try:
            try:
                await trio.to_thread.run_sync(lan.start)
            except Exception as exc:
                log.warning("mDNS unavailable, LAN discovery off: %s", exc)
                return
            async for peer in lan_recv:
                if not self._trusts_peer(peer.peer_id):
                    log.debug("LAN hub %s is not registered: not dialled", peer.peer_id)
                    continue
                if peer.peer_id not in self._dialling and not self.node.is_connected(peer.peer_id):
                    self._dialling.add(peer.peer_id)
                    nursery.start_soon(self._dial_lan_peer, peer)
        finally:
            with trio.CancelScope(shield=True):
                await trio.to_thread.run_sync(lan.close)

    def _lan_found(self, peer: LanPeer) -> None:
        # zeroconf's thread: hand the peer over to the trio thread, never block.
        token = self._token

        def deliver() -> None:
            send = self._lan_send
            if send is not None:
                try:
                    send.send_nowait(peer)
                except (trio.WouldBlock, trio.BrokenResourceError, trio.ClosedResourceError):
                    pass

        if token is not None:
            try:
                token.run_sync_soon(deliver)
            except trio.RunFinishedError:
                pass

    async def _dial_lan_peer(self, peer: LanPeer) -> None:
        try:
            for maddr in peer.multiaddrs:
                try:
                    await self.node.core.connect(maddr, peer.peer_id)
                    log.info("connected to LAN hub %s at %s", peer.peer_id, maddr)
                    return
                except Exception as exc:
                    log.debug("LAN hub %s at %s: %s", peer.peer_id, maddr, exc)
        finally:
            self._dialling.discard(peer.peer_id)


def _report_drops(new: dict[str, int], seconds: float, accepted: int) -> None:
    """One line for the operator: a flood of forged announcements shows here, by reason."""
    by_reason = ", ".join(f"{k} {v}" for k, v in sorted(new.items(), key=lambda kv: -kv[1]))
    log.info(
        "hub topic: dropped %d announcements in %.0fs (%s); %d accepted in all",
        sum(new.values()),
        seconds,
        by_reason,
        accepted,
    )


def hub_announcer(
    identity: Identity,
    node: P2PNode,
    *,
    grpc_endpoint: str | Callable[[], str],
    version: str = "",
    load: Callable[[], tuple[int, int]] = lambda: (0, 0),
    multiaddrs: Callable[[], list[str]] | None = None,
    ttl: float = DEFAULT_TTL,
) -> Announcer:
    """A callable for HubGossip's ``announce`` that signs the hub's current announcement,
    living the TTL it is called with (HubGossip passes the one of its interval).

    grpc_endpoint: the hub's client API, or a callable returning it (bound after start).
    load: returns (miners online, max miners or 0); called at each announcement.
    multiaddrs: returns the overlay addresses to announce; defaults to the node's listen
        addresses, with an unspecified host (0.0.0.0 / ::) replaced by each interface address.
    ttl: the lifetime when it is called without one.
    Issue times strictly increase, even if the clock steps back, so receivers never take a new
    announcement for a replay.
    """
    last_ms = 0

    def build(lifetime: float = ttl) -> HubAnnouncement:
        nonlocal last_ms
        now_ms = max(int(time.time() * 1000), last_ms + 1)
        last_ms = now_ms
        miners, max_miners = load()
        addrs = multiaddrs() if multiaddrs is not None else expand_addrs(node.addrs)
        return HubAnnouncement.create(
            identity,
            peer_id=node.peer_id,
            now=now_ms / 1000,
            multiaddrs=addrs,
            grpc_endpoint=grpc_endpoint() if callable(grpc_endpoint) else grpc_endpoint,
            version=version,
            miners_online=miners,
            max_miners=max_miners,
            ttl=lifetime,
        )

    return build


#: Listen multiaddrs with a wildcard host replaced by each interface address (kept under its
#: old name; the one implementation is ``transport.addrs.expand_listen``).
expand_addrs = _addrs.expand_listen
