"""Session heartbeats: a miner's liveness checked with Yamux keepalive pings on the connection
its session runs on, instead of a gRPC call through the bridge.

A miner opens its session to the hub on :data:`SESSION_BEAT` when the hub speaks it (and on the
older ``/sonm/session/1.0.0`` otherwise; the hub then pings it over gRPC as before). Opening a
beat session says "I count your Yamux pings as your contact": every ``interval`` the hub sends
a Yamux PING on that connection (what go-yamux's keepalive does every 30 s), the miner's Yamux
answers it by itself, and the miner notes the hub's contact when it does
(:class:`~sonm_p2p.transport._yamux.KeepaliveYamux`). A ping then costs the hub one 12-byte
frame through Noise out and one back, on its libp2p thread, and no stream: no gRPC call, no
Unix-socket hop through the bridge, no splice, no asyncio wake-up (a gRPC ping was ~2.8 ms of
the hub's CPU per miner per 10 s: see docs/SCALING.md).

:class:`BeatBook` is the bookkeeping, pure: which sessions there are, which has a ping out and
until when (a session is never pinged twice at once), the results not yet reported.
:class:`Heartbeats` runs it on the node's trio loop for every beat session of one protocol:
pings spread over the interval in small groups (a hub of 1,000 miners sends ~10 every 100 ms,
not 1,000 at once nor one every 10 ms: :data:`GROUP`),
each answer a callback from the connection's read loop (no task waits for it), one deadline
sweep every fraction of the timeout, and results handed to the owner in batches (``report``, in
a worker thread: the hub applies a batch with one SQLite commit).
"""

from __future__ import annotations

import itertools
import logging
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import trio

__all__ = [
    "BEAT_SESSIONS",
    "SESSION_BEAT",
    "SESSION_MESSAGES",
    "BeatBook",
    "BeatResult",
    "Heartbeat",
    "Heartbeats",
]

log = logging.getLogger(__name__)

#: A session whose opener counts the other side's Yamux pings as its contact.
SESSION_BEAT = "/sonm/session/2.0.0"
#: A beat session that also carries messages both ways (:mod:`._sessions`): a miner's handshake
#: and task events travel on it, not over a gRPC channel.
SESSION_MESSAGES = "/sonm/session/3.0.0"
#: The sessions whose opener counts the other side's Yamux pings as its contact.
BEAT_SESSIONS = frozenset({SESSION_BEAT, SESSION_MESSAGES})

#: Pings due within this many seconds of each other are sent together (a hub of 1,000 miners
#: sends ~10 every 100 ms): their answers then come back together too, and trio's loop reads
#: them in one pass instead of waking once for each. One ping every 10 ms cost a hub 1.24 ms of
#: CPU per miner per 10 s, groups of 100 ms 0.59 (``bench/profile_hub.py --miners 1000``).
GROUP = 0.1

#: (peer ID, answered, why not): one ping's result as reported to the owner.
BeatResult = tuple[str, bool, str]


@dataclass(frozen=True, kw_only=True)
class Heartbeat:
    """How the accepting side pings its beat sessions.

    interval: seconds between two pings of one session.
    timeout: seconds an answer may take; a later answer counts as a miss.
    report: called with each batch of results (in a worker thread; it may block).
    flush: seconds between batches; defaults to interval / 5 within [0.2, 2].
    """

    interval: float
    timeout: float
    report: Callable[[list[BeatResult]], None]
    flush: float = 0.0

    def __post_init__(self) -> None:
        if self.interval <= 0 or self.timeout <= 0:
            raise ValueError("heartbeat interval and timeout must be positive")

    @property
    def flush_every(self) -> float:
        return self.flush or max(0.2, min(2.0, self.interval / 5))


