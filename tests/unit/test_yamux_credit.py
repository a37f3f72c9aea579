"""Yamux window credit at half the window, not after every read (transport/_yamux.py's
HalfWindowStream), on a stand-in for py-libp2p's YamuxStream with its own window arithmetic."""

from __future__ import annotations

import trio

from sonm_p2p.transport._conn import quiet_libp2p_logs
from sonm_p2p.transport._yamux import HalfWindowStream

WINDOW = 256 * 1024


class Stream:
    """What ``HalfWindowStream`` uses of a YamuxStream: the receive window, the buffer,
    py-libp2p's GrowTo and auto-tune helpers (real ones), and the update it sends (recorded).
    ``arrive`` and ``read`` do what the muxer and a reader do to them."""

    def __init__(self) -> None:
        from libp2p.stream_muxer.yamux.yamux import YamuxStream

        self._real = YamuxStream
        self.window_lock = trio.Lock()
        self.stream_id = 1
        self.conn = type("Conn", (), {"stream_buffers": {1: bytearray()}})()
        self.target_recv_window = WINDOW
        self.recv_window = WINDOW
        self._pending_recv_release = 0
        self.epoch_start = 0.0
        self.updates: list[int] = []

    def _grow_threshold(self) -> int:
        return self._real._grow_threshold(self)  # type: ignore[arg-type]

    def _grow_to_delta(self, buffered: int) -> int:
        return self._real._grow_to_delta(self, buffered)  # type: ignore[arg-type]

    def _apply_autotune_epoch(self, buffered: int) -> int:
        return 0  # needs a measured RTT; none here

    async def send_window_update(self, increment: int, skip_lock: bool = False) -> None:
        self.updates.append(increment)

    def arrive(self, n: int) -> None:
        assert n <= self.recv_window, "the sender overran the window it was given"
        self.recv_window -= n
        self.conn.stream_buffers[1] += b"x" * n

    async def read(self, n: int) -> None:
        del self.conn.stream_buffers[1][:n]
        await HalfWindowStream._auto_tune_and_send_window_update(self, bytes_read=n)  # type: ignore[arg-type]


def test_small_reads_send_no_window_update_at_all():
    async def main() -> list[int]:
        s = Stream()
        for _ in range(200):  # 200 gossip messages of 600 bytes, read as varint + body
            s.arrive(600)
            await s.read(2)
            await s.read(598)
        return s.updates

    assert trio.run(main) == []


def test_credit_goes_back_once_half_the_window_is_read_and_the_sender_never_stalls():
    async def main() -> Stream:
        s = Stream()
        sent = 0
        while sent < 8 * WINDOW:  # a bulk transfer: the sender fills whatever it is given
            n = min(16 * 1024, s.recv_window)
            assert n > 0, "no credit left: the transfer would stall"
            s.arrive(n)
            sent += n
            await s.read(n)
        return s

    s = trio.run(main)
    assert 8 <= len(s.updates) <= 20  # about two per window's worth, not one per read
    assert all(u >= WINDOW // 2 for u in s.updates)
    assert s.recv_window <= WINDOW  # never credited beyond the window


def test_installed_in_py_libp2p_by_quiet_libp2p_logs():
    from libp2p.stream_muxer import muxer_multistream
    from libp2p.stream_muxer.yamux import yamux

    from sonm_p2p.transport._yamux import KeepaliveYamux

    quiet_libp2p_logs()
    assert yamux.YamuxStream is HalfWindowStream  # what Yamux builds its streams from
    assert muxer_multistream.Yamux is KeepaliveYamux
