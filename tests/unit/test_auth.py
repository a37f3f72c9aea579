from __future__ import annotations

import pytest

from sonm_p2p.auth import RequestVerifier, check_owner, sign_request
from sonm_p2p.errors import PermissionDenied, Unauthenticated
from sonm_p2p.identity import Identity

ALICE = Identity(bytes(range(1, 33)))
MALLORY = Identity(bytes(range(2, 34)))
NOW = 1_800_000_000.0


def _headers(ident=ALICE, method="StopTask", payload=b"req", now=NOW, nonce="n0nce-0001"):
    return dict(sign_request(ident, method, payload, now, nonce))


def test_a_signed_request_names_its_signer():
    v = RequestVerifier()
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
        RequestVerifier().verify("StopTask", b"req", mutate(_headers()), NOW)


def test_signature_covers_method_and_payload():
    v = RequestVerifier()
    with pytest.raises(Unauthenticated):
        v.verify("StartTask", b"req", _headers(), NOW)
    with pytest.raises(Unauthenticated):
        v.verify("StopTask", b"other", _headers(), NOW)


def test_stale_future_and_replayed_requests_are_refused():
    v = RequestVerifier(max_skew=60)
    with pytest.raises(Unauthenticated, match="clock"):
        v.verify("StopTask", b"req", _headers(now=NOW - 61), NOW)
    with pytest.raises(Unauthenticated, match="clock"):
        v.verify("StopTask", b"req", _headers(now=NOW + 61), NOW)
    h = _headers()
    v.verify("StopTask", b"req", h, NOW)
    with pytest.raises(Unauthenticated, match="replayed"):
        v.verify("StopTask", b"req", h, NOW + 30)


def test_nonces_are_forgotten_only_after_they_could_no_longer_be_accepted():
    v = RequestVerifier(max_skew=60)
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
