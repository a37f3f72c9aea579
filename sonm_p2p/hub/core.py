"""The hub's rules, sans I/O: which miners are live, and what their reports do to the task table.

Like aioquic's connection, :class:`HubCore` never touches a socket, a database or the clock: time
comes in as ``now``, what the hub knows comes in as arguments, and what should change goes out as
events (:class:`TaskChanged`, :class:`MinerOffline`, :class:`MinerSeen`) that the shell
(:class:`~sonm_p2p.hub.hub.Hub`) stores, publishes and acts on. Unit tests drive it with a fake
clock through ``tests/unit/hub_and_miner.py``.

The rules:

- A miner is live from its handshake until its session ends or it misses ``max_missed_pings``
  pings in a row; then it is offline and its RUNNING/STARTING tasks become LOST.
- A report (handshake or event) changes only tasks assigned to the reporting miner: a miner cannot
  rewrite another miner's task. Tasks the table has for a miner that does not report them any more
  are FAILED; containers the table does not know at all (a lost database) are adopted.
- Endpoints a miner reports on an unspecified host are fixed to the address it came from, and
  marked reachable ``direct`` or through ``forward`` (behind NAT, or reached through a relay).
"""

from __future__ import annotations

import ipaddress
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field, replace

from sonm_p2p.errors import InvalidRequest
from sonm_p2p.tasks import Endpoint, Failed, Found, Lost, Pulled, Started, Stopped, Task, TaskState
from sonm_p2p.transport.addrs import is_circuit

__all__ = [
    "HubCore",
    "MinerLink",
    "MinerOffline",
    "MinerSeen",
    "PingMissed",
    "ReportIgnored",
    "TaskChanged",
]

_UNSPECIFIED_HOSTS = {"", "0.0.0.0", "::"}
_LOSABLE = (TaskState.RUNNING, TaskState.STARTING)


@dataclass(frozen=True, kw_only=True)
class MinerLink:
    """One connected miner as the hub sees it: who, from where, and where it says it listens.

    ``serial`` tells one session of a miner from its next (a ping answered on an old session must
    not count for the new one).
    """

    node_id: str
    peer_id: str
    serial: int = 0
    remote_addr: str = ""  # host:port the connection came from ("" through a relay)
    multiaddrs: tuple[str, ...] = ()  # where the miner says it listens
    nat_type: str = ""  # as the miner classified it by STUN

    @property
    def remote_ip(self) -> str:
        return self.remote_addr.rsplit(":", 1)[0].strip("[]") if self.remote_addr else ""

    @property
    def behind_nat(self) -> bool:
        """The miner reached us from an address it does not have: a NAT is in between."""
        own = {a.split("/")[2] for a in self.multiaddrs if a.count("/") > 2 and not is_circuit(a)}
        if not self.remote_ip or not own or ipaddress.ip_address(self.remote_ip).is_loopback:
            return False  # unknown, or the same machine
        return self.remote_ip not in own

    def fix_endpoints(self, endpoints: Iterable[Endpoint]) -> tuple[Endpoint, ...]:
        """Endpoints as a client can use them.

        A port published on all interfaces is reachable at the address the miner came from;
        behind a NAT that address does not forward it: the user needs ``sonmcli forward``.
        Through a relay (no remote IP) the miner's own address is unknown: forward works.
        """
        ip = self.remote_ip
        reach = "forward" if self.behind_nat or not ip else "direct"
        return tuple(
            replace(ep, host_ip=ip, reach=reach)
            if ep.host_ip in _UNSPECIFIED_HOSTS and ip
            else replace(ep, reach=reach)
            for ep in endpoints
        )

    def overlay_addrs(self, hub_addrs: Iterable[str]) -> list[str]:
        """How to reach this miner on the overlay: its own addresses (unless it is behind NAT),
        its own relayed ones, then through the hub (``hub_addrs``: the hub's direct addresses)."""
        own = [a for a in self.multiaddrs if not is_circuit(a)]
        own_relayed = [a for a in self.multiaddrs if is_circuit(a)]
        direct = [] if self.behind_nat else own
        via_hub = [f"{a}/p2p-circuit/p2p/{self.peer_id}" for a in hub_addrs if not is_circuit(a)]
        return list(dict.fromkeys((*direct, *own_relayed, *via_hub)))

    def __repr__(self) -> str:
        return f"<MinerLink {self.node_id} #{self.serial} {self.remote_addr or 'relayed'}>"


# -- events out ------------------------------------------------------------------------------


@dataclass(frozen=True)
class TaskChanged:
    """Store ``task`` (it changed) and tell its watchers."""

    task: Task


@dataclass(frozen=True)
class MinerOffline:
    """The miner is gone (``why``): mark it offline, end its streams; ``disconnect``: drop its
    connection too (it still looks up, but does not answer)."""

    link: MinerLink
    why: str
    disconnect: bool = False


@dataclass(frozen=True)
class MinerSeen:
    """The miner answered: it is online as of ``now``."""

    node_id: str
    now: float


@dataclass(frozen=True)
class PingMissed:
    """The miner missed ``missed`` pings in a row (not yet offline)."""

    node_id: str
    missed: int
    error: str


@dataclass(frozen=True)
class ReportIgnored:
    """A report the rules refuse (worth a log line): another miner's task, or a bad transition."""

    task_id: str
    reason: str


Event = TaskChanged | MinerOffline | MinerSeen | PingMissed | ReportIgnored


@dataclass
class _Liveness:
    link: MinerLink
    missed: int = 0


