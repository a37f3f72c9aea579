"""HubAnnouncement: signing, encoding, and every way verification refuses one."""

from __future__ import annotations

import dataclasses
import random

import pytest

from sonm_p2p.discovery.announcement import (
    MAX_TTL,
    DropReason,
    HubAnnouncement,
    InvalidAnnouncement,
)
from sonm_p2p.identity import Identity

NOW = 1_700_000_000.0
HUB = Identity(bytes(range(1, 33)))
OTHER = Identity(bytes(range(2, 34)))


def peer_id_of(identity: Identity) -> str:
    from libp2p.peer.id import ID

    return ID.from_pubkey(identity.libp2p_key_pair().public_key).to_base58()


def make(identity: Identity = HUB, now: float = NOW, **kw) -> HubAnnouncement:
    fields = dict(
        peer_id=peer_id_of(identity),
        multiaddrs=("/ip4/10.0.0.1/tcp/10002/p2p/x",),
        grpc_endpoint="10.0.0.1:10001",
        version="0.1.0",
        miners_online=3,
        max_miners=10,
    )
    fields.update(kw)
    return HubAnnouncement.create(identity, now=now, **fields)


def reason_of(ann: HubAnnouncement) -> DropReason:
    with pytest.raises(InvalidAnnouncement) as info:
        ann.verify()
    return info.value.reason


def test_create_sign_encode_decode_verify():
    ann = make()
    assert ann.node_id == HUB.node_id
    assert ann.issued_at_ms == int(NOW * 1000)
    assert ann.expires_at == pytest.approx(NOW + 10)
    assert len(ann.signature) == 65
    back = HubAnnouncement.decode(ann.encode())
    assert back == ann
    back.verify()  # does not raise


def test_issue_time_in_milliseconds_survives_float_rounding():
    rng = random.Random(0)
    for _ in range(200):
        ms = rng.randrange(1_600_000_000_000, 1_900_000_000_000)
        ann = HubAnnouncement(node_id=HUB.node_id, peer_id="p", issued_at_ms=ms, ttl_ms=1)
        now = ann.issued_at
        assert round(now * 1000) == ms


def test_forged_signature_is_refused():
    # Someone else's key signs an announcement that claims to be the hub.
    genuine = make()
    unsigned = dataclasses.replace(genuine, signature=b"")
    forged = dataclasses.replace(genuine, signature=OTHER.sign(unsigned.signing_payload()))
    assert reason_of(forged) is DropReason.BAD_SIGNATURE


def test_garbage_signature_is_refused():
    ann = dataclasses.replace(make(), signature=b"\x01" * 65)
    assert reason_of(ann) is DropReason.BAD_SIGNATURE
    short = dataclasses.replace(make(), signature=b"\x01" * 64)
    assert reason_of(short) is DropReason.BAD_SIGNATURE


def test_unsigned_is_refused():
    ann = dataclasses.replace(make(), signature=b"")
    assert reason_of(ann) is DropReason.UNSIGNED


def test_node_id_and_peer_id_must_be_one_key():
    # Validly signed by the hub, but naming another node's peer ID.
    ann = make(peer_id=peer_id_of(OTHER))
    assert reason_of(ann) is DropReason.PEER_MISMATCH
    # A peer ID that is not even a peer ID.
    assert reason_of(make(peer_id="not-a-peer-id")) is DropReason.PEER_MISMATCH
    # An Ed25519 peer ID (libp2p's default key type) carries no Ethereum address.
    from libp2p.crypto.ed25519 import create_new_key_pair
    from libp2p.peer.id import ID

    ed = ID.from_pubkey(create_new_key_pair().public_key).to_base58()
    assert reason_of(make(peer_id=ed)) is DropReason.PEER_MISMATCH


FIELD_CHANGES = {
    "node_id": OTHER.node_id,
    "peer_id": peer_id_of(OTHER),
    "multiaddrs": ("/ip4/6.6.6.6/tcp/1/p2p/x",),
    "grpc_endpoint": "6.6.6.6:10001",
    "version": "9.9.9",
    "miners_online": 0,
    "max_miners": 1000,
    "issued_at_ms": int(NOW * 1000) + 60_000,
    "ttl_ms": 300_000,
}


@pytest.mark.parametrize("field", sorted(FIELD_CHANGES))
def test_every_field_is_covered_by_the_signature(field):
    tampered = dataclasses.replace(make(), **{field: FIELD_CHANGES[field]})
    # The signature catches it (before the node ID / peer ID check could).
    assert reason_of(tampered) is DropReason.BAD_SIGNATURE


def test_signing_payload_is_unambiguous():
    # Length prefixes: moving a boundary between adjacent strings changes the payload.
    base = HubAnnouncement(node_id=HUB.node_id, peer_id="p", issued_at_ms=1, ttl_ms=1)
    a = dataclasses.replace(base, multiaddrs=("ab", "c"))
    b = dataclasses.replace(base, multiaddrs=("a", "bc"))
    c = dataclasses.replace(base, grpc_endpoint="ab", version="c")
    d = dataclasses.replace(base, grpc_endpoint="a", version="bc")
    assert len({a.signing_payload(), b.signing_payload()}) == 2
    assert len({c.signing_payload(), d.signing_payload()}) == 2
    assert a.signing_payload() == dataclasses.replace(a).signing_payload()


def test_only_the_own_key_signs():
    with pytest.raises(ValueError):
        make().signed(OTHER)


@pytest.mark.parametrize(
    "change",
    [
        {"node_id": "hub"},
        {"node_id": ""},
        {"peer_id": ""},
        {"ttl_ms": 0},
        {"ttl_ms": -5},
        {"ttl_ms": int(MAX_TTL * 1000) + 1},
        {"issued_at_ms": 0},
        {"multiaddrs": tuple(f"/ip4/10.0.0.{i}/tcp/1" for i in range(33))},
        {"version": "x" * 2000},
    ],
)
def test_malformed_fields(change):
    ann = dataclasses.replace(make(), **change)
    assert reason_of(ann) is DropReason.MALFORMED


def test_undecodable_bytes():
    with pytest.raises(InvalidAnnouncement) as info:
        HubAnnouncement.decode(b"\xff\xff\xff\xff")
    assert info.value.reason is DropReason.UNDECODABLE


def test_random_bytes_never_raise_anything_else():
    rng = random.Random(0)
    good = make().encode()
    for i in range(500):
        if i % 2:
            data = bytes(rng.randrange(256) for _ in range(rng.randrange(200)))
        else:  # a few flipped bytes in a genuine message
            raw = bytearray(good)
            for _ in range(rng.randrange(1, 4)):
                raw[rng.randrange(len(raw))] = rng.randrange(256)
            data = bytes(raw)
        try:
            HubAnnouncement.decode(data).verify()
        except InvalidAnnouncement as exc:
            assert isinstance(exc.reason, DropReason)
        else:
            assert data == good  # only an unchanged message verifies


def test_repr_is_diagnostic():
    text = repr(make())
    assert HUB.node_id in text and "miners=3" in text and "ttl=10s" in text
