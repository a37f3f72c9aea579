"""NAT classification (pure) and the blocking STUN client."""

from __future__ import annotations

import contextlib
import enum
import os
import socket
import time
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from ipaddress import ip_address
from itertools import combinations
from typing import Any

from sonm_p2p.errors import StunError
from sonm_p2p.transport.addrs import format_hostport
from sonm_p2p.transport.stun._codec import (
    _MAX_DATAGRAM,
    Address,
    BindingResponse,
    _family,
    _norm,
    decode_response,
    encode_request,
)

# --- classification --------------------------------------------------------------------------


class NatType(enum.StrEnum):
    """Mapping behaviour of the path to the responders (RFC 5780 section 4.3)."""

    OPEN = "open"  #: no NAT: the responders see the node's own address
    ENDPOINT_INDEPENDENT = "endpoint-independent"  #: one mapping for every destination
    ADDRESS_DEPENDENT = "address-dependent"  #: a mapping per destination IP
    SYMMETRIC = "symmetric"  #: a mapping per destination IP and port
    UNKNOWN = "unknown"  #: behind NAT, but one responder address cannot tell more
    BLOCKED = "blocked"  #: no answer at all (UDP blocked or responder down)


class Filtering(enum.StrEnum):
    """Which inbound datagrams reach the node through its mapping (RFC 5780 section 4.4)."""

    ENDPOINT_INDEPENDENT = "endpoint-independent"
    ADDRESS_DEPENDENT = "address-dependent"
    ADDRESS_AND_PORT_DEPENDENT = "address-and-port-dependent"


@dataclass(frozen=True)
class Observation:
    """The mapping ``mapped`` that responder address ``server`` saw for one local socket."""

    server: Address
    mapped: Address


def classify_mapping(local: Address, observations: Sequence[Observation]) -> NatType:
    """Classify a NAT from the mappings several responder addresses saw for one local socket.

    local: the socket's own (ip, port) on the path to the responders. Mappings that differ between
    two addresses of one IP mean SYMMETRIC; mappings that differ only across IPs mean
    ADDRESS_DEPENDENT when a same-IP pair proves ports do not matter, else SYMMETRIC (the
    conservative answer: the mapping depends on the destination). Equal mappings across two IPs
    mean ENDPOINT_INDEPENDENT; equal mappings on two ports of one IP (a hub on its defaults:
    3478 and 3479) mean ENDPOINT_INDEPENDENT too, though an address-dependent NAT would look the
    same (:func:`not_told_apart` says so). One address seen behind NAT: UNKNOWN.
    """
    if not observations:
        return NatType.BLOCKED
    local = _norm(local)
    if all(o.mapped == local for o in observations):
        return NatType.OPEN
    same_ip, cross_ip = _pairs(observations)
    if any(a.mapped != b.mapped for a, b in same_ip):
        return NatType.SYMMETRIC
    if any(a.mapped != b.mapped for a, b in cross_ip):
        return NatType.ADDRESS_DEPENDENT if same_ip else NatType.SYMMETRIC
    return NatType.ENDPOINT_INDEPENDENT if cross_ip or same_ip else NatType.UNKNOWN


def _pairs(
    observations: Sequence[Observation],
) -> tuple[list[tuple[Observation, Observation]], list[tuple[Observation, Observation]]]:
    """(pairs of one IP and two ports, pairs of two IPs) among the responder addresses."""
    pairs = list(combinations(observations, 2))
    same_ip = [(a, b) for a, b in pairs if a.server[0] == b.server[0] and a.server != b.server]
    return same_ip, [(a, b) for a, b in pairs if a.server[0] != b.server[0]]


@dataclass(frozen=True)
class Ambiguity:
    """The mapping behaviours :func:`classify_mapping` could not tell from its answer, and why."""

    types: tuple[NatType, ...]
    why: str

    def as_dict(self) -> dict[str, Any]:
        return {"types": [t.value for t in self.types], "why": self.why}


