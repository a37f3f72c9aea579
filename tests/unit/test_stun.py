"""STUN's pure parts: codec, responder answers, NAT classification. No sockets."""

from __future__ import annotations

import random
import struct

import pytest

from sonm_p2p.transport.stun import (
    Filtering,
    NatReport,
    NatType,
    Observation,
    ResponderAddresses,
    StunError,
    answer,
    classify_filtering,
    classify_mapping,
    decode_response,
    encode_request,
    not_told_apart,
)

TID = bytes.fromhex("b7e7a701bc34d686fa87dfae")
# RFC 5769 section 2.2 and 2.3: sample Binding responses (SOFTWARE, XOR-MAPPED-ADDRESS,
# MESSAGE-INTEGRITY, FINGERPRINT), as printed in the RFC.
RFC5769_V4 = bytes.fromhex(
    "0101003c2112a442b7e7a701bc34d686fa87dfae8022000b74657374207665"
    "63746f7220002000080001a147e112a643000800142b91f599fd9e90c38c74"
    "89f92af9ba53f06be7d780280004c07d4c96"
)
RFC5769_V6 = bytes.fromhex(
    "010100482112a442b7e7a701bc34d686fa87dfae8022000b74657374207665"
    "63746f7220002000140002a1470113a9faa5d3f179bc25f4b5bed2b9d90008"
    "0014a382954e4be67bf11784c97c8292c275bfe3ed4180280004c8fb0b4c"
)

ONE = ResponderAddresses(("203.0.113.10", 3478))
FOUR = ResponderAddresses(("203.0.113.10", 3478), ("198.51.100.10", 3479))
CLIENT = ("203.0.113.11", 40001)


def test_rfc5769_vectors_decode():
    v4 = decode_response(RFC5769_V4)
    assert v4.transaction_id == TID
    assert v4.mapped == ("192.0.2.1", 32853)
    assert v4.software == "test vector"
    assert v4.error is None
    v6 = decode_response(RFC5769_V6)
    assert v6.mapped == ("2001:db8:1234:5678:11:2233:4455:6677", 32853)


def test_corrupted_fingerprint_is_refused():
    bad = RFC5769_V4[:-1] + bytes([RFC5769_V4[-1] ^ 1])
    with pytest.raises(StunError, match="fingerprint"):
        decode_response(bad)


@pytest.mark.parametrize(
    "data, match",
    [
        (b"", "not a STUN"),
        (b"\xc0" + RFC5769_V4[1:], "not a STUN"),  # top two bits set: e.g. RTP
        (RFC5769_V4[:4] + b"\0\0\0\0" + RFC5769_V4[8:], "magic cookie"),
        (RFC5769_V4[:-4], "malformed"),  # length field disagrees with the datagram
        (encode_request(TID), "not a Binding response"),
    ],
)
def test_garbage_is_refused(data, match):
    with pytest.raises(StunError, match=match):
        decode_response(data)


def test_request_encoding():
    plain = encode_request(TID)
    assert plain == struct.pack("!HHI", 0x0001, 0, 0x2112A442) + TID
    both = encode_request(TID, change_ip=True, change_port=True)
    assert both[20:] == struct.pack("!HHI", 0x0003, 4, 0x06)
    assert encode_request(TID, change_port=True)[20:] == struct.pack("!HHI", 0x0003, 4, 0x02)
    with pytest.raises(ValueError):
        encode_request(b"short")


def test_answer_carries_the_clients_address_and_rfc5780_attributes():
    reply = answer(encode_request(TID), CLIENT, ("203.0.113.10", 3478), FOUR)
    assert reply is not None
    assert (reply.source, reply.destination) == (("203.0.113.10", 3478), CLIENT)
    r = decode_response(reply.data)
    assert (r.transaction_id, r.mapped, r.error) == (TID, CLIENT, None)
    assert r.response_origin == ("203.0.113.10", 3478)
    assert r.other_address == ("198.51.100.10", 3479)
    assert r.software == "sonm-p2p"


