"""The miner's one connection to its hub: dial, hold a session, reconnect with backoff."""

from __future__ import annotations

import logging
import random
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass

from sonm_p2p.errors import SonmError
from sonm_p2p.identity import node_id_from_peer_id
from sonm_p2p.supervisor import Supervisor
from sonm_p2p.transport.bridge import SESSION
from sonm_p2p.transport.heartbeat import SESSION_BEAT, SESSION_MESSAGES
from sonm_p2p.transport.node import P2PNode, Session

__all__ = ["Backoff", "HubCandidate", "HubLink", "LinkOptions"]

log = logging.getLogger(__name__)

#: The session protocols a miner offers, best first: a hub that handshakes and follows its tasks
#: on the session stream and pings its connection, one that only pings it, else an older hub
#: (which pings over gRPC). Hubs call the miner's gRPC ``Handshake`` and ``WatchTasks`` on the
#: latter two.
SESSIONS = (SESSION_MESSAGES, SESSION_BEAT, SESSION)

#: Longest wait between two checks of a held session's hub (its silence, whether it is still
#: allowed); the session's end is noticed at once.
HOLD_CHECK = 5.0


@dataclass(frozen=True, kw_only=True)
class LinkOptions:
    """How a miner holds on to its hub.

    backoff_initial: first wait after a failed or lost connection, seconds; defaults to 0.5.
    backoff_max: longest wait between attempts, seconds; defaults to 15.
    hub_silence: a hub that has not pinged for this long is taken as gone (a half-open link);
        defaults to 35 s (three missed 10 s pings plus the 5 s timeout).
    avoid_for: a hub just lost is tried after the others for this long, seconds; defaults to 30
        (so a miner moves to another allowed hub, and returns to this one if it is the only one).
    session_timeout: how long opening the session on a connected hub may take, seconds;
        defaults to 30. A restarted hub's herd queues every stream on its one libp2p thread: a
        miner that gave up at the dial timeout (10 s) threw away a join half done and redialled.
    dial_timeout: how long a dial of a hub given by address may take, seconds; defaults to 30.
        A hub serves joins a few dozen at a time, first come, first served (``--max-joining``):
        a miner that gives up waiting goes to the back of the line.
    """

    backoff_initial: float = 0.5
    backoff_max: float = 15.0
    hub_silence: float = 35.0
    avoid_for: float = 30.0
    session_timeout: float = 30.0
    dial_timeout: float = 30.0


@dataclass(frozen=True)
class HubCandidate:
    """A hub to try.

    addrs: where it is: one ``host:port`` or multiaddr given by the user, or a discovered hub's
        announced multiaddrs (direct and relayed), which go through the dial ladder together.
    node_id: the hub expected there ("" for whichever answers).
    peer_id: its peer ID when known (discovered hubs); required to dial several addresses.
    """

    addrs: tuple[str, ...]
    node_id: str = ""
    peer_id: str = ""

    def __str__(self) -> str:
        return self.addrs[0] if len(self.addrs) == 1 else f"{self.node_id or self.peer_id}"


class Backoff:
    """Exponential backoff with a cap; ``reset()`` after a success. Pure: no clock, no sleep.

    ``jitter`` (0..1) takes up to that share off each wait at random (``rand`` in [0, 1)), so
    miners that lost one hub at the same moment (it restarted) do not all redial it in step.
    """

    def __init__(
        self,
        initial: float,
        maximum: float,
        *,
        jitter: float = 0.0,
        rand: Callable[[], float] = random.random,
    ) -> None:
        if not 0.0 <= jitter <= 1.0:
            raise ValueError("jitter must be between 0 and 1")
        self.initial, self.maximum, self.jitter = initial, maximum, jitter
        self._rand = rand
        self._next = initial

    def next(self) -> float:
        delay = self._next
        self._next = min(self._next * 2, self.maximum)
        return delay * (1.0 - self.jitter * self._rand())

    def reset(self) -> None:
        self._next = self.initial


