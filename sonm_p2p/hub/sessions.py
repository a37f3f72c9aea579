"""The hub's miner sessions, as I/O: the half of :class:`~sonm_p2p.hub.hub.Hub` that feeds the
pure :class:`~sonm_p2p.hub.core.HubCore` what happens on the wire (sessions, pings, reports) and
carries out what it decides (store, publish, disconnect).

Miners dial the hub and hold a session stream open (``/sonm/session/2.0.0``, or ``1.0.0`` from
miners before heartbeats). On each new session the hub opens a gRPC channel back to the miner over
that same connection, handshakes (learning its resources and the tasks it runs) and pings it every
``ping_interval``: with Yamux PINGs on the session's connection (the transport's heartbeats, on
the libp2p thread; results come back in batches to :meth:`MinerSessions.beat_results`), or, for a
``1.0.0`` session, with a gRPC ``Ping``. Those pings, each miner's event stream and every other call
to a miner run on the hub's asyncio loop; SQLite work on the bounded pool
(:meth:`MinerSessions.blocking`).
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import functools
import logging
import threading
import time
from collections.abc import AsyncIterator, Callable, Coroutine
from typing import TYPE_CHECKING, Any, TypeVar

from google.protobuf.message import DecodeError

from sonm_p2p._convert import event_from_pb
from sonm_p2p._pb.sonm.v1 import miner_pb2
from sonm_p2p.auth import is_task_record
from sonm_p2p.errors import InvalidRequest, MinerNotFound, MinerUnavailable, SonmError, TaskNotFound
from sonm_p2p.events import EventBus, TaskEvent
from sonm_p2p.hub.admission import check_id
from sonm_p2p.hub.core import (
    Event,
    HubCore,
    MinerLink,
    MinerOffline,
    MinerSeen,
    PingMissed,
    ReportIgnored,
    TaskChanged,
)
from sonm_p2p.hub.miner_client import AioStream, Handshake, MinerClient, handshake_request
from sonm_p2p.hub.state import HubState, MinerRecord
from sonm_p2p.identity import node_id_from_peer_id
from sonm_p2p.model import MinerStatus
from sonm_p2p.supervisor import Supervisor
from sonm_p2p.tasks import Task, resolve_prefix
from sonm_p2p.transport.heartbeat import BeatResult
from sonm_p2p.transport.node import P2PNode, Session

if TYPE_CHECKING:
    from sonm_p2p.hub.hub import HubOptions

__all__ = ["MinerSession", "MinerSessions"]

log = logging.getLogger(__name__)

T = TypeVar("T")


#: Task events a miner's message session may have waiting to be applied; a miner that sends
#: more (far more than its own bounded event queue lets a real miner send) is cut off.
MAX_PENDING_EVENTS = 4096


def _session_message(data: bytes) -> miner_pb2.MinerSessionMessage:
    try:
        return miner_pb2.MinerSessionMessage.FromString(data)
    except DecodeError:
        raise InvalidRequest("malformed session message") from None


def _session_events(stream: Session, loop: asyncio.AbstractEventLoop) -> AsyncIterator[TaskEvent]:
    """The task events a miner sends on its message session, on ``loop``, until it ends. A
    malformed message, or too many waiting, end the session."""
    queue: asyncio.Queue[bytes | None] = asyncio.Queue()
    pending = [0]  # messages queued and not yet taken: written on both threads, approximate

    def arrived(message: bytes | None) -> None:  # on the node's trio thread
        pending[0] += 1
        if pending[0] > MAX_PENDING_EVENTS:
            log.warning("miner %s sends events faster than they apply: dropping it", stream.peer_id)
            stream.close()
            message = None
        try:
            loop.call_soon_threadsafe(queue.put_nowait, message)
        except RuntimeError:  # the hub is closing
            pass

    async def events() -> AsyncIterator[TaskEvent]:
        while (data := await queue.get()) is not None:
            pending[0] -= 1
            try:
                message = _session_message(data)
                if message.WhichOneof("body") != "event":
                    raise InvalidRequest("a session message after the handshake is not an event")
            except InvalidRequest as exc:
                log.warning("miner %s: %s: dropping its session", stream.peer_id, exc)
                stream.close()
                return
            yield event_from_pb(message.event)

    stream.listen(arrived)
    return events()


class MinerSession:
    """The I/O side of one miner's session: its client, its event stream, its log follows."""

    def __init__(self, link: MinerLink, client: MinerClient) -> None:
        self.link = link
        self.client = client
        self.watch: concurrent.futures.Future[None] | None = None  # its WatchTasks, on the loop
        self.streams: set[AioStream] = set()  # log follows, ended when the session ends
        self.gone = ""  # how the session ended, e.g. "went offline (…)" ("" while it lasts)
        self.beats = False  # pinged by the transport's heartbeats, not over gRPC
        self.events: AsyncIterator[TaskEvent] | None = None  # from a message session

    @property
    def node_id(self) -> str:
        return self.link.node_id

    def close(self) -> None:
        """End the session's I/O, from any thread (aio calls are cancelled on their loop)."""
        if self.watch is not None:
            self.watch.cancel()
        loop = self.client.loop
        if loop is not None and not loop.is_closed():
            for stream in list(self.streams):
                loop.call_soon_threadsafe(stream.cancel)
        self.client.close()

    def __repr__(self) -> str:
        return f"<MinerSession {self.node_id} #{self.link.serial} {self.gone or 'live'}>"


