"""Light miners: many real miners in one process, to load a hub (``sonm-loadgen``).

Each light miner is a :class:`~sonm_p2p.miner.daemon.MinerDaemon` on the memory runtime, with
its own key (under ``home/mNNNN``), its own libp2p host and connection to the hub (Noise,
Yamux), its own session, gRPC service (handshake, pings, starts, task events) and hub link: the
hub sees exactly what a ``sonmminer --runtime memory`` shows it. What they share is only what
costs a thread per miner and is invisible on the wire: every libp2p host runs on one trio loop
(:class:`~sonm_p2p.transport.node.SharedLoop`), every gRPC server on one asyncio loop
(``grpc.aio``: one poller for all; a sync server polls on a thread of its own, which for 300
miners took two thirds of this process's CPU) and every servicer call on one thread pool.

A miner still has one thread of its own, its hub link (asleep but for a check every 5 s), so
1,000 light miners are ~1,000 mostly idle threads in this process, none in the hub. The hub's
open ``WatchTasks`` stream holds no thread (the aio servicer is woken by each event), the relay
reservation's keeper wakes when its refresh is due or its connection closes, and the hub's
pings are Yamux pings answered by Yamux itself.

Use as a library (``sonm-devnet`` may)::

    with start_light_miners("127.0.0.1:10002", 100, home) as miners:
        miners.wait_connected(timeout=60)
        ...
"""

from __future__ import annotations

import asyncio
import logging
import threading
import time
from collections.abc import Mapping
from concurrent import futures
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType

from sonm_p2p.errors import SonmError, Timeout
from sonm_p2p.miner.daemon import MinerDaemon, MinerOptions
from sonm_p2p.miner.hub_link import LinkOptions
from sonm_p2p.supervisor import Supervisor
from sonm_p2p.transport.addrs import parse_target
from sonm_p2p.transport.node import SharedLoop

__all__ = ["LightMiners", "LoadOptions", "start_light_miners"]

log = logging.getLogger(__name__)

#: gRPC workers beyond one per miner (threads are made as calls need them).
SPARE_WORKERS = 64


@dataclass(frozen=True, kw_only=True)
class LoadOptions:
    """What to run.

    hub: the hub's overlay address (``host:port`` or a multiaddr), as ``sonmminer --hub``.
    miners: how many light miners.
    home: where their keys live (``home/m0000`` …): the same home gives the same miners again.
    first: the number of the first miner (its key ``home/m<first>``): several processes
        sharing one home each run their own range (``sonm-loadgen --procs``).
    listen: each miner's libp2p listen multiaddr (an ephemeral port each).
    publish_ip: where the memory runtime says task ports are published.
    labels: extra labels on every task (as ``sonmminer --label``).
    starters: how many miners start at once (key, gRPC server, host); the rest queue.
    pending: at most this many started and not yet connected at a time (the ramp).
    link: how each holds on to the hub (backoff, silence), as ``sonmminer``.
    birthday_punch: whether they take part in birthday-paradox hole punches, as ``sonmminer
        --no-birthday-punch``; defaults to True.
    """

    hub: str
    miners: int
    home: Path
    first: int = 0
    listen: tuple[str, ...] = ("/ip4/0.0.0.0/tcp/0",)
    publish_ip: str = "127.0.0.1"
    labels: Mapping[str, str] = field(default_factory=dict)
    starters: int = 8
    pending: int = 32
    link: LinkOptions = field(default_factory=LinkOptions)
    birthday_punch: bool = True

    def __post_init__(self) -> None:
        if self.miners < 1:
            raise ValueError("miners must be at least 1")
        if self.first < 0:
            raise ValueError("first must not be negative")
        if not self.hub:
            raise ValueError("a hub address is needed")


