"""The hub's domain: miner sessions, health pings, and the task table.

Miners dial the hub and hold a session stream open (``/sonm/session/1.0.0``). On each new session
the hub opens a gRPC channel back to the miner over that same connection, handshakes (learning its
resources and the tasks it runs), reconciles its table with the report, and pings it every
``ping_interval``; a miner that misses ``max_missed_pings`` in a row, or whose session ends, is
offline and its running tasks LOST until it returns. Everything is kept in :class:`HubState`.
"""

from __future__ import annotations

import ipaddress
import logging
import re
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from concurrent import futures
from dataclasses import dataclass, replace

from sonm_p2p._status import ServerStream
from sonm_p2p.errors import (
    InvalidRequest,
    MinerNotFound,
    MinerUnavailable,
    SonmError,
    TaskNotFound,
)
from sonm_p2p.events import EventBus, TaskEvent
from sonm_p2p.hub.miner_client import MinerClient
from sonm_p2p.hub.state import HubState, MinerRecord
from sonm_p2p.identity import Identity, node_id_from_peer_id
from sonm_p2p.model import LogQuery, MinerStatus, RunSpec
from sonm_p2p.tasks import (
    Failed,
    Found,
    Lost,
    Pulled,
    Started,
    Stopped,
    Task,
    TaskState,
    resolve_prefix,
)
from sonm_p2p.transport.node import P2PNode
from sonm_p2p.transport.relay import is_circuit

__all__ = ["Hub", "HubOptions", "MinerView"]

log = logging.getLogger(__name__)

_UNSPECIFIED_HOSTS = {"", "0.0.0.0", "::"}
_TASK_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{7,63}")


@dataclass(frozen=True, kw_only=True)
class HubOptions:
    """Timings of the hub's miner sessions.

    ping_interval: seconds between pings of each miner; defaults to 10.
    ping_timeout: seconds a ping may take; defaults to 5.
    max_missed_pings: consecutive misses that make a miner offline; defaults to 3.
    handshake_timeout: seconds a new miner has to answer its handshake; defaults to 10.
    start_timeout: deadline of a start when the client set none, seconds; defaults to 600.
    """

    ping_interval: float = 10.0
    ping_timeout: float = 5.0
    max_missed_pings: int = 3
    handshake_timeout: float = 10.0
    start_timeout: float = 600.0


@dataclass(frozen=True)
class MinerView:
    """A miner as the hub's clients see it."""

    record: MinerRecord
    task_ids: tuple[str, ...]


class _Session:
    def __init__(
        self,
        peer_id: str,
        node_id: str,
        client: MinerClient,
        remote: str,
        multiaddrs: list[str],
        nat_type: str = "",
    ) -> None:
        self.peer_id = peer_id
        self.nat_type = nat_type  # as the miner classified it by STUN
        self.node_id = node_id
        self.client = client
        self.remote_addr = remote
        self.multiaddrs = multiaddrs  # where the miner says it listens
        self.missed = 0
        self.watch = None  # the miner's WatchTasks stream, cancelled when the session ends
        self.streams: set[ServerStream] = set()  # log follows, ended when the session ends
        self.gone = ""  # how the session ended, e.g. "went offline (…)" ("" while it lasts)

    @property
    def remote_ip(self) -> str:
        host = self.remote_addr.rsplit(":", 1)[0]
        return host.strip("[]")

    @property
    def behind_nat(self) -> bool:
        """The miner reached us from an address it does not have: a NAT is in between."""
        own = {a.split("/")[2] for a in self.multiaddrs if a.count("/") > 2 and not is_circuit(a)}
        if not self.remote_ip or not own or ipaddress.ip_address(self.remote_ip).is_loopback:
            return False  # unknown, or the same machine
        return self.remote_ip not in own

    def __repr__(self) -> str:
        return f"<MinerSession {self.node_id} {self.remote_addr} missed={self.missed}>"


