"""The wire format of ``/sonm/forward/1.0.0`` (pure: framing, statuses, their errors).

One stream carries one TCP connection, or the UDP datagrams of one client address. Wire format
(all integers big-endian)::

    request  (user -> serving node)   u16 length, then that many bytes of UTF-8 JSON:
                                      {"task": str, "port": int, "proto": "tcp"|"udp",
                                       "check": bool, "grant": str (optional)}
    reply    (serving node -> user)   u8 status, u16 length, UTF-8 message
    then, when the status is OK:      tcp: raw bytes both ways, half-close passed on
                                      udp: frames both ways, each u16 length + datagram

``grant`` (``auth.peer_grant``) says whose key the requesting peer acts for: a ``sonmcli`` process
talks on the overlay with a peer ID of its own, not the client's key (libp2p assumes one peer ID
per host). Without it the requester is the node of its peer ID.

``check`` asks only whether the request would be served (for TCP the target is connected to and
closed at once); the user side does it once when a forward is opened, so refusals surface as an
error there and then (``TaskNotFound``, ``PermissionDenied``, ``NotFound``, ``Unavailable``)
instead of as a reset later.

The serving side decides what a request may reach: ``serve_forward(node, resolve)`` calls
``resolve(peer_id, request) -> (host, port)``; it raises a :class:`ForwardError` (or a
``SonmError``, mapped by class) to refuse. The user side is ``open_forward(node, peer_id, ...)``:
a local TCP listener (each connection one stream) or a local UDP socket (one stream per client
address, replies routed back). Framing is pure (``encode_*`` / ``decode_*`` /
:class:`FrameDecoder`); the I/O below it runs on the node's trio thread.
"""

from __future__ import annotations

import enum
import json
import struct
from dataclasses import dataclass

from sonm_p2p.errors import (
    ForwardError,
    InvalidRequest,
    NotFound,
    PermissionDenied,
    SonmError,
    TaskNotFound,
    Unauthenticated,
    Unavailable,
)

__all__ = [
    "FORWARD",
    "MAX_DATAGRAM",
    "MAX_REQUEST",
    "ForwardError",
    "ForwardOptions",
    "ForwardRequest",
    "ForwardStatus",
    "FrameDecoder",
    "Proto",
    "decode_reply",
    "decode_request",
    "encode_datagram",
    "encode_reply",
    "encode_request",
    "error_for",
    "status_for",
]

FORWARD = "/sonm/forward/1.0.0"
MAX_REQUEST = 4096  #: bytes of request JSON accepted
MAX_MESSAGE = 1024  #: bytes of reply message sent (longer ones are cut)
MAX_DATAGRAM = 65535  #: the largest UDP payload a frame carries


class Proto(enum.StrEnum):
    TCP = "tcp"
    UDP = "udp"


class ForwardStatus(enum.IntEnum):
    """Status byte of a reply."""

    OK = 0
    BAD_REQUEST = 1  #: malformed request, unknown proto, port out of range
    UNKNOWN_TASK = 2  #: no such task on this node
    NOT_ALLOWED = 3  #: the peer may not reach this task (not its owner)
    NOT_PUBLISHED = 4  #: the task publishes no such port/proto
    UNREACHABLE = 5  #: the target refused or did not answer
    INTERNAL = 6  #: the serving node failed


@dataclass(frozen=True, kw_only=True)
class ForwardOptions:
    """Timeouts and sizes of both sides.

    header_timeout: seconds for the request/reply exchange; defaults to 10.
    connect_timeout: seconds the serving side waits for the target's TCP connect; defaults to 5.
    udp_idle: seconds without a datagram either way before a UDP flow's stream closes;
        defaults to 120.
    max_udp_flows: client addresses one UDP forward serves at once; defaults to 256.
    """

    header_timeout: float = 10.0
    connect_timeout: float = 5.0
    udp_idle: float = 120.0
    max_udp_flows: int = 256


@dataclass(frozen=True)
class ForwardRequest:
    """What a user asks to reach: ``port``/``proto`` of task ``task_id``; ``grant``: whose key
    the requesting peer acts for (``auth.peer_grant``; "" for its own)."""

    task_id: str
    port: int
    proto: Proto = Proto.TCP
    check: bool = False
    grant: str = ""

    def __post_init__(self) -> None:
        if not isinstance(self.port, int) or not 0 < self.port < 65536:
            raise ForwardError(ForwardStatus.BAD_REQUEST, f"bad port {self.port!r}")
        if not isinstance(self.task_id, str) or not self.task_id:
            raise ForwardError(ForwardStatus.BAD_REQUEST, "no task ID")
        if not isinstance(self.grant, str):
            raise ForwardError(ForwardStatus.BAD_REQUEST, "bad grant")
        try:
            object.__setattr__(self, "proto", Proto(self.proto))
        except ValueError:
            raise ForwardError(ForwardStatus.BAD_REQUEST, f"bad proto {self.proto!r}") from None

    def __str__(self) -> str:
        return f"{self.task_id} {self.port}/{self.proto}"


