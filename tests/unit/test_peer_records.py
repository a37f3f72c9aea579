"""The signed peer record in every pubsub RPC is checked once per peer and made once per host
(discovery/_peer_records.py), with fakes for py-libp2p's two functions."""

from __future__ import annotations

from dataclasses import dataclass

from sonm_p2p.discovery._peer_records import (
    OWN_RECORD_TTL,
    REFRESH,
    RecordCache,
    cached_consume,
    cached_own,
    install,
)


@dataclass
class Rpc:
    senderRecord: bytes = b""  # noqa: N815 - the protobuf field's name

    def HasField(self, name: str) -> bool:  # noqa: N802 - protobuf's name
        return name == "senderRecord" and bool(self.senderRecord)


class Host:
    """Stands for a libp2p host (a cache key, weakly held)."""


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_record_cache_is_fresh_for_the_same_bytes_from_the_same_peer_until_refresh():
    cache = RecordCache(refresh=60.0)
    assert not cache.fresh("p", b"r1", 0.0)
    cache.accepted("p", b"r1", 0.0)
    assert cache.fresh("p", b"r1", 59.9)
    assert not cache.fresh("p", b"r1", 60.0)  # refreshed from time to time
    assert not cache.fresh("p", b"r2", 1.0)  # a new record (new addresses): checked
    assert not cache.fresh("q", b"r1", 1.0)  # another peer's copy: checked
    assert not cache.fresh("p", b"r1", -1.0)  # a clock that stepped back: checked


def test_record_cache_is_bounded():
    cache = RecordCache(size=3)
    for peer in "abcd":
        cache.accepted(peer, b"r", 0.0)
    assert len(cache) <= 3
    assert cache.fresh("d", b"r", 0.0)


def test_a_record_is_verified_once_per_peer_and_host_not_once_per_rpc():
    calls: list[tuple[bytes, object, str]] = []
    verdict = {b"good": True, b"forged": False}

    def consume(rpc: Rpc, host: object, peer: str) -> bool:
        calls.append((rpc.senderRecord, host, peer))
        return verdict.get(rpc.senderRecord, True)

    clock = Clock()
    check = cached_consume(consume, clock)
    h1, h2 = Host(), Host()
    assert all(check(Rpc(b"good"), h1, "p") for _ in range(100))
    assert len(calls) == 1
    assert check(Rpc(b"good"), h2, "p")  # another host has a peerstore of its own
    assert check(Rpc(b"good"), h1, "q")  # the same bytes from another peer
    assert len(calls) == 3
    # A record that fails is checked (and refused) every time, never remembered.
    assert not check(Rpc(b"forged"), h1, "p")
    assert not check(Rpc(b"forged"), h1, "p")
    assert len(calls) == 5
    # RPCs without a record are accepted without a call, as py-libp2p does.
    assert check(Rpc(), h1, "p")
    assert len(calls) == 5
    clock.now += REFRESH
    assert check(Rpc(b"good"), h1, "p")
    assert len(calls) == 6


def test_own_record_is_made_at_most_once_per_ttl_per_host():
    made: list[object] = []

    def own(host: object) -> tuple[bytes, bool]:
        made.append(host)
        return f"record{len(made)}".encode(), True

    clock = Clock()
    envelope = cached_own(own, clock)
    h1, h2 = Host(), Host()
    assert envelope(h1) == (b"record1", True)
    assert envelope(h1) == (b"record1", False)
    assert envelope(h2) == (b"record2", True)
    clock.now += OWN_RECORD_TTL
    assert envelope(h1) == (b"record3", True)
    assert len(made) == 3


def test_install_wraps_what_py_libp2p_pubsub_calls_once():
    from libp2p.pubsub import gossipsub, pubsub

    install()
    first = (pubsub.maybe_consume_signed_record, gossipsub.env_to_send_in_RPC)
    install()
    assert (pubsub.maybe_consume_signed_record, gossipsub.env_to_send_in_RPC) == first
    for module in (pubsub, gossipsub):
        assert hasattr(module.maybe_consume_signed_record, "__wrapped__")
        assert hasattr(module.env_to_send_in_RPC, "__wrapped__")
        assert not hasattr(module.maybe_consume_signed_record.__wrapped__, "__wrapped__")
