"""Thread-facing handles of the node's long-running stream users: tunnels and sessions.

A handle is closed from any thread: ``call_soon`` (the node core's thread-safe scheduler) hops
the cancellation onto the trio thread.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import Any

import trio

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
    """One long-lived stream to a peer; :attr:`closed` is set when it ends (either side)."""

    def __init__(
        self, call_soon: CallSoon, peer_id: str, scope: trio.CancelScope, protocol: str = ""
    ) -> None:
        self._call_soon = call_soon
        self.peer_id = peer_id
        self.protocol = protocol  # the one of those offered that the peer speaks
        self.closed = threading.Event()
        self._scope: trio.CancelScope | None = scope

    def close(self) -> None:
        """End the session (the peer sees it end). Idempotent."""
        scope, self._scope = self._scope, None
        if scope is not None:
            self._call_soon(scope.cancel)

    def __repr__(self) -> str:
        state = "closed" if self.closed.is_set() else "open"
        return f"<Session {self.peer_id[:12]}… {state}>"
