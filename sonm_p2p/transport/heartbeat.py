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

:class:`BeatBook` is the bookkeeping, pure: which sessions there are, which has a ping out (a
session is never pinged twice at once), the results not yet reported. :class:`Heartbeats` runs
it on the node's trio loop for every beat session of one protocol: pings spread over the
interval (a hub of 1,000 miners sends one every 10 ms, not 1,000 at once), and results handed
to the owner in batches (``report``, in a worker thread: the hub applies a batch with one
SQLite commit).
"""

from __future__ import annotations

import itertools
import logging
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import trio

from sonm_p2p.transport._conn import read_until_end

__all__ = ["SESSION_BEAT", "BeatBook", "BeatResult", "Heartbeat", "Heartbeats"]

log = logging.getLogger(__name__)

#: A session whose opener counts the other side's Yamux pings as its contact.
SESSION_BEAT = "/sonm/session/2.0.0"

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
    """Beat sessions by key (an int per session, so two sessions of one peer never mix), which
    has a ping out, and the results not yet taken. Pure: no clock, no I/O."""

    def __init__(self) -> None:
        self._peers: dict[int, str] = {}
        self._out: set[int] = set()
        self._results: list[BeatResult] = []

    def __len__(self) -> int:
        return len(self._peers)

    def keys(self) -> list[int]:
        return list(self._peers)

    def add(self, key: int, peer_id: str) -> None:
        self._peers[key] = peer_id

    def remove(self, key: int) -> None:
        """The session ended: a result still to come for it is dropped (its end is reported
        apart, by the session's close)."""
        self._peers.pop(key, None)
        self._out.discard(key)

    def start(self, key: int) -> bool:
        """Whether to ping ``key`` now: not when it is gone or its last ping is still out."""
        if key not in self._peers or key in self._out:
            return False
        self._out.add(key)
        return True

    def done(self, key: int, answered: bool, why: str = "") -> None:
        """The ping of ``key`` ended: answered in time, or not (``why``)."""
        if key not in self._out:
            return
        self._out.discard(key)
        self._results.append((self._peers[key], answered, "" if answered else why))

    def take(self) -> list[BeatResult]:
        """The results since the last call, in order."""
        results, self._results = self._results, []
        return results


class Heartbeats:
    """Pings every beat session of one protocol (on the node's trio loop): :meth:`run` once in
    the node's nursery, :meth:`serve` from each session's handler for as long as it lasts."""

    def __init__(self, options: Heartbeat) -> None:
        self.options = options
        self.book = BeatBook()
        self._conns: dict[int, Any] = {}
        self._serials = itertools.count(1)
        self._nursery: trio.Nursery | None = None

    async def run(self) -> None:
        """Ping and report, until cancelled."""
        async with trio.open_nursery() as nursery:
            self._nursery = nursery
            nursery.start_soon(self._flush)
            await self._ping_rounds()

    async def serve(self, peer_id: str, stream: Any) -> None:
        """Ping the connection of ``stream`` (a session after its ``on_open``) until the
        stream ends."""
        conn = stream.muxed_conn
        if not hasattr(conn, "keepalive"):  # not our Yamux (a test's host): nothing to ping
            log.warning("session of %s: its connection cannot be pinged (%r)", peer_id, conn)
        key = next(self._serials)
        self._conns[key] = conn
        self.book.add(key, peer_id)
        try:
            await read_until_end(stream)
        finally:
            self.book.remove(key)
            self._conns.pop(key, None)

    async def _ping_rounds(self) -> None:
        interval = self.options.interval
        start = trio.current_time() + interval
        while True:
            await trio.sleep_until(start)
            keys = self.book.keys()
            step = interval / max(1, len(keys))
            for i, key in enumerate(keys):
                slot = start + i * step
                if slot > trio.current_time() + 0.005:  # pings due within 5 ms go together
                    await trio.sleep_until(slot)
                conn = self._conns.get(key)
                if conn is not None and self._nursery is not None and self.book.start(key):
                    self._nursery.start_soon(self._ping, key, conn)
            start = max(start + interval, trio.current_time())

    async def _ping(self, key: int, conn: Any) -> None:
        timeout = self.options.timeout
        try:
            answered = await conn.keepalive(timeout)
        except Exception as exc:
            log.debug("keepalive ping: %r", exc)
            answered = False
        self.book.done(key, answered, f"no answer in {timeout:g}s")

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