class LightMiners:
    """N light miners; :meth:`start` starts them all (they connect in the background),
    :meth:`close` stops them (idempotent). Thread-safe reads: :attr:`connected`,
    :attr:`node_ids`."""

    def __init__(self, options: LoadOptions) -> None:
        self.options = options
        self.loop = SharedLoop("loadgen-p2p")
        self.pool = futures.ThreadPoolExecutor(
            max_workers=options.miners + SPARE_WORKERS, thread_name_prefix="loadgen-grpc"
        )
        self._sup = Supervisor("loadgen")
        self.grpc_loop: asyncio.AbstractEventLoop | None = None
        self.daemons: list[MinerDaemon] = []
        self._lock = threading.Lock()
        self._closed = False
        self._hub = options.hub  # pinned to the hub's peer ID once the first miner learns it

    def __repr__(self) -> str:
        return f"<LightMiners {self.connected}/{self.options.miners} on {self.options.hub}>"

    def __enter__(self) -> LightMiners:
        return self

    def __exit__(
        self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()

    @property
    def node_ids(self) -> list[str]:
        with self._lock:
            return [d.node_id for d in self.daemons]

    @property
    def connected(self) -> int:
        """How many hold a session with the hub now."""
        with self._lock:
            daemons = list(self.daemons)
        return sum(d.link.connected.is_set() for d in daemons)

    def _make(self, i: int) -> MinerDaemon:
        if self._closed:
            raise SonmError("closed while starting")
        o = self.options
        options = MinerOptions(
            home=o.home / f"m{o.first + i:04d}",
            hub=self._hub,
            mdns=False,
            listen=o.listen,
            publish_ip=o.publish_ip,
            labels=o.labels,
            link=o.link,
            runtime="memory",
            birthday_punch=o.birthday_punch,
        )
        daemon = MinerDaemon(options, loop=self.loop, grpc_loop=self.grpc_loop, grpc_pool=self.pool)
        try:
            daemon.start()
        except BaseException:
            daemon.close()
            raise
        return daemon

    def start(self) -> None:
        """Start every miner; returns once all have started, not connected (see
        :meth:`wait_connected`). Raises the first SonmError, all stopped.

        Miners come up as a crowd of real ones would, not all in one instant: at most
        ``pending`` are started and not yet connected at a time (a hub restart, where every
        miner redials at once, is the herd case; the benchmark measures it apart). The hub's
        peer ID is learned by the first miner's Noise handshake and pinned for the rest (as
        ``sonmminer --hub /ip4/…/p2p/<id>`` does), sparing each a throw-away probe handshake.
        """
        self.loop.start()
        self.grpc_loop = self._sup.asyncio_loop("grpc")
        with futures.ThreadPoolExecutor(self.options.starters, "loadgen-start") as starters:
            jobs: list[futures.Future[MinerDaemon]] = []
            errors: list[BaseException] = []
            for i in range(self.options.miners):
                while not self._closed and self._starting(jobs) >= self.options.pending:
                    time.sleep(0.02)
                if self._closed or errors:
                    break
                job = starters.submit(self._make, i)
                job.add_done_callback(lambda j: self._collect(j, errors))
                jobs.append(job)
                if i == 0:
                    if job.exception() is None:  # waits for it
                        self._pin_hub(job.result())
        error = errors[0] if errors else None
        if error is not None and not self._closed:
            self.close()
            if isinstance(error, SonmError):
                raise error
            raise SonmError(f"cannot start the light miners: {error!r}") from error

    def _starting(self, jobs: list[futures.Future[MinerDaemon]]) -> int:
        """Miners started (or starting) and not yet connected."""
        n = 0
        for job in jobs:
            if not job.done():
                n += 1
            elif job.exception() is None and not job.result().link.connected.is_set():
                n += 1
        return n

    def _collect(self, job: futures.Future[MinerDaemon], errors: list[BaseException]) -> None:
        try:
            daemon = job.result()
        except BaseException as exc:  # keep going: every started daemon must be closed
            errors.append(exc)
            return
        with self._lock:
            late = self._closed  # closed while starting (Ctrl-C): stop it too
            if not late:
                self.daemons.append(daemon)
        if late:
            _close_quietly(daemon)

    def _pin_hub(self, first: MinerDaemon) -> None:
        maddr, peer = parse_target(self.options.hub)
        if peer is None:
            deadline = time.monotonic() + 60
            while not first.link.hub_peer and time.monotonic() < deadline and not self._closed:
                time.sleep(0.05)
            peer = first.link.hub_peer
        if peer:
            self._hub = f"{maddr}/p2p/{peer}"

    def wait_connected(self, count: int | None = None, timeout: float = 60.0) -> None:
        """Block until ``count`` (default: all) miners hold a session; Timeout otherwise."""
        want = self.options.miners if count is None else count
        deadline = time.monotonic() + timeout
        while self.connected < want:
            if time.monotonic() >= deadline:
                raise Timeout(f"{self.connected} of {want} light miners connected in {timeout:g}s")
            time.sleep(0.1)

    def close(self) -> None:
        """Stop every miner (in parallel), then the loop and the pool. Idempotent."""
        with self._lock:
            if self._closed:
                return
            self._closed = True
            daemons, self.daemons = self.daemons, []
        if daemons:
            with futures.ThreadPoolExecutor(32, "loadgen-stop") as stoppers:
                list(stoppers.map(_close_quietly, daemons))
        self.loop.close()
        self._sup.close()
        self.pool.shutdown(wait=True, cancel_futures=True)


def _close_quietly(daemon: MinerDaemon) -> None:
    try:
        daemon.close()
    except Exception as exc:
        log.warning("closing light miner %s: %r", daemon.node_id, exc)


def start_light_miners(
    hub: str,
    miners: int,
    home: Path,
    *,
    listen: tuple[str, ...] = ("/ip4/0.0.0.0/tcp/0",),
    labels: Mapping[str, str] | None = None,
) -> LightMiners:
    """Start ``miners`` light miners against the hub at ``hub`` (keys under ``home``) and
    return their handle: ``close()`` (or ``with``) stops them all."""
    handle = LightMiners(
        LoadOptions(hub=hub, miners=miners, home=home, listen=listen, labels=labels or {})
    )
    handle.start()
    return handle
