"""STUN: a Binding responder (RFC 5389, with RFC 5780 OTHER-ADDRESS / CHANGE-REQUEST) and a client
that learns a node's public mapping and classifies its NAT.

Messages are encoded and parsed by ``aioice.stun`` (the aiortc project's codec; only its pure
``Message`` / ``parse_message`` are used, none of its asyncio code). This module adds what a server
and an RFC 5780 client need around it: the magic-cookie check, 420 for unknown
comprehension-required attributes, which socket answers a CHANGE-REQUEST, and the classification.

Pure core (no sockets, no clock): :func:`encode_request`, :func:`decode_response`,
:func:`answer`, :func:`classify_mapping`, :func:`classify_filtering`. I/O: :class:`StunResponder`
(a trio task via ``serve()``, or its own thread via ``start()``) and the blocking client
:func:`binding` / :func:`probe_nat` (from trio, call them through ``trio.to_thread.run_sync``).

With only a primary ``(ip, port)`` the responder answers Binding requests and refuses
CHANGE-REQUEST with 420, as RFC 5780 asks; given an alternate ``(ip2, port2)`` it listens on all
four combinations and advertises OTHER-ADDRESS, which lets clients tell endpoint-independent,
address-dependent and symmetric NATs apart. Without one, a client can still compare the mappings
seen by several responders (``probe_nat(..., extra_servers=...)``).
"""

from __future__ import annotations

import contextlib
import enum
import os
import socket
import struct
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from ipaddress import IPv6Address, ip_address
from itertools import combinations
from typing import Any

import trio
from aioice import stun as _codec

__all__ = [
    "SOFTWARE",
    "STUN_PORT",
    "Address",
    "BindingResponse",
    "ClientOptions",
    "Filtering",
    "NatReport",
    "NatType",
    "Observation",
    "Reply",
    "ResponderAddresses",
    "StunError",
    "StunResponder",
    "answer",
    "binding",
    "classify_filtering",
    "classify_mapping",
    "decode_response",
    "encode_request",
    "probe_nat",
]

STUN_PORT = 3478  #: the hub's responder port (udp)
SOFTWARE = "sonm-p2p"  #: SOFTWARE attribute of the responder's answers

Address = tuple[str, int]  #: (ip, port); IPv6 without brackets

_CHANGE_IP = 0x04
_CHANGE_PORT = 0x02
_UNKNOWN_ATTRIBUTES = 0x000A
_MAX_DATAGRAM = 2048
_BINDING, _Class = _codec.Method.BINDING, _codec.Class


class StunError(Exception):
    """A STUN message that cannot be used: malformed, not a Binding response, or an error answer."""


# --- codec -----------------------------------------------------------------------------------


def _norm(addr: Any) -> Address:
    """(ip, port) from a socket address, with IPv4-mapped IPv6 turned back into IPv4."""
    ip, port = str(addr[0]), int(addr[1])
    parsed = ip_address(ip.split("%", 1)[0])
    if isinstance(parsed, IPv6Address) and parsed.ipv4_mapped is not None:
        return str(parsed.ipv4_mapped), port
    return str(parsed), port


def _parse(data: bytes) -> _codec.Message:
    """A STUN message (RFC 5389 framing: top bits zero, magic cookie), or StunError."""
    if len(data) < _codec.HEADER_LENGTH or data[0] & 0xC0:
        raise StunError("not a STUN message")
    if struct.unpack_from("!I", data, 4)[0] != _codec.COOKIE:
        raise StunError("no magic cookie (RFC 3489 messages are not supported)")
    try:
        return _codec.parse_message(data)
    except (ValueError, struct.error, UnicodeDecodeError, IndexError) as exc:
        raise StunError(f"malformed STUN message: {exc}") from exc


def encode_request(
    transaction_id: bytes, *, change_ip: bool = False, change_port: bool = False
) -> bytes:
    """A Binding request; with ``change_ip`` / ``change_port`` it carries a CHANGE-REQUEST."""
    if len(transaction_id) != 12:
        raise ValueError("a STUN transaction ID is 12 bytes")
    flags = (_CHANGE_IP if change_ip else 0) | (_CHANGE_PORT if change_port else 0)
    attributes = {"CHANGE-REQUEST": flags} if flags else {}
    return bytes(_codec.Message(_BINDING, _Class.REQUEST, transaction_id, attributes))


