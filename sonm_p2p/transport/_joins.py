"""Admission of inbound joins: a node serves at most ``limit`` peers joining it at a time.

A restarted hub's miners all redial within the same second. Each join is a Noise handshake,
Yamux, identify both ways, a relay reservation, the session stream and the hub's gRPC handshake:
~40 ms of the hub's one libp2p thread, cut into hundreds of trio scheduler turns. Served all at
once, a thousand joins advance together and none finishes before the miners' 10 s timeouts; each
miner gives up and redials, and the work done for it is lost (measured: nothing listed for the
first 33 s after a restart of a 1,000-miner hub, though the hub was busy all along). Served a
few dozen at a time, each join finishes in about a second, and a miner waiting its turn has cost
the hub only its accepted socket.

A slot is taken before the security handshake (so first come, first served: trio's semaphore is
FIFO) and kept after it until the peer's session has been handshaken (:meth:`session_started`,
:meth:`session_done`, from the node's session acceptor), or for ``grace`` seconds when no
session stream comes (a client, another hub, a relay user). A connection whose peer hung up
while it waited (a miner past its dial timeout) is dropped without a handshake.

Outbound connections and a node without a limit (``limit`` 0) are not gated.
"""

from __future__ import annotations

import select
from collections.abc import Awaitable, Callable
from typing import Any

import trio

from sonm_p2p.transport._conn import tcp_socket

__all__ = ["JoinGate"]

_GONE = select.POLLRDHUP | select.POLLHUP | select.POLLERR


class _Join:
    __slots__ = ("done", "started")

    def __init__(self) -> None:
        self.started = trio.Event()
        self.done = trio.Event()


class JoinGate:
    """At most ``limit`` inbound connections between accepted and joined (see module doc).

    ``grace``: seconds a slot is kept after the handshake for a session stream to come;
    ``hold_max``: longest a slot is kept for one session's handshake. Counters (read from any
    thread): ``waiting`` (accepted, waiting for a slot), ``joining`` (holding one),
    ``dropped`` (gave up while waiting). Trio thread only otherwise.
    """

    def __init__(self, limit: int, *, grace: float = 2.0, hold_max: float = 30.0) -> None:
        if limit < 0:
            raise ValueError("limit must not be negative")
        self.limit = limit
        self.grace = grace
        self.hold_max = hold_max
        self.waiting = 0
        self.joining = 0
        self.dropped = 0
        self._slots: trio.Semaphore | None = None
        self._joins: dict[str, _Join] = {}

    def __repr__(self) -> str:
        return f"<JoinGate {self.joining}/{self.limit} joining, {self.waiting} waiting>"

    def install(self, swarm: Any) -> None:
        """Gate ``swarm``'s inbound upgrades (py-libp2p 0.8.1 looks the method up on the
        instance for each accepted connection). No-op without a limit."""
        if not self.limit:
            return
        self._slots = trio.Semaphore(self.limit)
        upgrade = swarm.upgrade_inbound_raw_conn

        async def gated(raw_conn: Any, maddr: Any) -> Any:
            return await self._admit(upgrade, raw_conn, maddr)

        swarm.upgrade_inbound_raw_conn = gated

    async def _admit(
        self, upgrade: Callable[[Any, Any], Awaitable[Any]], raw_conn: Any, maddr: Any
    ) -> Any:
        assert self._slots is not None
        self.waiting += 1
        try:
            await self._slots.acquire()
        finally:
            self.waiting -= 1
        self.joining += 1
        try:
            if hung_up(raw_conn):
                self.dropped += 1
                raise ConnectionError("the peer hung up while waiting to join")
            muxed = await upgrade(raw_conn, maddr)
            await self._hold(str(muxed.peer_id))
            return muxed
        finally:
            self.joining -= 1
            self._slots.release()

    async def _hold(self, peer: str) -> None:
        join = self._joins[peer] = _Join()
        try:
            with trio.move_on_after(self.grace):
                await join.started.wait()
            if join.started.is_set():
                with trio.move_on_after(self.hold_max):
                    await join.done.wait()
        finally:
            if self._joins.get(peer) is join:
                del self._joins[peer]

    def session_started(self, peer: str) -> None:
        """``peer`` opened its session stream: its slot is kept until :meth:`session_done`."""
        join = self._joins.get(peer)
        if join is not None:
            join.started.set()

    def session_done(self, peer: str) -> None:
        """``peer``'s session is handshaken (or failed): its slot goes to the next in line."""
        join = self._joins.get(peer)
        if join is not None:
            join.done.set()


def hung_up(raw_conn: Any) -> bool:
    """Whether the far end of ``raw_conn`` (a py-libp2p raw TCP connection) has closed it,
    without reading from it (``POLLRDHUP``: its FIN arrived, even behind unread data)."""
    sock = tcp_socket(raw_conn)
    if sock is None:
        return False
    try:
        poller = select.poll()
        poller.register(sock.fileno(), _GONE)
        return bool(poller.poll(0))
    except (OSError, ValueError, AttributeError):
        return False
