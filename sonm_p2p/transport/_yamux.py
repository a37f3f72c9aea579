"""py-libp2p's Yamux with keepalive pings the rest of the node can use (see heartbeat.py), and
window updates at half a window.

:meth:`KeepaliveYamux.ping` sends a Yamux PING and has its ACK call back, with no task waiting
for it (py-libp2p only sends PINGs from its RTT loop, which this class runs through the same
method, so the two never miss each other's answer). :attr:`KeepaliveYamux.on_pinged` is
called each time the peer's PING is answered: a miner counts those as its hub's contact.
Frames are written without py-libp2p's per-frame debug formatting (a ``struct.unpack`` and an
f-string built for every frame sent, logging off or not).

Every host of the process uses this class for ``/yamux/1.0.0`` (:func:`install`, from
``_conn.quiet_libp2p_logs`` before any host runs); on the wire it is plain Yamux.
"""

from __future__ import annotations

import struct
from collections.abc import Callable

import trio
from libp2p.stream_muxer.yamux import yamux as _y

__all__ = ["HalfWindowStream", "KeepaliveYamux", "install"]


class HalfWindowStream(_y.YamuxStream):
    """A Yamux stream that sends a window update once half its receive window is used up, as
    go-yamux does. py-libp2p 0.8.1 also sends one after any read that leaves the window short of
    its target (its "partial slack" case), whatever ``PY_YAMUX_RELEASE_ON_READ`` says: about
    one frame back, encrypted, for every frame received (31 of the 59 frames a hub received for
    one miner's join were window updates)."""

    async def _auto_tune_and_send_window_update(self, *, bytes_read: int = 0) -> None:
        async with self.window_lock:
            buffered = len(self.conn.stream_buffers.get(self.stream_id, b""))
            if self.target_recv_window - (self.recv_window + buffered) < self._grow_threshold():
                return
            total = self._grow_to_delta(buffered) + self._apply_autotune_epoch(buffered)
            self._pending_recv_release = 0
        if total > 0:
            await self.send_window_update(total, skip_lock=True)


class _Answers:
    """Stands in for py-libp2p's ``Yamux._ping_event``, whose ``set()`` its read loop calls for
    every PING ACK: each ACK answers every ping still out (py-libp2p does not match the ACK's
    value to the ping's, and any answer shows the peer alive)."""

    MAX_WAITING = 16  # a peer that never answers is dropped long before this many pings

    def __init__(self) -> None:
        self._waiting: list[Callable[[], None]] = []

    def add(self, on_answer: Callable[[], None]) -> None:
        if len(self._waiting) >= self.MAX_WAITING:
            del self._waiting[0]
        self._waiting.append(on_answer)

    def set(self) -> None:
        waiting, self._waiting = self._waiting, []
        for on_answer in waiting:
            try:
                on_answer()
            except Exception:  # the owner's fault: the read loop must go on
                pass

    def is_set(self) -> bool:
        return False


class KeepaliveYamux(_y.Yamux):
    """Yamux whose PINGs are a liveness check as well as an RTT probe."""

    on_pinged: Callable[[], None] | None = None
    _answers: _Answers | None = None

    async def ping(self, on_answer: Callable[[], None]) -> None:
        """Send a PING; ``on_answer()`` is called (on the read loop) when an answer comes,
        never if none does: the caller keeps its own deadline. No task waits for it."""
        answers = self._answers
        if answers is None:
            answers = self._answers = _Answers()
            self._ping_event = answers  # type: ignore[assignment]
        answers.add(on_answer)
        self._ping_id = (self._ping_id + 1) & 0xFFFFFFFF
        header = struct.pack(_y.YAMUX_HEADER_FORMAT, 0, _y.TYPE_PING, _y.FLAG_SYN, 0,
                             self._ping_id)  # fmt: skip
        await self._write_frame(header)
        self._ping_sent_time = trio.current_time()  # the ACK's handler takes the RTT

    async def keepalive(self, timeout: float) -> bool:
        """Ping the peer; whether an answer came within ``timeout`` seconds."""
        answered = trio.Event()
        try:
            await self.ping(answered.set)
        except Exception:
            return False
        with trio.move_on_after(timeout):
            await answered.wait()
        return answered.is_set()

    async def _measure_rtt_loop(self) -> None:
        await trio.sleep(0.5)
        while not self.event_shutting_down.is_set():
            if not await self.keepalive(10.0) and self.event_shutting_down.is_set():
                break
            with trio.move_on_after(_y.RTT_MEASURE_INTERVAL):
                await self.event_shutting_down.wait()

    async def _write_frame(self, data: bytes) -> None:
        if (
            self.on_pinged is not None
            and data[1] == _y.TYPE_PING
            and int.from_bytes(data[2:4], "big") & _y.FLAG_ACK
        ):
            try:
                self.on_pinged()  # our answer to the peer's ping: it is alive and reaches us
            except Exception:  # the owner's fault: the answer still goes out
                pass
        async with self._write_lock:
            await self.secured_conn.write(data)
        await trio.lowlevel.checkpoint()


def install() -> None:
    """Make every Yamux connection of this process a :class:`KeepaliveYamux` and each of its
    streams a :class:`HalfWindowStream`. py-libp2p 0.8.1 builds both by name (its Yamux in
    ``muxer_multistream`` whatever class ``new_host`` is given for it, its streams in the
    yamux module), so the names are rebound there (before any host runs; idempotent)."""
    from libp2p.stream_muxer import muxer_multistream

    muxer_multistream.Yamux = KeepaliveYamux  # type: ignore[misc]
    _y.YamuxStream = HalfWindowStream  # type: ignore[misc]
