"""A hub behind NAT stays reachable: it finds out, reserves on relays, announces circuit addresses.

:class:`HubReachability` runs in a thread of the hub process. In "auto" mode it asks the relays
it knows (``--relay-via``, else its bootstrap hubs) to dial it back (AutoNAT, see
``transport/reachability.py``) when it starts and every ``recheck_interval`` seconds. When none
can, the hub is private: it reserves a slot on each relay (the node keeps the reservations
refreshed), and from then on :attr:`P2PNode.advertised_addrs`, hence its announcement and its
``Info``, carry ``/…/p2p/<relay>/p2p-circuit/p2p/<hub>`` addresses that miners and clients dial
through the relay (then hole-punch to a direct path when the NATs allow). When it is found
public again the reservations are released. "private" reserves without asking; "public" does
nothing.
"""

from __future__ import annotations

import logging
import threading

from sonm_p2p.errors import ConfigError, SonmError
from sonm_p2p.supervisor import Supervisor
from sonm_p2p.transport.addrs import parse_circuit, parse_target
from sonm_p2p.transport.node import P2PNode
from sonm_p2p.transport.reachability import Reachability
from sonm_p2p.transport.relay import RelayReservation

__all__ = ["HubReachability"]

log = logging.getLogger(__name__)

_MODES = ("auto", "public", "private")
_MAX_RETRY = 60.0  # seconds between attempts at most, while no relay answers or grants


class HubReachability:
    """Keeps a hub reachable from outside its NAT (see module). Thread-safe reads of ``state``.

    state: "public", "private" or "unknown" (auto mode before an answer, or with no relay to
        ask). relays: dial targets of other hubs (``host:port`` or multiaddrs).
    """

    def __init__(
        self,
        node: P2PNode,
        *,
        mode: str = "auto",
        relays: tuple[str, ...] = (),
        recheck_interval: float = 300.0,
        retry_interval: float = 2.0,
        supervisor: Supervisor,
    ) -> None:
        if mode not in _MODES:
            raise ConfigError(f"unknown reachability {mode!r} (auto, public or private)")
        if mode == "private" and not relays:
            raise ConfigError(
                "a private hub needs a relay: give --relay-via or --bootstrap (another hub)"
            )
        for relay in relays:  # fail at start, not in the background
            if parse_circuit(relay) is not None:
                raise ConfigError(f"relay {relay!r}: give the relay's own address, not a circuit")
            parse_target(relay)
        self.node = node
        self.mode = mode
        self.relays = tuple(relays)
        self.recheck_interval = recheck_interval
        self.retry_interval = retry_interval
        self.state = Reachability.PUBLIC if mode == "public" else Reachability.UNKNOWN
        #: Each server's last answer (auto mode), for logs and ``sonmcli info``.
        self.answers: dict[str, str] = {}
        self._held: dict[str, RelayReservation] = {}  # relay target -> reservation
        self._told: dict[str, str] = {}  # relay target -> the reservation's state last logged
        self._sup = supervisor
        self._started = False

    def __repr__(self) -> str:
        return f"<HubReachability {self.mode}: {self.state}, {len(self._held)} reservations>"

    @property
    def reservations(self) -> list[RelayReservation]:
        return list(self._held.values())

    def start(self) -> None:
        if self.mode == "auto" and not self.relays:
            log.info(
                "no other hub to ask whether this hub can be dialled from outside: behind NAT, "
                "give --bootstrap <a public hub> so it reserves there"
            )
        if self.mode == "public" or not self.relays or self._started:
            return
        self._started = True
        self._sup.service("reachability", self._run)

    def _run(self, stop: threading.Event) -> None:
        delay = self.retry_interval
        while not stop.is_set():
            try:
                settled = self._round() and self._report()
            except SonmError as exc:  # the node closing under us, mostly
                log.debug("reachability check: %s", exc)
                settled = False
            if settled:
                delay = self.retry_interval
                stop.wait(self.recheck_interval)
            else:  # no relay answered, or a reservation is not granted (yet): back off
                stop.wait(delay)
                delay = min(delay * 2, _MAX_RETRY)

    def _round(self) -> bool:
        """One check (auto) and reservation pass. True when nothing needs a quick retry."""
        if self.mode == "private":
            self.state = Reachability.PRIVATE
            return self._reserve()
        peers: list[str] = []
        for target in self.relays:
            try:
                peers.append(self.node.connect(target))
            except SonmError as exc:
                log.debug("relay %s: %s", target, exc)
        if not peers:
            return False
        verdict, self.answers = self.node.check_reachability(peers)
        if verdict != self.state:
            how = "; ".join(f"{p[:12]}…: {a}" for p, a in self.answers.items())
            log.info("this hub is %s (AutoNAT: %s)", verdict, how)
        if verdict == Reachability.UNKNOWN:
            return False
        self.state = verdict
        if verdict == Reachability.PRIVATE:
            return self._reserve()
        self._release()
        return True

    def _reserve(self) -> bool:
        done = True
        for target in self.relays:
            res = self._held.get(target)
            if res is not None and res in self.node.reservations:
                continue
            try:
                self._held[target] = self.node.reserve(target, wait=False)
                log.info("reserving on relay %s", target)
            except SonmError as exc:
                log.warning("cannot reserve on relay %s: %s", target, exc)
                done = False
        return done

    def _report(self) -> bool:
        """Log each reservation's news (granted, or why not, once per reason); True when every
        reservation held is active."""
        ok = True
        for target, res in self._held.items():
            news = "active" if res.active else (res.error or "pending")
            ok = ok and res.active
            if news == self._told.get(target) or news == "pending":
                continue
            self._told[target] = news
            if res.active:
                log.info("reachable through relay %s at %s", target, " ".join(res.circuit_addrs))
            else:
                log.warning("no reservation on relay %s (retrying): %s", target, news)
        return ok

    def _release(self) -> None:
        for target, res in list(self._held.items()):
            log.info("reachable directly: releasing the reservation on %s", target)
            res.cancel()
            del self._held[target]
            self._told.pop(target, None)
