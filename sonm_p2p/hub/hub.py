"""The hub's domain, as I/O: miner sessions, health pings, and the task table.

Miners dial the hub and hold a session stream open (``/sonm/session/1.0.0``). On each new session
the hub opens a gRPC channel back to the miner over that same connection, handshakes (learning its
resources and the tasks it runs) and pings it every ``ping_interval``. What that means for the
miner and its tasks — online, offline after ``max_missed_pings`` or a closed session, tasks LOST,
FAILED, adopted — is decided by the pure :class:`~sonm_p2p.hub.core.HubCore`; :class:`Hub` feeds
it and carries out its events against :class:`HubState`, the event bus and the node.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import functools
import logging
import re
import threading
import time
import uuid
from collections.abc import AsyncIterator, Callable, Coroutine
from dataclasses import dataclass, replace
from typing import Any, TypeVar

from sonm_p2p.auth import is_task_record, task_record
from sonm_p2p.errors import (
    Busy,
    InvalidRequest,
    MinerNotFound,
    MinerUnavailable,
    SonmError,
    TaskNotFound,
)
from sonm_p2p.events import EventBus, TaskEvent
from sonm_p2p.hub.admission import check_id, check_spec, shown
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
from sonm_p2p.hub.limits import RateLimit
from sonm_p2p.hub.miner_client import AioStream, MinerClient
from sonm_p2p.hub.state import HubState, MinerRecord
from sonm_p2p.identity import Identity, node_id_from_peer_id
from sonm_p2p.model import LogQuery, MinerStatus, RunSpec
from sonm_p2p.supervisor import Supervisor
from sonm_p2p.tasks import Task, resolve_prefix
from sonm_p2p.transport.node import P2PNode

__all__ = ["Hub", "HubOptions", "MinerView"]

log = logging.getLogger(__name__)

T = TypeVar("T")

_STATUS_TTL = 1.0  # seconds a miner's live status is shared by every caller
_PAGE_DEFAULT, _PAGE_MAX = 500, 1000  # tasks per ListTasks page


def _parse_page_token(token: str) -> tuple[float, str]:
    created, sep, task_id = token.partition("/")
    try:
        if not sep or not task_id:
            raise ValueError(token)
        return float(created), task_id
    except ValueError:
        raise InvalidRequest(f"bad page token {shown(token, 40)}") from None


_TASK_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{7,63}")


@dataclass(frozen=True, kw_only=True)
class HubOptions:
    """Timings of the hub's miner sessions.

    ping_interval: seconds between pings of each miner; defaults to 10.
    ping_timeout: seconds a ping may take; defaults to 5.
    max_missed_pings: consecutive misses that make a miner offline; defaults to 3.
    handshake_timeout: seconds a new miner has to answer its handshake; defaults to 10.
    start_timeout: deadline of a start when the client set none, seconds; defaults to 600.
    start_rate, start_burst: starts one client (node ID) may make per second, and at once;
        default 10 and 100.
    task_retention: seconds an ended task is kept (then forgotten); defaults to 7 days; 0: for
        ever.
    """

    ping_interval: float = 10.0
    ping_timeout: float = 5.0
    max_missed_pings: int = 3
    handshake_timeout: float = 10.0
    start_timeout: float = 600.0
    start_rate: float = 10.0
    start_burst: int = 100
    task_retention: float = 7 * 86400.0


@dataclass(frozen=True)
class MinerView:
    """A miner as the hub's clients see it."""

    record: MinerRecord
    task_ids: tuple[str, ...]


class _Session:
    """The I/O side of one miner's session: its client, its event stream, its log follows."""

    def __init__(self, link: MinerLink, client: MinerClient) -> None:
        self.link = link
        self.client = client
        self.watch: concurrent.futures.Future[None] | None = None  # its WatchTasks, on the loop
        self.streams: set[AioStream] = set()  # log follows, ended when the session ends
        self.gone = ""  # how the session ended, e.g. "went offline (…)" ("" while it lasts)

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


