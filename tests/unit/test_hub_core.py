"""The hub's rules, driven through ``hub_and_miner()``: no sockets, no threads, a fake clock."""

from __future__ import annotations

import random
from dataclasses import replace

import pytest

from sonm_p2p.hub.core import HubCore, MinerLink, MinerOffline, ReportIgnored
from sonm_p2p.miner.memory_runtime import MemoryRuntime
from sonm_p2p.miner.miner import Miner
from sonm_p2p.tasks import Endpoint, Task, TaskState
from tests.unit.hub_and_miner import IMAGES, MINER, OWNER, WEB, HubAndMiner, hub_and_miner

OTHER = "0xOther000000000000000000000000000000000004"


def running_task() -> HubAndMiner:
    """A hub and its miner, connected, running task-0001."""
    net = hub_and_miner()
    net.connect()
    net.start("task-0001")
    return net


def test_three_missed_pings_make_a_miner_offline_and_its_tasks_lost() -> None:
    net = running_task()
    assert net.state("task-0001") is TaskState.RUNNING
    net.miner_up = False
    assert [type(e).__name__ for e in net.ping()] == ["PingMissed"]
    net.clock.advance(10)
    net.ping()
    assert net.online[MINER] and not net.offline
    net.clock.advance(10)
    (offline, *_lost) = net.ping()
    assert isinstance(offline, MinerOffline)
    assert offline.why == "3 missed pings" and offline.disconnect  # it looks up but is silent
    assert not net.online[MINER]
    assert net.state("task-0001") is TaskState.LOST
    assert net.table["task-0001"].updated_at == net.clock.now


def test_an_answered_ping_resets_the_count() -> None:
    net = hub_and_miner()
    net.connect()
    for _ in range(5):  # two misses, one answer, forever: never offline
        net.miner_up = False
        net.ping()
        net.ping()
        net.miner_up = True
        net.ping()
    assert net.online[MINER] and not net.offline
    assert [m.missed for m in net.missed] == [1, 2] * 5


def test_a_closed_session_is_offline_at_once_and_the_return_brings_tasks_back() -> None:
    net = running_task()
    (offline,) = net.disconnect()
    assert isinstance(offline, MinerOffline) and not offline.disconnect
    assert net.state("task-0001") is TaskState.LOST
    net.clock.advance(30)
    net.connect()  # the container kept running meanwhile
    assert net.online[MINER]
    task = net.table["task-0001"]
    assert task.state is TaskState.RUNNING
    assert task.endpoints and all(ep.host_ip == "203.0.113.7" for ep in task.endpoints)


@pytest.mark.parametrize("away", [True, False], ids=["while-away", "while-connected"])
def test_a_task_that_exits_is_exited_with_its_code(away: bool) -> None:
    net = running_task()
    if away:
        net.disconnect()
    net.runtime.exit("task-0001", 3)
    if away:
        net.connect()  # the handshake's report says it
    else:
        net.deliver()  # the miner's event stream says it
    assert net.state("task-0001") is TaskState.EXITED
    assert net.table["task-0001"].exit_code == 3


def test_a_container_gone_from_its_miner_is_failed() -> None:
    net = running_task()
    net.disconnect()
    # The miner comes back from a machine that lost its containers.
    net.miner = Miner(MINER, MemoryRuntime(images=IMAGES, clock=net.clock))
    net.connect()
    task = net.table["task-0001"]
    assert task.state is TaskState.FAILED
    assert task.error == "the container is gone from its miner"


def test_a_hub_restart_keeps_its_table_and_the_miner_reconciles_it() -> None:
    net = running_task()
    net.start("task-0002")
    net.restart_hub()
    net.runtime.exit("task-0002", 1)  # while the hub was down
    net.connect()
    assert net.state("task-0001") is TaskState.RUNNING
    assert net.state("task-0002") is TaskState.EXITED


def test_a_hub_that_lost_its_database_adopts_the_miners_containers() -> None:
    net = running_task()
    net.restart_hub(lose_database=True)
    net.connect()
    task = net.table["task-0001"]
    assert task.state is TaskState.RUNNING and task.miner_id == MINER
    assert task.owner == OWNER  # from the container's label
    assert {ep.host_ip for ep in task.endpoints} == {"203.0.113.7"}


def test_terminal_tasks_stay_as_the_hub_has_them() -> None:
    net = running_task()
    net.table["task-0001"] = net.core.stopped(net.table["task-0001"], 0, net.clock())[0].task
    net.connect()  # the miner still reports the container running
    assert net.state("task-0001") is TaskState.STOPPED


