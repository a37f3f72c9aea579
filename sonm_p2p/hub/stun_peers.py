"""The STUN endpoints of other hubs this hub knows from discovery.

A hub on its defaults answers STUN on one IP and two ports: that tells a symmetric NAT (a mapping
per destination port) from one that keeps its mapping, not an address-dependent NAT from an
endpoint-independent one, which takes a responder on another IP. Other hubs are such responders:
the hub asks each one it knows for its STUN endpoint (its ``Info``; announcements do not carry
it), remembers the answer (or its absence) for ``ttl`` seconds, and names them to its clients
(``Info.stun_endpoints``) and miners (``Handshake``) after its own.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Iterable
from typing import Protocol

__all__ = ["StunPeers"]

log = logging.getLogger(__name__)


class _Hub(Protocol):
    """What a discovery entry gives (``discovery.HubEntry``)."""

    @property
    def node_id(self) -> str: ...
    @property
    def peer_id(self) -> str: ...
    @property
    def grpc_endpoint(self) -> str: ...


class StunPeers:
    """Other hubs' STUN endpoints by peer ID, each asked once per ``ttl`` (thread-safe).

    ask: ``ask(grpc_endpoint) -> stun endpoint`` ("" when the hub runs none); raises on failure
        (remembered as none: a hub that does not answer is not asked again before ``ttl``).
    ttl: seconds an answer is kept; defaults to 600.
    limit: other hubs' endpoints :meth:`known` returns at most; defaults to 2 (each one a client
        probes costs it a round trip, or a transaction timeout when it does not answer).
    """

    def __init__(
        self,
        ask: Callable[[str], str],
        *,
        ttl: float = 600.0,
        limit: int = 2,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._ask = ask
        self.ttl = ttl
        self.limit = limit
        self._clock = clock
        self._lock = threading.Lock()
        self._known: dict[str, tuple[float, str]] = {}  # peer ID -> (when asked, endpoint)

    def __repr__(self) -> str:
        found = sum(1 for _, ep in self._known.values() if ep)
        return f"<StunPeers asked={len(self._known)} with-stun={found}>"

    def endpoint(self, hub: _Hub) -> str:
        """``hub``'s STUN endpoint, asked now (blocking) unless known; "" for none."""
        with self._lock:
            seen = self._known.get(hub.peer_id)
        if seen is not None and self._clock() - seen[0] < self.ttl:
            return seen[1]
        endpoint = ""
        if hub.grpc_endpoint:
            try:
                endpoint = self._ask(hub.grpc_endpoint)
            except Exception as exc:  # any failure: no endpoint from it for a while
                log.info("hub %s: no STUN endpoint: %s", hub.node_id, exc)
        with self._lock:
            self._known[hub.peer_id] = (self._clock(), endpoint)
        return endpoint

    def refresh(self, hubs: Iterable[_Hub], *, besides: Iterable[str] = ()) -> None:
        """Ask hubs whose answer is unknown or older than ``ttl`` (blocking), one at a time,
        until :meth:`known` has ``limit`` of them: a hub among many asks a few, not all."""
        hubs, besides = list(hubs), list(besides)
        for hub in hubs:
            if len(self.known(hubs, besides=besides)) >= self.limit:
                return
            self.endpoint(hub)

    def known(self, hubs: Iterable[_Hub], *, besides: Iterable[str] = ()) -> list[str]:
        """The endpoints already known of ``hubs`` (never asks), at most ``limit``, one per
        IP and none on the IPs of ``besides`` (``host:port`` strings: the hub's own)."""
        hosts = {e.rsplit(":", 1)[0] for e in besides}
        out: list[str] = []
        now = self._clock()
        with self._lock:
            for hub in hubs:
                seen = self._known.get(hub.peer_id)
                if seen is None or not seen[1] or now - seen[0] >= self.ttl:
                    continue
                host = seen[1].rsplit(":", 1)[0]
                if host not in hosts:
                    hosts.add(host)
                    out.append(seen[1])
                if len(out) >= self.limit:
                    break
        return out
