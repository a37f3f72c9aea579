"""Hub discovery over real libp2p hosts on 127.0.0.1, several P2PNodes in this process.

The overlay is a chain (each node bootstraps only to the one before it), so every hub a node
learns about beyond its neighbour reached it through GossipSub's mesh forwarding.
"""

from __future__ import annotations

import dataclasses
import threading
import time
import uuid
from collections.abc import Iterator

import pytest

from sonm_p2p.discovery import (
    DropReason,
    GossipOptions,
    HubAnnouncement,
    HubGossip,
    hub_announcer,
)
from sonm_p2p.identity import Identity
from sonm_p2p.transport.node import NodeOptions, P2PNode
from tests.harness import free_port, wait_for

ANNOUNCE_INTERVAL = 3.0
LOCAL = NodeOptions(listen=("/ip4/127.0.0.1/tcp/0",), dial_timeout=5.0)


@dataclasses.dataclass
class Member:
    name: str
    identity: Identity
    node: P2PNode
    gossip: HubGossip

    @property
    def node_id(self) -> str:
        return self.identity.node_id

    @property
    def addr(self) -> str:
        return self.node.addrs[0]

    def known(self) -> set[str]:
        return {e.node_id for e in self.gossip.hubs()}


class Overlay:
    """Nodes of one test; close() closes them all."""

    def __init__(self) -> None:
        self.members: list[Member] = []

    def add(
        self,
        name: str,
        *,
        hub: bool = False,
        bootstrap: tuple[str, ...] = (),
        listen: tuple[str, ...] = LOCAL.listen,
        mdns_namespace: str | None = None,
        validate: bool = True,
        announce_interval: float | None = ANNOUNCE_INTERVAL,
    ) -> Member:
        identity = Identity.generate()
        node = P2PNode(identity, dataclasses.replace(LOCAL, listen=listen))
        options = GossipOptions(
            bootstrap=bootstrap,
            mdns=mdns_namespace is not None,
            mdns_namespace=mdns_namespace or "hub",
            announce_interval=announce_interval,
        )
        announce = None
        if hub:
            port = 10_000 + len(self.members)
            announce = hub_announcer(
                identity, node, grpc_endpoint=f"127.0.0.1:{port}", version="test"
            )
        gossip = HubGossip(node, options, announce=announce)
        if not validate:
            # A malicious node runs no validator: whatever it publishes leaves it.
            gossip._validate = lambda forwarder, msg: True
        member = Member(name, identity, node, gossip)
        self.members.append(member)
        node.start()
        return member

    @property
    def hubs(self) -> set[str]:
        return {m.node_id for m in self.members if m.gossip._announce is not None}

    def close(self) -> None:
        for m in reversed(self.members):
            m.node.close()


def leftover_threads(before: set[int]) -> list[str]:
    """Threads started since ``before`` that are still alive, except trio's idle worker cache
    (process-wide, shared by every trio run; its idle threads exit after 10 s)."""
    return [
        t.name
        for t in threading.enumerate()
        if t.ident not in before and not t.name.startswith("Trio thread")
    ]


@pytest.fixture(scope="module")
def chain() -> Iterator[Overlay]:
    """hub1 - node1 - hub2 - node2 - hub3 - node3, each bootstrapping to the one before."""
    overlay = Overlay()
    try:
        prev = None
        for name in ("hub1", "node1", "hub2", "node2", "hub3", "node3"):
            boot = (prev.addr,) if prev else ()
            prev = overlay.add(name, hub=name.startswith("hub"), bootstrap=boot)
        yield overlay
    finally:
        overlay.close()


def test_every_node_learns_every_hub_through_a_chain(chain):
    hubs = chain.hubs
    assert len(hubs) == 3
    t0 = time.monotonic()
    for m in chain.members:
        wait_for(lambda m=m: m.known() == hubs, f"{m.name} to know all hubs", timeout=15)
    took = time.monotonic() - t0
    # Not a full mesh: each node talks to its chain neighbours only.
    for m in chain.members:
        assert m.gossip.stats()["peers"] <= 2, m.name
    end, hub1 = chain.members[-1], chain.members[0]
    entry = end.gossip.directory().get(hub1.node_id, time.time())
    # And hub1's next announcements keep crossing the chain (mesh forwarding, not a one-off).
    wait_for(
        lambda: (
            end.gossip.directory().get(hub1.node_id, time.time()).announcement.issued_at_ms
            > entry.announcement.issued_at_ms
        ),
        "a newer announcement of hub1 at the end of the chain",
        timeout=ANNOUNCE_INTERVAL + 2,
    )
    assert entry.grpc_endpoint == "127.0.0.1:10000"
    assert entry.peer_id == hub1.node.peer_id
    assert entry.multiaddrs == tuple(hub1.node.addrs)
    assert end.gossip.choose() is not None
    assert end.gossip.choose(allow={chain.members[2].node_id}).node_id == chain.members[2].node_id
    print(f"all 6 nodes knew all 3 hubs {took:.2f}s after the chain was up")


