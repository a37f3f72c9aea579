from __future__ import annotations

import pytest

from sonm_p2p.auth import (
    RequestVerifier,
    check_owner,
    check_peer_grant,
    peer_grant,
    sign_request,
)
from sonm_p2p.errors import Busy, PermissionDenied, Unauthenticated
from sonm_p2p.identity import Identity

ALICE = Identity(bytes(range(1, 33)))
MALLORY = Identity(bytes(range(2, 34)))
NOW = 1_800_000_000.0


HUB = "0x" + "ab" * 20
OTHER_HUB = "0x" + "cd" * 20


def _headers(ident=ALICE, method="StopTask", payload=b"req", now=NOW, nonce="n0nce-0001", hub=HUB):
    return dict(sign_request(ident, method, payload, now, nonce, hub_id=hub))


def test_a_signed_request_names_its_signer():
    v = RequestVerifier(hub_id=HUB)
    assert v.verify("StopTask", b"req", _headers(), NOW + 1) == ALICE.node_id


@pytest.mark.parametrize(
    ("mutate", "message"),
    [
        (lambda h: {}, "must be signed"),
        (lambda h: h | {"sonm-client-id": MALLORY.node_id}, "does not match"),
        (lambda h: h | {"sonm-sig": "00" * 65}, "malformed|does not match"),
        (lambda h: h | {"sonm-sig": "zz"}, "must be signed"),
    ],
)
def test_forged_or_unsigned_requests_are_refused(mutate, message):
    with pytest.raises(Unauthenticated, match=message):
        RequestVerifier(hub_id=HUB).verify("StopTask", b"req", mutate(_headers()), NOW)


def test_signature_covers_method_and_payload():
    v = RequestVerifier(hub_id=HUB)
    with pytest.raises(Unauthenticated):
        v.verify("StartTask", b"req", _headers(), NOW)
    with pytest.raises(Unauthenticated):
        v.verify("StopTask", b"other", _headers(), NOW)


def test_stale_future_and_replayed_requests_are_refused():
    v = RequestVerifier(hub_id=HUB, max_skew=60)
    with pytest.raises(Unauthenticated, match="clock"):
        v.verify("StopTask", b"req", _headers(now=NOW - 61), NOW)
    with pytest.raises(Unauthenticated, match="clock"):
        v.verify("StopTask", b"req", _headers(now=NOW + 61), NOW)
    h = _headers()
    v.verify("StopTask", b"req", h, NOW)
    with pytest.raises(Unauthenticated, match="replayed"):
        v.verify("StopTask", b"req", h, NOW + 30)


def test_nonces_are_forgotten_only_after_they_could_no_longer_be_accepted():
    v = RequestVerifier(hub_id=HUB, max_skew=60)
    v.verify("StopTask", b"req", _headers(), NOW)
    v._forget(NOW + 119)
    assert len(v._seen) == 1
    v._forget(NOW + 121)
    assert len(v._seen) == 0


def test_owner_or_operator_only():
    check_owner(ALICE.node_id, ALICE.node_id, "0xhub", "stop it")
    check_owner("0xHUB", ALICE.node_id, "0xhub", "stop it")
    with pytest.raises(PermissionDenied, match="owner"):
        check_owner(MALLORY.node_id, ALICE.node_id, "0xhub", "stop it")


def test_a_request_signed_for_one_hub_is_refused_by_another():
    h = _headers(hub=OTHER_HUB)
    with pytest.raises(Unauthenticated, match="does not match"):
        RequestVerifier(hub_id=HUB).verify("StopTask", b"req", h, NOW)
    assert RequestVerifier(hub_id=OTHER_HUB).verify("StopTask", b"req", h, NOW) == ALICE.node_id


def test_a_flood_cannot_evict_a_nonce_that_could_still_be_replayed():
    v = RequestVerifier(hub_id=HUB, max_nonces=50)
    recorded = _headers(nonce="victim-nonce")
    v.verify("StopTask", b"req", recorded, NOW)
    flooders = [Identity(bytes([i]) * 32) for i in range(1, 12)]
    refused = 0
    for i in range(200):
        try:
            v.verify("StopTask", b"req", _headers(flooders[i % 11], nonce=f"flood-{i:04d}"), NOW)
        except Busy:
            refused += 1
    assert refused > 0  # the table filled up: refused, not evicted
    with pytest.raises(Unauthenticated, match="replayed"):
        v.verify("StopTask", b"req", recorded, NOW + 30)
    # Once the window has passed the table has room again.
    assert v.verify("StopTask", b"req", _headers(nonce="later-0001", now=NOW + 200), NOW + 200)


def test_one_signer_cannot_take_the_whole_table():
    v = RequestVerifier(hub_id=HUB, max_nonces=100)
    for i in range(10):
        v.verify("StopTask", b"req", _headers(MALLORY, nonce=f"mallory-{i:03d}"), NOW)
    with pytest.raises(Busy, match=MALLORY.node_id):
        v.verify("StopTask", b"req", _headers(MALLORY, nonce="mallory-999"), NOW)
    assert v.verify("StopTask", b"req", _headers(), NOW) == ALICE.node_id


PEER = "16Uiu2HAmProcessOfAlice"
MINER = "0x" + "ef" * 20


def test_a_peer_grant_names_the_key_that_gave_it():
    grant = peer_grant(ALICE, PEER, MINER)
    assert check_peer_grant(grant, peer_id=PEER, audience=MINER.upper()) == ALICE.node_id


@pytest.mark.parametrize(
    "grant, peer, audience",
    [
        (peer_grant(ALICE, PEER, MINER), "16Uiu2HAmSomeoneElse", MINER),  # copied by a peer
        (peer_grant(ALICE, PEER, MINER), PEER, HUB),  # shown to another node
        (MALLORY.node_id + ":" + peer_grant(ALICE, PEER, MINER).split(":")[1], PEER, MINER),
        (ALICE.node_id + ":zz", PEER, MINER),
        ("", PEER, MINER),
    ],
)
def test_a_peer_grant_holds_only_for_its_peer_node_and_signer(grant, peer, audience):
    with pytest.raises(Unauthenticated):
        check_peer_grant(grant, peer_id=peer, audience=audience)