def test_other_address_is_relative_to_the_receiving_socket():
    assert FOUR.local_addresses == (
        ("203.0.113.10", 3478),
        ("203.0.113.10", 3479),
        ("198.51.100.10", 3478),
        ("198.51.100.10", 3479),
    )
    for local in FOUR.local_addresses:
        other = FOUR.other_address(local)
        assert other is not None and other[0] != local[0] and other[1] != local[1]
    assert ONE.local_addresses == (("203.0.113.10", 3478),)
    assert ONE.other_address(("203.0.113.10", 3478)) is None


@pytest.mark.parametrize(
    "change, source",
    [
        ({"change_ip": True, "change_port": True}, ("198.51.100.10", 3479)),
        ({"change_ip": True}, ("198.51.100.10", 3478)),
        ({"change_port": True}, ("203.0.113.10", 3479)),
    ],
)
def test_change_request_is_answered_from_the_other_socket(change, source):
    reply = answer(encode_request(TID, **change), CLIENT, ("203.0.113.10", 3478), FOUR)
    assert reply is not None and reply.source == source
    assert decode_response(reply.data).response_origin == source


def test_without_an_alternate_address_change_request_gets_420():
    reply = answer(encode_request(TID, change_port=True), CLIENT, ONE.primary, ONE)
    assert reply is not None
    r = decode_response(reply.data)
    assert r.error is not None and r.error[0] == 420 and r.mapped is None
    # UNKNOWN-ATTRIBUTES (0x000A) names CHANGE-REQUEST (0x0003).
    assert reply.data[-8:] == struct.pack("!HHHH", 0x000A, 2, 0x0003, 0)
    assert struct.unpack_from("!H", reply.data, 2)[0] == len(reply.data) - 20
    # A plain request still gets a plain answer, without RFC 5780's OTHER-ADDRESS.
    plain = decode_response(answer(encode_request(TID), CLIENT, ONE.primary, ONE).data)
    assert plain.mapped == CLIENT and plain.other_address is None


def test_unknown_comprehension_required_attribute_gets_420_optional_is_ignored():
    def with_attr(kind: int) -> bytes:
        body = struct.pack("!HHI", kind, 4, 7)
        return struct.pack("!HHI", 0x0001, len(body), 0x2112A442) + TID + body

    r = decode_response(answer(with_attr(0x0042), CLIENT, ONE.primary, ONE).data)
    assert r.error is not None and r.error[0] == 420
    r = decode_response(answer(with_attr(0x8042), CLIENT, ONE.primary, ONE).data)
    assert r.error is None and r.mapped == CLIENT


def test_answer_drops_what_is_not_a_binding_request():
    local = ONE.primary
    assert answer(b"hello", CLIENT, local, ONE) is None
    assert answer(RFC5769_V4, CLIENT, local, ONE) is None  # a response, not a request
    rng = random.Random(0)
    for _ in range(500):  # no crash on random bytes, or on a valid header with random attributes
        junk = bytes(rng.randrange(256) for _ in range(rng.randrange(60)))
        assert answer(junk, CLIENT, local, ONE) is None
        header = struct.pack("!HHI", 0x0001, len(junk) & ~3, 0x2112A442) + TID
        reply = answer(header + junk[: len(junk) & ~3], CLIENT, local, ONE)
        assert reply is None or decode_response(reply.data).transaction_id == TID


def test_ipv6_and_v4_mapped_clients():
    six = ResponderAddresses(("fd00:6e74::10", 3478), ("fd00:6e74::11", 3479))
    client6 = ("fd00:6e74::20", 5000)
    r = decode_response(answer(encode_request(TID), client6, six.primary, six).data)
    assert r.mapped == client6 and r.other_address == ("fd00:6e74::11", 3479)
    mapped = answer(encode_request(TID), ("::ffff:203.0.113.11", 40001), ONE.primary, ONE)
    assert mapped is not None and mapped.destination == CLIENT