class HubLink:
    """Keeps the miner connected to a hub, from :meth:`start` until ``supervisor`` closes: the
    link is one of its services, so the daemon's close stops and joins it.

    ``targets(avoid)`` returns :class:`HubCandidate` s in order; ``avoid`` holds hubs lost
    recently, which it should put last or leave out (a hub it must keep returning to may stay).
    ``allow_hub(node_id)`` vets the hub actually reached. ``before_session(peer_id, candidate)``
    runs once connected, before the session opens (the miner reserves on a relay there, so the
    addresses it tells the hub include the relayed one); a SonmError from it is logged and does
    not stop the session. ``serve_session(session, candidate)`` runs once the session is open
    (on a message session, :data:`SESSION_MESSAGES`, it answers the hub's handshake there); a
    SonmError from it drops the session, and the link retries.

    ``last_hub_contact()`` returns the monotonic time the hub last called us (its pings); a
    session quieter than ``hub_silence`` is dropped and redialled. ``hub_peer`` is the hub's
    peer ID while connected ("" otherwise): the miner's gRPC is served to that peer only.
    """

    def __init__(
        self,
        node: P2PNode,
        targets: Callable[[set[str]], list[HubCandidate]],
        last_hub_contact: Callable[[], float],
        options: LinkOptions | None = None,
        *,
        supervisor: Supervisor,
        allow_hub: Callable[[str], bool] = lambda node_id: True,
        connected_in: Callable[[str, float], None] = lambda node_id, seconds: None,
        before_session: Callable[[str, HubCandidate], None] = lambda peer_id, candidate: None,
        on_beat: Callable[[], None] = lambda: None,
        serve_session: Callable[[Session, HubCandidate], None] = lambda session, candidate: None,
    ) -> None:
        self.node = node
        self._supervisor = supervisor
        self._targets = targets
        self.options = options or LinkOptions()
        self._last_contact = last_hub_contact
        self._allow_hub = allow_hub
        self._connected_in = connected_in
        self._before_session = before_session
        self._on_beat = on_beat
        self._serve_session = serve_session
        self.hub_peer = ""
        self.hub_id = ""
        self.target = ""
        self.protocol = ""  # the session's protocol while connected (SESSIONS says which)
        self.connected = threading.Event()
        self._started = False
        self._avoid: dict[str, float] = {}  # hub node ID -> when we lost it (monotonic)

    def __repr__(self) -> str:
        state = f"connected to {self.hub_id} at {self.target}" if self.hub_peer else "disconnected"
        return f"<HubLink {state}>"

    def start(self) -> None:
        """Begin connecting (idempotent); the supervisor's close ends it."""
        if not self._started:
            self._started = True
            self._supervisor.service("hub-link", self._run)

    def allow(self, peer_id: str) -> bool:
        """Whether ``peer_id`` may call this miner's gRPC (only its current hub may)."""
        return bool(peer_id) and peer_id == self.hub_peer

    def _dial(self) -> tuple[str, str, HubCandidate] | None:
        """Connect to the first allowed candidate: (peer ID, hub node ID, candidate) or None."""
        now = time.monotonic()
        self._avoid = {h: t for h, t in self._avoid.items() if now - t < self.options.avoid_for}
        candidates = self._targets(set(self._avoid))
        if not candidates:
            log.info("no hub known yet: waiting for discovery")
            return None
        for cand in candidates:
            t0 = time.monotonic()
            try:
                if cand.peer_id:
                    path = self.node.connect_peer(cand.peer_id, cand.addrs)
                    peer = cand.peer_id
                    log.info("hub %s: %s path (%s)", cand, path.kind, path.remote)
                else:
                    peer = self.node.connect(cand.addrs[0], timeout=self.options.dial_timeout)
            except SonmError as exc:
                log.warning("hub %s: %s", cand, exc)
                if cand.node_id:
                    self._avoid[cand.node_id] = time.monotonic()
                continue
            node_id = node_id_from_peer_id(peer) or ""
            if (cand.node_id and node_id != cand.node_id) or not self._allow_hub(node_id):
                log.warning("hub at %s is %s, which is not allowed here", cand, node_id or peer)
                self.node.disconnect(peer)
                continue
            self._connected_in(node_id, time.monotonic() - t0)
            return peer, node_id, cand
        return None

    def _run(self, stop: threading.Event) -> None:
        backoff = Backoff(self.options.backoff_initial, self.options.backoff_max, jitter=0.5)
        while not stop.is_set():
            picked = self._dial()
            session = None
            if picked is not None:
                peer, node_id, cand = picked
                self.hub_peer, self.hub_id, self.target = peer, node_id, str(cand)
                target = self.target
                try:
                    self._before_session(peer, cand)
                except SonmError as exc:
                    log.warning("hub %s: %s", node_id, exc)
                try:
                    session = self.node.open_session(
                        peer, SESSIONS, self._on_beat, timeout=self.options.session_timeout
                    )
                except SonmError as exc:
                    log.warning("hub %s: %s", target, exc)
                if session is not None:
                    try:
                        self._serve_session(session, cand)
                    except SonmError as exc:
                        log.warning("hub %s: handshake failed: %s", target, exc)
                        session.close()
                        session = None
            if session is None:
                self.hub_peer = ""
                delay = backoff.next()
                log.info("retrying in %.1fs", delay)
                stop.wait(delay)
                continue
            self.protocol = session.protocol
            log.info("connected to hub %s at %s (peer %s)", node_id, target, peer)
            self.connected.set()
            opened = time.monotonic()
            backoff.reset()
            try:
                self._hold(session, opened, stop)
            finally:
                self.connected.clear()
                self.hub_peer = ""
                session.close()
            if not stop.is_set():
                self._avoid[node_id] = time.monotonic()
                delay = backoff.next()
                log.warning("lost the hub %s; reconnecting in %.1fs", node_id, delay)
                stop.wait(delay)

    def _hold(self, session: object, opened: float, stop: threading.Event) -> None:
        # Wakes when the hub could first be overdue (or every HOLD_CHECK s), not every second:
        # a loadgen process holds 1,000 of these threads.
        silence = self.options.hub_silence
        heard = opened
        while not stop.is_set():
            wait = min(HOLD_CHECK, max(0.05, heard + silence - time.monotonic()))
            if session.closed.wait(timeout=wait):  # type: ignore[attr-defined]
                return
            if not self._allow_hub(self.hub_id):
                log.warning("hub %s is no longer allowed (left the registry): leaving it",
                            self.hub_id)  # fmt: skip
                self._disconnect(session)
                return
            heard = max(self._last_contact(), opened)
            if time.monotonic() - heard > silence:
                log.warning("hub silent for %.0fs: dropping the connection", silence)
                self._disconnect(session)
                return

    def _disconnect(self, session: object) -> None:
        try:
            self.node.disconnect(session.peer_id)  # type: ignore[attr-defined]
        except Exception as exc:  # the connection may already be gone
            log.debug("disconnect failed: %r", exc)
