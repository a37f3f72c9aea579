"""Session streams: a long-lived stream a miner holds open to its hub (its end is the miner's
going away), accepted by :func:`session_acceptor` and opened by :func:`open_session`, on the
node's trio thread (``core.py`` delegates here; ``core`` is its ``NodeCore``).

A message session (:data:`~sonm_p2p.transport.heartbeat.SESSION_MESSAGES`) also carries
messages both ways, each one prefixed by its length, an unsigned varint (as libp2p's own
protocols frame their protobufs), moved between the stream and its
:class:`~sonm_p2p.transport._handles.Session` by :func:`serve_messages`. A miner's handshake and
task events travel this way, on the stream it holds open anyway: joining its hub then costs no
gRPC channel (a second stream, a Unix-socket hop through the bridge, an HTTP/2 connection set
up), which was a quarter of a hub's CPU per join (docs/SCALING.md).
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Sequence
from typing import Any

import trio

from sonm_p2p.errors import DialError
from sonm_p2p.transport._conn import aclose_quietly, read_until_end, reason
from sonm_p2p.transport._handles import Session
from sonm_p2p.transport.heartbeat import BEAT_SESSIONS, SESSION_MESSAGES, Heartbeat, Heartbeats

__all__ = [
    "MAX_MESSAGE",
    "SESSION_THREADS",
    "FrameError",
    "Unframer",
    "frame",
    "open_session",
    "serve_messages",
    "session_acceptor",
]

#: Worker threads that run session callbacks (a hub's miner handshakes) at once, per protocol.
SESSION_THREADS = 32

#: The largest message accepted (a handshake lists every task its miner runs): a peer that
#: announces a longer one is cut off, as it would be by gRPC's own limit.
MAX_MESSAGE = 16 * 1024 * 1024

#: Bytes asked of the stream in one read.
READ_SIZE = 64 * 1024


class FrameError(ValueError):
    """The peer broke the framing (a length over :data:`MAX_MESSAGE`, a varint too long)."""


def frame(message: bytes) -> bytes:
    """``message`` with its length in front (an unsigned LEB128 varint)."""
    n = len(message)
    head = bytearray()
    while n >= 0x80:
        head.append((n & 0x7F) | 0x80)
        n >>= 7
    head.append(n)
    return bytes(head) + message


class Unframer:
    """Splits a byte stream into the messages :func:`frame` made, whatever the reads' sizes."""

    def __init__(self, limit: int = MAX_MESSAGE) -> None:
        self.limit = limit
        self._buf = bytearray()

    def feed(self, data: bytes) -> list[bytes]:
        """The messages completed by ``data``, in order. Raises FrameError."""
        self._buf += data
        out: list[bytes] = []
        while True:
            length, start = 0, 0
            for i, byte in enumerate(self._buf):
                if i >= 5:  # 5 varint bytes hold 2**35: far past the limit already
                    raise FrameError("message length varint too long")
                length |= (byte & 0x7F) << (7 * i)
                if not byte & 0x80:
                    start = i + 1
                    break
            if not start:
                return out  # the length itself is not complete yet
            if length > self.limit:
                raise FrameError(f"message of {length} bytes (at most {self.limit})")
            if len(self._buf) < start + length:
                return out
            out.append(bytes(self._buf[start : start + length]))
            del self._buf[: start + length]


async def serve_messages(stream: Any, session: Session) -> None:
    """Deliver ``stream``'s messages to ``session`` and write what it sends, until the stream
    ends (EOF, reset, a framing error: the caller resets it). Call on the node's trio thread."""
    outgoing = session.outgoing
    assert outgoing is not None, "a session made without messages"

    async def write() -> None:
        try:
            async for message in outgoing:
                await stream.write(frame(message))
        except Exception:  # the stream is gone: the reader ends with it
            pass

    unframer = Unframer()
    async with trio.open_nursery() as nursery:
        nursery.start_soon(write)
        try:
            while True:
                data = await stream.read(READ_SIZE)
                if not data:
                    break
                for message in unframer.feed(data):
                    session.deliver(message)
        except Exception:  # a reset, a closed stream, a FrameError: the session is over
            pass
        nursery.cancel_scope.cancel()