@dataclass(frozen=True)
class BindingResponse:
    """What a Binding response says.

    mapped: the client's address as the responder saw it (XOR-MAPPED-ADDRESS, else MAPPED-ADDRESS).
    response_origin / other_address: RFC 5780 attributes, None when absent.
    error: (code, reason) of an error response, else None.
    source: where the datagram came from (filled in by :func:`binding`).
    """

    transaction_id: bytes
    mapped: Address | None
    response_origin: Address | None = None
    other_address: Address | None = None
    error: tuple[int, str] | None = None
    software: str | None = None
    source: Address | None = None


def decode_response(data: bytes) -> BindingResponse:
    """Parse a Binding success or error response; StunError for anything else."""
    msg = _parse(data)
    kind = msg.message_class
    if msg.message_method != _BINDING or kind not in (_Class.RESPONSE, _Class.ERROR):
        raise StunError(f"not a Binding response: {msg.message_method!r} {kind!r}")
    attrs = msg.attributes
    error = None
    if kind == _Class.ERROR:
        error = attrs.get("ERROR-CODE", (0, "error response without ERROR-CODE"))
    elif "XOR-MAPPED-ADDRESS" not in attrs and "MAPPED-ADDRESS" not in attrs:
        raise StunError("Binding success response without a mapped address")

    def addr(*names: str) -> Address | None:
        found = [attrs[n] for n in names if n in attrs]
        return _norm(found[0]) if found else None

    return BindingResponse(
        msg.transaction_id,
        addr("XOR-MAPPED-ADDRESS", "MAPPED-ADDRESS"),
        response_origin=addr("RESPONSE-ORIGIN"),
        other_address=addr("OTHER-ADDRESS"),
        error=error,
        software=attrs.get("SOFTWARE"),
    )


def _unknown_required(data: bytes) -> list[int]:
    """Comprehension-required attribute types (< 0x8000) the codec does not know."""
    unknown, pos = [], _codec.HEADER_LENGTH
    while pos + 4 <= len(data):
        kind, length = struct.unpack_from("!HH", data, pos)
        if kind < 0x8000 and kind not in _codec.ATTRIBUTES_BY_TYPE:
            unknown.append(kind)
        pos += 4 + length + _codec.padding_length(length)
    return unknown


def _error(transaction_id: bytes, code: int, reason: str, unknown: Sequence[int] = ()) -> bytes:
    data = bytes(
        _codec.Message(_BINDING, _Class.ERROR, transaction_id, {"ERROR-CODE": (code, reason)})
    )
    if unknown:  # the codec has no UNKNOWN-ATTRIBUTES: append it (RFC 5389 section 15.9)
        value = struct.pack(f"!{len(unknown)}H", *unknown)
        value += bytes(_codec.padding_length(len(value)))
        data += struct.pack("!HH", _UNKNOWN_ATTRIBUTES, 2 * len(unknown)) + value
        data = _codec.set_body_length(data, len(data) - _codec.HEADER_LENGTH)
    return data


# --- responder core --------------------------------------------------------------------------


@dataclass(frozen=True)
class ResponderAddresses:
    """Where a responder listens.

    primary: its main (ip, port). alternate: a second (ip, port) differing in both; with it the
    responder listens on all four combinations (RFC 5780 section 4.1).
    """

    primary: Address
    alternate: Address | None = None

    def __post_init__(self) -> None:
        if self.alternate is None:
            return
        (ip1, port1), (ip2, port2) = self.primary, self.alternate
        if ip_address(ip1).is_unspecified or ip_address(ip2).is_unspecified:
            raise ValueError("with an alternate address, both IPs must be specific (not 0.0.0.0)")
        if ip_address(ip1).version != ip_address(ip2).version:
            raise ValueError("primary and alternate addresses must be of one IP family")
        if ip1 == ip2 or (port1 == port2 and port1 != 0):
            raise ValueError("the alternate address must differ in both IP and port")

    @property
    def local_addresses(self) -> tuple[Address, ...]:
        """Every (ip, port) to listen on: 1, or 4 with an alternate."""
        if self.alternate is None:
            return (self.primary,)
        (ip1, port1), (ip2, port2) = self.primary, self.alternate
        return ((ip1, port1), (ip1, port2), (ip2, port1), (ip2, port2))

    def other_address(self, local: Address) -> Address | None:
        """OTHER-ADDRESS for a request received on ``local``: the address differing in both."""
        return self.changed(local, change_ip=True, change_port=True)

    def changed(self, local: Address, *, change_ip: bool, change_port: bool) -> Address | None:
        """The listening address a CHANGE-REQUEST received on ``local`` is answered from."""
        if self.alternate is None:
            return None
        (ip1, port1), (ip2, port2) = self.primary, self.alternate
        ip, port = local
        if change_ip:
            ip = ip2 if ip == ip1 else ip1
        if change_port:
            port = port2 if port == port1 else port1
        return ip, port


