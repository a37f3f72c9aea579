"""Birthday-paradox hole punching between a port-preserving NAT and a symmetric one. Pure policy.

No sockets, no clock (time comes in as ``now``), randomness from a ``random.Random`` the caller
passes in: ``_sweep.py`` sends the packets, ``_birthday.py`` coordinates the two sides.

DCUtR cannot line up a symmetric NAT's mapping (a fresh random port per destination) with the
port the peer was told. But when the other side is endpoint-independent (one public port for its
listen port, whatever the destination), a TCP simultaneous open still works by the birthday
paradox (measured in network namespaces with Linux routers, issue 15):

* the *hard* (symmetric) side opens ``K`` non-blocking connects from ``K`` local ports to the easy
  side's mapped address: its router holds ``K`` mappings on random public ports;
* the *easy* side connects from its one listen port to ``P`` ports of the hard side's public IP;
  one that hits a mapping crosses it as a simultaneous open (SYN_SENT -> SYN_SENT2 ->
  ESTABLISHED in Linux conntrack).

A sweep of ``P`` distinct ports among ``N`` against ``K`` mappings succeeds with probability
``1 - exp(-K*P/N)`` (:func:`success_probability`): ``K=256, P=1024`` gave 10/10.

Who sends first (:func:`first_mover`) matters: a router that answers an unsolicited SYN with a
RST (OpenWrt's default WAN zone, or a Linux router with no rule) kills the first mover's
mappings on the far router, since that RST flows back through them. So the side behind a
rejecting NAT must send first (its packets then meet a NAT that drops); both rejecting: TCP
cannot work this way, and the relay is kept at once.

Mapped ports of a Linux ``--random-fully`` NAT fall in 1024-65535, twice as often in 1024-2047
as elsewhere: :func:`sample_ports` probes that range first.
"""

from __future__ import annotations

import enum
import math
import random
from collections.abc import Sequence
from dataclasses import dataclass

__all__ = [
    "LOW_PORT",
    "PORTS",
    "SKEWED",
    "BirthdayOptions",
    "Plan",
    "RateLimit",
    "Side",
    "eligible",
    "first_mover",
    "plan",
    "probes_for",
    "sample_ports",
    "side_of",
    "success_probability",
    "sweepable",
    "syn_packets",
    "worth_asking",
]

LOW_PORT, HIGH_PORT = 1024, 65535
#: Ports a symmetric NAT maps to (``N``): 1024-65535.
PORTS = HIGH_PORT - LOW_PORT + 1  # 64,512
#: The range Linux's ``--random-fully`` picks twice as often as the rest (measured).
SKEWED = (1024, 2047)
#: How much more often a port of :data:`SKEWED` is picked.
SKEW = 2.0

_EASY = frozenset({"endpoint-independent"})
_HARD = frozenset({"symmetric"})


class Side(enum.StrEnum):
    """Which NAT a node is behind, for a birthday punch."""

    EASY = "easy"  #: endpoint-independent mapping: one public port for the listen port
    HARD = "hard"  #: symmetric: a random public port per destination


@dataclass(frozen=True, kw_only=True)
class BirthdayOptions:
    """The budget of one birthday punch.

    mappings: ``K``, connects the hard side opens at once (one local port each); defaults to 256.
    target: success probability the easy side's sweep is sized for, uniform ports assumed
        (:func:`probes_for`); defaults to 0.98 (986 probes against 256 mappings; the low-range
        skew lifts it above 0.999 on Linux NATs).
    max_probes: cap on ``P`` whatever ``target`` asks; defaults to 2048.
    rate: probes per second the easy side sends, at most; defaults to 1,000 (a SYN sweep looks
        like a port scan: it is also rate-limited per peer, :class:`RateLimit`).
    deadline: seconds after the second mover started that the punch is given up; defaults to 2
        (a sweep at ``rate`` takes about 1 s).
    min_interval: seconds between two punches with one peer, either side counting; defaults to
        60.
    ip_interval: seconds between two punches towards one public IP, whichever peers claim it
        (peer IDs cost nothing: this bounds what a crowd of them can make us send to one
        address); defaults to 5.
    """

    mappings: int = 256
    target: float = 0.98
    max_probes: int = 2048
    rate: float = 1000.0
    deadline: float = 2.0
    min_interval: float = 60.0
    ip_interval: float = 5.0

    def __post_init__(self) -> None:
        if not 0 < self.target < 1:
            raise ValueError("target must be between 0 and 1")
        if self.mappings < 1 or self.max_probes < 1 or self.rate <= 0:
            raise ValueError("mappings, max_probes and rate must be positive")

    @property
    def probes(self) -> int:
        """``P``: the easy side's sweep."""
        return min(self.max_probes, probes_for(self.target, self.mappings))


def probes_for(target: float, mappings: int, ports: int = PORTS) -> int:
    """``P = ceil(-N * ln(1 - p) / K)``: probes for a success probability of ``target`` against
    ``mappings`` random mappings among ``ports`` (uniform ports; the skew only helps)."""
    if not 0 < target < 1:
        raise ValueError("target must be between 0 and 1")
    if mappings < 1:
        raise ValueError("mappings must be positive")
    return min(ports, math.ceil(-ports * math.log(1 - target) / mappings))


def _weight(port: int, skew: float) -> float:
    return skew if SKEWED[0] <= port <= SKEWED[1] else 1.0


def success_probability(mappings: int, probed: Sequence[int], *, skew: float = SKEW) -> float:
    """Chance that ``probed`` (distinct ports) hits one of ``mappings`` ports drawn from
    1024-65535, ports of :data:`SKEWED` ``skew`` times as likely as the others (1 for uniform)."""
    total = PORTS + (skew - 1.0) * (SKEWED[1] - SKEWED[0] + 1)
    covered = sum(_weight(p, skew) for p in set(probed) if LOW_PORT <= p <= HIGH_PORT) / total
    return 1.0 - math.exp(-mappings * covered)


