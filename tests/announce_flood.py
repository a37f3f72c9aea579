"""Attackers on the hub topic: real libp2p hosts (P2PNodes in this process, on 127.0.0.1) that
join a running hub's GossipSub mesh on ``/sonm/hubs/1`` and publish forged announcements, for
tests/integration/test_announce_flood.py and ``make bench``.

An attacker runs no validator of its own (whatever it publishes leaves it), so everything it
sends reaches the hub's: rate limits per source peer, then size, decoding, form, clock, replay
and signature. Each attacker is one identity; its messages are a mix of the forgeries a hostile
peer can make, in turn.
"""

from __future__ import annotations

import dataclasses
import re
import statistics
import threading
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from sonm_p2p.client import HubClient
from sonm_p2p.discovery import GossipOptions, HubAnnouncement, HubGossip
from sonm_p2p.identity import Identity
from sonm_p2p.transport.node import NodeOptions, P2PNode
from tests.harness import wait_for

#: What each forgery is, and the drop reason the hub should give it (after its rate limit).
KINDS = (
    "bad_signature",  # the victim hub's announcement, altered, signed with the attacker's key
    "peer_mismatch",  # the attacker's own, signed, but naming the victim's peer ID
    "expired",  # signed, issued a minute ago with a 30 s TTL
    "future",  # signed, dated a minute ahead
    "unsigned",
    "oversized",  # 5000 bytes
    "undecodable",  # not an announcement at all
)
FORGED_ENDPOINT = "6.6.6.6:666"
_REPORT = re.compile(r"hub topic: dropped (\d+) announcements in \d+s \(([^)]*)\)")


class Attacker:
    """One hostile peer on the hub topic; ``close()`` stops its node."""

    def __init__(self, name: str, bootstrap: str, offset: int = 0) -> None:
        self.name = name
        self.offset = offset  # where in KINDS its forgeries start
        self.identity = Identity.generate()
        self.node = P2PNode(self.identity, NodeOptions(listen=("/ip4/127.0.0.1/tcp/0",)))
        self.gossip = HubGossip(self.node, GossipOptions(bootstrap=(bootstrap,)))
        self.gossip._validate = lambda forwarder, msg: True  # checks nothing of its own
        self.sent: Counter[str] = Counter()
        self.node.start()

    def forgery(self, kind: str, victim: HubAnnouncement, n: int) -> bytes:
        """Forgery number ``n`` of ``kind`` (each one different, so none is a pubsub duplicate)."""
        now = time.time()
        me = self.identity
        if kind == "bad_signature":
            lie = dataclasses.replace(
                victim,
                grpc_endpoint=FORGED_ENDPOINT,
                issued_at_ms=int(now * 1000) + n % 1000,
                signature=b"",
            )
            return dataclasses.replace(lie, signature=me.sign(lie.signing_payload())).encode()
        if kind == "peer_mismatch":
            return HubAnnouncement.create(
                me, peer_id=victim.peer_id, now=now, grpc_endpoint=FORGED_ENDPOINT, version=str(n)
            ).encode()
        if kind in ("expired", "future", "unsigned"):
            when = now + (60 if kind == "future" else -60)
            ann = HubAnnouncement.create(
                me,
                peer_id=self.node.peer_id,
                now=when,
                ttl=30,
                grpc_endpoint=FORGED_ENDPOINT,
                version=str(n),
            )
            if kind == "unsigned":
                ann = dataclasses.replace(ann, signature=b"")
            return ann.encode()
        if kind == "oversized":
            return b"%d:" % n + b"x" * 5000
        return b"junk %d" % n

    def backlog(self) -> int:
        """Messages waiting in this node's outbound queues (py-libp2p's, per peer: 32 at most,
        more are dropped on this side, unseen by the hub)."""
        pubsub = self.gossip._pubsub
        queues = list(pubsub.peer_queues.values()) if pubsub is not None else []
        return max((len(q) for q in queues), default=0)

    def close(self) -> None:
        self.node.close()


def start_attackers(count: int, bootstrap: str, hub_node_id: str) -> list[Attacker]:
    """``count`` attackers bootstrapped to a hub, each in its mesh (it hears the hub)."""
    attackers: list[Attacker] = []
    try:
        for i in range(count):
            # Only the first few messages of each pass its rate limit: spread the kinds.
            attackers.append(Attacker(f"evil{i}", bootstrap, offset=5 * i))
        for a in attackers:
            wait_for(
                lambda a=a: hub_node_id in {e.node_id for e in a.gossip.hubs()},
                f"{a.name} to hear the hub",
                timeout=30,
            )
    except BaseException:
        for a in attackers:
            a.close()
        raise
    return attackers