@dataclass(frozen=True)
class Reply:
    """A datagram to send: ``data`` from the listening address ``source`` to ``destination``."""

    data: bytes
    source: Address
    destination: Address


def answer(
    data: bytes,
    client: Address,
    local: Address,
    addresses: ResponderAddresses,
    *,
    software: str | None = SOFTWARE,
) -> Reply | None:
    """The responder's answer to ``data`` received from ``client`` on listening address ``local``.

    None for anything that is not a well-formed Binding request (dropped silently, RFC 5389
    section 7.3). 420 for unknown comprehension-required attributes, and for CHANGE-REQUEST when
    there is no alternate address (RFC 5780 section 6.1).
    """
    try:
        msg = _parse(data)
    except StunError:
        return None
    if msg.message_method != _BINDING or msg.message_class != _Class.REQUEST:
        return None
    client = _norm(client)
    tid = msg.transaction_id
    unknown = _unknown_required(data)
    change = msg.attributes.get("CHANGE-REQUEST")
    if change is not None and addresses.alternate is None:
        unknown.append(0x0003)
    if unknown:
        return Reply(_error(tid, 420, "Unknown Attribute", unknown), local, client)
    change_ip, change_port = bool((change or 0) & _CHANGE_IP), bool((change or 0) & _CHANGE_PORT)
    source = addresses.changed(local, change_ip=change_ip, change_port=change_port) or local
    attributes: dict[str, Any] = {"XOR-MAPPED-ADDRESS": client}
    if not ip_address(source[0]).is_unspecified:  # a wildcard socket does not know its address
        attributes["RESPONSE-ORIGIN"] = source
    other = addresses.other_address(local)
    if other is not None:
        attributes["OTHER-ADDRESS"] = other
    if software:
        attributes["SOFTWARE"] = software
    reply = _codec.Message(_BINDING, _Class.RESPONSE, tid, attributes)
    reply.add_fingerprint()
    return Reply(bytes(reply), source, client)


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
    mean ENDPOINT_INDEPENDENT.
    """
    if not observations:
        return NatType.BLOCKED
    local = _norm(local)
    if all(o.mapped == local for o in observations):
        return NatType.OPEN
    same_ip = [
        (a, b)
        for a, b in combinations(observations, 2)
        if a.server[0] == b.server[0] and a.server[1] != b.server[1]
    ]
    cross_ip = [(a, b) for a, b in combinations(observations, 2) if a.server[0] != b.server[0]]
    if any(a.mapped != b.mapped for a, b in same_ip):
        return NatType.SYMMETRIC
    if any(a.mapped != b.mapped for a, b in cross_ip):
        return NatType.ADDRESS_DEPENDENT if same_ip else NatType.SYMMETRIC
    return NatType.ENDPOINT_INDEPENDENT if cross_ip else NatType.UNKNOWN


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

    def as_dict(self) -> dict[str, Any]:
        """A JSON-ready form (``sonmcli nat --json``): addresses as ``ip:port`` / ``[ip]:port``."""
        out: dict[str, Any] = {"nat_type": self.nat_type.value}
        out |= {k: _fmt(getattr(self, k)) for k in ("local", "mapped", "server", "other_address")}
        out["filtering"] = self.filtering.value if self.filtering else None
        out["observations"] = [
            {"server": _fmt(o.server), "mapped": _fmt(o.mapped)} for o in self.observations
        ]
        return out


def _fmt(a: Address | None) -> str | None:
    return None if a is None else (f"[{a[0]}]:{a[1]}" if ":" in a[0] else f"{a[0]}:{a[1]}")


def _family(ip: str) -> int:
    return socket.AF_INET6 if ip_address(ip).version == 6 else socket.AF_INET


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
    extra_servers: other responders whose mappings are compared when it does not.
    sock: the UDP socket to test (its mapping is what is learned); by default a fresh one on an
        ephemeral port, closed afterwards. StunError when a responder answers a plain Binding
        request with an error.
    """
    server, extra = _norm(server), [_norm(s) for s in extra_servers]
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
            response = ask(target)
            if response is not None and response.mapped is not None:
                observations.append(Observation(target, response.mapped))
                if other is not None and response.mapped == first.mapped:
                    break  # test II saw the same mapping: endpoint-independent, no test III
    nat_type = classify_mapping(local, observations)
    return NatReport(nat_type, local, first.mapped, server, other, filtering, tuple(observations))