class BeatBook:
    """Beat sessions by key (an int per session, so two sessions of one peer never mix), the
    ping each has out (its sequence number and deadline), and the results not yet taken. Pure:
    the caller gives the time."""

    def __init__(self, timeout: float) -> None:
        self.timeout = timeout
        self._peers: dict[int, str] = {}
        self._out: dict[int, int] = {}  # key -> sequence number of its ping out
        self._seq = 0
        # (deadline, key, seq) in sending order: with one timeout for all, deadlines are too.
        self._deadlines: deque[tuple[float, int, int]] = deque()
        self._results: list[BeatResult] = []

    def __len__(self) -> int:
        return len(self._peers)

    def keys(self) -> list[int]:
        return list(self._peers)

    def add(self, key: int, peer_id: str) -> None:
        self._peers[key] = peer_id

    def remove(self, key: int) -> None:
        """The session ended: its ping out, if any, is forgotten (its end is reported apart,
        by the session's close)."""
        self._peers.pop(key, None)
        self._out.pop(key, None)

    def start(self, key: int, now: float) -> int | None:
        """The sequence number of a ping to send to ``key`` now, or None: gone, or its last
        ping is still out (a session is never pinged twice at once)."""
        if key not in self._peers or key in self._out:
            return None
        self._seq += 1
        self._out[key] = self._seq
        self._deadlines.append((now + self.timeout, key, self._seq))
        return self._seq

    def answered(self, key: int, seq: int) -> None:
        """The ping ``seq`` of ``key`` was answered; a late or stray answer is ignored."""
        if self._out.get(key) != seq:
            return
        del self._out[key]
        self._results.append((self._peers[key], True, ""))

    def failed(self, key: int, seq: int, why: str) -> None:
        """The ping ``seq`` of ``key`` could not be sent."""
        if self._out.get(key) != seq:
            return
        del self._out[key]
        self._results.append((self._peers[key], False, why))

    def expire(self, now: float) -> int:
        """Count every ping out past its deadline as missed; returns how many."""
        missed = 0
        while self._deadlines and self._deadlines[0][0] <= now:
            _, key, seq = self._deadlines.popleft()
            if self._out.get(key) == seq:
                del self._out[key]
                self._results.append((self._peers[key], False, f"no answer in {self.timeout:g}s"))
                missed += 1
        return missed

    def take(self) -> list[BeatResult]:
        """The results since the last call, in order."""
        results, self._results = self._results, []
        return results


class Heartbeats:
    """Pings every beat session of one protocol (on the node's trio loop): :meth:`run` once in
    the node's nursery, :meth:`watch` / :meth:`unwatch` from each session's handler.
    A ping is one frame written by a short task; its answer is a callback from the connection's
    read loop, and a sweep counts those that did not come: no task waits for an answer."""

    def __init__(self, options: Heartbeat) -> None:
        self.options = options
        self.book = BeatBook(options.timeout)
        self._conns: dict[int, Any] = {}
        self._serials = itertools.count(1)

    async def run(self) -> None:
        """Ping, sweep deadlines and report, until cancelled."""
        async with trio.open_nursery() as nursery:
            nursery.start_soon(self._sweep)
            nursery.start_soon(self._flush)
            await self._ping_rounds(nursery)

    def watch(self, peer_id: str, stream: Any) -> int:
        """Start pinging the connection of ``stream`` (a session, from its first moment: a
        miner whose handshake waits its turn behind a restarted hub's herd still hears the hub,
        and does not give up on it); returns the key for :meth:`unwatch`."""
        conn = stream.muxed_conn
        if not hasattr(conn, "ping"):  # not our Yamux (a test's host): nothing to ping
            log.warning("session of %s: its connection cannot be pinged (%r)", peer_id, conn)
        key = next(self._serials)
        self._conns[key] = conn
        self.book.add(key, peer_id)
        return key

    def unwatch(self, key: int) -> None:
        """The session ended: stop pinging it."""
        self.book.remove(key)
        self._conns.pop(key, None)

    async def _ping_rounds(self, nursery: trio.Nursery) -> None:
        interval = self.options.interval
        start = trio.current_time() + interval
        while True:
            await trio.sleep_until(start)
            keys = self.book.keys()
            step = interval / max(1, len(keys))
            for i, key in enumerate(keys):
                slot = start + i * step
                if slot > trio.current_time() + GROUP:  # pings due within GROUP s go together
                    await trio.sleep_until(slot)
                conn = self._conns.get(key)
                seq = self.book.start(key, trio.current_time()) if conn is not None else None
                if seq is not None:
                    # Written by a task of its own: a connection whose writes wait (its peer's
                    # window, a busy lock) must not hold up the round for the others.
                    nursery.start_soon(self._send, key, seq, conn)
            start = max(start + interval, trio.current_time())

    async def _send(self, key: int, seq: int, conn: Any) -> None:
        book = self.book
        with trio.move_on_after(self.options.timeout):
            try:
                await conn.ping(lambda: book.answered(key, seq))
            except Exception as exc:
                book.failed(key, seq, f"cannot ping: {exc!r}")
            return
        book.failed(key, seq, "cannot ping: its connection is stuck")

    async def _sweep(self) -> None:
        every = min(0.5, self.options.timeout / 4)
        while True:
            await trio.sleep(every)
            self.book.expire(trio.current_time())

    async def _flush(self) -> None:
        every = self.options.flush_every
        while True:
            await trio.sleep(every)
            batch = self.book.take()
            if batch:
                try:
                    await trio.to_thread.run_sync(self.options.report, batch)
                except Exception as exc:  # the owner's fault: keep pinging
                    log.warning("heartbeat report failed: %r", exc)
