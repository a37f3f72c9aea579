"""The hub-topic validator: decides, message by message, what enters a node's directory.

Pure: time comes in as ``now`` (unix seconds), nothing is raised for a bad message, every drop is
counted by :class:`~sonm_p2p.discovery.announcement.DropReason`. Not thread-safe: the gossip layer
owns it and serialises calls.

Checks run cheapest first, so a flood costs little: the source peers' token buckets, the size, the
decoding, the form, the clock (expired, from the future), the replay table, and only then the
signature (about 0.7 ms). With a registry required, a hub not registered is dropped before its
signature is checked (the claim costs nothing to refuse).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import NamedTuple

from sonm_p2p.discovery.announcement import (
    MAX_TTL,
    DropReason,
    HubAnnouncement,
    InvalidAnnouncement,
)

__all__ = ["AnnouncementValidator", "TokenBuckets", "ValidatorOptions", "Verdict"]


@dataclass(frozen=True, kw_only=True)
class ValidatorOptions:
    """Limits of the hub-topic validator.

    max_bytes: largest message accepted; defaults to 4096.
    max_skew: seconds an announcement may be dated ahead of our clock; defaults to 5.
    origin_rate / origin_burst: messages per second (sustained / in a burst) accepted from one
        originating peer (the pubsub ``from`` peer, authenticated by libp2p's message signature);
        defaults to 1/s and 5. A hub announcing every 3 s uses a third of it.
    forwarder_rate / forwarder_burst: the same for one neighbour forwarding messages of any
        origin; defaults to 100/s and 200 (enough for ~300 hubs announcing every 3 s).
    """

    max_bytes: int = 4096
    max_skew: float = 5.0
    origin_rate: float = 1.0
    origin_burst: float = 5.0
    forwarder_rate: float = 100.0
    forwarder_burst: float = 200.0


class Verdict(NamedTuple):
    """Outcome of one check: the announcement when accepted, else the reason it was dropped."""

    announcement: HubAnnouncement | None
    reason: DropReason | None

    def __bool__(self) -> bool:
        return self.announcement is not None


class TokenBuckets:
    """One token bucket per key: ``rate`` tokens per second, holding at most ``burst``.

    ``allow(key, now)`` spends a token when there is one. A bucket that has refilled completely
    is the same as a new one, so :meth:`prune` forgets it: memory stays bounded by the number of
    keys active in the last ``burst / rate`` seconds.
    """

    def __init__(self, rate: float, burst: float) -> None:
        if rate <= 0 or burst < 1:
            raise ValueError("token bucket needs rate > 0 and burst >= 1")
        self.rate = rate
        self.burst = burst
        self._buckets: dict[str, tuple[float, float]] = {}  # key -> (tokens, at)

    def allow(self, key: str, now: float) -> bool:
        tokens, at = self._buckets.get(key, (self.burst, now))
        # A clock that steps back must not mint tokens (or take them away).
        tokens = min(self.burst, tokens + max(0.0, now - at) * self.rate)
        if tokens < 1:
            self._buckets[key] = (tokens, max(at, now))
            return False
        self._buckets[key] = (tokens - 1, max(at, now))
        return True

    def retry_after(self, key: str, now: float) -> float:
        """Seconds until ``key`` has a token (0.0: it has one now)."""
        tokens, at = self._buckets.get(key, (self.burst, now))
        tokens = min(self.burst, tokens + max(0.0, now - at) * self.rate)
        return 0.0 if tokens >= 1 else (1 - tokens) / self.rate

    def prune(self, now: float) -> None:
        full = [
            k for k, (t, at) in self._buckets.items() if t + (now - at) * self.rate >= self.burst
        ]
        for k in full:
            del self._buckets[k]

    def __len__(self) -> int:
        return len(self._buckets)

    def __repr__(self) -> str:
        return f"<TokenBuckets {self.rate:g}/s burst={self.burst:g} keys={len(self)}>"


@dataclass
class AnnouncementValidator:
    """Checks hub announcements and remembers the newest one accepted per node.

    ``drops`` maps every :class:`DropReason` value to how many messages were dropped for it;
    ``accepted`` counts the rest. ``registered``: when not None, only hubs whose node ID (lower
    case) it holds are accepted (a registry is required; an empty set accepts none).
    """

    options: ValidatorOptions = field(default_factory=ValidatorOptions)
    registered: frozenset[str] | None = None
    accepted: int = 0
    drops: dict[str, int] = field(default_factory=lambda: {r.value: 0 for r in DropReason})

    def __post_init__(self) -> None:
        o = self.options
        self._origins = TokenBuckets(o.origin_rate, o.origin_burst)
        self._forwarders = TokenBuckets(o.forwarder_rate, o.forwarder_burst)
        self._latest: dict[str, int] = {}  # node ID (lower case) -> newest issued_at_ms accepted
        self._pruned_at = float("-inf")

    def check(self, data: bytes, *, now: float, origin: str = "", forwarder: str = "") -> Verdict:
        """Check one message; count it as accepted or dropped, and say which.

        ``origin`` is the peer that published the message, ``forwarder`` the neighbour that
        handed it to us; either may be "" to skip its rate limit (a node's own messages).
        """
        if now - self._pruned_at > 10:
            self.prune(now)
        o = self.options
        if forwarder and not self._forwarders.allow(forwarder, now):
            return self._drop(DropReason.THROTTLED)
        if origin and not self._origins.allow(origin, now):
            return self._drop(DropReason.THROTTLED)
        if len(data) > o.max_bytes:
            return self._drop(DropReason.OVERSIZED)
        try:
            ann = HubAnnouncement.decode(data)
            ann.check_form()
            if now > ann.expires_at:
                raise InvalidAnnouncement(DropReason.EXPIRED)
            if ann.issued_at > now + o.max_skew:
                raise InvalidAnnouncement(DropReason.FUTURE)
            if self.registered is not None and ann.node_id.lower() not in self.registered:
                raise InvalidAnnouncement(DropReason.UNREGISTERED)
            latest = self._latest.get(ann.node_id.lower())
            if latest is not None and ann.issued_at_ms <= latest:
                raise InvalidAnnouncement(DropReason.REPLAYED)
            ann.verify()
        except InvalidAnnouncement as exc:
            return self._drop(exc.reason)
        self._latest[ann.node_id.lower()] = ann.issued_at_ms
        self.accepted += 1
        return Verdict(ann, None)

    def prune(self, now: float) -> None:
        """Forget what can no longer matter: refilled buckets, and replay records so old that
        anything not newer would be expired anyway (TTLs are capped at ``MAX_TTL``)."""
        self._pruned_at = now
        self._origins.prune(now)
        self._forwarders.prune(now)
        horizon_ms = (now - MAX_TTL) * 1000
        for node in [n for n, at in self._latest.items() if at < horizon_ms]:
            del self._latest[node]

    def _drop(self, reason: DropReason) -> Verdict:
        self.drops[reason.value] += 1
        return Verdict(None, reason)

    @property
    def dropped(self) -> int:
        return sum(self.drops.values())

    def __repr__(self) -> str:
        counted = " ".join(f"{k}={v}" for k, v in self.drops.items() if v)
        return (
            f"<AnnouncementValidator accepted={self.accepted} dropped={self.dropped}"
            f"{' ' + counted if counted else ''} nodes={len(self._latest)}>"
        )
