"""HubState: SQLite persistence of tasks and miners."""

from __future__ import annotations

import sqlite3
import threading
from dataclasses import replace

import pytest

from sonm_p2p.errors import ConfigError, MinerNotFound, TaskNotFound
from sonm_p2p.hub.state import DB_FILE, SCHEMA_VERSION, HubState, MinerRecord
from sonm_p2p.tasks import Endpoint, Exited, Failed, Pulled, Started, Task, TaskState

EP = (Endpoint(27960, "tcp", "1.2.3.4", 32768), Endpoint(27960, "udp", "1.2.3.4", 32769))
M1 = "0x1111111111111111111111111111111111111111"
M2 = "0x2222222222222222222222222222222222222222"


def new_task(task_id: str, miner_id: str = M1, now: float = 100.0) -> Task:
    return Task.create(task_id=task_id, miner_id=miner_id, image="alpine", owner="0xo", now=now)


def miner(node_id: str = M1, **kw) -> MinerRecord:
    fields = dict(
        node_id=node_id,
        peer_id="16Uiu2HAm" + node_id[-6:],
        online=True,
        first_seen=10.0,
        last_seen=10.0,
        resources={"cpu_cores": 4, "gpus": ["rtx"], "os": "linux"},
        remote_addr="/ip4/1.2.3.4/tcp/4001",
    )
    fields.update(kw)
    return MinerRecord(**fields)


@pytest.fixture
def state():
    with HubState(":memory:") as s:
        yield s


def test_task_round_trip(state):
    running = new_task("t1").apply(Pulled(), 101.0).apply(Started(EP, container_id="c1"), 102.0)
    state.put_task(running)
    assert state.get_task("t1") == running
    done = running.apply(Exited(3), 103.0)
    state.put_task(done)  # replaces
    got = state.get_task("t1")
    assert got == done
    assert (got.state, got.exit_code, got.endpoints) == (TaskState.EXITED, 3, EP)
    assert state.task_ids() == ["t1"]


def test_get_task_not_found(state):
    with pytest.raises(TaskNotFound, match="nope"):
        state.get_task("nope")


def test_list_tasks_order_and_filters(state):
    state.put_task(new_task("c", M1, now=3.0))
    state.put_task(new_task("a", M2, now=1.0))
    state.put_task(new_task("b", M1, now=2.0).apply(Failed("pull denied"), 4.0))
    state.put_task(new_task("d", M2, now=5.0).apply(Pulled(), 6.0))
    assert [t.task_id for t in state.list_tasks()] == ["a", "b", "c", "d"]
    assert state.task_ids() == ["a", "b", "c", "d"]
    assert [t.task_id for t in state.list_tasks(M1)] == ["b", "c"]
    assert [t.task_id for t in state.list_tasks(active_only=True)] == ["a", "c", "d"]
    assert [t.task_id for t in state.list_tasks(M2, active_only=True)] == ["a", "d"]
    assert state.list_tasks("0xnobody") == []
    assert state.get_task("b").error == "pull denied"


def test_miner_round_trip_and_upsert(state):
    state.upsert_miner(miner())
    assert state.get_miner(M1) == miner()
    # Reconnect: first_seen stays the earliest, everything else is replaced.
    state.upsert_miner(miner(first_seen=50.0, last_seen=50.0, remote_addr="/ip4/5.6.7.8/tcp/1"))
    got = state.get_miner(M1)
    assert (got.first_seen, got.last_seen, got.remote_addr) == (10.0, 50.0, "/ip4/5.6.7.8/tcp/1")
    assert got.resources == {"cpu_cores": 4, "gpus": ["rtx"], "os": "linux"}
    with pytest.raises(MinerNotFound):
        state.get_miner(M2)


def test_list_miners_and_online_flags(state):
    state.upsert_miner(miner(M2, first_seen=20.0, last_seen=20.0))
    state.upsert_miner(miner(M1))
    assert [m.node_id for m in state.list_miners()] == [M1, M2]
    state.set_miner_online(M1, False, now=30.0)
    m1 = state.get_miner(M1)
    assert (m1.online, m1.last_seen) == (False, 10.0)  # going offline keeps last contact
    state.set_miner_online(M1, True, now=40.0)
    m1 = state.get_miner(M1)
    assert (m1.online, m1.last_seen) == (True, 40.0)
    with pytest.raises(MinerNotFound):
        state.set_miner_online("0xnobody", True, now=1.0)
    assert state.mark_all_offline() == 2
    assert [m.online for m in state.list_miners()] == [False, False]

    assert state.mark_all_offline() == 0


