"""A hub's core and a real ``Miner`` on ``MemoryRuntime``, wired with no sockets and a fake clock.

Like aioquic's ``client_and_server()``: the test says what happens on the wire (a handshake, a
ping that is answered or not, the miner's events reaching the hub, a session ending) and checks
what the hub's table and liveness say, with no thread, no wait and no gRPC in between. The
shell that does the same over real sockets (``sonm_p2p.hub.hub.Hub``) is tested in
tests/integration/test_hub_miner.py.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from sonm_p2p.auth import is_task_record, task_record
from sonm_p2p.hub import core
from sonm_p2p.hub.core import HubCore, MinerLink
from sonm_p2p.identity import Identity
from sonm_p2p.miner.memory_runtime import MemoryRuntime
from sonm_p2p.miner.miner import Miner
from sonm_p2p.model import RunSpec
from sonm_p2p.tasks import Task, TaskState

HUB_KEY = Identity(bytes(range(1, 33)))  # the hub's key: it signs the records of its tasks
HUB = HUB_KEY.node_id
MINER = "0xMiner000000000000000000000000000000000002"
OWNER = "0xOwner000000000000000000000000000000000003"
WEB = "sonm-test/web:latest"
IMAGES = {WEB: (["8080/tcp", "9090/udp"], True)}


class FakeClock:
    """Time that moves only when a test says so."""

    def __init__(self, now: float = 1_000_000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> float:
        self.now += seconds
        return self.now


@dataclass
class HubAndMiner:
    """One hub core and one miner. ``table`` is the hub's task table (what HubState stores)."""

    core: HubCore
    miner: Miner
    runtime: MemoryRuntime
    clock: FakeClock
    remote_addr: str = "203.0.113.7:40000"
    multiaddrs: tuple[str, ...] = ("/ip4/192.168.1.5/tcp/40000",)
    table: dict[str, Task] = field(default_factory=dict)
    online: dict[str, bool] = field(default_factory=dict)
    link: MinerLink | None = None
    offline: list[core.MinerOffline] = field(default_factory=list)
    ignored: list[core.ReportIgnored] = field(default_factory=list)
    missed: list[core.PingMissed] = field(default_factory=list)
    miner_up: bool = True  # False: the miner's process hangs (pings go unanswered)

    def __post_init__(self) -> None:
        self._events = self.miner.events.subscribe()

    # -- the shell's part: carry out what the core decides ---------------------------------

    def apply(self, events: list[core.Event]) -> list[core.Event]:
        for event in events:
            if isinstance(event, core.TaskChanged):
                self.table[event.task.task_id] = event.task
            elif isinstance(event, core.MinerOffline):
                self.online[event.link.node_id] = False
                self.offline.append(event)
                if self.link is not None and event.link.serial == self.link.serial:
                    self.link = None
                active = [t for t in self.table.values() if t.miner_id == event.link.node_id]
                self.apply(self.core.lose(active, self.clock()))
            elif isinstance(event, core.MinerSeen):
                self.online[event.node_id] = True
            elif isinstance(event, core.PingMissed):
                self.missed.append(event)
            elif isinstance(event, core.ReportIgnored):
                self.ignored.append(event)
        return events

    # -- what happens on the wire ----------------------------------------------------------

    def connect(self, *, node_id: str = MINER, report: list[Task] | None = None) -> MinerLink:
        """The miner dials in and answers the handshake with what its runtime holds."""
        link = MinerLink(
            node_id=node_id,
            peer_id=f"peer-{node_id}",
            serial=self.core.next_serial(),
            remote_addr=self.remote_addr,
            multiaddrs=self.multiaddrs,
        )
        self.apply(self.core.connected(link))
        self.link, self.online[node_id] = link, True
        known = [t for t in self.table.values() if t.miner_id == node_id and not t.terminal]
        seen = self.miner.tasks() if report is None else report
        self.apply(
            self.core.reconcile(
                link, known, seen, self.clock(), lookup=self.table.get, trusted=_created_by_hub
            )
        )
        self._drain()  # what happened before the handshake is in the report
        return link

    def ping(self) -> list[core.Event]:
        """One ping round: answered while the miner is up and its session lasts."""
        assert self.link is not None, "not connected"
        link = self.link
        return self.apply(self.core.on_ping_result(link, self.miner_up, self.clock(), "timeout"))

    def disconnect(self, why: str = "disconnected") -> list[core.Event]:
        assert self.link is not None, "not connected"
        return self.apply(self.core.disconnected(self.link, why))

    def start(self, task_id: str, image: str = WEB) -> Task:
        """A client's StartTask: PULLING in the table first, then the miner runs it."""
        assert self.link is not None, "not connected"
        task = Task.create(
            task_id=task_id, miner_id=MINER, image=image, owner=OWNER, now=self.clock()
        )
        self.table[task_id] = task
        record = task_record(HUB_KEY, task_id, MINER, OWNER)
        seen = self.miner.start(
            task_id, RunSpec(image), owner=OWNER, hub_id=HUB, timeout=5, record=record
        )
        self.apply(self.core.started(self.link, self.table[task_id], seen, self.clock()))
        self._drain()  # the start's own events arrive after its reply
        return self.table[task_id]

    def deliver(self) -> None:
        """The miner's WatchTasks stream: every task event so far reaches the hub."""
        assert self.link is not None, "not connected"
        while (event := self._events.get(timeout=0)) is not None:
            if event.task is None:
                continue
            known = self.table.get(event.task_id)
            if known is not None:
                self.apply(self.core.report(self.link, known, event.task, self.clock()))

    def _drain(self) -> None:
        while self._events.get(timeout=0) is not None:
            pass

    def state(self, task_id: str) -> TaskState:
        return self.table[task_id].state

    def restart_hub(self, *, lose_database: bool = False) -> None:
        """The hub process restarts: no session, every miner offline; the table survives on
        disk unless ``lose_database``."""
        self.core = HubCore(max_missed_pings=self.core.max_missed_pings)
        self.link = None
        self.online = dict.fromkeys(self.online, False)
        if lose_database:
            self.table.clear()


def _created_by_hub(seen: Task, miner_id: str) -> bool:
    return is_task_record(seen.record, HUB, seen.task_id, miner_id, seen.owner)


def hub_and_miner(*, max_missed_pings: int = 3, clock: FakeClock | None = None) -> HubAndMiner:
    clock = clock or FakeClock()
    runtime = MemoryRuntime(images=IMAGES, publish_ip="0.0.0.0", clock=clock)
    miner = Miner(MINER, runtime)
    miner.watch_runtime()
    core = HubCore(max_missed_pings=max_missed_pings)
    return HubAndMiner(core=core, miner=miner, runtime=runtime, clock=clock)
