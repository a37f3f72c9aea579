"""The hub directory: a TTL table of verified hub announcements, and the policy to choose one.

Pure: time comes in as ``now`` (unix seconds); it trusts what it is given (the validator checked
signatures) and is not thread-safe (the gossip layer guards it with a lock and hands out copies).
"""

from __future__ import annotations

from collections.abc import Collection, Iterable
from dataclasses import dataclass, replace

from sonm_p2p.discovery.announcement import HubAnnouncement

__all__ = ["HubDirectory", "HubEntry"]

#: Weight of a new latency sample in the smoothed latency (exponentially weighted average).
LATENCY_ALPHA = 0.5


@dataclass(frozen=True)
class HubEntry:
    """A live hub as this node knows it: its newest announcement, and what we measured."""

    announcement: HubAnnouncement
    first_seen: float
    last_seen: float
    latency: float | None = None  # seconds, smoothed; None until measured

    @property
    def node_id(self) -> str:
        return self.announcement.node_id

    @property
    def peer_id(self) -> str:
        return self.announcement.peer_id

    @property
    def multiaddrs(self) -> tuple[str, ...]:
        return self.announcement.multiaddrs

    @property
    def grpc_endpoint(self) -> str:
        return self.announcement.grpc_endpoint

    @property
    def miners_online(self) -> int:
        return self.announcement.miners_online

    @property
    def expires_at(self) -> float:
        return self.announcement.expires_at

    @property
    def full(self) -> bool:
        """True when the hub announced a limit and has reached it."""
        a = self.announcement
        return a.max_miners > 0 and a.miners_online >= a.max_miners

    def __repr__(self) -> str:
        lat = "-" if self.latency is None else f"{self.latency * 1000:.1f}ms"
        return f"<HubEntry {self.node_id} miners={self.miners_online} latency={lat}>"


class HubDirectory:
    """Verified hub announcements by node ID, each kept until it expires."""

    def __init__(self, entries: Iterable[HubEntry] = ()) -> None:
        self._entries: dict[str, HubEntry] = {e.node_id.lower(): e for e in entries}

    def update(self, ann: HubAnnouncement, now: float) -> bool:
        """Record ``ann``; True when it is news (a new hub, or newer than what we had).

        An announcement not newer than the one held, or already expired at ``now``, changes
        nothing and returns False. The measured latency survives a newer announcement.
        """
        if now > ann.expires_at:
            return False
        key = ann.node_id.lower()
        old = self._entries.get(key)
        if old is None:
            self._entries[key] = HubEntry(ann, first_seen=now, last_seen=now)
            return True
        if ann.issued_at_ms <= old.announcement.issued_at_ms:
            return False
        self._entries[key] = replace(old, announcement=ann, last_seen=now)
        return True

    def expire(self, now: float) -> list[str]:
        """Forget every hub whose announcement has expired; return their node IDs."""
        gone = [e.node_id for e in self._entries.values() if now > e.expires_at]
        for node_id in gone:
            del self._entries[node_id.lower()]
        return gone

    def retain(self, node_ids: Collection[str]) -> list[str]:
        """Forget every hub whose node ID (lower case) is not in ``node_ids``; return them."""
        gone = [e.node_id for key, e in self._entries.items() if key not in node_ids]
        for node_id in gone:
            del self._entries[node_id.lower()]
        return gone

    def live(self, now: float) -> list[HubEntry]:
        """Hubs whose announcement is valid at ``now``, by node ID."""
        return sorted(
            (e for e in self._entries.values() if now <= e.expires_at),
            key=lambda e: e.node_id.lower(),
        )

    def get(self, node_id: str, now: float) -> HubEntry | None:
        """The live entry of ``node_id`` (any letter case), or None."""
        entry = self._entries.get(node_id.lower())
        if entry is None or now > entry.expires_at:
            return None
        return entry

    def record_latency(self, node_id: str, seconds: float) -> bool:
        """Fold a round-trip measurement into the hub's smoothed latency.

        Returns False (and records nothing) for a hub not in the table.
        """
        key = node_id.lower()
        entry = self._entries.get(key)
        if entry is None:
            return False
        smoothed = (
            seconds
            if entry.latency is None
            else LATENCY_ALPHA * seconds + (1 - LATENCY_ALPHA) * entry.latency
        )
        self._entries[key] = replace(entry, latency=smoothed)
        return True

    def choose(
        self, now: float, *, allow: set[str] | None = None, exclude: Collection[str] = ()
    ) -> HubEntry | None:
        """The hub to use, or None when no live hub qualifies.

        ``allow``: when not None, only these node IDs qualify (the operator's allow-list; an
        empty set allows none). ``exclude``: node IDs to skip (say, hubs that just failed).
        Node IDs compare case-insensitively. Among the rest: hubs not full first, then the
        lowest measured latency (unmeasured hubs after measured ones), then the fewest miners,
        then the node ID (so the choice is deterministic).
        """
        allowed = None if allow is None else {a.lower() for a in allow}
        excluded = {x.lower() for x in exclude}
        candidates = [
            e
            for e in self.live(now)
            if (allowed is None or e.node_id.lower() in allowed)
            and e.node_id.lower() not in excluded
        ]
        if not candidates:
            return None
        return min(candidates, key=_preference)

    def copy(self) -> HubDirectory:
        return HubDirectory(self._entries.values())

    def __len__(self) -> int:
        return len(self._entries)

    def __contains__(self, node_id: object) -> bool:
        return isinstance(node_id, str) and node_id.lower() in self._entries

    def __repr__(self) -> str:
        hubs = ", ".join(
            f"{e.node_id[:10]}…(m={e.miners_online}"
            f"{'' if e.latency is None else f' {e.latency * 1000:.0f}ms'})"
            for e in sorted(self._entries.values(), key=_preference)
        )
        return f"<HubDirectory {len(self._entries)} hubs{': ' + hubs if hubs else ''}>"


def _preference(e: HubEntry) -> tuple[bool, bool, float, int, str]:
    return (
        e.full,
        e.latency is None,
        e.latency if e.latency is not None else 0.0,
        e.miners_online,
        e.node_id.lower(),
    )
