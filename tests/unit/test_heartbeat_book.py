"""The heartbeat bookkeeping (transport/heartbeat.py): a session is never pinged twice at once,
a ping unanswered by its deadline is a miss, late or stray answers are ignored, results are
reported in order and only for sessions still held, two sessions of one peer never mix; and a
round's pings go out in small groups spread over the interval."""

from __future__ import annotations

from collections.abc import Callable
from types import SimpleNamespace

import pytest
import trio
import trio.testing

from sonm_p2p.transport.heartbeat import BeatBook, BeatResult, Heartbeat, Heartbeats

TIMEOUT = 5.0


def test_a_session_with_a_ping_out_is_not_pinged_again_until_it_is_answered() -> None:
    book = BeatBook(TIMEOUT)
    book.add(1, "peerA")
    seq = book.start(1, now=0.0)
    assert seq is not None
    assert book.start(1, now=1.0) is None  # still out
    book.answered(1, seq)
    assert book.start(1, now=2.0) is not None
    assert book.take() == [("peerA", True, "")]
    assert book.take() == []


def test_a_ping_unanswered_by_its_deadline_is_a_miss_and_its_late_answer_is_ignored() -> None:
    book = BeatBook(TIMEOUT)
    book.add(1, "peerA")
    book.add(2, "peerB")
    a = book.start(1, now=0.0)
    b = book.start(2, now=1.0)
    assert a is not None and b is not None
    assert book.expire(now=TIMEOUT - 0.01) == 0
    assert book.expire(now=TIMEOUT) == 1  # peerA's, not yet peerB's
    book.answered(1, a)  # too late
    book.answered(2, b)
    assert book.expire(now=TIMEOUT + 2) == 0  # answered in time
    assert book.take() == [("peerA", False, "no answer in 5s"), ("peerB", True, "")]
    # After a miss the session is pinged again, and an answer to the old ping does not count.
    c = book.start(1, now=10.0)
    assert c is not None and c != a
    book.answered(1, a)
    assert book.take() == []


def test_a_ping_that_could_not_be_sent_is_a_miss_at_once() -> None:
    book = BeatBook(TIMEOUT)
    book.add(1, "peerA")
    seq = book.start(1, now=0.0)
    assert seq is not None
    book.failed(1, seq, "cannot ping: closed")
    assert book.expire(now=TIMEOUT) == 0  # counted once
    assert book.take() == [("peerA", False, "cannot ping: closed")]


def test_a_session_that_ended_gets_no_result_and_no_ping() -> None:
    book = BeatBook(TIMEOUT)
    book.add(1, "peerA")
    book.add(2, "peerB")
    a, b = book.start(1, now=0.0), book.start(2, now=0.0)
    assert a is not None and b is not None
    book.remove(1)
    assert book.expire(now=TIMEOUT) == 1  # peerB's; the ended session's is forgotten
    assert book.take() == [("peerB", False, "no answer in 5s")]
    assert book.start(1, now=6.0) is None
    assert book.keys() == [2] and len(book) == 1


def test_two_sessions_of_one_peer_are_kept_apart() -> None:
    book = BeatBook(TIMEOUT)
    book.add(1, "peerA")
    old = book.start(1, now=0.0)
    book.add(2, "peerA")  # the miner reconnected; its old session is not yet closed
    new = book.start(2, now=0.0)  # pinged although the old session's ping is out
    assert old is not None and new is not None
    book.remove(1)
    book.answered(1, old)
    book.answered(2, new)
    assert book.take() == [("peerA", True, "")]


def test_heartbeat_options_are_checked_and_batches_sized_by_the_interval() -> None:
    with pytest.raises(ValueError):
        Heartbeat(interval=0, timeout=5, report=print)
    assert Heartbeat(interval=10, timeout=5, report=print).flush_every == 2.0
    assert Heartbeat(interval=0.5, timeout=0.5, report=print).flush_every == 0.2
    assert Heartbeat(interval=10, timeout=5, report=print, flush=0.5).flush_every == 0.5


class _Conn:
    """A connection whose ping is answered at once; records when each was sent."""

    def __init__(self, sent: list[float]) -> None:
        self.sent = sent

    async def ping(self, on_answer: Callable[[], None]) -> None:
        self.sent.append(trio.current_time())
        on_answer()


def test_a_round_sends_its_pings_in_small_groups_spread_over_the_interval() -> None:
    """1,000 sessions, 10 s: groups of ~10 every 100 ms (GROUP), each session pinged once a
    round, the round spread over the whole interval (not 1,000 at once, not one by one)."""
    sessions, interval = 1000, 10.0
    sent: list[float] = []
    reported: list[BeatResult] = []

    async def main() -> None:
        beats = Heartbeats(Heartbeat(interval=interval, timeout=5.0, report=reported.extend))
        for i in range(sessions):
            beats.watch(f"peer{i}", SimpleNamespace(muxed_conn=_Conn(sent)))
        with trio.move_on_after(interval * 2 + 3):  # the first round, from `interval` on
            await beats.run()
        reported.extend(beats.book.take())  # what was not reported yet

    trio.run(main, clock=trio.testing.MockClock(autojump_threshold=0))
    sent[:] = [t for t in sent if t < interval * 2]  # the first round's
    assert len(sent) == sessions
    times = sorted(set(sent))
    assert 80 <= len(times) <= 101  # ~100 groups a round
    assert max(sent) - min(sent) >= interval * 0.95
    assert max(sent.count(t) for t in times) <= 20  # of ~10 pings each
    assert {r[0] for r in reported} == {f"peer{i}" for i in range(sessions)}
    assert all(ok for _, ok, _ in reported)