@dataclass(kw_only=True)
class HubCore:
    """The live miners and the rules their sessions, pings and reports follow.

    max_missed_pings: consecutive misses that make a miner offline; defaults to 3.
    """

    max_missed_pings: int = 3
    _live: dict[str, _Liveness] = field(default_factory=dict)
    _serial: int = 0

    def __repr__(self) -> str:
        return f"<HubCore live={len(self._live)}>"

    # -- liveness ----------------------------------------------------------------------------

    def next_serial(self) -> int:
        self._serial += 1
        return self._serial

    def link(self, node_id: str) -> MinerLink | None:
        """The live session of ``node_id`` (None when offline)."""
        live = self._live.get(node_id)
        return live.link if live is not None else None

    def live(self) -> list[MinerLink]:
        return [v.link for v in self._live.values()]

    def is_current(self, link: MinerLink) -> bool:
        live = self._live.get(link.node_id)
        return live is not None and live.link.serial == link.serial

    def connected(self, link: MinerLink) -> list[Event]:
        """A miner finished its handshake. Ends its previous session, if any."""
        old = self._live.pop(link.node_id, None)
        self._live[link.node_id] = _Liveness(link)
        if old is not None:
            return [MinerOffline(old.link, "reconnected to the hub")]
        return []

    def on_ping_result(self, link: MinerLink, ok: bool, now: float, error: str = "") -> list[Event]:
        """A ping of ``link`` answered (``ok``) or failed; results of an old session are ignored."""
        if not self.is_current(link):
            return []
        live = self._live[link.node_id]
        if ok:
            live.missed = 0
            return [MinerSeen(link.node_id, now)]
        live.missed += 1
        if live.missed >= self.max_missed_pings:
            del self._live[link.node_id]
            return [MinerOffline(link, f"{live.missed} missed pings", disconnect=True)]
        return [PingMissed(link.node_id, live.missed, error)]

    def disconnected(self, link: MinerLink, why: str = "disconnected") -> list[Event]:
        """The session of ``link`` ended (an old session's end changes nothing)."""
        if not self.is_current(link):
            return []
        del self._live[link.node_id]
        return [MinerOffline(link, why)]

    # -- tasks -------------------------------------------------------------------------------

    @staticmethod
    def lose(active: Iterable[Task], now: float) -> list[Event]:
        """A miner went offline: its running and starting tasks are LOST until it returns."""
        return [TaskChanged(t.apply(Lost(), now)) for t in active if t.state in _LOSABLE]

    def reconcile(
        self,
        link: MinerLink,
        known: Iterable[Task],
        report: Iterable[Task],
        now: float,
        *,
        lookup: Callable[[str], Task | None],
        trusted: Callable[[Task, str], bool],
    ) -> list[Event]:
        """A miner's handshake report against the hub's active tasks for it (``known``).

        ``lookup(task_id)`` finds any task in the table (None when unknown): a reported task the
        table already has — terminal here, or another miner's — is left as the hub has it.
        A task the table does not know is adopted only when ``trusted(task, miner_id)``: it
        carries the hub's own record of creating it on that miner for that owner (so a miner
        cannot make the hub attribute a container to an owner of its choosing).
        """
        events: list[Event] = []
        by_id = {t.task_id: t for t in report}
        for task in known:
            seen = by_id.pop(task.task_id, None)
            if seen is not None:
                events += self.report(link, task, seen, now)
            elif task.state in (*_LOSABLE, TaskState.LOST):
                gone = task.apply(Failed("the container is gone from its miner"), now)
                events.append(TaskChanged(gone))
        for seen in by_id.values():  # containers the table does not know (a lost database)
            other = lookup(seen.task_id)
            if other is not None:
                if other.miner_id != link.node_id:
                    events.append(ReportIgnored(seen.task_id, f"a task of {other.miner_id}"))
                continue  # already terminal here: keep the hub's word
            if not trusted(seen, link.node_id):
                events.append(ReportIgnored(seen.task_id, "no record of this hub creating it"))
                continue
            adopted = replace(
                seen,
                miner_id=link.node_id,
                endpoints=link.fix_endpoints(seen.endpoints),
                record="",  # checked; the hub does not keep it
            )
            events.append(TaskChanged(adopted))
        return events

    def report(self, link: MinerLink, task: Task, seen: Task, now: float) -> list[Event]:
        """What a miner reports of ``task`` (its handshake, an event, a start's reply)."""
        if task.miner_id != link.node_id:
            why = f"reported by {link.node_id}, runs on {task.miner_id}"
            return [ReportIgnored(task.task_id, why)]
        if task.terminal:
            return []
        event = Found(
            seen.state,
            exit_code=seen.exit_code
            if seen.state in (TaskState.EXITED, TaskState.STOPPED)
            else None,
            endpoints=link.fix_endpoints(seen.endpoints),
            error=seen.error,
            container_id=seen.container_id,
        )
        try:
            return [TaskChanged(task.apply(event, now))]
        except InvalidRequest as exc:
            return [ReportIgnored(task.task_id, str(exc))]

    def started(self, link: MinerLink, current: Task, seen: Task, now: float) -> list[Event]:
        """The miner's reply to a start of ``current`` (as the table has it now)."""
        if current.state is TaskState.PULLING and seen.state is TaskState.RUNNING:
            endpoints = link.fix_endpoints(seen.endpoints)
            task = current.apply(Pulled(), now).apply(Started(endpoints, seen.container_id), now)
            return [TaskChanged(task)]
        if current.terminal or current.state is TaskState.RUNNING:
            return []  # the miner's events got here first
        return self.report(link, current, seen, now)

    @staticmethod
    def start_failed(current: Task, reason: str, now: float) -> list[Event]:
        return [] if current.terminal else [TaskChanged(current.apply(Failed(reason), now))]

    @staticmethod
    def stopped(current: Task, exit_code: int | None, now: float) -> list[Event]:
        return [] if current.terminal else [TaskChanged(current.apply(Stopped(exit_code), now))]
