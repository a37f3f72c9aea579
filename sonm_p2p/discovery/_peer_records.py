"""The signed peer record py-libp2p's pubsub puts in every RPC: made once, checked once.

py-libp2p 0.8.1 attaches the sending host's signed peer record (an Envelope: its addresses,
signed with its key) to every pubsub RPC it sends, and the receiver verifies the signature and
rewrites the peer's addresses in its peerstore for every RPC it reads: a secp256k1 verification
per copy of every message, duplicates included. On the sending side it lists the host's
addresses anew for each RPC to see whether the record is still current. In a profile of 30 hubs
in one process (docs/SCALING.md) the two were 12 % of the busy samples, as much as the
announcements' own signature checks.

:func:`install` wraps both where pubsub calls them (``libp2p.pubsub.pubsub`` and
``libp2p.pubsub.gossipsub``): a record byte-for-byte equal to one already accepted from the same
peer over the same host is taken as accepted again (equal bytes carry the same valid signature;
the peerstore is refreshed every ``REFRESH`` seconds all the same), and a host's own record is
reused for ``OWN_RECORD_TTL`` seconds before its addresses are listed again. Identify, which
exchanges the records once per connection, is left alone.
"""

from __future__ import annotations

import time
import weakref
from collections.abc import Callable
from typing import Any

__all__ = ["OWN_RECORD_TTL", "REFRESH", "RecordCache", "cached_consume", "cached_own", "install"]

#: Seconds an accepted record is taken as accepted again without a check.
REFRESH = 60.0
#: Seconds a host's own record is reused before its addresses are listed again.
OWN_RECORD_TTL = 5.0


class RecordCache:
    """Which signed peer records one host has accepted: peer -> (record bytes, when).

    Pure: time comes in as ``now``. Holds at most ``size`` peers (then starts over).
    """

    def __init__(self, refresh: float = REFRESH, size: int = 4096) -> None:
        self.refresh = refresh
        self.size = size
        self._accepted: dict[Any, tuple[bytes, float]] = {}

    def fresh(self, peer: Any, record: bytes, now: float) -> bool:
        """Whether ``record`` from ``peer`` was accepted within ``refresh`` seconds of ``now``."""
        got = self._accepted.get(peer)
        return got is not None and got[0] == record and 0 <= now - got[1] < self.refresh

    def accepted(self, peer: Any, record: bytes, now: float) -> None:
        if len(self._accepted) >= self.size and peer not in self._accepted:
            self._accepted.clear()
        self._accepted[peer] = (record, now)

    def __len__(self) -> int:
        return len(self._accepted)

    def __repr__(self) -> str:
        return f"<RecordCache peers={len(self)} refresh={self.refresh:g}s>"


Consume = Callable[[Any, Any, Any], bool]
Own = Callable[[Any], tuple[bytes, bool]]


def cached_consume(
    consume: Consume, clock: Callable[[], float] = time.monotonic
) -> Callable[[Any, Any, Any], bool]:
    """``maybe_consume_signed_record(rpc, host, peer_id)`` that calls ``consume`` only for a
    record not accepted from that peer over that host in the last ``REFRESH`` seconds."""
    caches: weakref.WeakKeyDictionary[Any, RecordCache] = weakref.WeakKeyDictionary()

    def maybe_consume_signed_record(rpc: Any, host: Any, peer_id: Any) -> bool:
        if not rpc.HasField("senderRecord"):
            return True
        record, now = rpc.senderRecord, clock()
        cache = caches.get(host)
        if cache is None:
            cache = caches[host] = RecordCache()
        if cache.fresh(peer_id, record, now):
            return True
        ok = consume(rpc, host, peer_id)
        if ok:
            cache.accepted(peer_id, record, now)
        return ok

    maybe_consume_signed_record.__wrapped__ = consume  # type: ignore[attr-defined]
    return maybe_consume_signed_record


def cached_own(
    own: Own, clock: Callable[[], float] = time.monotonic
) -> Callable[[Any], tuple[bytes, bool]]:
    """``env_to_send_in_RPC(host)`` that asks ``own`` at most once per ``OWN_RECORD_TTL``."""
    made: weakref.WeakKeyDictionary[Any, tuple[bytes, float]] = weakref.WeakKeyDictionary()

    def env_to_send_in_RPC(host: Any) -> tuple[bytes, bool]:  # noqa: N802 - py-libp2p's name
        now = clock()
        got = made.get(host)
        if got is not None and 0 <= now - got[1] < OWN_RECORD_TTL:
            return got[0], False
        record, new = own(host)
        made[host] = (record, now)
        return record, new

    env_to_send_in_RPC.__wrapped__ = own  # type: ignore[attr-defined]
    return env_to_send_in_RPC


def install() -> None:
    """Wrap py-libp2p pubsub's two calls (idempotent; before any Pubsub runs)."""
    from libp2p.pubsub import gossipsub, pubsub

    for module in (pubsub, gossipsub):
        if not hasattr(module.maybe_consume_signed_record, "__wrapped__"):
            module.maybe_consume_signed_record = cached_consume(module.maybe_consume_signed_record)
        if not hasattr(module.env_to_send_in_RPC, "__wrapped__"):
            module.env_to_send_in_RPC = cached_own(module.env_to_send_in_RPC)
