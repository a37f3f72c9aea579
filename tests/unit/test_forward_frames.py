"""Framing of ``/sonm/forward/1.0.0``: requests, replies, datagram frames, error mapping."""

from __future__ import annotations

import json
import random
import struct

import pytest

from sonm_p2p.errors import (
    InvalidRequest,
    NotFound,
    PermissionDenied,
    RuntimeFailure,
    SonmError,
    TaskNotFound,
    Unauthenticated,
    Unavailable,
)
from sonm_p2p.transport.forward import (
    FORWARD,
    MAX_DATAGRAM,
    MAX_REQUEST,
    ForwardError,
    ForwardRequest,
    ForwardStatus,
    FrameDecoder,
    Proto,
    decode_reply,
    decode_request,
    encode_datagram,
    encode_reply,
    encode_request,
    error_for,
    request_length,
    status_for,
)


def test_protocol_id():
    assert FORWARD == "/sonm/forward/1.0.0"


@pytest.mark.parametrize(
    "request_",
    [
        ForwardRequest("7f3a", 27960, Proto.UDP),
        ForwardRequest("t" * 64, 1, "tcp", check=True),
        ForwardRequest("ünïcode-task", 65535),
        ForwardRequest("7f3a", 8080, grant="0x" + "ab" * 20 + ":" + "cd" * 65),
    ],
)
def test_request_round_trip(request_):
    wire = encode_request(request_)
    length = request_length(wire[:2])
    assert length == len(wire) - 2
    assert decode_request(wire[2:]) == request_


def test_request_is_length_prefixed_json():
    wire = encode_request(ForwardRequest("abc", 80))
    (length,) = struct.unpack("!H", wire[:2])
    assert json.loads(wire[2 : 2 + length]) == {
        "task": "abc",
        "port": 80,
        "proto": "tcp",
        "check": False,
    }


@pytest.mark.parametrize(
    "body",
    [
        b"not json",
        b"\xff\xfe",
        b"[1, 2]",
        b'{"port": 80, "proto": "tcp"}',  # no task
        b'{"task": "a", "port": 0}',
        b'{"task": "a", "port": 65536}',
        b'{"task": "a", "port": "80"}',
        b'{"task": "a", "port": true}',
        b'{"task": "a", "port": 80, "proto": "sctp"}',
        b'{"task": "a", "port": 80, "check": "yes"}',
        b'{"task": 5, "port": 80}',
    ],
)
def test_malformed_requests_are_bad_requests(body):
    with pytest.raises(ForwardError) as info:
        decode_request(body)
    assert info.value.status is ForwardStatus.BAD_REQUEST


@pytest.mark.parametrize("length", [0, MAX_REQUEST + 1, 0xFFFF])
def test_request_length_out_of_range(length):
    with pytest.raises(ForwardError):
        request_length(struct.pack("!H", length))


def test_oversized_request_is_refused_when_encoding():
    with pytest.raises(ForwardError):
        encode_request(ForwardRequest("x" * (MAX_REQUEST + 10), 80))


@pytest.mark.parametrize("status", list(ForwardStatus))
def test_reply_round_trip(status):
    assert decode_reply(encode_reply(status, f"because {status.name}")) == (
        status,
        f"because {status.name}",
    )


def test_reply_message_is_cut_to_its_limit():
    status, message = decode_reply(encode_reply(ForwardStatus.INTERNAL, "x" * 5000))
    assert status is ForwardStatus.INTERNAL and len(message) == 1024


@pytest.mark.parametrize(
    "wire",
    [b"", b"\x00", b"\x63\x00\x00", b"\x00\x00\x05abc", b"\x00\x00\x01ab"],
)
def test_bad_replies(wire):
    with pytest.raises(ForwardError):
        decode_reply(wire)


def test_datagram_frames_survive_any_chunking():
    rng = random.Random(0)
    datagrams = [rng.randbytes(rng.choice([0, 1, 2, 100, 1400, MAX_DATAGRAM])) for _ in range(60)]
    wire = b"".join(encode_datagram(d) for d in datagrams)
    for _ in range(5):
        decoder, out, pos = FrameDecoder(), [], 0
        while pos < len(wire):
            step = rng.randint(1, 3000)
            out += decoder.feed(wire[pos : pos + step])
            pos += step
        assert out == datagrams
        assert decoder.pending == 0


def test_incomplete_frame_is_held_back():
    decoder = FrameDecoder()
    frame = encode_datagram(b"hello")
    assert decoder.feed(frame[:4]) == []
    assert decoder.pending == 4
    assert decoder.feed(frame[4:] + frame[:1]) == [b"hello"]
    assert decoder.pending == 1


def test_oversized_datagram_is_refused():
    with pytest.raises(ForwardError):
        encode_datagram(b"x" * (MAX_DATAGRAM + 1))


@pytest.mark.parametrize(
    ("status", "cls"),
    [
        (ForwardStatus.UNKNOWN_TASK, TaskNotFound),
        (ForwardStatus.NOT_ALLOWED, PermissionDenied),
        (ForwardStatus.NOT_PUBLISHED, NotFound),
        (ForwardStatus.BAD_REQUEST, InvalidRequest),
        (ForwardStatus.UNREACHABLE, Unavailable),
        (ForwardStatus.INTERNAL, SonmError),
    ],
)
def test_user_sees_domain_errors(status, cls):
    err = error_for(status, "the message")
    assert type(err) is cls and str(err) == "the message"
    assert str(error_for(status, "")) != ""


@pytest.mark.parametrize(
    ("exc", "status"),
    [
        (ForwardError(ForwardStatus.NOT_PUBLISHED, "m"), ForwardStatus.NOT_PUBLISHED),
        (TaskNotFound("m"), ForwardStatus.UNKNOWN_TASK),
        (PermissionDenied("m"), ForwardStatus.NOT_ALLOWED),
        (Unauthenticated("m"), ForwardStatus.NOT_ALLOWED),
        (NotFound("m"), ForwardStatus.NOT_PUBLISHED),
        (InvalidRequest("m"), ForwardStatus.BAD_REQUEST),
        (Unavailable("m"), ForwardStatus.UNREACHABLE),
        (RuntimeFailure("m"), ForwardStatus.INTERNAL),
    ],
)
def test_resolver_errors_map_to_statuses(exc, status):
    assert status_for(exc) == (status, "m")


def test_unexpected_resolver_errors_do_not_leak_details():
    assert status_for(KeyError("secret path /etc/x")) == (ForwardStatus.INTERNAL, "internal error")


def test_refusals_round_trip_to_the_same_domain_error():
    for exc in (TaskNotFound("no task 7f3a"), PermissionDenied("not yours")):
        status, message = decode_reply(encode_reply(*status_for(exc)))
        again = error_for(status, message)
        assert type(again) is type(exc) and str(again) == str(exc)
