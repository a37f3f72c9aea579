"""Reading and ending forward streams: the I/O both sides of ``/sonm/forward/1.0.0`` share."""

from __future__ import annotations

import logging
from typing import Any

import trio

from sonm_p2p.errors import ForwardError
from sonm_p2p.transport._splice import send
from sonm_p2p.transport.forward._wire import REPLY_HEADER, ForwardStatus, decode_reply_header

__all__ = ["finish", "read_exact", "read_reply"]

log = logging.getLogger("sonm_p2p.transport.forward")


async def read_exact(stream: Any, n: int) -> bytes:
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


async def read_reply(stream: Any) -> tuple[ForwardStatus, str]:
    status, length = decode_reply_header(await read_exact(stream, REPLY_HEADER))
    message = (await read_exact(stream, length)).decode(errors="replace") if length else ""
    return status, message


async def finish(stream: Any, reply: bytes | None = None, *, reset: bool = False) -> None:
    try:
        with trio.move_on_after(2):
            if reply is not None:
                await send(stream, reply)
            await (stream.reset() if reset else stream.close())
    except Exception as exc:
        log.debug("forward stream close: %r", exc)