class Hub:
    """Brokers tasks to connected miners: the shell that feeds :class:`HubCore` what happens
    (sessions, pings, reports) and carries out what it decides (store, publish, disconnect).

    Thread-safe. Its pings and the miners' event streams run on one asyncio loop and short work
    on a bounded pool, both owned by ``supervisor``; :meth:`close` ends the sessions.
    ``stun_for_miners()`` names the STUN responder (host:port) miners classify their NAT against.
    """

    def __init__(
        self,
        identity: Identity,
        node: P2PNode,
        state: HubState,
        options: HubOptions,
        *,
        supervisor: Supervisor,
        stun_for_miners: Callable[[], str] = str,
    ) -> None:
        self.identity = identity
        self.node_id = identity.node_id
        self.node = node
        self.state = state
        self.options = options
        self.started_at = time.time()
        self.stun_for_miners = stun_for_miners
        self.core = HubCore(max_missed_pings=options.max_missed_pings)
        self._starts = RateLimit(options.start_rate, options.start_burst)
        self.events = EventBus()
        self._sup = supervisor
        self._sessions: dict[str, _Session] = {}  # node ID -> current session
        self._lock = threading.RLock()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._tasks: set[asyncio.Task[Any]] = set()  # starts and stops in flight, on the loop
        # Live miners' last status and the call in flight (touched on the loop only).
        self._status: dict[str, tuple[float, _Session, MinerStatus]] = {}
        self._status_calls: dict[str, asyncio.Task[MinerStatus]] = {}
        self.state.mark_all_offline()  # nobody is connected to a hub that just started

    def __repr__(self) -> str:
        return f"<Hub {self.node_id} miners={len(self._sessions)}>"

    @property
    def loop(self) -> asyncio.AbstractEventLoop | None:
        """The hub's event loop (None before :meth:`start`): miners' calls and the client API."""
        return self._loop

    def start(self) -> None:
        """Start the loop and pinging (once); sessions are accepted from then on."""
        if self._loop is None:
            self._loop = self._sup.asyncio_loop("miners")
            self._sup.every("pinger", self.options.ping_interval, self._ping_round)
            if self.options.task_retention:
                sweep = min(3600.0, max(1.0, self.options.task_retention / 2))
                self._sup.every("retention", sweep, self._forget_ended)

    def close(self) -> None:
        """End every session (their calls fail, their follows end). Idempotent."""
        with self._lock:
            sessions, self._sessions = list(self._sessions.values()), {}
        for session in sessions:
            session.close()
        self.events.close()

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

    def miner_opened(self, peer_id: str) -> None:
        """A miner opened its session: handshake, record it online, reconcile its tasks."""
        node_id = node_id_from_peer_id(peer_id)
        if node_id is None:
            log.warning("refusing session from %s: not a secp256k1 identity", peer_id)
            self.node.disconnect(peer_id)
            return
        if self._loop is None or self._sup.closed:
            self.node.disconnect(peer_id)
            return
        client = MinerClient(self.node, peer_id, node_id, loop=self._loop)
        try:
            hs = client.handshake(
                self.node_id, self.options.handshake_timeout, stun_endpoint=self.stun_for_miners()
            )
            if hs.node_id != node_id:
                raise InvalidRequest(f"miner claims {hs.node_id} but its key is {node_id}")
        except SonmError as exc:
            log.warning("miner %s: handshake failed: %s", node_id, exc)
            client.close()
            self.node.disconnect(peer_id)
            return
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
            session = _Session(link, client)
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

    async def _follow(self, session: _Session) -> None:
        """The miner's task events (on the loop): state changes go to the table, all to
        watchers. Each is applied on the pool, in order (SQLite must not stall the loop)."""
        try:
            async for event in session.client.awatch_tasks():
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

    def _ping_round(self) -> None:
        """Ping every live miner at once (on the loop); the core says who went offline."""
        with self._lock:
            sessions = list(self._sessions.values())
        if not sessions or self._loop is None:
            return
        timeout = self.options.ping_timeout

        async def ping_all() -> list[BaseException | None]:
            return await asyncio.gather(
                *(s.client.aping(timeout) for s in sessions), return_exceptions=True
            )

        try:
            results = asyncio.run_coroutine_threadsafe(ping_all(), self._loop).result(timeout + 5)
        except (RuntimeError, concurrent.futures.CancelledError, TimeoutError):
            return  # closing
        now = time.time()
        with self._lock:
            for session, result in zip(sessions, results, strict=True):
                error = "" if result is None else str(result)
                self._apply(self.core.on_ping_result(session.link, result is None, now, error))

    def miner_nat(self, node_id: str) -> str:
        """An online miner's NAT type as it classified it ("" when offline or unknown)."""
        link = self.core.link(node_id)
        return link.nat_type if link is not None else ""

    def overlay_addrs(self, node_id: str) -> tuple[list[str], bool]:
        """How to reach an online miner on the overlay: its own addresses (when it is not behind
        NAT), then through this hub's relay; and whether it is behind NAT. ([], False) offline."""
        link = self.core.link(node_id)
        if link is None:
            return [], False
        return link.overlay_addrs(self.node.advertised_addrs), link.behind_nat

    # -- the client API ----------------------------------------------------------------------

    def online_miners(self) -> list[str]:
        with self._lock:
            return sorted(self._sessions)

    def list_miners(self) -> list[MinerView]:
        views = []
        for rec in self.state.list_miners():
            tasks = self.state.list_tasks(rec.node_id, active_only=True)
            views.append(MinerView(rec, tuple(t.task_id for t in tasks)))
        return views

    def _session_for(self, miner: str) -> _Session:
        miner = check_id(miner, "miner")
        known = {m.node_id for m in self.state.list_miners()}
        node_id = resolve_prefix(known | set(self.online_miners()), miner, kind="miner")
        with self._lock:
            session = self._sessions.get(node_id)
        if session is None:
            rec = self.state.get_miner(node_id)
            ago = time.time() - rec.last_seen
            raise MinerUnavailable(f"miner {node_id} is offline (last seen {ago:.0f}s ago)")
        return session

    def create_task(
        self, miner: str, spec: RunSpec, *, owner: str, task_id: str = ""
    ) -> tuple[_Session, Task]:
        """Check a start and put its task in the table (PULLING), so a crash loses nothing.

        ``task_id`` lets the caller choose the ID (8-64 of ``A-Za-z0-9_.-``, stored in lower
        case), so it can watch before the reply. Raises InvalidRequest, MinerNotFound,
        MinerUnavailable.
        """
        check_spec(spec)
        if task_id and not _TASK_ID.fullmatch(task_id):
            raise InvalidRequest(
                f"bad task ID {shown(task_id, 70)}: 8-64 letters, digits, '_', '.', '-'"
            )
        wait = self._starts.take(owner, time.monotonic())
        if wait:
            raise Busy(f"too many starts from {owner}: the next is allowed in {wait:.1f}s")
        # IDs resolve case-insensitively, so they are stored in one case: "ABC…" must not be a
        # second task beside "abc…" (it would make the owner's own ID ambiguous).
        task_id = task_id.lower()
        session = self._session_for(miner)
        with self._lock:
            try:
                self.state.get_task(task_id)
                raise InvalidRequest(f"task ID {task_id} is already used")
            except TaskNotFound:
                pass
            task = self._save(
                Task.create(
                    task_id=task_id or str(uuid.uuid4()),
                    miner_id=session.node_id,
                    image=spec.image,
                    owner=owner,
                    now=time.time(),
                )
            )
        return session, task

    async def start_task(
        self,
        miner: str,
        spec: RunSpec,
        *,
        owner: str,
        timeout: float | None,
        task_id: str = "",
        detach: bool = False,
    ) -> Task:
        """Run ``spec`` on ``miner`` (node ID or unique prefix), on the hub's loop.

        Without ``detach`` it returns the task RUNNING, or raises the miner's error (the task is
        then FAILED with the reason); with ``detach`` it returns at once (PULLING) and the start
        goes on (follow it with :meth:`watch_task`). Either way the start runs to its end even
        when the caller goes away, so the table always learns how it ended.
        """
        session, task = await self.blocking(
            self.create_task, miner, spec, owner=owner, task_id=task_id
        )
        run = self._background(
            self._run_start(session, task, spec, owner, timeout or self.options.start_timeout)
        )
        if detach:
            return task
        return await asyncio.shield(run)

    async def _run_start(
        self, session: _Session, task: Task, spec: RunSpec, owner: str, timeout: float
    ) -> Task:
        try:
            seen = await session.client.astart(
                task,
                spec,
                hub_id=self.node_id,
                timeout=timeout,
                record=task_record(self.identity, task.task_id, session.node_id, owner),
            )
        except SonmError as exc:
            await self.blocking(self._start_failed, task.task_id, str(exc))
            raise
        return await self.blocking(self._started, session, task.task_id, seen)

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

    def _started(self, session: _Session, task_id: str, seen: Task) -> Task:
        with self._lock:
            current = self.state.get_task(task_id)
            return self._apply(self.core.started(session.link, current, seen, time.time())) or (
                self.state.get_task(task_id)
            )

    def _start_failed(self, task_id: str, reason: str) -> Task:
        with self._lock:
            current = self.state.get_task(task_id)
            return self._apply(self.core.start_failed(current, reason, time.time())) or current

    async def stop_task(self, task_id: str, *, timeout: float | None) -> Task:
        """Stop the task (the full ID) on its miner, on the hub's loop."""
        task = await self.blocking(self._task, task_id)
        if task.terminal:
            return task
        session = await self.blocking(self._session_for, task.miner_id)
        try:
            stop = self._background(session.client.astop(task.task_id, timeout))
            seen = await asyncio.shield(stop)  # a caller that goes away does not undo a stop
        except TaskNotFound:
            seen = None
        return await self.blocking(self._stopped, task.task_id, seen)

    def _stopped(self, task_id: str, seen: Task | None) -> Task:
        with self._lock:
            fresh = self.state.get_task(task_id)
            code = seen.exit_code if seen else None
            return self._apply(self.core.stopped(fresh, code, time.time())) or fresh

    def task_status(self, task_id: str) -> Task:
        return self._task(task_id)

    def list_tasks(self, miner: str = "") -> list[Task]:
        """Every task (of ``miner``, a node ID or prefix, if given), oldest first."""
        return self.page_tasks(miner, page_size=0, page_token="", everything=True)[0]

    def page_tasks(
        self, miner: str, *, page_size: int, page_token: str, everything: bool = False
    ) -> tuple[list[Task], str]:
        """One page of tasks, oldest first, and the token of the next ("" after the last).

        ``page_size`` 0 means the default (500); at most 1000. Raises InvalidRequest for a
        token this hub did not hand out."""
        miner_id = None
        if miner:
            known = {m.node_id for m in self.state.list_miners()}
            miner_id = resolve_prefix(known, check_id(miner, "miner"), kind="miner")
        after = _parse_page_token(page_token) if page_token else None
        limit = None if everything else min(page_size or _PAGE_DEFAULT, _PAGE_MAX)
        tasks = self.state.list_tasks(
            miner_id, after=after, limit=None if limit is None else limit + 1
        )
        if limit is None or len(tasks) <= limit:
            return tasks, ""
        last = tasks[limit - 1]
        return tasks[:limit], f"{last.created_at!r}/{last.task_id}"

    def _forget_ended(self) -> None:
        """Drop tasks that ended more than ``task_retention`` ago (``every`` service)."""
        gone = self.state.delete_ended(time.time() - self.options.task_retention)
        if gone:
            log.info(
                "forgot %d tasks that ended more than %.0fs ago", gone, self.options.task_retention
            )  # noqa: E501

    def _task(self, task_id: str, *, caller: str | None = None) -> Task:
        task_id = check_id(task_id, "task")
        if not task_id:
            raise InvalidRequest("a task ID is required")
        if caller is not None and caller != self.node_id:
            # A caller's ID or prefix names its own task first: nobody else's task can shadow
            # it (make it ambiguous) by sharing a prefix with it.
            try:
                return self.state.get_task(
                    resolve_prefix(self.state.task_ids(caller), task_id, kind="task")
                )
            except TaskNotFound:
                pass  # not one of the caller's: the owner check says why not
        full = resolve_prefix(self.state.task_ids(), task_id, kind="task")
        return self.state.get_task(full)

    def resolve_task(self, task_id: str, *, caller: str) -> Task:
        """The task ``task_id`` (an ID or unique prefix) names for ``caller``: among the
        caller's own tasks first (the hub's operator: among all)."""
        return self._task(task_id, caller=caller)

    async def watch_task(
        self, task_id: str, *, wait_for_task: float = 10.0
    ) -> AsyncIterator[TaskEvent]:
        """The task now, then each change and pull progress, ending with its final state (an
        async generator on the hub's loop: a watcher holds no thread).

        A task ID not known yet (the client chose it and its StartTask is on the way) is waited
        for up to ``wait_for_task`` seconds.
        """
        full = check_id(task_id, "task")
        if not full:
            raise InvalidRequest("a task ID is required")
        loop = asyncio.get_running_loop()
        wake = asyncio.Event()
        want = full.lower()
        sub = self.events.subscribe(
            lambda e: e.task_id.lower().startswith(want),
            wake=lambda: loop.call_soon_threadsafe(wake.set),
        )
        try:
            deadline = loop.time() + wait_for_task
            while True:
                try:
                    task = await self.blocking(self._task, full)
                    break
                except TaskNotFound:
                    if loop.time() > deadline:
                        raise
                    wake.clear()
                    with contextlib.suppress(TimeoutError):
                        await asyncio.wait_for(wake.wait(), 0.2)
            sub._accept = lambda e: e.task_id == task.task_id  # a prefix was resolved
            yield TaskEvent(task.task_id, time.time(), task=task)
            if task.terminal:
                return
            while True:
                wake.clear()
                event = sub.get(timeout=0)
                if event is None:
                    if sub.closed:
                        return
                    await wake.wait()
                    continue
                if event.task_id != task.task_id:
                    continue  # another task with the same prefix, queued before the resolve
                yield event
                if event.task is not None and event.task.terminal:
                    return
        finally:
            sub.close()

    async def task_logs(self, query: LogQuery) -> AsyncIterator[bytes]:
        """The task's output from its miner (``query.task_id``: the full ID), on the loop.

        When the miner goes offline meanwhile, iterating raises MinerUnavailable (a follow must
        not end as if the task had); a client that goes away ends the miner's follow too."""
        task = await self.blocking(self._task, query.task_id)
        session = await self.blocking(self._session_for, task.miner_id)
        stream = session.client.alogs(replace(query, task_id=task.task_id))
        session.streams.add(stream)
        try:
            if session.gone:  # dropped before the follow was registered
                stream.cancel()
            async for chunk in stream:
                yield chunk
        finally:
            session.streams.discard(stream)
            stream.cancel()
        if session.gone:
            raise MinerUnavailable(
                f"miner {session.node_id} {session.gone} while its output was followed: "
                f"`sonmcli logs -f {task.task_id}` again once it is back"
            )

    async def miner_status(self, miner: str) -> tuple[MinerRecord, MinerStatus | None]:
        """The miner's record, and its live status (None when offline).

        Callers within ``_STATUS_TTL`` of each other share one call to the miner (and one
        answer), so no number of callers makes a miner compute its status more than about once
        a second.
        """
        node_id, record, session = await self.blocking(self._miner_now, miner)
        if session is None:
            return record, None
        loop = asyncio.get_running_loop()
        cached = self._status.get(node_id)
        if cached is not None and cached[1] is session and loop.time() - cached[0] < _STATUS_TTL:
            return record, cached[2]
        call = self._status_calls.get(node_id)
        if call is None or call.done():
            call = self._background(session.client.aminer_status(self.options.ping_timeout * 2))
            self._status_calls[node_id] = call

            def keep(done: asyncio.Task[MinerStatus]) -> None:
                if self._status_calls.get(node_id) is done:
                    del self._status_calls[node_id]
                if not done.cancelled() and done.exception() is None and not session.gone:
                    self._status[node_id] = (loop.time(), session, done.result())

            call.add_done_callback(keep)
        return record, await asyncio.shield(call)

    def _miner_now(self, miner: str) -> tuple[str, MinerRecord, _Session | None]:
        miner = check_id(miner, "miner")
        known = {m.node_id for m in self.state.list_miners()}
        node_id = resolve_prefix(known, miner, kind="miner")
        with self._lock:
            session = self._sessions.get(node_id)
        return node_id, self.state.get_miner(node_id), session