def test_restart_keeps_everything(tmp_path):
    task = new_task("t1").apply(Pulled(), 101.0).apply(Started(EP, container_id="c1"), 102.0)
    first = HubState(tmp_path)
    first.put_task(task)
    first.upsert_miner(miner())
    # No close(): a crash. Committed data must be in the file already.
    second = HubState(tmp_path)
    assert second.get_task("t1") == task
    assert second.get_miner(M1) == miner()
    assert second.schema_version == SCHEMA_VERSION
    first.close()
    second.close()
    with HubState(tmp_path) as third:
        assert third.list_tasks() == [task]
        assert third.list_miners() == [miner()]
    assert (tmp_path / DB_FILE).is_file()


def test_wal_mode(tmp_path):
    with HubState(tmp_path) as s:
        assert s.journal_mode == "wal"
    conn = sqlite3.connect(tmp_path / DB_FILE)
    try:
        assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
        assert conn.execute("PRAGMA user_version").fetchone()[0] == SCHEMA_VERSION
    finally:
        conn.close()


def test_creates_missing_directory(tmp_path):
    with HubState(tmp_path / "a" / "b") as s:
        s.put_task(new_task("t"))
    assert (tmp_path / "a" / "b" / DB_FILE).is_file()


def test_refuses_newer_schema(tmp_path):
    conn = sqlite3.connect(tmp_path / DB_FILE)
    conn.execute(f"PRAGMA user_version = {SCHEMA_VERSION + 1}")
    conn.close()
    with pytest.raises(ConfigError, match=DB_FILE):
        HubState(tmp_path)


def test_refuses_garbage_file(tmp_path):
    (tmp_path / DB_FILE).write_bytes(b"this is not a database, just some text" * 100)
    with pytest.raises(ConfigError, match=DB_FILE):
        HubState(tmp_path)


def test_close_is_idempotent(state):
    state.close()
    state.close()
    assert "closed" in repr(state)
    with pytest.raises(RuntimeError):
        state.list_tasks()


def test_repr(state):
    state.put_task(new_task("t"))
    state.upsert_miner(miner())
    assert repr(state) == "<HubState :memory: tasks=1 miners=1>"
    assert repr(miner()) == "<MinerRecord 0x11111111… online /ip4/1.2.3.4/tcp/4001>"


@pytest.mark.parametrize("where", ["memory", "file"])
def test_concurrent_writes(tmp_path, where):
    s = HubState(":memory:" if where == "memory" else tmp_path)
    errors: list[BaseException] = []
    n_threads, per_thread = 8, 40
    barrier = threading.Barrier(n_threads)

    def worker(k: int) -> None:
        try:
            barrier.wait()
            node = f"0x{k:040x}"
            s.upsert_miner(miner(node, first_seen=float(k)))
            for i in range(per_thread):
                t = new_task(f"t{k}-{i}", node, now=float(i))
                s.put_task(t)
                s.put_task(t.apply(Pulled(), i + 0.5))
                s.set_miner_online(node, i % 2 == 0, now=float(i))
                s.list_tasks(node, active_only=True)
                s.get_task(t.task_id)
        except BaseException as e:  # reported below
            errors.append(e)

    threads = [threading.Thread(target=worker, args=(k,)) for k in range(n_threads)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    try:
        assert errors == []
        assert len(s.task_ids()) == n_threads * per_thread
        assert len(s.list_miners()) == n_threads
        assert all(t.state is TaskState.STARTING for t in s.list_tasks())
    finally:
        s.close()


def test_pages_follow_the_order_without_gaps_or_repeats(state):
    for i in range(7):
        state.put_task(new_task(f"t{i}", now=100.0 + i // 2))  # ties on created_at
    seen, after = [], None
    while True:
        page = state.list_tasks(after=after, limit=3)
        seen += [t.task_id for t in page]
        if len(page) < 3:
            break
        after = (page[-1].created_at, page[-1].task_id)
    assert seen == [t.task_id for t in state.list_tasks()] == [f"t{i}" for i in range(7)]


def test_ended_tasks_are_forgotten_after_their_retention(state):
    running = new_task("run", now=10.0).apply(Pulled(), 10.0).apply(Started((), "c"), 10.0)
    old = running.apply(Exited(0), 20.0)
    recent = new_task("new", now=10.0).apply(Failed("x"), 90.0)
    state.put_task(old)
    state.put_task(recent)
    state.put_task(replace(running, task_id="live"))
    assert state.delete_ended(before=50.0) == 1
    assert sorted(state.task_ids()) == ["live", "new"]  # running tasks stay, whatever their age


def test_a_ping_round_marks_every_answering_miner_seen_at_once(state):
    state.upsert_miner(miner(M1, online=False, last_seen=50.0))
    state.upsert_miner(miner(M2, online=False))
    state.set_miners_seen([M1, M2, "0xnobody"], now=30.0)  # unknown IDs are skipped
    m1, m2 = state.get_miner(M1), state.get_miner(M2)
    assert (m1.online, m1.last_seen) == (True, 50.0)  # last_seen never moves back
    assert (m2.online, m2.last_seen) == (True, 30.0)
    state.set_miners_seen([], now=60.0)
    assert state.get_miner(M2).last_seen == 30.0
