"""The hub-topic validator, with explicit time: every drop reason, replay, skew, throttling."""

from __future__ import annotations

import dataclasses
import random

import pytest

from sonm_p2p.discovery.announcement import MAX_TTL, DropReason, HubAnnouncement
from sonm_p2p.discovery.validator import (
    AnnouncementValidator,
    TokenBuckets,
    ValidatorOptions,
)
from sonm_p2p.identity import Identity

NOW = 1_700_000_000.0
HUB = Identity(bytes(range(1, 33)))
HUB2 = Identity(bytes(range(3, 35)))
OTHER = Identity(bytes(range(2, 34)))
_PEER_IDS: dict[bytes, str] = {}


def peer_id_of(identity: Identity) -> str:
    if identity.private_key not in _PEER_IDS:
        from libp2p.peer.id import ID

        pub = identity.libp2p_key_pair().public_key
        _PEER_IDS[identity.private_key] = ID.from_pubkey(pub).to_base58()
    return _PEER_IDS[identity.private_key]


def ann(identity: Identity = HUB, at: float = NOW, **kw) -> HubAnnouncement:
    kw.setdefault("peer_id", peer_id_of(identity))
    return HubAnnouncement.create(identity, now=at, grpc_endpoint="10.0.0.1:10001", **kw)


def wire(identity: Identity = HUB, at: float = NOW, **kw) -> bytes:
    return ann(identity, at, **kw).encode()


def forged(at: float = NOW) -> bytes:
    genuine = ann(HUB, at)
    bad = OTHER.sign(dataclasses.replace(genuine, signature=b"").signing_payload())
    return dataclasses.replace(genuine, signature=bad).encode()


def counted(v: AnnouncementValidator) -> dict[str, int]:
    return {k: n for k, n in v.drops.items() if n}


def test_accepts_a_good_announcement():
    v = AnnouncementValidator()
    verdict = v.check(wire(), now=NOW, origin="o", forwarder="f")
    assert verdict and verdict.reason is None
    assert verdict.announcement.node_id == HUB.node_id
    assert v.accepted == 1 and v.dropped == 0
    assert set(v.drops) == {r.value for r in DropReason}  # every reason listed, at zero


def test_every_drop_reason_is_counted_never_raised():
    v = AnnouncementValidator(ValidatorOptions(origin_burst=1, origin_rate=0.001))
    cases = [
        (b"\xff" * 10, DropReason.UNDECODABLE),
        (b"x" * 5000, DropReason.OVERSIZED),
        (dataclasses.replace(ann(), ttl_ms=0).encode(), DropReason.MALFORMED),
        (dataclasses.replace(ann(), signature=b"").encode(), DropReason.UNSIGNED),
        (forged(), DropReason.BAD_SIGNATURE),
        (wire(peer_id=peer_id_of(OTHER)), DropReason.PEER_MISMATCH),
        (wire(at=NOW - 11), DropReason.EXPIRED),
        (wire(at=NOW + 6), DropReason.FUTURE),
    ]
    for data, reason in cases:
        verdict = v.check(data, now=NOW)
        assert not verdict and verdict.reason is reason, reason
    assert v.check(wire(), now=NOW)
    assert v.check(wire(), now=NOW).reason is DropReason.REPLAYED
    assert v.check(wire(HUB2), now=NOW, origin="flooder")
    assert v.check(wire(HUB2, NOW + 1), now=NOW, origin="flooder").reason is DropReason.THROTTLED
    v.registered = frozenset({HUB.node_id.lower(), HUB2.node_id.lower()})  # a registry required
    assert v.check(wire(OTHER), now=NOW).reason is DropReason.UNREGISTERED
    assert counted(v) == {r.value: 1 for r in DropReason}
    assert v.accepted == 2
    assert "dropped=11" in repr(v)


def test_replay_same_or_older_is_dropped_newer_accepted():
    v = AnnouncementValidator()
    first, older, newer = wire(at=NOW), wire(at=NOW - 1), wire(at=NOW + 1)
    assert v.check(first, now=NOW)
    assert v.check(first, now=NOW + 0.5).reason is DropReason.REPLAYED
    assert v.check(older, now=NOW + 0.5).reason is DropReason.REPLAYED
    assert v.check(newer, now=NOW + 1)
    assert v.check(first, now=NOW + 1).reason is DropReason.REPLAYED
    # Each node has its own record.
    assert v.check(wire(HUB2, at=NOW - 1), now=NOW + 1)


def test_a_forgery_dated_far_ahead_does_not_lock_the_hub_out():
    # Only verified announcements move the replay record: a forged one from "the future" (within
    # the skew) must not make the hub's real, older-dated announcements look like replays.
    v = AnnouncementValidator()
    assert v.check(forged(at=NOW + 4), now=NOW).reason is DropReason.BAD_SIGNATURE
    assert v.check(wire(at=NOW), now=NOW)


