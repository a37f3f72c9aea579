"""Thread-facing handles of the node's long-running stream users: tunnels and sessions."""

from __future__ import annotations

import logging
import os
import threading
from typing import TYPE_CHECKING, Any

import trio

if TYPE_CHECKING:
    from sonm_p2p.transport.node import P2PNode

__all__ = ["Session", "Tunnel"]

log = logging.getLogger("sonm_p2p.transport.node")


class Tunnel:
    """A loopback TCP listener whose every connection is one stream to a peer."""

    def __init__(self, node: P2PNode, peer_id: str, protocol: str, port: int) -> None:
        self._node = node
        self.peer_id = peer_id
        self.protocol = protocol
        self.port = port
        self._scope: trio.CancelScope | None = None

    @property
    def target(self) -> str:
        """``127.0.0.1:PORT``, what a gRPC channel dials."""
        return f"127.0.0.1:{self.port}"

    def close(self) -> None:
        """Stop listening; connections already spliced end too. Idempotent."""
        scope, self._scope = self._scope, None
        if scope is not None:
            self._node._call_soon(scope.cancel)

    def __repr__(self) -> str:
        return f"<Tunnel {self.target} -> {self.peer_id[:12]}… {self.protocol}>"


class Session:
    """One long-lived stream to a peer; :attr:`closed` is set when it ends (either side)."""

    def __init__(self, node: P2PNode, peer_id: str) -> None:
        self._node = node
        self.peer_id = peer_id
        self.closed = threading.Event()
        self._scope: trio.CancelScope | None = None

    def close(self) -> None:
        """End the session (the peer sees it end). Idempotent."""
        scope, self._scope = self._scope, None
        if scope is not None:
            self._node._call_soon(scope.cancel)

    def __repr__(self) -> str:
        state = "closed" if self.closed.is_set() else "open"
        return f"<Session {self.peer_id[:12]}… {state}>"


async def _read_until_end(stream: Any) -> None:
    while True:
        try:
            data = await stream.read(1024)
        except Exception:
            return
        if not data:
            return


async def _aclose_quietly(obj: Any, *, reset: bool = False) -> None:
    try:
        with trio.move_on_after(2):
            if reset and hasattr(obj, "reset"):
                await obj.reset()
            elif hasattr(obj, "aclose"):
                await obj.aclose()
            else:
                await obj.close()
    except Exception as exc:
        log.debug("close failed: %r", exc)


def _reason(exc: BaseException) -> str:
    text = str(exc) or type(exc).__name__
    cause = exc.__cause__ or exc.__context__
    if cause is not None and str(cause) and str(cause) not in text:
        text = f"{text}: {cause}"
    return text


def _quiet_libp2p_logs() -> None:
    # py-libp2p logs expected events (a probe connection closing, a peer going away) at ERROR;
    # they are not errors for us. SONM_DEBUG=1 (see sonm_p2p.config) brings them back.
    # Importing libp2p configures its logger (level WARNING, no propagation): adjust after it.
    import libp2p  # noqa: F401

    lg = logging.getLogger("libp2p")
    if os.environ.get("SONM_DEBUG"):
        lg.setLevel(logging.DEBUG)
        lg.propagate = True
    else:
        lg.setLevel(logging.CRITICAL)
