"""STUN messages and the responder's answers (pure; see the package docstring)."""

from __future__ import annotations

import socket
import struct
from collections.abc import Sequence
from dataclasses import dataclass
from ipaddress import IPv6Address, ip_address
from typing import Any

from aioice import stun as _codec

from sonm_p2p.errors import StunError

STUN_PORT = 3478  #: the hub's responder port (udp)
#: Its second port by default (``STUN_PORT + 1``): two ports of one IP tell a NAT that maps per
#: destination port (symmetric) from one that keeps the mapping.
STUN_SECOND_PORT = STUN_PORT + 1
SOFTWARE = "sonm-p2p"  #: SOFTWARE attribute of the responder's answers

Address = tuple[str, int]  #: (ip, port); IPv6 without brackets

_CHANGE_IP = 0x04
_CHANGE_PORT = 0x02
_UNKNOWN_ATTRIBUTES = 0x000A
_MAX_DATAGRAM = 2048
_BINDING, _Class = _codec.Method.BINDING, _codec.Class


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
    responder listens on all four combinations (RFC 5780 section 4.1). second_port: without an
    alternate, also answer plain Binding requests on (primary IP, second_port) (0: any free
    port); a client compares the mappings the two ports see, which tells a symmetric NAT (a
    mapping per destination port) from one that keeps its mapping. CHANGE-REQUEST still needs
    an alternate (it is refused with 420 without one).
    """

    primary: Address
    alternate: Address | None = None
    second_port: int | None = None

    def __post_init__(self) -> None:
        if self.second_port is not None:
            if self.alternate is not None:
                raise ValueError("an alternate address gives the second port already")
            if not 0 <= self.second_port < 65536:
                raise ValueError(f"second STUN port {self.second_port} out of range")
            if self.second_port == self.primary[1] != 0:
                raise ValueError("the second STUN port must differ from the first")
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
        """Every (ip, port) to listen on, the primary first: 1, 2 with a second port, or 4
        with an alternate."""
        if self.alternate is None:
            if self.second_port is None:
                return (self.primary,)
            return (self.primary, (self.primary[0], self.second_port))
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


def _family(ip: str) -> int:
    return socket.AF_INET6 if ip_address(ip).version == 6 else socket.AF_INET