def flood(
    attackers: list[Attacker], victim: HubAnnouncement, per_attacker: int, *, burst: int = 16
) -> float:
    """Each attacker publishes ``per_attacker`` forgeries, kinds in turn, in bursts of ``burst``,
    each burst once its outbound queue has room for it (so that none is lost on the sending
    side). Returns the seconds it took."""
    began = time.monotonic()
    for start in range(0, per_attacker, burst):
        for a in attackers:
            wait_for(
                lambda a=a: a.backlog() + burst <= 32, f"{a.name}'s queue", timeout=30, every=0.001
            )
            for n in range(start, min(start + burst, per_attacker)):
                kind = KINDS[(n + a.offset) % len(KINDS)]
                a.gossip.publish(a.forgery(kind, victim, n))
                a.sent[kind] += 1
    return time.monotonic() - began


@dataclass
class FloodRun:
    """What :func:`flood_measured` saw: forgeries sent by kind, the flood's duration, Ping round
    trips before it, and Ping / ListMiners round trips (seconds) during it."""

    sent: Counter[str]
    seconds: float
    idle: list[float]
    latency: dict[str, list[float]]
    during: Any = None

    def summary(self) -> str:
        def ms(v: float) -> str:
            return f"{v * 1000:.1f} ms"

        calls = "; ".join(
            f"{k} n={len(v)} p50 {ms(statistics.median(v))} p95 {ms(percentile(v, 95))}"
            f" max {ms(max(v))}"
            for k, v in self.latency.items()
        )
        return (
            f"{sum(self.sent.values())} forged announcements in {self.seconds:.1f} s; Ping idle"
            f" p50 {ms(statistics.median(self.idle))}; under the flood: {calls}"
        )


def flood_measured(
    grpc_target: str,
    attackers: list[Attacker],
    victim: HubAnnouncement,
    per_attacker: int,
    during: Callable[[], Any] | None = None,
) -> FloodRun:
    """:func:`flood` the hub while two clients time ``Ping`` and ``ListMiners`` on its gRPC API
    (each a call every 20 ms); ``during()``, if given, runs meanwhile (its result is kept)."""
    with HubClient(grpc_target, timeout=10) as c:
        idle = [c.ping() for _ in range(100)]
    stop = threading.Event()
    latency: dict[str, list[float]] = {}

    def sample(name: str) -> None:
        with HubClient(grpc_target, timeout=10) as c:
            latency[name] = sample_latency(c.ping if name == "Ping" else c.list_miners, stop)

    took: list[float] = []
    workers = [threading.Thread(target=sample, args=(n,)) for n in ("Ping", "ListMiners")]
    workers.append(
        threading.Thread(target=lambda: took.append(flood(attackers, victim, per_attacker)))
    )
    for t in workers:
        t.start()
    result = None
    try:
        if during is not None:
            result = during()
        workers[-1].join()
    finally:
        stop.set()
        for t in workers:
            t.join(60)
    sent: Counter[str] = Counter()
    for a in attackers:
        sent.update(a.sent)
    return FloodRun(sent, took[0] if took else 0.0, idle, latency, result)


def reported_drops(log: str) -> Counter[str]:
    """What a hub's log says it dropped on the hub topic, by reason, summed over its reports."""
    total: Counter[str] = Counter()
    for _, reasons in _REPORT.findall(log):
        for part in reasons.split(", "):
            reason, _, n = part.rpartition(" ")
            total[reason] += int(n)
    return total


def settled_drops(read_log: Callable[[], str], sent: int, quiet: float = 11.0) -> Counter[str]:
    """The hub's drop reports once they account for at least half of ``sent`` and no new one
    has come for ``quiet`` seconds (reports come every 10 s while drops go on)."""
    wait_for(
        lambda: (d := reported_drops(read_log())).total() - d["replayed"] >= sent / 2,
        "the hub to report its drops",
        timeout=30,
    )
    seen = {"reports": -1, "at": time.monotonic()}

    def quiet_for() -> bool:
        n = len(_REPORT.findall(read_log()))
        if n != seen["reports"]:
            seen.update(reports=n, at=time.monotonic())
        return time.monotonic() - seen["at"] >= quiet

    wait_for(quiet_for, "the hub's reports to settle", timeout=60, every=0.5)
    return reported_drops(read_log())


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q / 100 * (len(ordered) - 1)))]


def sample_latency(
    call: Callable[[], object], stop: threading.Event, every: float = 0.02
) -> list[float]:
    """Seconds each ``call()`` took, called every ``every`` seconds until ``stop`` is set."""
    took = []
    while not stop.is_set():
        t0 = time.perf_counter()
        call()
        took.append(time.perf_counter() - t0)
        stop.wait(every)
    return took
