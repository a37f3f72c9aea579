"""Messages on a session stream: the framing (``_sessions.frame`` / ``Unframer``) and the
``Session`` handle's inbox (``recv``, ``listen``, the end), without sockets. The end-to-end
path (a hub and miners handshaking and sending task events on it) is in
tests/integration/test_heartbeat.py."""

from __future__ import annotations

import threading
from typing import Any

import pytest
import trio

from sonm_p2p.errors import SonmError, Timeout, Unavailable
from sonm_p2p.transport._handles import Session
from sonm_p2p.transport._sessions import FrameError, Unframer, frame


def test_frames_split_back_into_messages_whatever_the_reads() -> None:
    messages = [b"", b"x", bytes(range(256)) * 3, b"y" * 200_000]
    stream = b"".join(frame(m) for m in messages)
    for size in (1, 2, 7, 127, 128, 4096, len(stream)):
        unframer, got = Unframer(), []
        for i in range(0, len(stream), size):
            got += unframer.feed(stream[i : i + size])
        assert got == messages, size


def test_lengths_are_leb128_varints() -> None:
    assert frame(b"a") == b"\x01a"
    assert frame(b"b" * 300)[:2] == b"\xac\x02"  # 300 = 0b10_0101100


def test_an_oversized_or_endless_length_is_a_framing_error() -> None:
    with pytest.raises(FrameError, match="at most 10"):
        Unframer(limit=10).feed(frame(b"z" * 11))
    with pytest.raises(FrameError, match="too long"):
        Unframer().feed(b"\xff" * 6)


def _session(messages: bool = True) -> tuple[Session, list[Any]]:
    calls: list[Any] = []
    return Session(calls.append, "16Uiu2peer", trio.CancelScope(), "/p", messages=messages), calls


def test_recv_gets_messages_in_order_and_ends_with_the_session() -> None:
    session, _ = _session()
    session.deliver(b"one")
    session.deliver(b"two")
    assert session.recv(1) == b"one"
    assert session.recv(1) == b"two"
    with pytest.raises(Timeout):
        session.recv(0.01)
    threading.Timer(0.05, session.ended).start()
    with pytest.raises(Unavailable, match="ended"):
        session.recv(5)  # woken by the end, not by its timeout
    assert session.closed.is_set()


def test_listen_takes_what_is_waiting_then_each_message_then_the_end() -> None:
    session, _ = _session()
    session.deliver(b"early")
    got: list[bytes | None] = []
    session.listen(got.append)
    session.deliver(b"late")
    session.ended()
    session.ended()  # once only
    assert got == [b"early", b"late", None]


def test_send_hops_onto_the_trio_thread_and_refuses_after_the_end() -> None:
    session, calls = _session()
    session.send(b"hello")
    assert len(calls) == 1  # scheduled, not written here
    calls[0]()  # what the node's thread runs
    assert session.outgoing is not None and session.outgoing.receive_nowait() == b"hello"
    session.ended()
    with pytest.raises(Unavailable):
        session.send(b"late")


def test_a_session_without_messages_cannot_send() -> None:
    session, _ = _session(messages=False)
    with pytest.raises(SonmError, match="carries no messages"):
        session.send(b"x")
