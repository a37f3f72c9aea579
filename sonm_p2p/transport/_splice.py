"""Copy bytes both ways between a libp2p stream and a trio TCP stream, with half-close.

Writes to a libp2p stream go through :func:`send` / :func:`send_eof`, never cancelled half-way:
py-libp2p encrypts a frame (using up a Noise nonce) before it writes it, so a task cancelled
between the two leaves the *connection* out of step and every stream on it dies with "Failed
authentication of message" at the peer (seen when a forward closed while a splice was
half-closing). Cancellation is delivered after the write instead; py-libp2p bounds a write that
cannot progress itself (a Yamux window that stays shut for 5 s).
"""

from __future__ import annotations

import logging
import socket
import struct
from collections.abc import Awaitable, Callable

import trio

log = logging.getLogger(__name__)

CHUNK = 64 * 1024
#: Most bytes read from the TCP side at once: what one Yamux frame (12-byte header) carries in one
#: Noise message (65535 bytes less its 16-byte tag). A 64 KiB read became two Yamux frames, the
#: first split again into two Noise messages.
TCP_READ = 65535 - 16 - 12


async def splice(
    stream,  # noqa: ANN001 - libp2p INetStream
    tcp: trio.SocketStream,
    *,
    first: Callable[[], Awaitable[None]] | None = None,
) -> None:
    """Run until both directions ended; then close both ends.

    End of data in one direction is passed on as a half-close (FIN) so request/response
    protocols over TCP keep working; an error in either direction resets the stream and
    resets the socket (RST) at once, so the far side sees the failure instead of a hang or a
    normal end.

    first: awaited before any stream byte goes to the socket (e.g. reading a protocol reply);
    an exception from it fails the splice like any other error.
    """
    from libp2p.network.stream.exceptions import StreamEOF

    failed = False

    async def stream_to_tcp() -> None:
        nonlocal failed
        try:
            if first is not None:
                await first()
            while True:
                try:
                    data = await stream.read(CHUNK)
                except StreamEOF:
                    break
                if not data:
                    break
                await tcp.send_all(data)
            if _connection_lost(stream):
                # py-libp2p ends a stream's reads quietly when its connection goes: that is
                # not the peer's FIN, and the TCP side must not take it for one.
                raise ConnectionError("the connection to the peer was lost")
            try:
                await tcp.send_eof()
            except (trio.BrokenResourceError, trio.ClosedResourceError, OSError):
                pass
        except Exception as exc:  # the stream was reset or the socket broke
            log.debug("splice stream->tcp ended: %r", exc)
            failed = True
            nursery.cancel_scope.cancel()

    async def tcp_to_stream() -> None:
        nonlocal failed
        try:
            while True:
                data = await tcp.receive_some(TCP_READ)
                if not data:
                    break
                await send(stream, data)
            await send_eof(stream)
        except Exception as exc:
            log.debug("splice tcp->stream ended: %r", exc)
            failed = True
            nursery.cancel_scope.cancel()

    try:
        async with trio.open_nursery() as nursery:
            nursery.start_soon(stream_to_tcp)
            nursery.start_soon(tcp_to_stream)
    finally:
        with trio.CancelScope(shield=True):
            if failed:
                await _quiet(stream.reset())
                abort(tcp)
            else:
                await _quiet(stream.close())
            await _quiet(tcp.aclose())


async def send(stream, data: bytes) -> None:  # noqa: ANN001 - libp2p INetStream
    """Write ``data`` to a libp2p stream; a cancellation waits for the write to finish."""
    with trio.CancelScope(shield=True):
        await stream.write(data)


async def send_eof(stream) -> None:  # noqa: ANN001
    """Half-close a libp2p stream (see :func:`send`)."""
    with trio.CancelScope(shield=True):
        await stream.close_write()


def _connection_lost(stream) -> bool:  # noqa: ANN001
    conn = getattr(stream, "muxed_conn", None)
    if conn is None:
        return False
    shutting = getattr(conn, "event_shutting_down", None)
    return bool(getattr(conn, "is_closed", False)) or (shutting is not None and shutting.is_set())


def abort(tcp: trio.SocketStream) -> None:
    """Make the coming close of ``tcp`` a reset (RST): the peer sees an error, not an end."""
    try:
        tcp.socket.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    except OSError:
        pass


async def _quiet(aw) -> None:  # noqa: ANN001
    try:
        with trio.move_on_after(2):
            await aw
    except Exception as exc:
        log.debug("close failed: %r", exc)
