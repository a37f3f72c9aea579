"""This machine's NAT as STUN responders see it, in one place: the probe, and the rule that a
probe nobody answered ("blocked") tells nothing about the NAT (``unknown``).

The responders are the ones a hub names (``Info.stun_endpoints``, ``Handshake``): its own, on
two ports by default (3478 and 3479: a symmetric NAT maps them apart), then the STUN endpoints
of other hubs it knows from discovery (other IPs: an address-dependent NAT maps them apart).

Used by ``sonmcli nat`` / ``sonmminer --check`` (:func:`stun_report`), ``sonmcli forward``
(:class:`NatProbe`, alongside its other calls) and the miner (:class:`NatCache`, per hub).
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Sequence
from typing import Any, Protocol

from sonm_p2p.errors import SonmError
from sonm_p2p.transport.addrs import parse_hostport
from sonm_p2p.transport.stun import Address, ClientOptions, NatReport, NatType, StunError, probe_nat

__all__ = [
    "NatCache",
    "NatProbe",
    "probe",
    "quick_options",
    "stun_report",
    "stun_servers",
    "usable_nat_type",
]

# NatCache runs in the miner; its lines keep the logger name they had there (same output).
log = logging.getLogger("sonm_p2p.miner.daemon")

#: Retransmission timeout and tries per STUN request for a probe that must be quick (the
#: default waits 2.1 s per request).
QUICK_RTO, QUICK_ATTEMPTS = 0.25, 2


def quick_options() -> ClientOptions:
    """STUN client options of a probe that runs alongside other work (at most ~2.3 s)."""
    return ClientOptions(rto=QUICK_RTO, attempts=QUICK_ATTEMPTS)


def usable_nat_type(nat_type: str) -> str:
    """The NAT type to act on: no answer at all ("blocked": UDP blocked, or the responder
    down) says nothing about how TCP is mapped, so it counts as unknown."""
    return str(NatType.UNKNOWN) if nat_type == NatType.BLOCKED else str(nat_type)


#: Responder addresses one probe asks at most: a hub's two ports and two other hubs (each that
#: does not answer costs a whole transaction timeout).
MAX_SERVERS = 4


def stun_servers(endpoints: str | Sequence[str]) -> list[Address]:
    """The responder addresses a probe asks, from ``host:port`` strings (a hub's ``Info``:
    its own first, then other hubs'), at most :data:`MAX_SERVERS`. ValueError when none
    parses."""
    if isinstance(endpoints, str):
        endpoints = [endpoints]
    out: list[Address] = []
    for text in endpoints:
        try:
            out.append(parse_hostport(text))
        except (ValueError, SonmError):
            continue
    if not out:
        raise ValueError(f"no STUN endpoint in {list(endpoints)!r}")
    return list(dict.fromkeys(out))[:MAX_SERVERS]


def probe(endpoints: str | Sequence[str], options: ClientOptions | None = None) -> NatReport:
    """Classify this machine's NAT against the responders at ``endpoints`` (the first one's
    RFC 5780 tests when it has an alternate address, else the mappings all of them see)."""
    servers = stun_servers(endpoints)
    return probe_nat(servers[0], extra_servers=servers[1:], options=options or ClientOptions())


def stun_report(
    endpoints: str | Sequence[str], options: ClientOptions | None = None
) -> dict[str, Any]:
    """``sonmcli nat``'s ``stun`` dict (``nat_type``, ``mapped``, ``not_told_apart``,
    ``error``...) against the responders at ``endpoints`` (``host:port``, the hub's first);
    never raises: a failure is an ``unknown`` type with the reason in ``error``. "blocked" is
    reported as such (see :func:`usable_nat_type`)."""
    named = [endpoints] if isinstance(endpoints, str) else list(endpoints)
    if not any(named):
        return {"nat_type": "unknown", "error": "the hub runs no STUN responder"}
    try:
        return probe(named, options).as_dict()
    except (StunError, OSError, ValueError, SonmError) as exc:
        where = ", ".join(e for e in named if e)
        return {"nat_type": "unknown", "error": f"STUN against {where} failed: {exc}"}


class NatProbe:
    """This machine's NAT type, classified against the hub's STUN responders on a thread while
    the caller goes on (``sonmcli forward``): ``stun_endpoints()`` (the hub's Info RPC), then a
    quick STUN probe (retransmits after 0.25 s, twice per request).

    Never raises: a hub without a responder, no answer at all (``sonmcli nat``'s "blocked": UDP
    blocked) or any other failure is an ``unknown`` NAT type with the reason in ``error``. Call
    :meth:`release` before closing what ``stun_endpoints`` uses, then :meth:`report` (which waits
    at most as long as the probe can take; the thread has ended when it returns a STUN result).
    """

    RTO, ATTEMPTS = QUICK_RTO, QUICK_ATTEMPTS
    #: At most MAX_SERVERS requests (or RFC 5780 tests I-III), each of at most
    #: ``RTO * (2**ATTEMPTS - 1)``.
    BOUND = MAX_SERVERS * RTO * (2**ATTEMPTS - 1)

    def __init__(self, stun_endpoints: Callable[[], Sequence[str]]) -> None:
        self._endpoint = stun_endpoints
        self._asked = threading.Event()  # the endpoint is known (or failed): the client may close
        self._result: dict[str, Any] | None = None
        self._thread = threading.Thread(target=self._run, name="nat-probe", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        try:
            try:
                endpoint = self._endpoint()
            finally:
                self._asked.set()
            result = stun_report(endpoint, quick_options())
            if result.get("nat_type") == NatType.BLOCKED:
                error = f"no answer from the hub's STUN responder at {result.get('server')}"
                result = {**result, "nat_type": usable_nat_type(NatType.BLOCKED), "error": error}
            self._result = result
        except Exception as exc:  # a forward must not fail on STUN
            self._result = {"nat_type": "unknown", "error": f"no STUN endpoint from the hub: {exc}"}

    def release(self) -> None:
        """Wait until the probe no longer needs ``stun_endpoints``'s client (its call, within
        the client's deadline)."""
        self._asked.wait()

    def report(self) -> dict[str, Any]:
        """``sonmcli nat``'s ``stun`` dict (``nat_type``, ``mapped``, ``error``...)."""
        self.release()
        self._thread.join(self.BOUND + 1.0)
        if self._result is None:
            return {"nat_type": "unknown", "error": f"no STUN result within {self.BOUND + 1:g}s"}
        return self._result


class _LearnsNat(Protocol):
    """What :class:`NatCache` tells its NAT type to (a ``P2PNode``)."""

    nat_type: str | None


class NatCache:
    """This miner's NAT type, classified by STUN against its hub's responder when the hub first
    calls (the handshake waits for it: a few round trips, at most ~2.3 s when nothing answers)
    and kept for ``ttl`` seconds per responder. The node learns it too: behind a symmetric NAT
    it starts no hole punch, which could not work. Thread-safe; never raises."""

    def __init__(self, node: _LearnsNat, ttl: float = 600.0) -> None:
        self.node = node
        self.ttl = ttl
        self._lock = threading.Lock()
        self._known: dict[str, tuple[float, str]] = {}  # endpoint -> (monotonic, NAT type)

    def __repr__(self) -> str:
        known = ", ".join(f"{ep}: {nat}" for ep, (_, nat) in self._known.items())
        return f"<NatCache {known or 'empty'}>"

    def classify(self, stun_endpoints: Sequence[str]) -> str:
        """The NAT type against ``stun_endpoints`` (the hub's first); "" when there are none."""
        named = tuple(e for e in stun_endpoints if e)
        if not named:
            return ""
        key = " ".join(named)
        with self._lock:  # one probe at a time: a reconnecting miner asks once
            seen = self._known.get(key)
            if seen is not None and time.monotonic() - seen[0] < self.ttl:
                return seen[1]
            why = ""
            try:
                report = probe(named, quick_options())
                nat = str(report.nat_type)
                if (ambiguity := report.not_told_apart) is not None:
                    why = f" (could also be {', '.join(ambiguity.types)}: {ambiguity.why})"
            except (StunError, OSError, ValueError, SonmError) as exc:
                log.info("STUN against %s failed: %s", key, exc)
                nat = str(NatType.UNKNOWN)
            nat = usable_nat_type(nat)
            self._known[key] = (time.monotonic(), nat)
        log.info("NAT type seen through the STUN responders %s: %s%s", key, nat, why)
        try:
            self.node.nat_type = None if nat == NatType.UNKNOWN else nat
        except SonmError:
            pass  # the node is closing
        return nat
