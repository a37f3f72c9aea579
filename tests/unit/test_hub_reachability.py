"""HubReachability's decisions, one round at a time, against an in-memory node.

What the node answers (who connects, the AutoNAT verdict, whether a reservation is granted) is
scripted; the real exchanges are tested in tests/integration/test_reachability.py and the netns
tests.
"""

from __future__ import annotations

import threading

import pytest

from sonm_p2p.errors import ConfigError, DialError
from sonm_p2p.hub.reachability import HubReachability
from sonm_p2p.supervisor import Supervisor
from sonm_p2p.transport.reachability import Reachability

A, B = "127.0.0.1:10002", "127.0.0.2:10002"


class FakeReservation:
    def __init__(self, relay: str) -> None:
        self.relay = relay
        self.active = False
        self.error: str | None = None
        self.cancelled = False
        self.circuit_addrs = [f"/ip4/{relay.split(':')[0]}/tcp/10002/p2p/R/p2p-circuit/p2p/H"]

    def cancel(self) -> None:
        self.cancelled = True


class FakeNode:
    def __init__(self) -> None:
        self.down: set[str] = set()  # relays that cannot be dialled
        self.verdict = Reachability.UNKNOWN
        self.reservations: list[FakeReservation] = []
        self.asked: list[list[str]] = []

    def connect(self, target: str) -> str:
        if target in self.down:
            raise DialError(f"cannot connect to {target}")
        return f"peer-{target}"

    def check_reachability(self, servers: list[str]) -> tuple[Reachability, dict[str, str]]:
        self.asked.append(list(servers))
        return self.verdict, {s: str(self.verdict) for s in servers}

    def reserve(self, target: str, *, wait: bool = True) -> FakeReservation:
        assert not wait
        if target in self.down:
            raise DialError(f"cannot connect to {target}")
        res = FakeReservation(target)
        self.reservations.append(res)
        return res


def reach(node: FakeNode, **kw: object) -> HubReachability:
    kw.setdefault("supervisor", Supervisor("test-reach"))
    return HubReachability(node, **kw)  # type: ignore[arg-type]


def test_private_when_no_relay_can_dial_back_then_reserves_on_each():
    node = FakeNode()
    node.verdict = Reachability.PRIVATE
    r = reach(node, relays=(A, B))
    assert r._round() is True
    assert r.state == Reachability.PRIVATE
    assert [res.relay for res in node.reservations] == [A, B]
    assert node.asked == [[f"peer-{A}", f"peer-{B}"]]
    # Not granted yet: the loop comes back soon rather than in 5 minutes.
    assert r._report() is False
    for res in node.reservations:
        res.active = True
    assert r._report() is True
    # A second round keeps what it holds.
    assert r._round() is True and len(node.reservations) == 2


def test_found_public_again_releases_the_reservations():
    node = FakeNode()
    node.verdict = Reachability.PRIVATE
    r = reach(node, relays=(A,))
    r._round()
    node.verdict = Reachability.PUBLIC
    assert r._round() is True
    assert r.state == Reachability.PUBLIC
    assert node.reservations[0].cancelled and r.reservations == []


def test_no_answer_changes_nothing_and_retries():
    node = FakeNode()
    r = reach(node, relays=(A,))
    assert r._round() is False  # UNKNOWN
    assert r.state == Reachability.UNKNOWN and node.reservations == []
    node.down = {A}
    node.asked.clear()
    assert r._round() is False  # nobody to ask
    assert node.asked == []


def test_relays_that_cannot_be_reached_are_skipped_and_retried():
    node = FakeNode()
    node.verdict = Reachability.PRIVATE
    node.down = {B}
    r = reach(node, relays=(A, B))
    assert r._round() is False  # B still owes a reservation
    assert [res.relay for res in node.reservations] == [A]
    node.down = set()
    assert r._round() is True
    assert [res.relay for res in node.reservations] == [A, B]


def test_a_refused_reservation_is_reported_once(caplog):
    node = FakeNode()
    r = reach(node, mode="private", relays=(A,))
    assert r._round() is True and r.state == Reachability.PRIVATE
    assert node.asked == []  # private: nobody is asked
    node.reservations[0].error = "relay does not relay"
    with caplog.at_level("WARNING"):
        assert r._report() is False
        assert r._report() is False
    assert [m for m in caplog.messages if "does not relay" in m] == [
        f"no reservation on relay {A} (retrying): relay does not relay"
    ]


def test_public_mode_never_reserves():
    node = FakeNode()
    r = reach(node, mode="public", relays=(A,))
    assert r.state == Reachability.PUBLIC
    sup = Supervisor("test-public")
    r = reach(node, mode="public", relays=(A,), supervisor=sup)
    r.start()  # nothing to run
    assert "reachability" not in repr([t.name for t in threading.enumerate()])
    assert "services=0" in repr(sup)
    sup.close()


@pytest.mark.parametrize(
    ("kw", "says"),
    [
        ({"mode": "sometimes"}, "unknown reachability"),
        ({"mode": "private"}, "needs a relay"),
        ({"relays": ("/ip4/1.2.3.4/tcp/1/p2p/R/p2p-circuit/p2p/H",)}, "not a circuit"),
        ({"relays": ("1.2.3.4:0",)}, "port must be"),
    ],
)
def test_bad_settings(kw, says):
    with pytest.raises(ConfigError, match=says):
        reach(FakeNode(), **kw)