class Hub:
    """Brokers tasks to connected miners. Thread-safe; call :meth:`close` to stop pinging."""

    def __init__(
        self, identity: Identity, node: P2PNode, state: HubState, options: HubOptions
    ) -> None:
        self.identity = identity
        self.node_id = identity.node_id
        self.node = node
        self.state = state
        self.options = options
        self.started_at = time.time()
        #: The STUN responder (host:port) miners are told to classify their NAT against.
        self.stun_for_miners: Callable[[], str] = str
        self._sessions: dict[str, _Session] = {}  # node ID -> session
        self._lock = threading.RLock()
        self._stop = threading.Event()
        self._pinger: threading.Thread | None = None
        self._pool = futures.ThreadPoolExecutor(max_workers=8, thread_name_prefix="hub-ping")
        self.events = EventBus()
        self.state.mark_all_offline()  # nobody is connected to a hub that just started

    def __repr__(self) -> str:
        return f"<Hub {self.node_id} miners={len(self._sessions)}>"

    def start(self) -> None:
        if self._pinger is None:
            self._pinger = threading.Thread(target=self._ping_loop, name="hub-pinger", daemon=True)
            self._pinger.start()

    def close(self) -> None:
        self._stop.set()
        if self._pinger is not None:
            self._pinger.join(timeout=10)
            self._pinger = None
        with self._lock:
            sessions, self._sessions = list(self._sessions.values()), {}
        for s in sessions:
            self._close_session(s)
        self._pool.shutdown(wait=False, cancel_futures=True)
        self.events.close()

    # -- sessions ----------------------------------------------------------------------------

    def miner_opened(self, peer_id: str) -> None:
        """A miner opened its session: handshake, record it online, reconcile its tasks."""
        node_id = node_id_from_peer_id(peer_id)
        if node_id is None:
            log.warning("refusing session from %s: not a secp256k1 identity", peer_id)
            self.node.disconnect(peer_id)
            return
        client = MinerClient(self.node, peer_id, node_id)
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
        session = _Session(peer_id, node_id, client, remote, hs.multiaddrs, hs.nat_type)
        now = time.time()
        with self._lock:
            old = self._sessions.pop(node_id, None)
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
            self._reconcile(session, hs.tasks, now)
        if old is not None:
            old.gone = "reconnected to the hub"
            self._close_session(old)
        threading.Thread(
            target=self._watch_miner, args=(session,), name=f"watch {node_id[:10]}", daemon=True
        ).start()
        log.info("miner %s online from %s (%d tasks)", node_id, remote or "?", len(hs.tasks))

    def miner_closed(self, peer_id: str) -> None:
        """A miner's session ended: offline, its active tasks LOST."""
        with self._lock:
            session = next((s for s in self._sessions.values() if s.peer_id == peer_id), None)
            if session is None:
                return
            self._drop(session, "disconnected")

    def _drop(self, session: _Session, why: str) -> None:
        with self._lock:
            if self._sessions.get(session.node_id) is not session:
                return
            del self._sessions[session.node_id]
            now = time.time()
            self.state.set_miner_online(session.node_id, False, now)
            lost = 0
            for task in self.state.list_tasks(session.node_id, active_only=True):
                if task.state in (TaskState.RUNNING, TaskState.STARTING):
                    self._save(task.apply(Lost(), now))
                    lost += 1
        session.gone = f"went offline ({why})"
        self._close_session(session)
        log.warning("miner %s offline (%s); %d tasks LOST", session.node_id, why, lost)

    @staticmethod
    def _close_session(session: _Session) -> None:
        if session.watch is not None:
            session.watch.cancel()
        for stream in list(session.streams):
            stream.cancel()
        session.client.close()

    def _save(self, task: Task) -> Task:
        """Store ``task`` and tell its watchers."""
        self.state.put_task(task)
        self.events.publish(TaskEvent(task.task_id, task.updated_at, task=task))
        return task

    def _watch_miner(self, session: _Session) -> None:
        """Follow the miner's task events: state changes go to the table, all to watchers."""
        stream = session.client.watch_tasks()
        session.watch = stream
        try:
            for event in stream:
                if event.task is not None:
                    try:
                        task = self.state.get_task(event.task_id)
                    except TaskNotFound:
                        continue
                    if not task.terminal:
                        self._put_report(task, event.task, session, time.time())
                elif event.progress is not None:
                    self.events.publish(event)
        except SonmError as exc:
            log.debug("miner %s: event stream ended: %s", session.node_id, exc)

    def _reconcile(self, session: _Session, reported: list[Task], now: float) -> None:
        by_id = {t.task_id: t for t in reported}
        for task in self.state.list_tasks(session.node_id, active_only=True):
            seen = by_id.pop(task.task_id, None)
            if seen is not None:
                self._put_report(task, seen, session, now)
            elif task.state in (TaskState.RUNNING, TaskState.STARTING, TaskState.LOST):
                self._save(task.apply(Failed("the container is gone from its miner"), now))
        for seen in by_id.values():  # containers the table does not know (a lost database)
            try:
                self.state.get_task(seen.task_id)
                continue  # already terminal here: keep the hub's word
            except TaskNotFound:
                pass
            adopted = replace(seen, endpoints=self._fix_hosts(seen, session))
            self._save(replace(adopted, miner_id=session.node_id))

    def _put_report(self, task: Task, seen: Task, session: _Session, now: float) -> Task:
        event = Found(
            seen.state,
            exit_code=seen.exit_code
            if seen.state in (TaskState.EXITED, TaskState.STOPPED)
            else None,
            endpoints=self._fix_hosts(seen, session),
            error=seen.error,
            container_id=seen.container_id,
        )
        try:
            task = task.apply(event, now)
        except InvalidRequest as exc:
            log.warning("ignoring report for %s: %s", task.task_id, exc)
            return task
        return self._save(task)

    @staticmethod
    def _fix_hosts(task: Task, session: _Session) -> tuple:
        # A port published on all interfaces is reachable at the address the miner came from;
        # behind a NAT that address does not forward it: the user needs `sonmcli forward`.
        # Through a relay (no remote IP) the miner's own address is unknown: forward works.
        reach = "forward" if session.behind_nat or not session.remote_ip else "direct"
        return tuple(
            replace(ep, host_ip=session.remote_ip, reach=reach)
            if ep.host_ip in _UNSPECIFIED_HOSTS and session.remote_ip
            else replace(ep, reach=reach)
            for ep in task.endpoints
        )

    def miner_nat(self, node_id: str) -> str:
        """An online miner's NAT type as it classified it ("" when offline or unknown)."""
        with self._lock:
            session = self._sessions.get(node_id)
        return session.nat_type if session is not None else ""

    def overlay_addrs(self, node_id: str) -> tuple[list[str], bool]:
        """How to reach an online miner on the overlay: its own addresses (when it is not behind
        NAT), then through this hub's relay; and whether it is behind NAT. ([], False) offline."""
        with self._lock:
            session = self._sessions.get(node_id)
        if session is None:
            return [], False
        own = [a for a in session.multiaddrs if not is_circuit(a)]
        own_relayed = [a for a in session.multiaddrs if is_circuit(a)]
        direct = [] if session.behind_nat else own
        mine = [a for a in self.node.advertised_addrs if not is_circuit(a)]
        relayed = [f"{a}/p2p-circuit/p2p/{session.peer_id}" for a in mine]
        out: list[str] = []
        for addr in (*direct, *own_relayed, *relayed):
            if addr not in out:
                out.append(addr)
        return out, session.behind_nat

    def _ping_loop(self) -> None:
        while not self._stop.wait(self.options.ping_interval):
            with self._lock:
                sessions = list(self._sessions.values())
            jobs = {
                self._pool.submit(s.client.ping, self.options.ping_timeout): s for s in sessions
            }
            for job, session in jobs.items():
                try:
                    job.result()
                except (SonmError, futures.CancelledError) as exc:
                    session.missed += 1
                    log.warning(
                        "miner %s missed a ping (%d): %s", session.node_id, session.missed, exc
                    )
                    if session.missed >= self.options.max_missed_pings:
                        self._drop(session, f"{session.missed} missed pings")
                        self.node.disconnect(session.peer_id)
                    continue
                session.missed = 0
                self.state.set_miner_online(session.node_id, True, time.time())

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
        known = {m.node_id for m in self.state.list_miners()}
        node_id = resolve_prefix(known | set(self.online_miners()), miner, kind="miner")
        with self._lock:
            session = self._sessions.get(node_id)
        if session is None:
            rec = self.state.get_miner(node_id)
            ago = time.time() - rec.last_seen
            raise MinerUnavailable(f"miner {node_id} is offline (last seen {ago:.0f}s ago)")
        return session

    def start_task(
        self,
        miner: str,
        spec: RunSpec,
        *,
        owner: str,
        timeout: float | None,
        task_id: str = "",
        detach: bool = False,
    ) -> Task:
        """Run ``spec`` on ``miner`` (node ID or unique prefix).

        The task is in the table (PULLING) before the miner is called, so a crash loses nothing.
        Without ``detach`` it returns the task RUNNING, or raises the miner's error (the task is
        then FAILED with the reason); with ``detach`` it returns at once and the start goes on in
        the background (follow it with :meth:`watch_task`). ``task_id`` lets the caller choose
        the ID (8-64 of ``A-Za-z0-9_.-``), so it can watch before the reply.
        """
        if not spec.image.strip():
            raise InvalidRequest("an image is required")
        if task_id and not _TASK_ID.fullmatch(task_id):
            raise InvalidRequest(f"bad task ID {task_id!r}: 8-64 letters, digits, '_', '.', '-'")
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
        timeout = timeout or self.options.start_timeout
        if detach:
            threading.Thread(
                target=self._run_start,
                args=(session, task, spec, owner, timeout, False),
                name=f"start {task.task_id[:8]}",
                daemon=True,
            ).start()
            return task
        return self._run_start(session, task, spec, owner, timeout, True)

    def _run_start(
        self,
        session: _Session,
        task: Task,
        spec: RunSpec,
        owner: str,
        timeout: float,
        reraise: bool,
    ) -> Task:
        try:
            seen = session.client.start(
                task.task_id, spec, owner=owner, hub_id=self.node_id, timeout=timeout
            )
        except SonmError as exc:
            failed = self._fail_if_active(task.task_id, str(exc))
            if reraise:
                raise
            return failed
        now = time.time()
        current = self.state.get_task(task.task_id)
        if current.state is TaskState.PULLING and seen.state is TaskState.RUNNING:
            return self._save(
                current.apply(Pulled(), now).apply(
                    Started(self._fix_hosts(seen, session), seen.container_id), now
                )
            )
        if current.terminal or current.state is TaskState.RUNNING:
            return current  # the miner's events got here first
        return self._put_report(current, seen, session, now)

    def _fail_if_active(self, task_id: str, reason: str) -> Task:
        with self._lock:
            task = self.state.get_task(task_id)
            if task.terminal:
                return task
            return self._save(task.apply(Failed(reason), time.time()))

    def stop_task(self, task_id: str, *, timeout: float | None) -> Task:
        task = self._task(task_id)
        if task.terminal:
            return task
        session = self._session_for(task.miner_id)
        try:
            seen = session.client.stop(task.task_id, timeout)
        except TaskNotFound:
            seen = None
        with self._lock:
            fresh = self.state.get_task(task.task_id)
            if fresh.terminal:
                return fresh
            return self._save(fresh.apply(Stopped(seen.exit_code if seen else None), time.time()))

    def task_status(self, task_id: str) -> Task:
        return self._task(task_id)

    def list_tasks(self, miner: str = "") -> list[Task]:
        if not miner:
            return self.state.list_tasks()
        known = {m.node_id for m in self.state.list_miners()}
        return self.state.list_tasks(resolve_prefix(known, miner, kind="miner"))

    def _task(self, task_id: str) -> Task:
        if not task_id.strip():
            raise InvalidRequest("a task ID is required")
        full = resolve_prefix(self.state.task_ids(), task_id, kind="task")
        return self.state.get_task(full)

    def watch_task(
        self, task_id: str, *, still_wanted: Callable[[], bool], wait_for_task: float = 10.0
    ) -> Iterator[TaskEvent]:
        """The task now, then each change and pull progress, ending with its final state.

        A task ID not known yet (the client chose it and its StartTask is on the way) is waited
        for up to ``wait_for_task`` seconds. Ends early when ``still_wanted()`` turns false.
        """
        full = task_id.strip()
        if not full:
            raise InvalidRequest("a task ID is required")
        sub = self.events.subscribe(lambda e: e.task_id == full)
        try:
            deadline = time.monotonic() + wait_for_task
            while True:
                try:
                    task = self._task(full)
                    break
                except TaskNotFound:
                    if time.monotonic() > deadline:
                        raise
                    sub.get(timeout=0.1)
            sub._accept = lambda e: e.task_id == task.task_id  # a prefix was resolved
            yield TaskEvent(task.task_id, time.time(), task=task)
            if task.terminal:
                return
            while still_wanted():
                event = sub.get(timeout=1.0)
                if event is None:
                    if sub.closed:
                        return
                    continue
                yield event
                if event.task is not None and event.task.terminal:
                    return
        finally:
            sub.close()

    def task_logs(self, query: LogQuery) -> tuple[Iterator[bytes], Callable[[], None]]:
        """The task's output from its miner, and a function that cancels a follow.

        When the miner goes offline meanwhile, iterating raises MinerUnavailable (a follow must
        not end as if the task had)."""
        task = self._task(query.task_id)
        session = self._session_for(task.miner_id)
        stream = session.client.logs(replace(query, task_id=task.task_id))

        def chunks() -> Iterator[bytes]:
            session.streams.add(stream)
            try:
                if session.gone:  # dropped before the follow was registered
                    stream.cancel()
                yield from stream
            finally:
                session.streams.discard(stream)
            if session.gone:
                raise MinerUnavailable(
                    f"miner {session.node_id} {session.gone} while its output was followed: "
                    f"`sonmcli logs -f {task.task_id}` again once it is back"
                )

        return chunks(), stream.cancel

    def miner_status(self, miner: str) -> tuple[MinerRecord, MinerStatus | None]:
        """The miner's record, and its live status (None when offline)."""
        known = {m.node_id for m in self.state.list_miners()}
        node_id = resolve_prefix(known, miner, kind="miner")
        with self._lock:
            session = self._sessions.get(node_id)
        record = self.state.get_miner(node_id)
        if session is None:
            return record, None
        return record, session.client.miner_status(self.options.ping_timeout * 2)