def test_a_late_joiner_learns_all_hubs_within_one_period(chain):
    end = chain.members[-1]
    wait_for(lambda: end.known() == chain.hubs, "the chain to converge", timeout=15)
    t0 = time.monotonic()
    late = chain.add("late", bootstrap=(end.addr,))
    deadline = ANNOUNCE_INTERVAL + 2.0  # one period, plus mesh-formation slack
    wait_for(lambda: late.known() == chain.hubs, "the late joiner to know all hubs", deadline)
    took = time.monotonic() - t0
    print(f"late joiner at the end of the chain knew all hubs after {took:.2f}s")
    assert len(late.gossip.wait_for_hubs(3, timeout=1)) == 3
    # What it got first may be its neighbour's message cache replayed to it; it is also in the
    # mesh: every hub's next announcement reaches it.
    first = {e.node_id: e.announcement.issued_at_ms for e in late.gossip.hubs()}
    wait_for(
        lambda: all(e.announcement.issued_at_ms > first[e.node_id] for e in late.gossip.hubs()),
        "newer announcements of every hub at the late joiner",
        timeout=ANNOUNCE_INTERVAL + 2,
    )


def test_forged_expired_replayed_and_junk_are_dropped_and_counted(chain):
    hub1, node1 = chain.members[0], chain.members[1]
    wait_for(lambda: node1.known() == chain.hubs, "node1 to know all hubs", timeout=15)
    evil = chain.add("evil", bootstrap=(node1.addr,), validate=False)
    wait_for(lambda: evil.known() == chain.hubs, "the evil node to join the mesh", timeout=10)
    # The node to watch is evil's only neighbour: nothing it drops goes further.
    before = dict(node1.gossip.stats()["dropped"])

    def dropped(reason: DropReason) -> int:
        return node1.gossip.stats()["dropped"][reason.value] - before[reason.value]

    now = time.time()
    genuine = {e.node_id: e for e in evil.gossip.hubs()}[hub1.node_id].announcement
    # 1. A forgery: claims to be hub1 (newer, pointing elsewhere), signed by evil's key.
    lie = dataclasses.replace(
        genuine,
        grpc_endpoint="6.6.6.6:666",
        issued_at_ms=genuine.issued_at_ms + 1500,
        signature=b"",
    )
    evil.gossip.publish(
        dataclasses.replace(lie, signature=evil.identity.sign(lie.signing_payload()))
    )
    wait_for(lambda: dropped(DropReason.BAD_SIGNATURE) >= 1, "the forgery to be dropped")
    # 2. Evil's own, properly signed, but expired announcement.
    stale = HubAnnouncement.create(
        evil.identity, peer_id=evil.node.peer_id, now=now - 60, grpc_endpoint="6.6.6.6:1"
    )
    evil.gossip.publish(stale)
    wait_for(lambda: dropped(DropReason.EXPIRED) >= 1, "the expired one to be dropped")
    # 3. hub1's genuine announcement, published again.
    evil.gossip.publish(genuine)
    wait_for(lambda: dropped(DropReason.REPLAYED) >= 1, "the replay to be dropped")
    # 4. Unsigned, and one from "the future".
    evil.gossip.publish(dataclasses.replace(stale, signature=b""))
    wait_for(lambda: dropped(DropReason.UNSIGNED) >= 1, "the unsigned one to be dropped")
    ahead = HubAnnouncement.create(
        evil.identity, peer_id=evil.node.peer_id, now=time.time() + 60, grpc_endpoint="6.6.6.6:2"
    )
    evil.gossip.publish(ahead)
    wait_for(lambda: dropped(DropReason.FUTURE) >= 1, "the future one to be dropped")

    # 5. A flood of junk: throttled (per source peer), counted, and the node keeps working.
    # Sent in bursts of 20, each counted before the next: py-libp2p's outbound queue holds 32
    # RPCs per peer and drops the rest on the sender's side, out of the receiver's sight.
    def total() -> int:
        return sum(node1.gossip.stats()["dropped"].values()) - sum(before.values())

    t0 = time.monotonic()
    for burst in range(3):
        goal = total() + 20
        for i in range(20):
            evil.gossip.publish(b"junk %d" % i + b"x" * (5000 if i % 2 else 0))
        wait_for(lambda goal=goal: total() >= goal, f"burst {burst} to be counted", timeout=10)
    refilled = 1 + int(time.monotonic() - t0)  # origin bucket: 1 token/s
    throttled = dropped(DropReason.THROTTLED)
    assert throttled >= 60 - refilled
    assert throttled + dropped(DropReason.OVERSIZED) + dropped(DropReason.UNDECODABLE) == 60
    seen = {e.node_id: e.last_seen for e in node1.gossip.hubs()}
    wait_for(
        lambda: all(e.last_seen > seen[e.node_id] for e in node1.gossip.hubs()),
        "fresh announcements of every hub after the flood",
        timeout=ANNOUNCE_INTERVAL + 3,
    )

    # Nothing of it reached any directory (but evil's own, which checks nothing).
    for m in chain.members:
        if m is evil:
            continue
        for e in m.gossip.hubs():
            assert not e.grpc_endpoint.startswith("6.6.6.6"), (m.name, e)
        assert evil.node_id not in m.known(), m.name
    print("node1 drops:", {k: v for k, v in node1.gossip.stats()["dropped"].items() if v})