def test_wildcard_responder_sends_no_response_origin():
    any4 = ResponderAddresses(("0.0.0.0", 3478))
    r = decode_response(answer(encode_request(TID), CLIENT, any4.primary, any4).data)
    assert r.mapped == CLIENT and r.response_origin is None


def test_responder_addresses_are_checked():
    with pytest.raises(ValueError, match="both IP and port"):
        ResponderAddresses(("203.0.113.10", 3478), ("203.0.113.10", 3479))
    with pytest.raises(ValueError, match="both IP and port"):
        ResponderAddresses(("203.0.113.10", 3478), ("198.51.100.10", 3478))
    with pytest.raises(ValueError, match="family"):
        ResponderAddresses(("203.0.113.10", 3478), ("fd00::1", 3479))
    with pytest.raises(ValueError, match="specific"):
        ResponderAddresses(("0.0.0.0", 3478), ("198.51.100.10", 3479))


# --- classification --------------------------------------------------------------------------

LOCAL = ("10.1.0.2", 40001)
A1P1, A2P1, A2P2 = ("203.0.113.10", 3478), ("198.51.100.10", 3478), ("198.51.100.10", 3479)
M = ("203.0.113.11", 40001)


def obs(*pairs):
    return [Observation(server, mapped) for server, mapped in pairs]


@pytest.mark.parametrize(
    "observations, expected",
    [
        ([], NatType.BLOCKED),
        (obs((A1P1, LOCAL)), NatType.OPEN),
        (obs((A1P1, LOCAL), (A2P1, LOCAL)), NatType.OPEN),
        (obs((A1P1, M)), NatType.UNKNOWN),  # behind NAT, one responder address
        # RFC 5780: test I == test II -> endpoint-independent.
        (obs((A1P1, M), (A2P1, M)), NatType.ENDPOINT_INDEPENDENT),
        # test II differs, test III == test II -> address-dependent.
        (
            obs((A1P1, M), (A2P1, ("203.0.113.11", 5)), (A2P2, ("203.0.113.11", 5))),
            NatType.ADDRESS_DEPENDENT,
        ),
        # test III differs from test II -> address-and-port-dependent (symmetric).
        (
            obs((A1P1, M), (A2P1, ("203.0.113.11", 5)), (A2P2, ("203.0.113.11", 6))),
            NatType.SYMMETRIC,
        ),
        # Two independent responders (no OTHER-ADDRESS): differing mappings -> symmetric.
        (obs((A1P1, M), (("198.51.100.99", 3478), ("203.0.113.11", 9))), NatType.SYMMETRIC),
        # Only ports of one IP compared and equal (a hub on its defaults): the mapping does not
        # follow the port; taken as endpoint-independent (not_told_apart says what else).
        (obs((A1P1, M), (("203.0.113.10", 3479), M)), NatType.ENDPOINT_INDEPENDENT),
        # ... and differing: the port alone changes the mapping.
        (obs((A1P1, M), (("203.0.113.10", 3479), ("203.0.113.11", 2))), NatType.SYMMETRIC),
    ],
)
def test_classify_mapping(observations, expected):
    assert classify_mapping(LOCAL, observations) is expected


def test_classify_mapping_is_order_independent():
    rng = random.Random(0)
    cases = [
        obs((A1P1, M), (A2P1, ("203.0.113.11", 5)), (A2P2, ("203.0.113.11", 5))),
        obs((A1P1, M), (A2P1, ("203.0.113.11", 5)), (A2P2, ("203.0.113.11", 6))),
        obs((A1P1, M), (A2P1, M), (A2P2, M)),
    ]
    for case in cases:
        expected = classify_mapping(LOCAL, case)
        for _ in range(10):
            shuffled = case[:]
            rng.shuffle(shuffled)
            assert classify_mapping(LOCAL, shuffled) is expected


A1P2 = ("203.0.113.10", 3479)