# --- responder I/O ---------------------------------------------------------------------------


class StunResponder:
    """A STUN Binding responder on UDP (the hub runs one on 3478/udp).

    Either ``await responder.serve()`` in a trio nursery, or ``start()`` / ``close()`` to run it on
    its own thread. Sockets are bound by ``bind()`` (called by both), so a caller can bind inside a
    particular network namespace first; port 0 asks for ephemeral ports (see ``addresses``).
    """

    def __init__(self, addresses: ResponderAddresses, *, software: str | None = SOFTWARE) -> None:
        self.addresses = addresses
        self.software = software
        self.answered = 0
        self._socks: dict[Address, socket.socket] = {}
        self._thread: threading.Thread | None = None
        self._token: trio.lowlevel.TrioToken | None = None
        self._scope: trio.CancelScope | None = None

    def __repr__(self) -> str:
        where = " ".join(f"{ip}:{port}" for ip, port in self.addresses.local_addresses)
        state = "running" if self._thread or self._socks else "idle"
        return f"<StunResponder {where} {state} answered={self.answered}>"

    def bind(self) -> ResponderAddresses:
        """Bind the listening sockets (idempotent); returns the addresses with real ports.

        OSError when an address cannot be bound (nothing stays bound then).
        """
        if self._socks:
            return self.addresses
        family = _family(self.addresses.primary[0])
        socks: dict[Address, socket.socket] = {}
        with contextlib.ExitStack() as opened:

            def bind_one(addr: Address) -> Address:
                s = opened.enter_context(socket.socket(family, socket.SOCK_DGRAM))
                if family == socket.AF_INET6:
                    s.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
                s.bind(addr)
                bound = _norm(s.getsockname())
                socks[bound] = s
                return bound

            primary, alternate = bind_one(self.addresses.primary), None
            if self.addresses.alternate is not None:
                ip2, port2 = _norm(self.addresses.alternate)
                alternate = (ip2, bind_one((primary[0], port2))[1])
                bind_one((ip2, primary[1]))
                bind_one(alternate)
            opened.pop_all()  # all bound: keep them open
        self.addresses = ResponderAddresses(primary, alternate)
        self._socks = socks
        return self.addresses

    async def serve(self, *, task_status: Any = trio.TASK_STATUS_IGNORED) -> None:
        """Answer requests until cancelled; ``task_status.started(addresses)`` once listening."""
        self.bind()
        tsocks = {addr: trio.socket.from_stdlib_socket(s) for addr, s in self._socks.items()}
        try:
            async with trio.open_nursery() as nursery:
                for local, tsock in tsocks.items():
                    nursery.start_soon(self._answer_on, local, tsock, tsocks)
                task_status.started(self.addresses)
        finally:
            for tsock in tsocks.values():
                tsock.close()
            self._socks = {}

    async def _answer_on(self, local: Address, tsock: Any, tsocks: dict[Address, Any]) -> None:
        while True:
            try:
                data, client = await tsock.recvfrom(_MAX_DATAGRAM)
            except OSError:  # an ICMP error surfacing on the socket
                continue
            reply = answer(data, client, local, self.addresses, software=self.software)
            if reply is None:
                continue
            try:
                await tsocks[reply.source].sendto(reply.data, reply.destination)
                self.answered += 1
            except OSError:
                pass  # unreachable client: UDP has no one to tell

    def start(self) -> ResponderAddresses:
        """Run ``serve()`` on a thread of its own; returns once listening (idempotent)."""
        if self._thread is None:
            self.bind()  # binding errors surface here, in the caller's thread
            started = threading.Event()
            self._scope = trio.CancelScope()

            async def main() -> None:
                self._token = trio.lowlevel.current_trio_token()
                with self._scope:
                    started.set()
                    await self.serve()

            self._thread = threading.Thread(target=trio.run, args=(main,), name="stun", daemon=True)
            self._thread.start()
            started.wait()
        return self.addresses

    def close(self) -> None:
        """Stop the thread started by ``start()`` and close the sockets (idempotent)."""
        thread, self._thread = self._thread, None
        if thread is not None and self._scope is not None:
            with contextlib.suppress(trio.RunFinishedError):
                trio.from_thread.run_sync(self._scope.cancel, trio_token=self._token)
            thread.join()
        for s in self._socks.values():
            s.close()
        self._socks = {}
