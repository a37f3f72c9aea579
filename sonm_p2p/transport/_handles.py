"""Thread-facing handles of the node's long-running stream users: tunnels and sessions.

A handle is closed from any thread: ``call_soon`` (the node core's thread-safe scheduler) hops
the cancellation onto the trio thread.
"""

from __future__ import annotations

import math
import threading
from collections import deque
from collections.abc import Callable
from typing import Any

import trio

from sonm_p2p.errors import SonmError, Timeout, Unavailable

__all__ = ["CallSoon", "Session", "Tunnel"]

#: Schedules a synchronous callable on the node's trio thread, from any thread.
CallSoon = Callable[[Callable[[], Any]], None]


class Tunnel:
    """A private Unix-socket listener whose every connection is one stream to a peer."""

    def __init__(
        self, call_soon: CallSoon, peer_id: str, protocol: str, path: str, scope: trio.CancelScope
    ) -> None:
        self._call_soon = call_soon
        self.peer_id = peer_id
        self.protocol = protocol
        self.path = path
        self._scope: trio.CancelScope | None = scope

    @property
    def target(self) -> str:
        """``unix:PATH``, what a gRPC channel dials."""
        return f"unix:{self.path}"

    def close(self) -> None:
        """Stop listening; connections already spliced end too. Idempotent."""
        scope, self._scope = self._scope, None
        if scope is not None:
            self._call_soon(scope.cancel)

    def __repr__(self) -> str:
        return f"<Tunnel {self.target} -> {self.peer_id[:12]}… {self.protocol}>"


class Session:
    """One long-lived stream to a peer; :attr:`closed` is set when it ends (either side).

    A message session (:data:`~sonm_p2p.transport.heartbeat.SESSION_MESSAGES`) also carries
    length-prefixed messages both ways (:mod:`._sessions` moves them): :meth:`send` from any
    thread, in order; :meth:`recv` from a thread; or :meth:`listen` for every message from then
    on, called on the node's trio thread.
    """

    def __init__(
        self,
        call_soon: CallSoon,
        peer_id: str,
        scope: trio.CancelScope,
        protocol: str = "",
        *,
        messages: bool = False,
    ) -> None:
        self._call_soon = call_soon
        self.peer_id = peer_id
        self.protocol = protocol  # the one of those offered that the peer speaks
        self.closed = threading.Event()
        self._scope: trio.CancelScope | None = scope
        self._cond = threading.Condition()
        self._inbox: deque[bytes] = deque()
        self._listener: Callable[[bytes | None], None] | None = None
        self._outbox: trio.MemorySendChannel[bytes] | None = None
        self.outgoing: trio.MemoryReceiveChannel[bytes] | None = None  # what _sessions writes
        if messages:
            self._outbox, self.outgoing = trio.open_memory_channel[bytes](math.inf)

    def close(self) -> None:
        """End the session (the peer sees it end). Idempotent."""
        scope, self._scope = self._scope, None
        if scope is not None:
            self._call_soon(scope.cancel)

    def send(self, message: bytes) -> None:
        """(any thread) Send one message; messages arrive in the order sent. Raises
        Unavailable once the session ended (a message sent just before may be lost with it)."""
        outbox = self._outbox
        if outbox is None:
            raise SonmError(f"{self.protocol or 'this session'} carries no messages")
        if self.closed.is_set():
            raise Unavailable(f"session with {self.peer_id[:16]}… ended")

        def post() -> None:
            try:
                outbox.send_nowait(message)
            except (trio.BrokenResourceError, trio.ClosedResourceError):
                pass  # ended meanwhile

        self._call_soon(post)

    def recv(self, timeout: float) -> bytes:
        """(a thread, not the node's) The next message. Raises Timeout, or Unavailable if the
        session ends first."""
        with self._cond:
            if not self._cond.wait_for(lambda: self._inbox or self.closed.is_set(), timeout):
                raise Timeout(f"no message from {self.peer_id[:16]}… within {timeout:.0f}s")
            if self._inbox:
                return self._inbox.popleft()
        raise Unavailable(f"session with {self.peer_id[:16]}… ended")

    def listen(self, fn: Callable[[bytes | None], None]) -> None:
        """From now on call ``fn(message)`` for each message (those not yet received first), and
        ``fn(None)`` once when the session ends: on the node's trio thread, so ``fn`` must not
        block (hand the message on). :meth:`recv` then gets nothing more."""
        with self._cond:
            self._listener = fn
            for message in self._inbox:
                fn(message)
            self._inbox.clear()
            if self.closed.is_set():
                fn(None)

    def deliver(self, message: bytes) -> None:
        """(the node's trio thread) A message arrived."""
        with self._cond:
            if self._listener is not None:
                self._listener(message)
            else:
                self._inbox.append(message)
                self._cond.notify_all()

    def ended(self) -> None:
        """(the node's trio thread) The stream ended: :attr:`closed`, waiters woken."""
        with self._cond:
            if self.closed.is_set():
                return
            self.closed.set()
            self._cond.notify_all()
            if self._outbox is not None:
                self._outbox.close()
            if self._listener is not None:
                self._listener(None)

    def __repr__(self) -> str:
        state = "closed" if self.closed.is_set() else "open"
        return f"<Session {self.peer_id[:12]}… {self.protocol} {state}>"
