"""The heartbeat bookkeeping (transport/heartbeat.py): a session is never pinged twice at once,
results are reported in order and only for sessions still held, two sessions of one peer never
mix."""

from __future__ import annotations

import pytest

from sonm_p2p.transport.heartbeat import BeatBook, Heartbeat


def test_a_session_with_a_ping_out_is_not_pinged_again_until_it_ends() -> None:
    book = BeatBook()
    book.add(1, "peerA")
    assert book.start(1)
    assert not book.start(1)  # still out
    book.done(1, True)
    assert book.start(1)
    book.done(1, False, "no answer in 5s")
    assert book.take() == [("peerA", True, ""), ("peerA", False, "no answer in 5s")]
    assert book.take() == []


def test_a_session_that_ended_gets_no_result_and_no_ping() -> None:
    book = BeatBook()
    book.add(1, "peerA")
    book.add(2, "peerB")
    assert book.start(1) and book.start(2)
    book.remove(1)
    book.done(1, False, "late")  # the ping of a session gone: dropped
    book.done(2, True)
    assert book.take() == [("peerB", True, "")]
    assert not book.start(1)
    assert book.keys() == [2] and len(book) == 1


def test_two_sessions_of_one_peer_are_kept_apart() -> None:
    book = BeatBook()
    book.add(1, "peerA")
    assert book.start(1)
    book.add(2, "peerA")  # the miner reconnected; its old session is not yet closed
    assert book.start(2)  # the new one is pinged although the old one's ping is out
    book.remove(1)
    book.done(1, False, "old")
    book.done(2, True)
    assert book.take() == [("peerA", True, "")]


def test_a_result_without_a_ping_out_is_ignored() -> None:
    book = BeatBook()
    book.add(1, "peerA")
    book.done(1, True)
    assert book.take() == []


def test_heartbeat_options_are_checked_and_batches_sized_by_the_interval() -> None:
    with pytest.raises(ValueError):
        Heartbeat(interval=0, timeout=5, report=print)
    assert Heartbeat(interval=10, timeout=5, report=print).flush_every == 2.0
    assert Heartbeat(interval=0.5, timeout=0.5, report=print).flush_every == 0.2
    assert Heartbeat(interval=10, timeout=5, report=print, flush=0.5).flush_every == 0.5