def not_told_apart(local: Address, observations: Sequence[Observation]) -> Ambiguity | None:
    """What :func:`classify_mapping`'s answer for these observations could also be; None when
    it is certain (no NAT, no answer, or the responder addresses needed to tell answered)."""
    nat_type = classify_mapping(local, observations)
    same_ip, cross_ip = _pairs(observations)
    if nat_type is NatType.UNKNOWN:
        (only,) = {o.server for o in observations}
        return Ambiguity(
            (NatType.ENDPOINT_INDEPENDENT, NatType.ADDRESS_DEPENDENT, NatType.SYMMETRIC),
            f"only one STUN address answered ({format_hostport(*only)}): telling them apart "
            "takes the mappings seen from two",
        )
    if nat_type is NatType.ENDPOINT_INDEPENDENT and not cross_ip:
        ips = sorted({o.server[0] for o in observations})
        return Ambiguity(
            (NatType.ADDRESS_DEPENDENT,),
            f"every STUN address that answered is on one IP ({', '.join(ips)}): the mapping "
            "stayed the same on two of its ports, but one that changes only with the "
            "destination IP would look the same (a hub with --stun-alternate, or another hub "
            "on another address, tells them apart)",
        )
    if nat_type is NatType.SYMMETRIC and not same_ip:
        return Ambiguity(
            (NatType.ADDRESS_DEPENDENT,),
            "the mapping changed between STUN servers on different IPs, but no two ports of "
            "one IP answered: a mapping per destination IP, not per port, would look the same",
        )
    return None


def classify_filtering(*, other_ip_and_port_answered: bool, other_port_answered: bool) -> Filtering:
    """Filtering from RFC 5780 tests II (answer from the other IP and port) and III (other port)."""
    if other_ip_and_port_answered:
        return Filtering.ENDPOINT_INDEPENDENT
    if other_port_answered:
        return Filtering.ADDRESS_DEPENDENT
    return Filtering.ADDRESS_AND_PORT_DEPENDENT


# --- client I/O ------------------------------------------------------------------------------


@dataclass(frozen=True, kw_only=True)
class ClientOptions:
    """How the client retransmits and what it tests.

    rto: wait before the first retransmission, in seconds; doubles after each. Defaults to 0.3
        (RFC 5389 suggests 0.5 on the open internet).
    attempts: requests sent per transaction before giving up. Defaults to 3 (about 2.1 s).
    filtering: also run the RFC 5780 filtering tests (two CHANGE-REQUESTs, each costing a whole
        transaction timeout when the NAT filters). Defaults to False.
    """

    rto: float = 0.3
    attempts: int = 3
    filtering: bool = False


def binding(
    sock: socket.socket,
    server: Address,
    *,
    change_ip: bool = False,
    change_port: bool = False,
    options: ClientOptions = ClientOptions(),  # noqa: B008 - frozen, so sharing is safe
) -> BindingResponse | None:
    """One Binding transaction from ``sock`` to ``server``; None when nothing answered in time.

    Blocks up to ``rto * (2**attempts - 1)`` seconds. Datagrams that are not the answer (stale
    retransmissions, garbage) are ignored. Error responses are returned (see ``.error``).
    """
    tid = os.urandom(12)
    request = encode_request(tid, change_ip=change_ip, change_port=change_port)
    saved = sock.gettimeout()
    try:
        for attempt in range(options.attempts):
            sock.sendto(request, server)
            deadline = time.monotonic() + options.rto * 2**attempt
            while (left := deadline - time.monotonic()) > 0:
                sock.settimeout(left)
                try:
                    data, source = sock.recvfrom(_MAX_DATAGRAM)
                except TimeoutError:
                    break
                except OSError:  # e.g. an ICMP error reported on the socket: keep waiting
                    continue
                try:
                    response = decode_response(data)
                except StunError:
                    continue
                if response.transaction_id == tid:
                    return replace(response, source=_norm(source))
        return None
    finally:
        sock.settimeout(saved)


