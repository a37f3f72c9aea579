"""The miner's one connection to its hub: dial, hold a session, reconnect with backoff."""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass

from sonm_p2p.errors import SonmError
from sonm_p2p.transport.bridge import SESSION
from sonm_p2p.transport.node import P2PNode

__all__ = ["Backoff", "HubLink", "LinkOptions"]

log = logging.getLogger(__name__)


@dataclass(frozen=True, kw_only=True)
class LinkOptions:
    """How a miner holds on to its hub.

    backoff_initial: first wait after a failed or lost connection, seconds; defaults to 0.5.
    backoff_max: longest wait between attempts, seconds; defaults to 15.
    hub_silence: a hub that has not pinged for this long is taken as gone (a half-open link);
        defaults to 35 s (three missed 10 s pings plus the 5 s timeout).
    """

    backoff_initial: float = 0.5
    backoff_max: float = 15.0
    hub_silence: float = 35.0


class Backoff:
    """Exponential backoff with a cap; ``reset()`` after a success. Pure: no clock, no sleep."""

    def __init__(self, initial: float, maximum: float) -> None:
        self.initial, self.maximum = initial, maximum
        self._next = initial

    def next(self) -> float:
        delay = self._next
        self._next = min(self._next * 2, self.maximum)
        return delay

    def reset(self) -> None:
        self._next = self.initial


class HubLink:
    """Keeps the miner connected to the hub at ``target`` until :meth:`close`.

    ``last_hub_contact()`` returns the monotonic time the hub last called us (its pings); a
    session quieter than ``hub_silence`` is dropped and redialled. ``hub_peer`` is the hub's
    peer ID while connected ("" otherwise): the miner's gRPC is served to that peer only.
    """

    def __init__(
        self,
        node: P2PNode,
        target: str,
        last_hub_contact: Callable[[], float],
        options: LinkOptions | None = None,
    ) -> None:
        self.node = node
        self.target = target
        self.options = options or LinkOptions()
        self._last_contact = last_hub_contact
        self.hub_peer = ""
        self.connected = threading.Event()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def __repr__(self) -> str:
        state = f"connected to {self.hub_peer[:16]}…" if self.hub_peer else "disconnected"
        return f"<HubLink {self.target} {state}>"

    def start(self) -> None:
        if self._thread is None:
            self._thread = threading.Thread(target=self._run, name="hub-link", daemon=True)
            self._thread.start()

    def close(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=10)
            self._thread = None

    def allow(self, peer_id: str) -> bool:
        """Whether ``peer_id`` may call this miner's gRPC (only its current hub may)."""
        return bool(peer_id) and peer_id == self.hub_peer

    def _run(self) -> None:
        backoff = Backoff(self.options.backoff_initial, self.options.backoff_max)
        while not self._stop.is_set():
            try:
                peer = self.node.connect(self.target)
                self.hub_peer = peer
                session = self.node.open_session(peer, SESSION)
            except SonmError as exc:
                self.hub_peer = ""
                delay = backoff.next()
                log.warning("hub %s: %s; retrying in %.1fs", self.target, exc, delay)
                self._stop.wait(delay)
                continue
            log.info("connected to hub %s (peer %s)", self.target, peer)
            self.connected.set()
            opened = time.monotonic()
            backoff.reset()
            try:
                self._hold(session, opened)
            finally:
                self.connected.clear()
                self.hub_peer = ""
                session.close()
            if not self._stop.is_set():
                delay = backoff.next()
                log.warning("lost the hub %s; reconnecting in %.1fs", self.target, delay)
                self._stop.wait(delay)

    def _hold(self, session: object, opened: float) -> None:
        silence = self.options.hub_silence
        while not self._stop.is_set():
            if session.closed.wait(timeout=min(1.0, silence)):  # type: ignore[attr-defined]
                return
            heard = max(self._last_contact(), opened)
            if time.monotonic() - heard > silence:
                log.warning("hub silent for %.0fs: dropping the connection", silence)
                try:
                    self.node.disconnect(session.peer_id)  # type: ignore[attr-defined]
                except Exception as exc:  # the connection may already be gone
                    log.debug("disconnect failed: %r", exc)
                return