def test_a_node_started_before_its_bootstrap_peer_still_joins():
    overlay = Overlay()
    try:
        port = free_port()
        # host:port form: the peer ID is learned by a handshake, once something listens there.
        early = overlay.add("early", bootstrap=(f"127.0.0.1:{port}",))
        hub = overlay.add("hub", hub=True, listen=(f"/ip4/127.0.0.1/tcp/{port}",))
        wait_for(lambda: early.known() == {hub.node_id}, "the early node to find the hub", 10)
    finally:
        overlay.close()


def test_mdns_finds_a_hub_without_bootstrap():
    namespace = uuid.uuid4().hex[:8]
    overlay = Overlay()
    try:
        hub = overlay.add("hub", hub=True, mdns_namespace=namespace)
        miner = overlay.add("miner", mdns_namespace=namespace)
        stranger = overlay.add("stranger", mdns_namespace=uuid.uuid4().hex[:8])
        t0 = time.monotonic()
        wait_for(lambda: miner.known() == {hub.node_id}, "mDNS to find the hub", timeout=10)
        print(f"mDNS: the miner knew the hub after {time.monotonic() - t0:.2f}s")
        assert miner.node.is_connected(hub.node.peer_id)
        # Another namespace sees nothing (it had the same time to look).
        assert stranger.known() == set()
        assert not stranger.node.is_connected(hub.node.peer_id)
    finally:
        overlay.close()


def test_close_is_prompt_and_leaves_no_thread_behind():
    before = {t.ident for t in threading.enumerate()}
    overlay = Overlay()
    namespace = uuid.uuid4().hex[:8]
    try:
        hub = overlay.add("hub", hub=True, mdns_namespace=namespace)
        node = overlay.add("node", bootstrap=(hub.addr,), mdns_namespace=namespace)
        wait_for(lambda: node.known() == {hub.node_id}, "the node to find the hub", 10)
        cleanup = [t for t in threading.enumerate() if "_background_cleanup" in t.name]
        assert len(cleanup) >= 2  # one seen-cache sweeper per Pubsub, while running
    finally:
        t0 = time.monotonic()
        overlay.close()
        took = time.monotonic() - t0
    assert took < 3.0, f"closing two nodes took {took:.2f}s"
    assert leftover_threads(before) == []
    with pytest.raises(Exception, match="not running"):
        hub.gossip.publish(b"x")
    print(f"closed 2 nodes (pubsub + mDNS) in {took:.2f}s")


@pytest.mark.parametrize(("interval", "ttl"), [(30.0, 100.0), (None, 10.0)])
def test_an_announcement_lives_ten_thirds_of_its_hubs_interval(interval, ttl):
    """A hub announcing every 30 s says its announcement lives 100 s, and its peers keep it
    that long; with ``auto`` (None) in a small overlay: every 3 s, 10 s, as before."""
    overlay = Overlay()
    try:
        hub = overlay.add("hub", hub=True, announce_interval=interval)
        peer = overlay.add("peer", bootstrap=(hub.addr,))
        entry = wait_for(
            lambda: peer.gossip.directory().get(hub.node_id, time.time()),
            "the peer to take in the hub's announcement",
            timeout=15,
        )
        assert entry.announcement.ttl == ttl
        assert entry.expires_at == pytest.approx(entry.announcement.issued_at + ttl)
        assert hub.gossip.announce_interval() == (interval or 3.0)
    finally:
        overlay.close()