def session_acceptor(
    core: Any,
    on_open: Callable[..., None],
    on_close: Callable[[str], None],
    heartbeat: Heartbeat | None = None,
    messages: bool = False,
) -> Callable[[Any], Awaitable[None]]:
    """A handler for session streams: ``on_open(peer_id)`` (``on_open(peer_id, session)``
    with ``messages``: the stream's messages are read as they come, from the start) and, when
    the stream ends, ``on_close(peer_id)``, each in a worker thread; ``heartbeat``: pinged from
    its start."""

    # Threads of their own: a crowd of sessions opening at once (a hub restarted, its
    # miners redialling) must not hold every token of trio's default limiter, which the
    # rest of the node needs (trio binds Unix sockets and resolves names on it).
    limiter = trio.CapacityLimiter(SESSION_THREADS)
    beats = Heartbeats(heartbeat) if heartbeat is not None else None
    running = False

    async def handler(stream: Any) -> None:
        nonlocal running
        peer = stream.muxed_conn.peer_id.to_string()
        if beats is not None and not running:  # the pinger starts with the first session
            running = True
            core.spawn(beats.run)
        key = beats.watch(peer, stream) if beats is not None else None  # pinged at once
        core.joins.session_started(peer)
        core.session_peers.add(peer)
        scope = trio.CancelScope()
        protocol = str(stream.get_protocol())
        session = Session(core.call_soon, peer, scope, protocol, messages=messages)

        async def opened() -> None:
            try:
                args = (peer, session) if messages else (peer,)
                await trio.to_thread.run_sync(on_open, *args, limiter=limiter)
            finally:
                core.joins.session_done(peer)

        try:
            async with trio.open_nursery() as nursery:
                nursery.start_soon(opened)
                with scope:
                    if messages:
                        await serve_messages(stream, session)
                    else:
                        await read_until_end(stream)
        finally:
            session.ended()
            core.session_peers.discard(peer)
            if beats is not None and key is not None:
                beats.unwatch(key)
            with trio.CancelScope(shield=True):
                await aclose_quietly(stream, reset=True)
                await trio.to_thread.run_sync(on_close, peer, limiter=limiter)

    return handler


async def open_session(
    core: Any,
    peer_id: str,
    protocols: Sequence[str],
    on_beat: Callable[[], None] | None = None,
    timeout: float | None = None,
) -> Session:
    """Open a session stream to a connected peer on the first of ``protocols`` it speaks.
    On a beat session each Yamux ping of the peer calls ``on_beat()`` (on the trio thread:
    it must not block). Raises DialError if it cannot within ``timeout``."""
    from libp2p.peer.id import ID

    try:
        with trio.fail_after(timeout or core.options.dial_timeout):
            stream = await core.host.new_stream(ID.from_base58(peer_id), list(protocols))
    except Exception as exc:
        wanted = " or ".join(protocols)
        raise DialError(f"cannot open {wanted} to {peer_id}: {reason(exc)}") from None
    protocol = str(stream.get_protocol() or protocols[0])
    scope = trio.CancelScope()
    messages = protocol == SESSION_MESSAGES
    session = Session(core.call_soon, peer_id, scope, protocol, messages=messages)

    async def hold() -> None:
        try:
            with scope:
                if protocol in BEAT_SESSIONS and on_beat is not None:
                    # The peer's Yamux pings on this connection are its beats.
                    stream.muxed_conn.on_pinged = on_beat
                if messages:
                    await serve_messages(stream, session)
                else:
                    await read_until_end(stream)
        finally:
            if getattr(stream.muxed_conn, "on_pinged", None) is on_beat:
                stream.muxed_conn.on_pinged = None
            with trio.CancelScope(shield=True):
                await aclose_quietly(stream, reset=True)
            session.ended()

    core.spawn(hold)
    return session