def sample_ports(rng: random.Random, count: int) -> list[int]:
    """``count`` distinct ports of 1024-65535 to probe, in order: the likelier
    :data:`SKEWED` range first (shuffled), then the rest at random."""
    count = max(0, min(count, PORTS))
    low = list(range(SKEWED[0], SKEWED[1] + 1))
    rng.shuffle(low)
    if count <= len(low):
        return low[:count]
    rest = [p for p in range(LOW_PORT, HIGH_PORT + 1) if not SKEWED[0] <= p <= SKEWED[1]]
    return low + rng.sample(rest, count - len(low))


def side_of(nat_type: str | None) -> Side | None:
    """The :class:`Side` of a NAT type (``stun.NatType`` value); None when it cannot take part."""
    if nat_type in _EASY:
        return Side.EASY
    if nat_type in _HARD:
        return Side.HARD
    return None


def eligible(local_nat: str | None, remote_nat: str | None) -> bool:
    """Whether two NAT types call for a birthday punch: one endpoint-independent, the other
    symmetric. Both symmetric: never (two random mappings cannot be swept for)."""
    sides = {side_of(local_nat), side_of(remote_nat)}
    return sides == {Side.EASY, Side.HARD}


def worth_asking(local_nat: str | None, remote_nat: str | None) -> bool:
    """Whether the side that drives upgrades should start the coordination: the two types call
    for a punch, or one is known and the other not (the peer tells its own type in the
    coordination, and refuses when they do not fit). Never when both are symmetric."""
    local, remote = side_of(local_nat), side_of(remote_nat)
    if eligible(local_nat, remote_nat):
        return True
    if remote_nat is None:
        return local is not None
    return local_nat is None and remote is Side.HARD


def first_mover(*, hard_rejects: bool | None, easy_rejects: bool | None) -> Side | None:
    """Which side sends first, from whether each side's NAT answers an unsolicited SYN with a
    RST (None: not known). The side behind a rejecting NAT sends first; when neither rejects
    (or it is not known), the hard side opens its mappings first and the easy side sweeps
    (opening ``K`` connects takes milliseconds, a sweep about a second). Both rejecting: None,
    do not try over TCP."""
    if hard_rejects and easy_rejects:
        return None
    if easy_rejects:
        return Side.EASY
    return Side.HARD


@dataclass(frozen=True)
class Plan:
    """What both sides run (decided by the coordination's initiator, sent to the responder).

    first: the side that sends first; None when the punch is not tried (``reason`` says why).
    mappings / probes: ``K`` and ``P``. rate: probes per second. deadline: seconds.
    """

    first: Side | None
    mappings: int = 0
    probes: int = 0
    rate: float = 0.0
    deadline: float = 0.0
    reason: str = ""

    @property
    def go(self) -> bool:
        return self.first is not None


def plan(
    options: BirthdayOptions,
    *,
    local_nat: str | None,
    remote_nat: str | None,
    hard_rejects: bool | None,
    easy_rejects: bool | None,
) -> Plan:
    """The punch to run between a node with ``local_nat`` and a peer with ``remote_nat``."""
    if not eligible(local_nat, remote_nat):
        return Plan(None, reason=f"NAT types {local_nat} and {remote_nat} do not call for it")
    first = first_mover(hard_rejects=hard_rejects, easy_rejects=easy_rejects)
    if first is None:
        return Plan(None, reason="both NATs answer unsolicited SYNs with a RST")
    return Plan(first, options.mappings, options.probes, options.rate, options.deadline)


class RateLimit:
    """At most one punch per peer every ``min_interval`` seconds (pure: time comes in as ``now``).
    A SYN sweep looks like a port scan to an IDS; a failed punch is not worth repeating soon.

    max_peers: peers remembered, oldest forgotten first; defaults to 4096.
    """

    def __init__(self, min_interval: float, *, max_peers: int = 4096) -> None:
        self.min_interval = min_interval
        self.max_peers = max_peers
        self._last: dict[str, float] = {}

    def allow(self, peer_id: str, now: float) -> bool:
        """Whether a punch with ``peer_id`` may start at ``now``; if so it is recorded."""
        last = self._last.get(peer_id)
        if last is not None and now - last < self.min_interval:
            return False
        self._last.pop(peer_id, None)
        self._last[peer_id] = now
        while len(self._last) > self.max_peers:
            del self._last[next(iter(self._last))]
        return True

    def __len__(self) -> int:
        return len(self._last)


def sweepable(ip: str) -> bool:
    """Whether a peer's claimed public IP may be punched towards: a public unicast IPv4 address.
    The peer only *says* where it is (the relayed connection does not show it): a private,
    loopback or other reserved address would have us scan our own network for it."""
    import ipaddress

    from sonm_p2p.transport.dial_ladder import Scope, classify

    try:
        addr = ipaddress.ip_address(ip)
    except ValueError:
        return False
    return addr.version == 4 and classify(addr) is Scope.PUBLIC


def syn_packets(lifetimes: Sequence[float]) -> int:
    """SYNs sent by connects that stayed unanswered for ``lifetimes`` seconds each: the first,
    and Linux's retransmissions at 1, 3, 7... s (estimate: the kernel does not count them per
    socket)."""
    total = 0
    for life in lifetimes:
        total += 1
        at, gap = 1.0, 2.0
        while at < life:
            total += 1
            at += gap
            gap *= 2
    return total