def encode_request(request: ForwardRequest) -> bytes:
    fields = {
        "task": request.task_id,
        "port": request.port,
        "proto": str(request.proto),
        "check": request.check,
    }
    if request.grant:
        fields["grant"] = request.grant
    body = json.dumps(fields, separators=(",", ":")).encode()
    if len(body) > MAX_REQUEST:
        raise ForwardError(ForwardStatus.BAD_REQUEST, "request too large")
    return struct.pack("!H", len(body)) + body


def request_length(header: bytes) -> int:
    """The body length announced by a request's 2-byte header (ForwardError when too large)."""
    (length,) = struct.unpack("!H", header)
    if length == 0 or length > MAX_REQUEST:
        raise ForwardError(ForwardStatus.BAD_REQUEST, f"request length {length} out of range")
    return length


def decode_request(body: bytes) -> ForwardRequest:
    """A request from its JSON body; ForwardError(BAD_REQUEST) when malformed."""
    try:
        data = json.loads(body.decode())
    except (UnicodeDecodeError, ValueError):
        raise ForwardError(ForwardStatus.BAD_REQUEST, "request is not JSON") from None
    if not isinstance(data, dict):
        raise ForwardError(ForwardStatus.BAD_REQUEST, "request is not a JSON object")
    port, check = data.get("port"), data.get("check", False)
    if isinstance(port, bool) or not isinstance(check, bool):
        raise ForwardError(ForwardStatus.BAD_REQUEST, "bad request fields")
    return ForwardRequest(
        data.get("task"), port, data.get("proto", "tcp"), check, data.get("grant", "")
    )


def encode_reply(status: ForwardStatus, message: str = "") -> bytes:
    text = message.encode()[:MAX_MESSAGE]
    return struct.pack("!BH", int(status), len(text)) + text


REPLY_HEADER = 3  #: bytes before a reply's message


def decode_reply_header(header: bytes) -> tuple[ForwardStatus, int]:
    """(status, message length) of a reply's 3-byte header."""
    code, length = struct.unpack("!BH", header)
    try:
        status = ForwardStatus(code)
    except ValueError:
        raise ForwardError(ForwardStatus.INTERNAL, f"unknown reply status {code}") from None
    if length > MAX_MESSAGE:
        raise ForwardError(ForwardStatus.INTERNAL, "reply message too long")
    return status, length


def decode_reply(data: bytes) -> tuple[ForwardStatus, str]:
    """(status, message) of a whole reply."""
    if len(data) < REPLY_HEADER:
        raise ForwardError(ForwardStatus.INTERNAL, "truncated reply")
    status, length = decode_reply_header(data[:REPLY_HEADER])
    if len(data) != REPLY_HEADER + length:
        raise ForwardError(ForwardStatus.INTERNAL, "reply length mismatch")
    return status, data[REPLY_HEADER:].decode(errors="replace")


def encode_datagram(payload: bytes) -> bytes:
    if len(payload) > MAX_DATAGRAM:
        raise ForwardError(ForwardStatus.BAD_REQUEST, f"datagram of {len(payload)} bytes")
    return struct.pack("!H", len(payload)) + payload


class FrameDecoder:
    """Splits a byte stream into the datagrams framed by :func:`encode_datagram`."""

    def __init__(self) -> None:
        self._buf = bytearray()

    def feed(self, data: bytes) -> list[bytes]:
        """Datagrams completed by ``data`` (zero-length datagrams included)."""
        self._buf += data
        out: list[bytes] = []
        while len(self._buf) >= 2:
            (length,) = struct.unpack_from("!H", self._buf)
            if len(self._buf) < 2 + length:
                break
            out.append(bytes(self._buf[2 : 2 + length]))
            del self._buf[: 2 + length]
        return out

    @property
    def pending(self) -> int:
        """Bytes of an incomplete frame held back."""
        return len(self._buf)


_BY_STATUS: dict[ForwardStatus, type[SonmError]] = {
    ForwardStatus.BAD_REQUEST: InvalidRequest,
    ForwardStatus.UNKNOWN_TASK: TaskNotFound,
    ForwardStatus.NOT_ALLOWED: PermissionDenied,
    ForwardStatus.NOT_PUBLISHED: NotFound,
    ForwardStatus.UNREACHABLE: Unavailable,
}


def error_for(status: ForwardStatus, message: str) -> SonmError:
    """The domain error a user gets for a refused request (TaskNotFound, PermissionDenied...)."""
    cls = _BY_STATUS.get(status, SonmError)
    return cls(message or status.name.lower().replace("_", " "))


def status_for(exc: BaseException) -> tuple[ForwardStatus, str]:
    """The reply for an error raised by a serving node's ``resolve``."""
    if isinstance(exc, ForwardError):
        return exc.status, str(exc)
    if isinstance(exc, TaskNotFound):
        return ForwardStatus.UNKNOWN_TASK, str(exc)
    if isinstance(exc, PermissionDenied | Unauthenticated):
        return ForwardStatus.NOT_ALLOWED, str(exc)
    if isinstance(exc, NotFound):
        return ForwardStatus.NOT_PUBLISHED, str(exc)
    if isinstance(exc, InvalidRequest):
        return ForwardStatus.BAD_REQUEST, str(exc)
    if isinstance(exc, Unavailable):
        return ForwardStatus.UNREACHABLE, str(exc)
    if isinstance(exc, SonmError):
        return ForwardStatus.INTERNAL, str(exc)
    return ForwardStatus.INTERNAL, "internal error"