@pytest.mark.parametrize(
    "observations, types, why",
    [
        (obs((A1P1, LOCAL)), None, None),  # no NAT
        (obs((A1P1, M), (A2P1, M)), None, None),  # two IPs agree: certain
        (obs((A1P1, M), (A1P2, ("203.0.113.11", 9))), None, None),  # the port changes it
        (
            obs((A1P1, M), (A2P1, ("203.0.113.11", 5)), (A2P2, ("203.0.113.11", 5))),
            None,
            None,
        ),  # RFC 5780: certain
        (
            obs((A1P1, M)),
            ["endpoint-independent", "address-dependent", "symmetric"],
            "only one STUN address answered (203.0.113.10:3478)",
        ),
        (
            obs((A1P1, M), (A1P2, M)),
            ["address-dependent"],
            "every STUN address that answered is on one IP (203.0.113.10)",
        ),
        (
            obs((A1P1, M), (A2P1, ("203.0.113.11", 9))),
            ["address-dependent"],
            "no two ports of one IP answered",
        ),
    ],
)
def test_what_the_answers_could_not_tell_apart(observations, types, why):
    ambiguity = not_told_apart(LOCAL, observations)
    if types is None:
        assert ambiguity is None
    else:
        assert ambiguity is not None and list(ambiguity.types) == types
        assert why in ambiguity.why


def test_a_second_port_is_one_more_socket_on_the_primary_ip():
    two = ResponderAddresses(("203.0.113.10", 3478), second_port=3479)
    assert two.local_addresses == (("203.0.113.10", 3478), ("203.0.113.10", 3479))
    # Plain Binding on either port, no OTHER-ADDRESS; CHANGE-REQUEST needs an alternate.
    r = decode_response(answer(encode_request(TID), CLIENT, A1P2, two).data)
    assert (r.mapped, r.response_origin, r.other_address) == (CLIENT, A1P2, None)
    refused = answer(encode_request(TID, change_port=True), CLIENT, A1P1, two)
    assert decode_response(refused.data).error[0] == 420
    with pytest.raises(ValueError, match="differ"):
        ResponderAddresses(("203.0.113.10", 3478), second_port=3478)
    with pytest.raises(ValueError, match="alternate"):
        ResponderAddresses(A1P1, ("198.51.100.10", 3479), second_port=3480)
    assert ResponderAddresses(("0.0.0.0", 0), second_port=0).local_addresses == (
        ("0.0.0.0", 0),
        ("0.0.0.0", 0),
    )  # two free ports, chosen when bound


def test_classify_filtering():
    f = classify_filtering
    assert f(other_ip_and_port_answered=True, other_port_answered=False) is (
        Filtering.ENDPOINT_INDEPENDENT
    )
    assert f(other_ip_and_port_answered=False, other_port_answered=True) is (
        Filtering.ADDRESS_DEPENDENT
    )
    assert f(other_ip_and_port_answered=False, other_port_answered=False) is (
        Filtering.ADDRESS_AND_PORT_DEPENDENT
    )


def test_report_as_dict():
    report = NatReport(
        NatType.SYMMETRIC,
        LOCAL,
        M,
        A1P1,
        A2P2,
        Filtering.ADDRESS_AND_PORT_DEPENDENT,
        tuple(obs((A1P1, M), (("fd00::1", 3478), ("fd00::2", 7)))),
    )
    assert report.as_dict() == {
        "nat_type": "symmetric",
        "local": "10.1.0.2:40001",
        "mapped": "203.0.113.11:40001",
        "server": "203.0.113.10:3478",
        "other_address": "198.51.100.10:3479",
        "filtering": "address-and-port-dependent",
        "not_told_apart": {
            "types": ["address-dependent"],
            "why": not_told_apart(LOCAL, report.observations).why,
        },
        "observations": [
            {"server": "203.0.113.10:3478", "mapped": "203.0.113.11:40001"},
            {"server": "[fd00::1]:3478", "mapped": "[fd00::2]:7"},
        ],
    }
