"""``/sonm/forward/1.0.0``: reach a TCP or UDP port on a peer (a task's published port on a miner).

One stream carries one TCP connection, or the UDP datagrams of one client address. Wire format
(all integers big-endian)::

    request  (user -> serving node)   u16 length, then that many bytes of UTF-8 JSON:
                                      {"task": str, "port": int, "proto": "tcp"|"udp",
                                       "check": bool}
    reply    (serving node -> user)   u8 status, u16 length, UTF-8 message
    then, when the status is OK:      tcp: raw bytes both ways, half-close passed on
                                      udp: frames both ways, each u16 length + datagram

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
import logging
import socket
import struct
import threading
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import trio

from sonm_p2p.errors import (
    InvalidRequest,
    NotFound,
    PermissionDenied,
    SonmError,
    TaskNotFound,
    Unauthenticated,
    Unavailable,
)
from sonm_p2p.transport._splice import abort, send, splice
from sonm_p2p.transport.node import P2PNode

__all__ = [
    "FORWARD",
    "Forward",
    "Resolver",
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
    "open_forward",
    "serve_forward",
    "status_for",
]

log = logging.getLogger(__name__)

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


class ForwardError(SonmError):
    """A forward request refused by the serving node (``status``), or a malformed exchange."""

    def __init__(self, status: ForwardStatus, message: str) -> None:
        super().__init__(message)
        self.status = status


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
    """What a user asks to reach: ``port``/``proto`` of task ``task_id``."""

    task_id: str
    port: int
    proto: Proto = Proto.TCP
    check: bool = False

    def __post_init__(self) -> None:
        if not isinstance(self.port, int) or not 0 < self.port < 65536:
            raise ForwardError(ForwardStatus.BAD_REQUEST, f"bad port {self.port!r}")
        if not isinstance(self.task_id, str) or not self.task_id:
            raise ForwardError(ForwardStatus.BAD_REQUEST, "no task ID")
        try:
            object.__setattr__(self, "proto", Proto(self.proto))
        except ValueError:
            raise ForwardError(ForwardStatus.BAD_REQUEST, f"bad proto {self.proto!r}") from None

    def __str__(self) -> str:
        return f"{self.task_id} {self.port}/{self.proto}"


def encode_request(request: ForwardRequest) -> bytes:
    body = json.dumps(
        {
            "task": request.task_id,
            "port": request.port,
            "proto": str(request.proto),
            "check": request.check,
        },
        separators=(",", ":"),
    ).encode()
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
    return ForwardRequest(data.get("task"), port, data.get("proto", "tcp"), check)


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


# --- I/O (trio thread) -----------------------------------------------------------------------

#: ``resolve(peer_id, request) -> (host, port)`` of a serving node; raises to refuse.
Resolver = Callable[[str, ForwardRequest], tuple[str, int]]


async def _read_exact(stream: Any, n: int) -> bytes:
    from libp2p.network.stream.exceptions import StreamEOF

    got = bytearray()
    while len(got) < n:
        try:
            chunk = await stream.read(n - len(got))
        except StreamEOF:
            chunk = b""
        if not chunk:
            raise ForwardError(ForwardStatus.INTERNAL, "the stream ended during the header")
        got += chunk
    return bytes(got)


async def _read_reply(stream: Any) -> tuple[ForwardStatus, str]:
    status, length = decode_reply_header(await _read_exact(stream, REPLY_HEADER))
    message = (await _read_exact(stream, length)).decode(errors="replace") if length else ""
    return status, message


async def _finish(stream: Any, reply: bytes | None = None, *, reset: bool = False) -> None:
    try:
        with trio.move_on_after(2):
            if reply is not None:
                await send(stream, reply)
            await (stream.reset() if reset else stream.close())
    except Exception as exc:
        log.debug("forward stream close: %r", exc)


def serve_forward(
    node: P2PNode, resolve: Resolver, *, options: ForwardOptions | None = None
) -> None:
    """Serve ``/sonm/forward/1.0.0`` on ``node``: each request goes where ``resolve`` says.

    ``resolve(peer_id, request)`` runs in a worker thread (it may block: a database, Docker)
    and returns ``(host, port)`` to connect to, or raises to refuse: a :class:`ForwardError`,
    or a SonmError mapped by class (TaskNotFound → unknown task, PermissionDenied → not
    allowed, other NotFound → port not published, see :func:`status_for`). The user gets the
    refusal's message.
    """
    o = options or ForwardOptions()

    async def handler(stream: Any) -> None:
        peer = stream.muxed_conn.peer_id.to_base58()
        try:
            with trio.fail_after(o.header_timeout):
                length = request_length(await _read_exact(stream, 2))
                request = decode_request(await _read_exact(stream, length))
        except (ForwardError, trio.TooSlowError) as exc:
            reason = str(exc) or "no request in time"
            await _finish(stream, encode_reply(ForwardStatus.BAD_REQUEST, reason), reset=False)
            return
        except Exception as exc:
            log.debug("forward from %s: %r", peer, exc)
            await _finish(stream, reset=True)
            return
        try:
            host, port = await trio.to_thread.run_sync(resolve, peer, request)
        except Exception as exc:
            status, message = status_for(exc)
            if status is ForwardStatus.INTERNAL:
                log.warning("forward %s from %s: resolve failed: %r", request, peer, exc)
            else:
                log.info("forward %s from %s refused: %s", request, peer, message)
            await _finish(stream, encode_reply(status, message))
            return
        if request.check and request.proto is Proto.UDP:
            await _finish(stream, encode_reply(ForwardStatus.OK))
        elif request.proto is Proto.TCP:
            await _serve_tcp(stream, (host, port), request, o)
        else:
            from sonm_p2p.transport._forward_udp import serve_udp_stream

            await serve_udp_stream(stream, (host, port), request, o)

    node.handle(FORWARD, handler)


async def _serve_tcp(
    stream: Any, target: tuple[str, int], request: ForwardRequest, o: ForwardOptions
) -> None:
    try:
        with trio.fail_after(o.connect_timeout):
            tcp = await trio.open_tcp_stream(*target)
    except (OSError, trio.TooSlowError) as exc:
        why = "no answer" if isinstance(exc, trio.TooSlowError) else (exc.strerror or str(exc))
        message = f"{request.port}/tcp of task {request.task_id} is not reachable: {why}"
        await _finish(stream, encode_reply(ForwardStatus.UNREACHABLE, message))
        return
    if request.check:  # the target answers: that is all a check asks
        await tcp.aclose()
        await _finish(stream, encode_reply(ForwardStatus.OK))
        return
    try:
        await send(stream, encode_reply(ForwardStatus.OK))
    except Exception:
        await _finish(stream, reset=True)
        await tcp.aclose()
        return
    await splice(stream, tcp)


class Forward:
    """A local endpoint of a forward to a peer's task port; close it when done (idempotent).

    local_addr: ``(host, port)`` to point a client at (TCP listener or UDP socket).
    connections: TCP connections (or UDP client addresses) served so far.
    errors: the last failures of individual connections (a refusal, a lost peer), newest last.
    """

    def __init__(self, node: P2PNode, peer_id: str, request: ForwardRequest) -> None:
        self._node = node
        self.peer_id = peer_id
        self.request = request
        self.local_addr: tuple[str, int] = ("", 0)
        self.connections = 0
        self.errors: list[str] = []
        self._lock = threading.Lock()
        self._scope = trio.CancelScope()
        self.closed = False

    def _failed(self, what: str) -> None:
        log.warning("forward %s to %s…: %s", self.request, self.peer_id[:12], what)
        with self._lock:
            self.errors = [*self.errors[-19:], what]

    def close(self) -> None:
        """Stop the listener; connections and flows it carries end too."""
        if not self.closed:
            self.closed = True
            self._node._call_soon(self._scope.cancel)

    def __enter__(self) -> Forward:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        host, port = self.local_addr
        state = "closed" if self.closed else f"{self.connections} served"
        local = f"{host}:{port}/{self.request.proto}"
        return f"<Forward {local} -> {self.request} on {self.peer_id[:12]}… {state}>"

    async def _open(self, o: ForwardOptions) -> Any:
        """A stream with the request written and the OK reply read (raises the refusal)."""
        try:
            stream = await self._node.open_stream(self.peer_id, FORWARD)
        except SonmError:
            raise
        except Exception as exc:
            raise Unavailable(f"cannot reach {self.peer_id[:16]}… for a forward: {exc}") from None
        try:
            with trio.fail_after(o.header_timeout):
                await send(stream, encode_request(self.request))
                status, message = await _read_reply(stream)
        except BaseException:
            with trio.CancelScope(shield=True):
                await _finish(stream, reset=True)
            raise
        if status is not ForwardStatus.OK:
            await _finish(stream)
            raise error_for(status, message)
        return stream

    async def _serve_tcp_conn(self, tcp: trio.SocketStream, o: ForwardOptions) -> None:
        self.connections += 1
        try:
            stream = await self._node.open_stream(self.peer_id, FORWARD)
            await send(stream, encode_request(self.request))
        except Exception as exc:
            self._failed(f"cannot open a stream: {exc}")
            abort(tcp)
            await tcp.aclose()
            return

        async def expect_ok() -> None:
            with trio.fail_after(o.header_timeout):
                status, message = await _read_reply(stream)
            if status is not ForwardStatus.OK:
                self._failed(message or status.name)
                raise error_for(status, message)

        await splice(stream, tcp, first=expect_ok)


def open_forward(
    node: P2PNode,
    peer_id: str,
    task_id: str,
    port: int,
    proto: str = "tcp",
    local: tuple[str, int] = ("127.0.0.1", 0),
    *,
    check: bool = True,
    options: ForwardOptions | None = None,
) -> Forward:
    """Forward ``local`` to ``port``/``proto`` of task ``task_id`` on ``peer_id``.

    The peer must be reachable: connected, or its addresses given to ``node.connect_peer``
    (streams then redial it by the ladder). TCP: every connection to ``local`` is one stream;
    UDP: datagrams from each client address go on one stream and replies come back to it.
    With ``check`` (default) the request is asked once first, so a refusal raises here:
    TaskNotFound, PermissionDenied, NotFound (port not published), InvalidRequest,
    Unavailable (target or peer unreachable), DialError.
    """
    request = ForwardRequest(task_id, port, proto)
    return node.run(
        _open_forward, node, peer_id, request, local, check, options or ForwardOptions()
    )


async def _open_forward(
    node: P2PNode,
    peer_id: str,
    request: ForwardRequest,
    local: tuple[str, int],
    check: bool,
    o: ForwardOptions,
) -> Forward:
    forward = Forward(node, peer_id, request)
    if check:
        probe = Forward(
            node, peer_id, ForwardRequest(request.task_id, request.port, request.proto, True)
        )
        await _finish(await probe._open(o))
    host, port = local
    if request.proto is Proto.TCP:
        listeners = await trio.open_tcp_listeners(port, host=host)
        forward.local_addr = listeners[0].socket.getsockname()[:2]

        async def serve() -> None:
            with forward._scope:
                try:
                    await trio.serve_listeners(
                        lambda tcp: forward._serve_tcp_conn(tcp, o), listeners
                    )
                finally:
                    for listener in listeners:
                        with trio.CancelScope(shield=True):
                            await listener.aclose()

    else:
        from sonm_p2p.transport._forward_udp import serve_udp_flows

        family = socket.AF_INET6 if ":" in host else socket.AF_INET
        sock = trio.socket.socket(family, socket.SOCK_DGRAM)
        try:
            await sock.bind((host, port))
        except BaseException:
            sock.close()
            raise
        forward.local_addr = sock.getsockname()[:2]

        async def serve() -> None:
            with forward._scope:
                try:
                    await serve_udp_flows(forward, sock, o)
                finally:
                    sock.close()

    node._spawn(serve)
    return forward
