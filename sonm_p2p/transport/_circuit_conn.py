"""The raw connection under a relayed connection: its circuit stream, with reads and writes batched.

A relayed connection runs Noise and Yamux on a Yamux stream of the connection to the relay, where
every read and every write is a frame of its own (Yamux header, Noise message, syscall, and a
window update for every read), at both ends and twice at the relay. py-libp2p's ``RawConnection``
passes reads and writes through one by one, and its Noise and Yamux make many small ones: each
Noise message is read as a 2-byte length then a body, and a 64 KiB Yamux frame is written as a
65537-byte Noise message plus a 35-byte one (the Noise limit is 65535), so 64 KiB of payload took
about four frames each way, plus window updates: ~6-14 MB/s relayed against ~50-75 MB/s direct.
Batched, a relayed forward carries ~30-37 MB/s (BENCHMARKS.md).
"""

from __future__ import annotations

import functools
import logging
from typing import Any

import trio

__all__ = ["CIRCUIT_BUFFER", "CIRCUIT_STALL", "circuit_connection_class", "end_stream"]

log = logging.getLogger(__name__)

#: A relayed connection reads its circuit stream this far ahead, and queues this many bytes of
#: writes at most (see :func:`circuit_connection_class`).
CIRCUIT_BUFFER = 256 << 10
#: Longest a write to a relayed connection waits for room in its queue before the connection
#: is declared broken (a Yamux stream fails a write whose window stays shut for 5 s).
CIRCUIT_STALL = 30.0


@functools.cache
def circuit_connection_class() -> type:
    """The ``RawConnection`` subclass relayed connections are built on (py-libp2p imported
    lazily, once)."""
    from libp2p.network.connection.exceptions import RawConnError
    from libp2p.network.connection.raw_connection import RawConnection

    class _CircuitConnection(RawConnection):
        """The raw connection under a relayed connection: a circuit stream, batched both ways.

        A relayed connection runs Noise and Yamux on a Yamux stream of the connection to the
        relay, where every read and every write is a frame of its own (Yamux header, Noise
        message, syscall, and a window update for every read), at both ends and twice at the
        relay. py-libp2p's RawConnection passes reads and writes through one by one, and its
        Noise and Yamux make many small ones: each Noise message is read as a 2-byte length then
        a body, and a 64 KiB Yamux frame is written as a 65537-byte Noise message plus a 35-byte
        one (the Noise limit is 65535), so 64 KiB of payload took about four frames each way,
        plus window updates, measured at ~6-10 MB/s against ~50 MB/s direct.

        Reads: one stream read of up to ``CIRCUIT_BUFFER`` serves the small reads that follow.
        Writes: queued (up to ``CIRCUIT_BUFFER``) and sent by a flusher task, which sends all
        that queued while it was sending in one stream write. A write returns once its bytes
        are queued, never part-way (a Noise message that was encrypted but not queued would put
        the connection out of step); the flusher's failure resets the circuit stream, so the
        peer and our own reads see it, and fails the writes that follow. Closing sends what is
        queued first (Yamux's GO_AWAY).
        """

        def __init__(self, *args: Any, **kwargs: Any) -> None:
            super().__init__(*args, **kwargs)
            self._ahead = b""
            self._ahead_at = 0
            self._queue = bytearray()
            self._flushing = False
            self._failure: BaseException | None = None
            self._progress = trio.Event()

        async def read(self, n: int | None = None) -> bytes:
            if n == 0:
                return b""
            ahead, at = self._ahead, self._ahead_at
            if at >= len(ahead):
                want = CIRCUIT_BUFFER if n is None else max(n, CIRCUIT_BUFFER)
                ahead, at = await super().read(want), 0
                if n is None or len(ahead) <= n:
                    self._ahead = b""
                    return ahead
                self._ahead = ahead
            end = len(ahead) if n is None else at + n
            self._ahead_at = end
            if end >= len(ahead):
                self._ahead, self._ahead_at = b"", 0
            return ahead[at:end]

        async def write(self, data: bytes) -> None:
            if len(self._queue) >= CIRCUIT_BUFFER and self._failure is None:
                stall = trio.current_time() + CIRCUIT_STALL
                with trio.CancelScope(deadline=stall, shield=True) as wait:
                    while len(self._queue) >= CIRCUIT_BUFFER and self._failure is None:
                        await self._progress.wait()
                if wait.cancelled_caught and self._failure is None:
                    self._failure = TimeoutError(f"no write progress in {CIRCUIT_STALL:.0f}s")
                    await end_stream(self.stream, reset=True)
            if self._failure is not None:
                raise RawConnError(f"relayed connection broken: {self._failure!r}")
            self._queue += data
            if not self._flushing:
                self._flushing = True
                trio.lowlevel.spawn_system_task(self._flush, name="sonm-circuit-flush")
            await trio.lowlevel.cancel_shielded_checkpoint()

        async def _flush(self) -> None:
            # Runs while anything is queued. A system task: an exception escaping it would end
            # the trio run, so every one is kept (Cancelled at the end of the run passes).
            try:
                while self._queue and self._failure is None:
                    chunk = bytes(self._queue)
                    self._queue.clear()
                    self._notify()
                    await RawConnection.write(self, chunk)
            except Exception as exc:
                log.debug("relayed connection: write failed: %r", exc)
                self._failure = exc
                self._queue.clear()
                await end_stream(self.stream, reset=True)
            finally:
                self._flushing = False
                self._notify()

        def _notify(self) -> None:
            self._progress.set()
            self._progress = trio.Event()

        async def close(self) -> None:
            try:
                with trio.move_on_after(5):
                    while self._flushing:
                        await self._progress.wait()
            finally:
                await super().close()

    return _CircuitConnection


async def end_stream(stream: Any, *, reset: bool) -> None:
    """Close (or reset) a libp2p stream, giving up after 2 s; never raises."""
    try:
        with trio.move_on_after(2):
            if reset:
                await stream.reset()
            else:
                await stream.close()
    except Exception:
        pass