def test_a_miner_cannot_rewrite_or_adopt_another_miners_task() -> None:
    net = running_task()
    theirs = Task.create(task_id="task-9999", miner_id=OTHER, image=WEB, owner=OWNER, now=1.0)
    net.table["task-9999"] = replace(theirs, state=TaskState.RUNNING)
    forged = replace(
        theirs,
        miner_id=MINER,
        state=TaskState.EXITED,
        exit_code=0,
        endpoints=(Endpoint(8080, "tcp", "198.51.100.66", 80),),
    )
    assert net.link is not None
    events = net.core.report(net.link, net.table["task-9999"], forged, net.clock())
    assert [type(e) for e in events] == [ReportIgnored]
    # ... nor through its handshake report.
    report = [*net.miner.tasks(), forged]
    net.connect(report=report)
    assert net.table["task-9999"].state is TaskState.RUNNING
    assert net.table["task-9999"].miner_id == OTHER
    assert net.table["task-9999"].endpoints == ()
    assert any(i.task_id == "task-9999" for i in net.ignored)


def test_results_of_an_old_session_count_for_nothing() -> None:
    core = HubCore(max_missed_pings=1)
    old = MinerLink(node_id=MINER, peer_id="p", serial=core.next_serial())
    assert core.connected(old) == []
    new = MinerLink(node_id=MINER, peer_id="p", serial=core.next_serial())
    (replaced,) = core.connected(new)
    assert isinstance(replaced, MinerOffline) and replaced.link == old
    assert core.on_ping_result(old, False, 1.0) == []
    assert core.disconnected(old) == []
    assert core.link(MINER) == new
    (offline,) = core.on_ping_result(new, False, 2.0)
    assert isinstance(offline, MinerOffline) and core.link(MINER) is None


@pytest.mark.parametrize(
    ("remote", "multiaddrs", "host", "reach"),
    [
        ("203.0.113.7:4000", ("/ip4/192.168.1.5/tcp/4000",), "203.0.113.7", "forward"),
        ("203.0.113.7:4000", ("/ip4/203.0.113.7/tcp/4000",), "203.0.113.7", "direct"),
        ("127.0.0.1:4000", ("/ip4/127.0.0.1/tcp/4000",), "127.0.0.1", "direct"),
        ("", ("/ip4/1.2.3.4/tcp/1/p2p/R/p2p-circuit",), "0.0.0.0", "forward"),  # relayed
    ],
)
def test_endpoints_are_fixed_to_where_the_miner_came_from(
    remote: str, multiaddrs: tuple[str, ...], host: str, reach: str
) -> None:
    link = MinerLink(node_id=MINER, peer_id="p", remote_addr=remote, multiaddrs=multiaddrs)
    (ep,) = link.fix_endpoints([Endpoint(8080, "tcp", "0.0.0.0", 32768)])
    assert (ep.host_ip, ep.reach) == (host, reach)
    (kept,) = link.fix_endpoints([Endpoint(8080, "tcp", "10.9.9.9", 32768)])
    assert kept.host_ip == "10.9.9.9"


def test_overlay_addresses_skip_a_nated_miners_own() -> None:
    hub_addrs = ["/ip4/198.51.100.1/tcp/10002/p2p/H", "/ip4/1.1.1.1/tcp/1/p2p/R/p2p-circuit"]
    nated = MinerLink(
        node_id=MINER,
        peer_id="M",
        remote_addr="203.0.113.7:4000",
        multiaddrs=("/ip4/192.168.1.5/tcp/4000",),
    )
    assert nated.behind_nat
    assert nated.overlay_addrs(hub_addrs) == ["/ip4/198.51.100.1/tcp/10002/p2p/H/p2p-circuit/p2p/M"]
    public = replace(nated, multiaddrs=("/ip4/203.0.113.7/tcp/4000",))
    assert public.overlay_addrs(hub_addrs)[0] == "/ip4/203.0.113.7/tcp/4000"


def test_liveness_follows_the_rule_for_any_sequence() -> None:
    """Random pings, sessions and ends: offline exactly after the third miss in a row or an
    end, online from a handshake, and the running task LOST exactly while offline."""
    rng = random.Random(0)
    net = running_task()
    misses = 0
    for _ in range(500):
        net.clock.advance(rng.uniform(0, 20))
        step = rng.random()
        if net.link is None:
            net.connect()
            misses = 0
        elif step < 0.05:
            net.disconnect()
        else:
            net.miner_up = step < 0.6
            net.ping()
            misses = 0 if net.miner_up else misses + 1
            if misses == 3:
                assert net.link is None
        online = net.link is not None
        assert net.online[MINER] is online
        assert net.state("task-0001") is (TaskState.RUNNING if online else TaskState.LOST)


def test_a_hub_adopts_only_tasks_it_recorded_with_the_owner_it_recorded() -> None:
    net = running_task()
    (mine,) = net.miner.tasks()
    assert mine.record  # the hub's signed record travels with the container
    net.restart_hub(lose_database=True)
    forged_owner = replace(mine, task_id="task-0002", owner=OTHER)  # record of another task
    claimed = replace(mine, task_id="task-0003", owner=OTHER, record="")  # no record at all
    net.connect(report=[mine, forged_owner, claimed])
    assert set(net.table) == {"task-0001"}
    assert net.table["task-0001"].owner == OWNER and net.table["task-0001"].record == ""
    assert {i.task_id for i in net.ignored} == {"task-0002", "task-0003"}