class MinerSessions:
    """The miner-session shell :class:`~sonm_p2p.hub.hub.Hub` is built on (its state is set up
    by ``Hub.__init__``; see there)."""

    node_id: str
    node: P2PNode
    state: HubState
    options: HubOptions
    core: HubCore
    events: EventBus
    stun_for_miners: Callable[[], list[str]]
    _sup: Supervisor
    _sessions: dict[str, MinerSession]
    _lock: threading.RLock
    _loop: asyncio.AbstractEventLoop | None
    _tasks: set[asyncio.Task[Any]]
    _status: dict[str, tuple[float, MinerSession, MinerStatus]]

    # -- carrying out the core's decisions ---------------------------------------------------

    def _apply(self, events: list[Event]) -> Task | None:
        """Carry out ``events``; returns the last task stored. Call with the lock held."""
        stored = None
        for event in events:
            if isinstance(event, TaskChanged):
                stored = self._save(event.task)
            elif isinstance(event, MinerOffline):
                self._offline(event)
            elif isinstance(event, MinerSeen):
                self.state.set_miner_online(event.node_id, True, event.now)
            elif isinstance(event, PingMissed):
                log.warning(
                    "miner %s missed a ping (%d): %s", event.node_id, event.missed, event.error
                )
            elif isinstance(event, ReportIgnored):
                log.warning("ignoring report for %s: %s", event.task_id, event.reason)
        return stored

    def _offline(self, event: MinerOffline) -> None:
        link = event.link
        session = self._sessions.get(link.node_id)
        if session is not None and session.link.serial == link.serial:
            del self._sessions[link.node_id]
        else:
            session = None  # already replaced by a newer session of the miner
        now = time.time()
        self.state.set_miner_online(link.node_id, False, now)
        lost = self.core.lose(self.state.list_tasks(link.node_id, active_only=True), now)
        self._apply(lost)
        if session is not None:
            session.gone = f"went offline ({event.why})"
            session.close()
            if self._loop is not None and not self._loop.is_closed():
                self._loop.call_soon_threadsafe(self._status.pop, link.node_id, None)
        log.warning("miner %s offline (%s); %d tasks LOST", link.node_id, event.why, len(lost))
        if event.disconnect:
            self.node.disconnect(link.peer_id)

    def _save(self, task: Task) -> Task:
        """Store ``task`` and tell its watchers."""
        self.state.put_task(task)
        if self._loop is not None and not self._loop.is_closed():  # its miner's status changed
            self._loop.call_soon_threadsafe(self._status.pop, task.miner_id, None)
        self.events.publish(TaskEvent(task.task_id, task.updated_at, task=task))
        return task

    # -- sessions ----------------------------------------------------------------------------

    def miner_opened_beating(self, peer_id: str) -> None:
        """A miner opened a beat session (:data:`~sonm_p2p.transport.heartbeat.SESSION_BEAT`):
        as :meth:`miner_opened`, and the transport pings it (results: :meth:`beat_results`)."""
        self.miner_opened(peer_id, beats=True)

    def miner_opened(self, peer_id: str, *, beats: bool = False) -> None:
        """A miner opened its session: handshake (its gRPC ``Handshake``), record it online,
        reconcile its tasks, follow them (its ``WatchTasks``). Unless it ``beats``, the hub's
        pinger pings it over gRPC."""
        node_id = self._session_peer(peer_id)
        if node_id is None:
            return
        client = MinerClient(self.node, peer_id, node_id, loop=self._loop)
        try:
            hs = client.handshake(
                self.node_id, self.options.handshake_timeout, stun_endpoints=self.stun_for_miners()
            )
            self._check_handshake(hs, node_id)
        except SonmError as exc:
            log.warning("miner %s: handshake failed: %s", node_id, exc)
            client.close()
            self.node.disconnect(peer_id)
            return
        self._register(peer_id, hs, client, beats=beats)

    def miner_opened_messaging(self, peer_id: str, stream: Session) -> None:
        """A miner opened a message session
        (:data:`~sonm_p2p.transport.heartbeat.SESSION_MESSAGES`): the handshake and its task
        events come on that stream, and the hub's gRPC channel to it opens at the first call
        (a start, a stop, a status); the transport pings it, as a beat session."""
        node_id = self._session_peer(peer_id)
        if node_id is None:
            return
        request = handshake_request(self.node_id, self.stun_for_miners())
        try:
            stream.send(request.SerializeToString())
            message = _session_message(stream.recv(self.options.handshake_timeout))
            if message.WhichOneof("body") != "handshake":
                raise InvalidRequest("the miner's first session message is not a handshake")
            hs = Handshake(message.handshake)
            self._check_handshake(hs, node_id)
        except SonmError as exc:
            log.warning("miner %s: handshake failed: %s", node_id, exc)
            self.node.disconnect(peer_id)
            return
        client = MinerClient(self.node, peer_id, node_id, loop=self._loop)  # opened at first use
        self._register(peer_id, hs, client, beats=True, events=stream)

    def _session_peer(self, peer_id: str) -> str | None:
        """The node ID of a peer that opened a session, or None (refused: disconnected)."""
        node_id = node_id_from_peer_id(peer_id)
        if node_id is None:
            log.warning("refusing session from %s: not a secp256k1 identity", peer_id)
            self.node.disconnect(peer_id)
            return None
        if self._loop is None or self._sup.closed:
            self.node.disconnect(peer_id)
            return None
        return node_id

    @staticmethod
    def _check_handshake(hs: Handshake, node_id: str) -> None:
        if hs.node_id != node_id:
            raise InvalidRequest(f"miner claims {hs.node_id} but its key is {node_id}")

    def _register(
        self,
        peer_id: str,
        hs: Handshake,
        client: MinerClient,
        *,
        beats: bool,
        events: Session | None = None,
    ) -> None:
        """A handshaken miner: online, its tasks reconciled, its events followed (from its
        message session ``events``, else by a ``WatchTasks`` call)."""
        node_id = hs.node_id
        remote = self.node.remote_addr(peer_id)
        now = time.time()
        with self._lock:
            link = MinerLink(
                node_id=node_id,
                peer_id=peer_id,
                serial=self.core.next_serial(),
                remote_addr=remote,
                multiaddrs=tuple(hs.multiaddrs),
                nat_type=hs.nat_type,
            )
            session = MinerSession(link, client)
            session.beats = beats
            if events is not None:
                session.events = _session_events(events, self._loop)
            old = self._sessions.get(node_id)
            self._sessions[node_id] = session
            try:
                first_seen = self.state.get_miner(node_id).first_seen
            except MinerNotFound:
                first_seen = now
            self.state.upsert_miner(
                MinerRecord(
                    node_id=node_id,
                    peer_id=peer_id,
                    online=True,
                    first_seen=first_seen,
                    last_seen=now,
                    resources=hs.resources,
                    remote_addr=remote,
                )
            )
            for event in self.core.connected(link):
                if isinstance(event, MinerOffline) and old is not None:
                    old.gone = event.why
                    old.close()
            known = self.state.list_tasks(node_id, active_only=True)
            self._apply(
                self.core.reconcile(
                    link, known, hs.tasks, now, lookup=self._lookup, trusted=self._created_here
                )
            )
            session.watch = asyncio.run_coroutine_threadsafe(self._follow(session), self._loop)
        log.info("miner %s online from %s (%d tasks)", node_id, remote or "?", len(hs.tasks))

    def miner_closed(self, peer_id: str) -> None:
        """A miner's session ended: offline, its active tasks LOST."""
        with self._lock:
            session = next((s for s in self._sessions.values() if s.link.peer_id == peer_id), None)
            if session is not None:
                self._apply(self.core.disconnected(session.link))

    def _created_here(self, seen: Task, miner_id: str) -> bool:
        """Whether a task a miner reports carries this hub's record of creating it there."""
        return is_task_record(seen.record, self.node_id, seen.task_id, miner_id, seen.owner)

    def _lookup(self, task_id: str) -> Task | None:
        try:
            return self.state.get_task(task_id)
        except TaskNotFound:
            return None

    async def _follow(self, session: MinerSession) -> None:
        """The miner's task events (on the loop): state changes go to the table, all to
        watchers. Each is applied on the pool, in order (SQLite must not stall the loop)."""
        events = session.events if session.events is not None else session.client.awatch_tasks()
        try:
            async for event in events:
                if event.task is not None:
                    done = self._sup.submit(self._on_report, session.link, event.task)
                    await asyncio.wrap_future(done)
                elif event.progress is not None:
                    self.events.publish(event)
        except (SonmError, RuntimeError) as exc:  # RuntimeError: the pool is closing
            log.debug("miner %s: event stream ended: %s", session.node_id, exc)

    def _on_report(self, link: MinerLink, seen: Task) -> None:
        with self._lock:
            task = self._lookup(seen.task_id)
            if task is not None:
                self._apply(self.core.report(link, task, seen, time.time()))

    async def _pinger(self) -> None:
        """Ping every live miner once a ``ping_interval``, the pings spread evenly over it (on
        the loop, until it closes); the core says who went offline.

        Spread, not a burst: a hub of 1,000 miners would otherwise start 1,000 calls in one
        instant every interval, and everything else the hub does (its clients' calls, joins)
        would queue behind them on its one libp2p thread. A miner whose last ping is still
        unanswered is not pinged again (each ping ends within ``ping_timeout``). Results are
        applied in batches (:meth:`_flush_pings`): one SQLite commit a batch, not one a miner.
        """
        loop = asyncio.get_running_loop()
        interval = self.options.ping_interval
        in_flight: set[MinerSession] = set()
        done: list[tuple[MinerLink, str | None]] = []
        ready = asyncio.Event()
        flusher = loop.create_task(self._flush_pings(done, ready))
        try:
            start = loop.time() + interval
            while True:
                await asyncio.sleep(max(0.0, start - loop.time()))
                # Beat sessions are pinged by the transport (see miner_opened_beating).
                sessions = [s for s in self._sessions.values() if not s.beats]
                step = interval / max(1, len(sessions))
                for i, session in enumerate(sessions):
                    await asyncio.sleep(max(0.0, start + i * step - loop.time()))
                    if session in in_flight or session.gone:
                        continue
                    in_flight.add(session)
                    loop.create_task(self._ping_one(session, in_flight, done, ready))
                start = max(start + interval, loop.time())
        finally:
            flusher.cancel()

    async def _ping_one(
        self,
        session: MinerSession,
        in_flight: set[MinerSession],
        done: list[tuple[MinerLink, str | None]],
        ready: asyncio.Event,
    ) -> None:
        try:
            await session.client.aping(self.options.ping_timeout)
            error = None
        except Exception as exc:  # SonmError mostly; any failure is a missed ping
            error = str(exc) or type(exc).__name__
        finally:
            in_flight.discard(session)
        done.append((session.link, error))
        ready.set()

    async def _flush_pings(
        self, done: list[tuple[MinerLink, str | None]], ready: asyncio.Event
    ) -> None:
        """Apply ping results as they come, at most one batch every ``flush`` seconds, in
        order (one batch at a time, on the pool)."""
        flush = max(0.2, min(2.0, self.options.ping_interval / 5))
        while True:
            await ready.wait()
            await asyncio.sleep(flush)
            ready.clear()
            batch = done[:]
            del done[: len(batch)]
            try:
                await self.blocking(self._ping_results, batch)
            except RuntimeError:  # the pool is closing
                return

    def beat_results(self, batch: list[BeatResult]) -> None:
        """A batch of heartbeat results from the transport (a worker thread): applied as
        the gRPC pinger's are, to each peer's current session."""
        with self._lock:
            links = {s.link.peer_id: s.link for s in self._sessions.values() if s.beats}
        known = [(links[p], None if ok else why) for p, ok, why in batch if p in links]
        if known:
            self._ping_results(known)

    def _ping_results(self, batch: list[tuple[MinerLink, str | None]]) -> None:
        now = time.time()
        with self._lock:
            events: list[Event] = []
            for link, error in batch:
                events += self.core.on_ping_result(link, error is None, now, error or "")
            # Every answer of the batch in one commit: one fsync a batch, not one a miner.
            seen = [e.node_id for e in events if isinstance(e, MinerSeen)]
            if seen:
                self.state.set_miners_seen(seen, now)
            self._apply([e for e in events if not isinstance(e, MinerSeen)])

    def miner_nat(self, node_id: str) -> str:
        """An online miner's NAT type as it classified it ("" when offline or unknown)."""
        link = self.core.link(node_id)
        return link.nat_type if link is not None else ""

    def overlay_addrs(
        self, node_id: str, hub_addrs: list[str] | None = None
    ) -> tuple[list[str], bool]:
        """How to reach an online miner on the overlay: its own addresses (when it is not behind
        NAT), then through this hub's relay; and whether it is behind NAT. ([], False) offline.
        ``hub_addrs``: this hub's advertised addresses, when the caller read them already (a
        listing of every miner reads them once, not once a miner: each read is a thread hop)."""
        link = self.core.link(node_id)
        if link is None:
            return [], False
        hub_addrs = self.node.advertised_addrs if hub_addrs is None else hub_addrs
        return link.overlay_addrs(hub_addrs), link.behind_nat

    def online_miners(self) -> list[str]:
        with self._lock:
            return sorted(self._sessions)

    def _session_for(self, miner: str) -> MinerSession:
        miner = check_id(miner, "miner")
        with self._lock:  # a whole node ID of a live miner: no need to read every miner
            session = self._sessions.get(miner)
        if session is not None:
            return session
        known = {m.node_id for m in self.state.list_miners()}
        node_id = resolve_prefix(known | set(self.online_miners()), miner, kind="miner")
        with self._lock:
            session = self._sessions.get(node_id)
        if session is None:
            rec = self.state.get_miner(node_id)
            ago = time.time() - rec.last_seen
            raise MinerUnavailable(f"miner {node_id} is offline (last seen {ago:.0f}s ago)")
        return session

    def _background(self, coro: Coroutine[Any, Any, T]) -> asyncio.Task[T]:
        """Run ``coro`` on the loop as a task the hub holds until it ends (cancelled at close);
        its failure is the awaiting caller's, or logged when nobody waits."""
        task = asyncio.get_running_loop().create_task(coro)
        self._tasks.add(task)

        def done(t: asyncio.Task[T]) -> None:
            self._tasks.discard(t)
            if not t.cancelled() and isinstance(t.exception(), SonmError):
                log.info("background %s: %s", coro.__qualname__, t.exception())

        task.add_done_callback(done)
        return task

    async def blocking(self, fn: Callable[..., T], *args: Any, **kwargs: Any) -> T:
        """``fn(*args, **kwargs)`` on the hub's worker pool (SQLite, signatures), awaited on the
        loop, which must never block on them."""
        return await asyncio.wrap_future(self._sup.submit(functools.partial(fn, *args, **kwargs)))
