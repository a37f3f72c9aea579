"""The hub's pinger: each round's pings spread over the interval (not a burst), a miner with a
ping still out not pinged again, results applied in batches, three misses make a miner offline.

A real :class:`Hub` (its loop, pool and SQLite in memory) with fake miner sessions: no sockets.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterator

import pytest

from sonm_p2p.errors import Timeout
from sonm_p2p.hub.core import MinerLink
from sonm_p2p.hub.hub import Hub, HubOptions
from sonm_p2p.hub.sessions import MinerSession
from sonm_p2p.hub.state import HubState, MinerRecord
from sonm_p2p.identity import Identity
from sonm_p2p.supervisor import Supervisor
from tests.harness import wait_for

INTERVAL = 0.5


class FakeNode:
    def __init__(self) -> None:
        self.disconnected: list[str] = []

    def disconnect(self, peer_id: str) -> None:
        self.disconnected.append(peer_id)


class FakeClient:
    """A miner's client as the pinger uses it: ``aping`` records when it was called."""

    def __init__(self, loop: asyncio.AbstractEventLoop, *, hang: bool = False) -> None:
        self.loop = loop
        self.hang = hang
        self.pings: list[float] = []  # loop.time() of each ping's start
        self.in_flight = 0
        self.most_in_flight = 0
        self.closed = False

    async def aping(self, timeout: float) -> None:
        self.pings.append(asyncio.get_running_loop().time())
        self.in_flight += 1
        self.most_in_flight = max(self.most_in_flight, self.in_flight)
        try:
            if self.hang:  # answers nothing: the ping fails at its timeout
                await asyncio.sleep(timeout)
                raise Timeout("ping timed out")
        finally:
            self.in_flight -= 1

    def close(self) -> None:
        self.closed = True


@pytest.fixture
def hub() -> Iterator[Hub]:
    sup = Supervisor("test-hub")
    state = HubState(":memory:")
    options = HubOptions(ping_interval=INTERVAL, ping_timeout=1.2, max_missed_pings=3)
    h = Hub(Identity.generate(), FakeNode(), state, options, supervisor=sup)  # type: ignore[arg-type]
    h.start()
    try:
        yield h
    finally:
        h.close()
        sup.close()
        state.close()


def add_miners(hub: Hub, n: int, **client: bool) -> list[FakeClient]:
    assert hub.loop is not None
    clients = []
    with hub._lock:
        for _ in range(n):
            node_id = Identity.generate().node_id
            serial = hub.core.next_serial()
            link = MinerLink(node_id=node_id, peer_id=f"peer-{node_id}", serial=serial)
            hub.core.connected(link)
            hub.state.upsert_miner(MinerRecord(node_id, link.peer_id, True, 1.0, 1.0))
            fake = FakeClient(hub.loop, **client)
            hub._sessions[node_id] = MinerSession(link, fake)  # type: ignore[arg-type]
            clients.append(fake)
    return clients


def test_a_round_spreads_its_pings_over_the_interval(hub: Hub) -> None:
    clients = add_miners(hub, 10)
    wait_for(lambda: all(len(c.pings) >= 2 for c in clients), "two rounds of pings", timeout=10)
    starts = sorted(c.pings[0] for c in clients)
    step = INTERVAL / len(clients)
    # Each ping waited for its slot (a sleep never ends early; load only makes them later): a
    # burst would start all ten within a few milliseconds.
    for i, t in enumerate(starts):
        assert t - starts[0] >= i * step - 0.02, (i, t - starts[0])
    # One ping a miner a round: the next comes about one interval later, not sooner.
    for c in clients:
        assert c.pings[1] - c.pings[0] >= INTERVAL - 0.05


def test_answered_pings_mark_miners_seen_in_batches(hub: Hub) -> None:
    clients = add_miners(hub, 5)
    calls = []
    seen = hub.state.set_miners_seen

    def counting(node_ids: list[str], now: float) -> None:
        calls.append(len(node_ids))
        seen(node_ids, now)

    hub.state.set_miners_seen = counting  # type: ignore[method-assign]
    wait_for(lambda: all(len(c.pings) >= 3 for c in clients), "three rounds", timeout=10)
    wait_for(lambda: sum(calls) >= 10, "answers applied", timeout=10)
    assert all(m.last_seen > 1.0 for m in hub.state.list_miners())
    assert len(calls) < sum(calls)  # several answers a commit, not one each


def test_a_silent_miner_is_not_pinged_twice_at_once_and_goes_offline(hub: Hub) -> None:
    (silent,) = add_miners(hub, 1, hang=True)
    (alive,) = add_miners(hub, 1)
    node = hub.node
    assert isinstance(node, FakeNode)
    wait_for(lambda: node.disconnected, "the silent miner dropped", timeout=15)
    assert silent.most_in_flight == 1  # its timeout (1.2 s) outlasts the interval (0.5 s)
    assert silent.closed and not alive.closed
    assert len(silent.pings) >= 3  # offline at the third miss
    online = {m.node_id: m.online for m in hub.state.list_miners()}
    assert sorted(online.values()) == [False, True]
    assert len(hub.online_miners()) == 1
