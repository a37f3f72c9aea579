"""The packets of a birthday punch (trio thread only): many non-blocking TCP connects at once.

What to send is decided by ``birthday.py`` and agreed by ``_birthday.py``; this module only opens
the sockets, paces them, hands every connection that completes to the caller, and counts what
it spent. One trio task per socket: trio waits on them with epoll, never ``select`` (a sweep
holds more than 1,024 descriptors at once; :func:`raise_open_files` lifts the soft limit).
"""

from __future__ import annotations

import errno
import logging
import math
import os
import resource
import socket
from collections.abc import Sequence
from dataclasses import dataclass, field

import trio

from sonm_p2p.transport.birthday import syn_packets

__all__ = ["Sweep", "raise_open_files", "spare_descriptors"]

log = logging.getLogger(__name__)

#: Descriptors left for the rest of the process whatever a sweep wants.
_RESERVE = 128


def raise_open_files() -> int:
    """Lift the soft RLIMIT_NOFILE to the hard limit (1,024 is a common default; a sweep holds
    ~1,000 sockets); the soft limit now."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard == resource.RLIM_INFINITY or soft < hard:
        want = hard if hard != resource.RLIM_INFINITY else max(soft, 65536)
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (want, hard))
            soft = want
        except (ValueError, OSError) as exc:
            log.debug("cannot raise RLIMIT_NOFILE: %r", exc)
    return soft


def spare_descriptors() -> int:
    """Descriptors a sweep may open now: the soft limit less those open and a reserve."""
    soft = raise_open_files()
    try:
        used = len(os.listdir("/proc/self/fd"))
    except OSError:
        used = 256
    return max(0, soft - used - _RESERVE)


@dataclass
class Sweep:
    """Non-blocking connects, each from its own socket; every one that completes is sent on
    :attr:`connected` (a trio ``SocketStream``; the receiver owns it). Sockets still connecting
    are closed when :meth:`run` is cancelled. Counts what was spent: ``sockets``, the SYNs they
    sent (``packets``, Linux's retransmissions estimated from each socket's lifetime), how many
    connected, were refused (a RST) or failed otherwise.
    """

    sockets: int = 0
    connected_count: int = 0
    refused: int = 0
    failed: int = 0
    lifetimes: list[float] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.connected, self._receive = trio.open_memory_channel[trio.SocketStream](math.inf)

    @property
    def packets(self) -> int:
        return syn_packets(self.lifetimes)

    def receive(self) -> trio.MemoryReceiveChannel[trio.SocketStream]:
        """Where completed connections arrive."""
        return self._receive

    async def run(
        self,
        targets: Sequence[tuple[str, int]],
        *,
        source: tuple[str, int] | None = None,
        rate: float | None = None,
        task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED,
    ) -> None:
        """Connect to each of ``targets`` (from ``source``, shared with a listener by
        SO_REUSEPORT, or each from a fresh port), at most ``rate`` a second (None: at once);
        ``started()`` once every connect has been issued; returns when all have ended, or runs
        until cancelled."""
        family = socket.AF_INET6 if targets and ":" in targets[0][0] else socket.AF_INET
        async with trio.open_nursery() as nursery:
            began = trio.current_time()
            for index, target in enumerate(targets):
                if rate is not None:
                    at = began + index / rate
                    if at > trio.current_time():
                        await trio.sleep_until(at)
                await nursery.start(self._connect, family, source, target)
            task_status.started()

    async def _connect(
        self,
        family: int,
        source: tuple[str, int] | None,
        target: tuple[str, int],
        *,
        task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED,
    ) -> None:
        sock = socket.socket(family, socket.SOCK_STREAM)
        self.sockets += 1
        began = trio.current_time()
        handed = started = False
        try:
            sock.setblocking(False)
            if source is not None:
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
                sock.bind(source)
            code = sock.connect_ex(target)  # the SYN leaves here
            started = True
            task_status.started()
            if code == errno.EINPROGRESS:
                await trio.lowlevel.wait_writable(sock)
                code = sock.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR)
            if code == errno.ECONNREFUSED:
                self.refused += 1
                return
            if code:
                raise OSError(code, os.strerror(code))
            self.connected.send_nowait(trio.SocketStream(trio.socket.from_stdlib_socket(sock)))
            handed = True
            self.connected_count += 1
        except OSError as exc:
            self.failed += 1
            log.debug("sweep connect %s: %r", target, exc)
            if not started:
                task_status.started()
        finally:
            if not handed:
                self.lifetimes.append(trio.current_time() - began)
                sock.close()