def test_clock_skew_boundary():
    v = AnnouncementValidator(ValidatorOptions(max_skew=5.0))
    assert v.check(wire(at=NOW + 4.999), now=NOW)
    assert v.check(wire(HUB2, at=NOW + 5.001), now=NOW).reason is DropReason.FUTURE
    assert v.check(wire(HUB2, at=NOW + 5.001), now=NOW + 0.002)


def test_expiry_boundary():
    v = AnnouncementValidator()
    data = wire(at=NOW, ttl=10)
    assert v.check(data, now=NOW + 10.001).reason is DropReason.EXPIRED
    assert v.check(data, now=NOW + 10.0)


def test_size_limit_is_an_option():
    data = wire(version="v" * 600)
    assert AnnouncementValidator(ValidatorOptions(max_bytes=len(data))).check(data, now=NOW)
    small = AnnouncementValidator(ValidatorOptions(max_bytes=len(data) - 1))
    assert small.check(data, now=NOW).reason is DropReason.OVERSIZED


def test_origin_is_throttled_then_refills():
    opts = ValidatorOptions(origin_rate=1.0, origin_burst=3)
    v = AnnouncementValidator(opts)
    t = NOW
    results = [bool(v.check(wire(at=t + i * 0.001), now=t, origin="o")) for i in range(5)]
    assert results == [True, True, True, False, False]
    assert v.drops["throttled"] == 2
    # Another origin is not affected; our own messages (origin "") are never throttled.
    assert v.check(wire(HUB2, at=t), now=t, origin="o2")
    assert v.check(wire(at=t + 0.01), now=t)
    # One second later, one more token.
    assert v.check(wire(at=t + 0.02), now=t + 1.0, origin="o")
    assert v.check(wire(at=t + 0.03), now=t + 1.0, origin="o").reason is DropReason.THROTTLED


def test_a_flooding_forwarder_is_throttled_before_any_work():
    v = AnnouncementValidator(ValidatorOptions(forwarder_rate=10, forwarder_burst=20))
    junk = b"\xff" * 100
    verdicts = [v.check(junk, now=NOW, forwarder="bad").reason for _ in range(100)]
    assert verdicts.count(DropReason.UNDECODABLE) == 20
    assert verdicts.count(DropReason.THROTTLED) == 80
    # A good neighbour still gets through.
    assert v.check(wire(), now=NOW, forwarder="good")


def test_token_buckets():
    b = TokenBuckets(rate=2.0, burst=2)
    assert [b.allow("k", 0.0) for _ in range(3)] == [True, True, False]
    assert b.allow("k", 0.5)  # 1 token back after 0.5 s at 2/s
    assert not b.allow("k", 0.5)
    # A clock stepping back neither mints nor loses tokens.
    assert not b.allow("k", 0.2)
    assert b.allow("k", 1.0)
    b.allow("other", 1.0)
    assert len(b) == 2
    b.prune(1.2)  # "other" is refilled at 1.5, "k" at 2.0
    assert len(b) == 2
    b.prune(1.6)
    assert len(b) == 1
    b.prune(5.0)
    assert len(b) == 0
    with pytest.raises(ValueError):
        TokenBuckets(rate=0, burst=1)


def test_replay_records_are_forgotten_only_when_harmless():
    v = AnnouncementValidator()
    data = wire(at=NOW)
    assert v.check(data, now=NOW)
    v.prune(NOW + MAX_TTL - 1)
    assert v.check(data, now=NOW + 5).reason is DropReason.REPLAYED
    v.prune(NOW + MAX_TTL + 1)
    assert "nodes=0" in repr(v)
    # Whatever could replay it now is expired anyway (TTLs are capped at MAX_TTL).
    assert v.check(data, now=NOW + MAX_TTL + 1).reason is DropReason.EXPIRED


def test_randomised_stream_never_raises_and_counts_everything():
    rng = random.Random(0)
    hubs = [Identity(bytes([i + 1]) * 32) for i in range(4)]
    good = {h.node_id: [ann(h, NOW + k).encode() for k in range(6)] for h in hubs}
    v = AnnouncementValidator(ValidatorOptions(origin_burst=3, origin_rate=0.5))
    now, total, newest = NOW, 0, {h.node_id: 0.0 for h in hubs}
    for _ in range(400):
        now += rng.random() * 0.5
        h = rng.choice(hubs)
        k = rng.randrange(6)
        data = good[h.node_id][k]
        roll = rng.random()
        if roll < 0.2:
            raw = bytearray(data)
            raw[rng.randrange(len(raw))] ^= 1 << rng.randrange(8)
            data = bytes(raw)
        elif roll < 0.25:
            data = bytes(rng.randrange(256) for _ in range(rng.randrange(6000)))
        verdict = v.check(data, now=now, origin=rng.choice(["a", "b", "c", ""]))
        total += 1
        if verdict:
            a = verdict.announcement
            # Accepted: genuine, fresh, and newer than anything accepted from that hub before.
            assert a.issued_at > newest[a.node_id]
            assert now <= a.expires_at and a.issued_at <= now + 5
            newest[a.node_id] = a.issued_at
    assert v.accepted + v.dropped == total
    assert v.accepted > 0 and v.drops["replayed"] > 0 and v.drops["throttled"] > 0