@dataclass(frozen=True)
class NatReport:
    """What :func:`probe_nat` learned.

    nat_type: the mapping behaviour. mapped: the public (ip, port) the first responder saw, None
    when blocked. local: the socket's own address. filtering: None unless asked for and the
    responder supports CHANGE-REQUEST.
    """

    nat_type: NatType
    local: Address
    mapped: Address | None
    server: Address
    other_address: Address | None = None
    filtering: Filtering | None = None
    observations: tuple[Observation, ...] = field(default=())

    @property
    def not_told_apart(self) -> Ambiguity | None:
        """What ``nat_type`` could also be, and why (see :func:`not_told_apart`)."""
        return not_told_apart(self.local, self.observations) if self.observations else None

    def as_dict(self) -> dict[str, Any]:
        """A JSON-ready form (``sonmcli nat --json``): addresses as ``ip:port`` / ``[ip]:port``."""
        out: dict[str, Any] = {"nat_type": self.nat_type.value}
        out |= {k: _fmt(getattr(self, k)) for k in ("local", "mapped", "server", "other_address")}
        out["filtering"] = self.filtering.value if self.filtering else None
        ambiguity = self.not_told_apart
        out["not_told_apart"] = ambiguity.as_dict() if ambiguity else None
        out["observations"] = [
            {"server": _fmt(o.server), "mapped": _fmt(o.mapped)} for o in self.observations
        ]
        return out


def _fmt(a: Address | None) -> str | None:
    return None if a is None else format_hostport(*a)


def _local_address(sock: socket.socket, server: Address) -> Address:
    """The socket's own address on the path to ``server`` (its bound IP, or the routed source)."""
    ip, port = _norm(sock.getsockname())
    if ip_address(ip).is_unspecified:
        with socket.socket(sock.family, socket.SOCK_DGRAM) as probe:
            probe.connect(server)  # no datagram is sent: this only asks the routing table
            ip = _norm(probe.getsockname())[0]
    return ip, port


def probe_nat(
    server: Address,
    *,
    extra_servers: Sequence[Address] = (),
    sock: socket.socket | None = None,
    options: ClientOptions = ClientOptions(),  # noqa: B008 - frozen, so sharing is safe
) -> NatReport:
    """Learn this node's public mapping and classify its NAT (RFC 5780 tests, blocking).

    server: a responder; when it advertises OTHER-ADDRESS the RFC 5780 tests run against it.
    extra_servers: other responders whose mappings are compared when it does not (the hub's
        second port, other hubs); one that fails or does not answer is left out.
    sock: the UDP socket to test (its mapping is what is learned); by default a fresh one on an
        ephemeral port, closed afterwards. StunError when a responder answers a plain Binding
        request with an error.
    """
    server = _norm(server)
    # Another family cannot be reached from this socket; the server itself adds nothing.
    extra = [s for s in dict.fromkeys(_norm(s) for s in extra_servers)
             if s != server and _family(s[0]) == _family(server[0])]  # fmt: skip
    with contextlib.ExitStack() as owned:
        if sock is None:
            family = _family(server[0])
            sock = owned.enter_context(socket.socket(family, socket.SOCK_DGRAM))
            sock.bind(("::" if family == socket.AF_INET6 else "0.0.0.0", 0))
        return _probe(sock, server, extra, options)


def _probe(
    sock: socket.socket, server: Address, extra: list[Address], options: ClientOptions
) -> NatReport:
    local = _local_address(sock, server)

    def ask(to: Address, **change: bool) -> BindingResponse | None:
        response = binding(sock, to, options=options, **change)
        if response is not None and response.error and not change:
            raise StunError(f"{to[0]}:{to[1]} refused a Binding request: {response.error}")
        return response

    first = ask(server)
    if first is None or first.mapped is None:
        return NatReport(NatType.BLOCKED, local, None, server)
    other = first.other_address
    filtering = None
    if options.filtering and other is not None:
        # Before the mapping tests, which would open the NAT towards the other address.
        def answered(**change: bool) -> bool:
            response = binding(sock, server, options=options, **change)
            return response is not None and response.error is None

        both = answered(change_ip=True, change_port=True)
        filtering = classify_filtering(
            other_ip_and_port_answered=both,
            other_port_answered=not both and answered(change_port=True),
        )
    observations = [Observation(server, first.mapped)]
    if first.mapped != local:
        if other is not None:
            targets = [(other[0], server[1]), other]  # RFC 5780 tests II and III
        else:
            targets = extra
        for target in targets:
            try:
                response = ask(target)
            except (StunError, OSError):
                if other is not None:
                    raise
                continue  # another responder's failure only leaves its comparison out
            if response is not None and response.mapped is not None:
                observations.append(Observation(target, response.mapped))
                if other is not None and response.mapped == first.mapped:
                    break  # test II saw the same mapping: endpoint-independent, no test III
    nat_type = classify_mapping(local, observations)
    return NatReport(nat_type, local, first.mapped, server, other, filtering, tuple(observations))
