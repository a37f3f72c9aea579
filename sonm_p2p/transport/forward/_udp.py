"""The UDP half of ``/sonm/forward/1.0.0`` (see ``_wire.py`` for the protocol).

Datagrams travel as frames (u16 length + payload) on one stream per user-side client address;
a flow ends when either side ends it or nothing moved for ``ForwardOptions.udp_idle`` seconds.
"""

from __future__ import annotations

import logging
import socket
from collections.abc import Awaitable, Callable
from typing import Any, Protocol

import trio

from sonm_p2p.transport._splice import send
from sonm_p2p.transport.forward._streams import finish
from sonm_p2p.transport.forward._wire import (
    MAX_DATAGRAM,
    ForwardOptions,
    ForwardRequest,
    ForwardStatus,
    FrameDecoder,
    encode_datagram,
    encode_reply,
)

__all__ = ["FlowOwner", "serve_udp_flows", "serve_udp_stream"]

log = logging.getLogger("sonm_p2p.transport.forward")

_CHUNK = 64 * 1024


async def _udp_pump(
    stream: Any,
    receive: Callable[[], Awaitable[bytes]],
    deliver: Callable[[bytes], Awaitable[Any]],
    idle: float,
) -> None:
    """Frame datagrams from ``receive()`` onto the stream and deliver the stream's datagrams,
    until either side ends or nothing moved for ``idle`` seconds."""
    last = trio.current_time()

    async def up() -> None:
        nonlocal last
        while True:
            data = await receive()
            await send(stream, encode_datagram(data))
            last = trio.current_time()

    async def down() -> None:
        nonlocal last
        decoder = FrameDecoder()
        while True:
            try:
                data = await stream.read(_CHUNK)
            except Exception:
                data = b""
            if not data:
                return
            for datagram in decoder.feed(data):
                try:
                    await deliver(datagram)
                except ConnectionRefusedError:  # ICMP port unreachable: UDP carries on
                    pass
            last = trio.current_time()

    async with trio.open_nursery() as nursery:

        async def run(fn: Callable[[], Awaitable[None]]) -> None:
            try:
                await fn()
            except Exception as exc:
                log.debug("udp forward ended: %r", exc)
            nursery.cancel_scope.cancel()

        async def watch_idle() -> None:
            while trio.current_time() - last < idle:
                await trio.sleep(idle - (trio.current_time() - last))
            nursery.cancel_scope.cancel()

        nursery.start_soon(run, up)
        nursery.start_soon(run, down)
        nursery.start_soon(watch_idle)


async def serve_udp_stream(
    stream: Any, target: tuple[str, int], request: ForwardRequest, o: ForwardOptions
) -> None:
    family = socket.AF_INET6 if ":" in target[0] else socket.AF_INET
    sock = trio.socket.socket(family, socket.SOCK_DGRAM)
    try:
        await sock.connect(target)
    except OSError as exc:
        sock.close()
        message = f"{request.port}/udp of task {request.task_id} is not reachable: {exc}"
        await finish(stream, encode_reply(ForwardStatus.UNREACHABLE, message))
        return
    try:
        await send(stream, encode_reply(ForwardStatus.OK))

        async def receive() -> bytes:
            while True:
                try:
                    return await sock.recv(MAX_DATAGRAM)
                except ConnectionRefusedError:  # an earlier datagram found no listener
                    continue

        await _udp_pump(stream, receive, sock.send, o.udp_idle)
    except Exception as exc:
        log.debug("udp forward %s: %r", request, exc)
    finally:
        sock.close()
        with trio.CancelScope(shield=True):
            await finish(stream)


class FlowOwner(Protocol):
    """What the user side of a UDP forward serves flows for (a ``Forward``)."""

    connections: int

    async def open_stream(self, o: ForwardOptions) -> Any:
        """A stream with the request sent and the OK reply read (raises the refusal)."""

    def failed(self, what: str) -> None:
        """Record the failure of one flow."""


async def serve_udp_flows(forward: FlowOwner, sock: Any, o: ForwardOptions) -> None:
    """The user side of a UDP forward: one stream per client address, replies sent back."""
    flows: dict[Any, trio.MemorySendChannel[bytes]] = {}

    async def flow(addr: Any, inbox: trio.MemoryReceiveChannel[bytes]) -> None:
        stream = None
        try:
            stream = await forward.open_stream(o)
            await _udp_pump(stream, inbox.receive, lambda d: sock.sendto(d, addr), o.udp_idle)
        except Exception as exc:
            forward.failed(f"udp flow from {addr[0]}:{addr[1]}: {exc}")
        finally:
            flows.pop(addr, None)
            if stream is not None:
                with trio.CancelScope(shield=True):
                    await finish(stream)

    async with trio.open_nursery() as nursery:
        while True:
            data, addr = await sock.recvfrom(MAX_DATAGRAM)
            send = flows.get(addr)
            if send is None:
                if len(flows) >= o.max_udp_flows:
                    continue
                send, receive = trio.open_memory_channel[bytes](256)
                flows[addr] = send
                forward.connections += 1
                nursery.start_soon(flow, addr, receive)
            try:
                send.send_nowait(data)
            except (trio.WouldBlock, trio.BrokenResourceError, trio.ClosedResourceError):
                pass  # a full flow drops datagrams, as UDP would
