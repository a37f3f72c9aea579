"""The hub's client API over its miners: start, stop, watch, logs, status, lists.

:class:`Hub` is built on :class:`~sonm_p2p.hub.sessions.MinerSessions` (the miner-session shell
around the pure :class:`~sonm_p2p.hub.core.HubCore`). Calls that wait on a miner or stay open are
coroutines on the hub's loop; table work runs on the bounded pool (``blocking``).
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import logging
import re
import threading
import time
import uuid
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, replace
from typing import Any, TypeVar

from sonm_p2p.auth import task_record
from sonm_p2p.errors import (
    Busy,
    InvalidRequest,
    MinerUnavailable,
    SonmError,
    TaskNotFound,
)
from sonm_p2p.events import EventBus, TaskEvent
from sonm_p2p.hub.admission import check_id, check_spec, shown
from sonm_p2p.hub.core import (
    HubCore,
)
from sonm_p2p.hub.limits import RateLimit
from sonm_p2p.hub.sessions import MinerSession, MinerSessions
from sonm_p2p.hub.state import HubState, MinerRecord
from sonm_p2p.identity import Identity
from sonm_p2p.model import LogQuery, MinerStatus, RunSpec
from sonm_p2p.supervisor import Supervisor
from sonm_p2p.tasks import Task, resolve_prefix
from sonm_p2p.transport.node import P2PNode

__all__ = ["Hub", "HubOptions", "MinerView"]

log = logging.getLogger(__name__)

T = TypeVar("T")

_STATUS_TTL = 1.0  # seconds a miner's live status is shared by every caller
_PAGE_DEFAULT, _PAGE_MAX = 500, 1000  # tasks per ListTasks page


def _pinger_ended(done: concurrent.futures.Future[None]) -> None:
    if not done.cancelled() and done.exception() is not None:
        log.error("the pinger failed: %r", done.exception(), exc_info=done.exception())


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


class Hub(MinerSessions):
    """Brokers tasks to connected miners: the shell that feeds :class:`HubCore` what happens
    (sessions, pings, reports) and carries out what it decides (store, publish, disconnect).

    Thread-safe. Its pings (spread over the ping interval) and the miners' event streams run on
    one asyncio loop and short work on a bounded pool, both owned by ``supervisor``;
    :meth:`close` ends the sessions.
    ``stun_for_miners()`` names the STUN responders (host:port) miners classify their NAT against.
    """

    def __init__(
        self,
        identity: Identity,
        node: P2PNode,
        state: HubState,
        options: HubOptions,
        *,
        supervisor: Supervisor,
        stun_for_miners: Callable[[], list[str]] = list,
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
        self._sessions: dict[str, MinerSession] = {}  # node ID -> current session
        self._lock = threading.RLock()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._tasks: set[asyncio.Task[Any]] = set()  # starts and stops in flight, on the loop
        # Live miners' last status and the call in flight (touched on the loop only).
        self._status: dict[str, tuple[float, MinerSession, MinerStatus]] = {}
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
            pinger = asyncio.run_coroutine_threadsafe(self._pinger(), self._loop)
            pinger.add_done_callback(_pinger_ended)
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

    # -- the client API ----------------------------------------------------------------------

    def list_miners(self) -> list[MinerView]:
        # Two queries, not one a miner: a listing of 1,000 miners is one table scan each.
        active: dict[str, list[str]] = {}
        for t in self.state.list_tasks(active_only=True):
            active.setdefault(t.miner_id, []).append(t.task_id)
        return [MinerView(r, tuple(active.get(r.node_id, ()))) for r in self.state.list_miners()]

    def create_task(
        self, miner: str, spec: RunSpec, *, owner: str, task_id: str = ""
    ) -> tuple[MinerSession, Task]:
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
        self, session: MinerSession, task: Task, spec: RunSpec, owner: str, timeout: float
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

    def _started(self, session: MinerSession, task_id: str, seen: Task) -> Task:
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
        stream = await session.client.alogs(replace(query, task_id=task.task_id))
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

    def _miner_now(self, miner: str) -> tuple[str, MinerRecord, MinerSession | None]:
        miner = check_id(miner, "miner")
        known = {m.node_id for m in self.state.list_miners()}
        node_id = resolve_prefix(known, miner, kind="miner")
        with self._lock:
            session = self._sessions.get(node_id)
        return node_id, self.state.get_miner(node_id), session
