"""Bounds on what unsigned callers can hold open on a hub (long-lived streams)."""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Iterator
from dataclasses import dataclass

from sonm_p2p.discovery.validator import TokenBuckets
from sonm_p2p.errors import Busy

__all__ = ["RateLimit", "StreamBudget", "StreamLimits", "client_of"]


@dataclass(frozen=True, kw_only=True)
class StreamLimits:
    """How many streams (``WatchTask``, ``TaskLogs``) may be open at once.

    total: over all callers; defaults to 4096.
    per_client: from one caller's address; defaults to 1024. Clients that come over the overlay
        arrive through the hub's own loopback splice and so share one address.
    """

    total: int = 4096
    per_client: int = 1024


def client_of(peer: str) -> str:
    """The caller's address (without port) from a gRPC ``context.peer()`` string such as
    ``ipv4:127.0.0.1:5000`` or ``ipv6:[::1]:5000``."""
    kind, _, rest = peer.partition(":")
    if kind in ("ipv4", "ipv6"):
        return rest.rsplit(":", 1)[0].strip("[]")
    return peer


class StreamBudget:
    """Counts open streams by caller; :meth:`hold` refuses one over a limit with Busy."""

    def __init__(self, limits: StreamLimits) -> None:
        self.limits = limits
        self._lock = threading.Lock()
        self._open: dict[str, int] = {}
        self._total = 0

    def __repr__(self) -> str:
        return f"<StreamBudget {self._total}/{self.limits.total} clients={len(self._open)}>"

    @property
    def total(self) -> int:
        return self._total

    @contextlib.contextmanager
    def hold(self, client: str) -> Iterator[None]:
        with self._lock:
            mine = self._open.get(client, 0)
            if self._total >= self.limits.total:
                raise Busy(f"this hub serves {self.limits.total} streams already; try later")
            if mine >= self.limits.per_client:
                raise Busy(
                    f"{client} has {self.limits.per_client} streams open on this hub already; "
                    "close some or try later"
                )
            self._open[client] = mine + 1
            self._total += 1
        try:
            yield
        finally:
            with self._lock:
                self._total -= 1
                left = self._open[client] - 1
                if left:
                    self._open[client] = left
                else:
                    del self._open[client]  # no entry lingers per caller that came once


class RateLimit:
    """:class:`~sonm_p2p.discovery.validator.TokenBuckets` per key (a client's node ID or
    address), thread-safe, answering how long to wait: ``rate`` per second, bursts of ``burst``.
    Keys whose bucket is full again are forgotten once many are held."""

    def __init__(self, rate: float, burst: int) -> None:
        self._buckets = TokenBuckets(rate, burst)
        self._lock = threading.Lock()

    def __repr__(self) -> str:
        return f"<RateLimit {self._buckets!r}>"

    def take(self, key: str, now: float) -> float:
        """Take one token for ``key``: 0.0 when allowed, else the seconds until one is."""
        with self._lock:
            if len(self._buckets) > 4096:
                self._buckets.prune(now)
            if self._buckets.allow(key, now):
                return 0.0
            return self._buckets.retry_after(key, now)
