"""The join gate's logic (transport/_joins.py) on a stand-in swarm: how many upgrades run at
once, in which order, how long a slot is kept, and which waiting connections are dropped. The
end-to-end behaviour (a real hub, a crowd of real peers) is tests/integration/test_join_gate.py.
"""

from __future__ import annotations

import socket
from types import SimpleNamespace
from typing import Any

import pytest
import trio
import trio.testing

from sonm_p2p.transport._joins import JoinGate, hung_up


class FakeSwarm:
    """Upgrades take ``cost`` seconds (trio's virtual clock) and record how many overlap."""

    def __init__(self, cost: float = 1.0) -> None:
        self.cost = cost
        self.now = 0
        self.most = 0
        self.order: list[str] = []

    async def upgrade_inbound_raw_conn(self, raw_conn: Any, maddr: Any) -> Any:
        self.now += 1
        self.most = max(self.most, self.now)
        self.order.append(raw_conn.name)
        try:
            await trio.sleep(self.cost)
        finally:
            self.now -= 1
        return SimpleNamespace(peer_id=raw_conn.name)


def conn(name: str) -> Any:
    return SimpleNamespace(name=name)  # no socket: never taken as hung up


def run(fn: Any) -> None:
    trio.run(fn, clock=trio.testing.MockClock(autojump_threshold=0))


def test_no_more_than_the_limit_upgrade_at_once_and_first_come_first_served() -> None:
    async def main() -> None:
        swarm, gate = FakeSwarm(), JoinGate(3, grace=0)
        gate.install(swarm)
        async with trio.open_nursery() as nursery:
            for i in range(10):
                nursery.start_soon(swarm.upgrade_inbound_raw_conn, conn(f"p{i}"), None)
                await trio.sleep(0.01)  # arrivals in this order
        assert swarm.most == 3
        assert swarm.order == [f"p{i}" for i in range(10)]
        assert (gate.joining, gate.waiting) == (0, 0)

    run(main)


def test_a_slot_is_kept_until_the_session_is_handshaken() -> None:
    async def main() -> None:
        swarm, gate = FakeSwarm(cost=0), JoinGate(1, grace=5, hold_max=60)
        gate.install(swarm)
        admitted: list[tuple[str, float]] = []

        async def join(name: str) -> None:
            await swarm.upgrade_inbound_raw_conn(conn(name), None)
            admitted.append((name, trio.current_time()))

        async with trio.open_nursery() as nursery:
            nursery.start_soon(join, "miner")
            await trio.sleep(1)
            gate.session_started("miner")  # its session stream came within the grace
            nursery.start_soon(join, "next")
            await trio.sleep(20)  # longer than the grace: still held for the handshake
            assert gate.waiting == 1 and admitted == []
            gate.session_done("miner")
        assert [name for name, _ in admitted] == ["miner", "next"]
        assert admitted[0][1] == pytest.approx(21)

    run(main)


def test_without_a_session_stream_the_slot_goes_after_the_grace() -> None:
    async def main() -> None:
        swarm, gate = FakeSwarm(cost=0), JoinGate(1, grace=2, hold_max=60)
        gate.install(swarm)
        done: dict[str, float] = {}

        async def join(name: str) -> None:
            await swarm.upgrade_inbound_raw_conn(conn(name), None)
            done[name] = trio.current_time()

        async with trio.open_nursery() as nursery:
            nursery.start_soon(join, "client")
            await trio.sleep(0.1)
            nursery.start_soon(join, "next")
        assert done == {"client": pytest.approx(2), "next": pytest.approx(4)}

    run(main)


def test_a_session_handshake_that_never_ends_holds_its_slot_at_most_hold_max() -> None:
    async def main() -> None:
        swarm, gate = FakeSwarm(cost=0), JoinGate(1, grace=2, hold_max=10)
        gate.install(swarm)

        async def stuck() -> None:
            await trio.sleep(0.5)
            gate.session_started("stuck")

        with trio.fail_after(11):
            async with trio.open_nursery() as nursery:
                nursery.start_soon(stuck)
                await swarm.upgrade_inbound_raw_conn(conn("stuck"), None)
        assert trio.current_time() == pytest.approx(10.5)

    run(main)


def test_a_failed_upgrade_gives_its_slot_back() -> None:
    class Failing(FakeSwarm):
        async def upgrade_inbound_raw_conn(self, raw_conn: Any, maddr: Any) -> Any:
            raise ConnectionError("handshake failed")

    async def main() -> None:
        swarm, gate = Failing(), JoinGate(1)
        gate.install(swarm)
        for _ in range(3):
            with pytest.raises(ConnectionError):
                await swarm.upgrade_inbound_raw_conn(conn("bad"), None)
        assert gate.joining == 0

    run(main)


def test_a_peer_that_hung_up_while_waiting_is_dropped_without_a_handshake() -> None:
    async def main() -> None:
        swarm, gate = FakeSwarm(cost=0), JoinGate(1, grace=3)
        gate.install(swarm)
        ours, theirs = socket.socketpair()
        try:
            waiting = SimpleNamespace(name="gone", stream=SimpleNamespace(socket=ours))
            async with trio.open_nursery() as nursery:
                nursery.start_soon(swarm.upgrade_inbound_raw_conn, conn("first"), None)
                await trio.sleep(0.1)

                async def gone() -> None:
                    with pytest.raises(ConnectionError, match="hung up"):
                        await swarm.upgrade_inbound_raw_conn(waiting, None)

                nursery.start_soon(gone)
                await trio.sleep(1)
                theirs.sendall(b"/multistream/1.0.0\n")  # it had spoken, then gave up
                theirs.close()
            assert swarm.order == ["first"] and gate.dropped == 1
        finally:
            ours.close()

    run(main)


def test_hung_up_tells_a_closed_peer_from_a_quiet_one() -> None:
    ours, theirs = socket.socketpair()
    try:
        raw = SimpleNamespace(stream=SimpleNamespace(stream=SimpleNamespace(socket=ours)))
        assert not hung_up(raw)
        theirs.sendall(b"unread data")
        assert not hung_up(raw)
        theirs.close()
        assert hung_up(raw)
        assert not hung_up(SimpleNamespace())  # nothing to look at: not taken as gone
    finally:
        ours.close()


def test_no_limit_installs_nothing() -> None:
    swarm = FakeSwarm()
    method = swarm.upgrade_inbound_raw_conn
    JoinGate(0).install(swarm)
    assert swarm.upgrade_inbound_raw_conn == method
    with pytest.raises(ValueError):
        JoinGate(-1)
