"""How often a hub announces itself, and how long each announcement lives.

Pure: the size of the overlay comes in as ``hubs`` (the live hubs in the node's directory).

Every hub takes in every other hub's announcements, each about ``D - 1`` times (GossipSub's mesh
degree), so a hub's gossip work is ``hubs / interval`` messages a second: at a fixed 3 s, it
grows with the overlay (100 hubs: 33 a second, each a few Noise frames in Python; see
docs/SCALING.md). With the interval ``auto``, it grows with the overlay instead
(:func:`auto_interval`): 3 s up to 10 hubs, then 0.3 s per hub, so the overlay as a whole
carries at most ~3.3 announcements a second and each hub's gossip work stays flat as hubs join;
what grows is how stale a hub's load figure may be (100 hubs: 30 s). An announcement lives
for 10/3 of its interval (:func:`announce_ttl`): two may be lost before a hub drops out of its
peers' directories.

The hubs counted are the most seen live in the last 10 minutes (:class:`HubCountPeak`), not those
live now: a hub falling behind (a loaded machine) lets announcements expire, and announcing
faster because of it would load every hub more (in a 100-hub run on a machine taken by other
work, hubs that knew 18 others announced every 5 s instead of 30).
"""

from __future__ import annotations

from collections import deque

from sonm_p2p.discovery.announcement import DEFAULT_TTL, MAX_TTL

__all__ = [
    "AUTO_FLOOR",
    "AUTO_PER_HUB",
    "HubCountPeak",
    "announce_ttl",
    "auto_interval",
    "interval_for",
]

#: Shortest automatic interval, seconds (that of a small overlay).
AUTO_FLOOR = 3.0
#: Seconds of automatic interval per live hub: the overlay carries ~1/AUTO_PER_HUB a second.
AUTO_PER_HUB = 0.3
#: TTL over interval: an announcement outlives two lost ones.
TTL_PER_INTERVAL = 10 / 3
#: Longest interval whose TTL a receiver accepts (``MAX_TTL``).
MAX_INTERVAL = MAX_TTL / TTL_PER_INTERVAL


def auto_interval(hubs: int) -> float:
    """The automatic interval for an overlay of ``hubs`` live hubs (this one included)."""
    return min(MAX_INTERVAL, max(AUTO_FLOOR, AUTO_PER_HUB * hubs))


def interval_for(fixed: float | None, hubs: int) -> float:
    """``fixed`` when set (capped at what a TTL allows), else :func:`auto_interval`."""
    if fixed is None:
        return auto_interval(hubs)
    return min(MAX_INTERVAL, fixed)


def announce_ttl(interval: float) -> float:
    """Lifetime of an announcement made every ``interval`` seconds: 10/3 of it, at least
    ``DEFAULT_TTL`` (10 s, that of the 3 s default) and at most ``MAX_TTL``."""
    return min(MAX_TTL, max(DEFAULT_TTL, interval * TTL_PER_INTERVAL))


class HubCountPeak:
    """The largest count of live hubs noted in the last ``window`` seconds (default 10 min).

    Pure: time comes in as ``now`` (any monotonic clock).
    """

    def __init__(self, window: float = 600.0) -> None:
        self.window = window
        self._seen: deque[tuple[float, int]] = deque()

    def note(self, hubs: int, now: float) -> int:
        """Record ``hubs`` live at ``now``; return the most noted within the window."""
        self._seen.append((now, hubs))
        while self._seen and self._seen[0][0] < now - self.window:
            self._seen.popleft()
        return max(n for _, n in self._seen)

    def __repr__(self) -> str:
        peak = max((n for _, n in self._seen), default=0)
        return f"<HubCountPeak {peak} in {self.window:g}s, {len(self._seen)} notes>"
