"""The hub's bound on open streams: per caller and in total, given back when a stream ends."""

from __future__ import annotations

import contextlib

import pytest

from sonm_p2p.errors import Busy
from sonm_p2p.hub.limits import StreamBudget, StreamLimits, client_of


@pytest.mark.parametrize(
    ("peer", "client"),
    [
        ("ipv4:127.0.0.1:5000", "127.0.0.1"),
        ("ipv6:[::1]:5000", "::1"),
        ("unix:/tmp/sock", "unix:/tmp/sock"),
    ],
)
def test_client_of(peer: str, client: str) -> None:
    assert client_of(peer) == client


def test_per_client_and_total_bounds() -> None:
    budget = StreamBudget(StreamLimits(total=3, per_client=2))
    with contextlib.ExitStack() as held:
        held.enter_context(budget.hold("a"))
        held.enter_context(budget.hold("a"))
        with pytest.raises(Busy, match="a has 2 streams open"):
            held.enter_context(budget.hold("a"))
        held.enter_context(budget.hold("b"))
        with pytest.raises(Busy, match="serves 3 streams already"):
            held.enter_context(budget.hold("c"))
        assert budget.total == 3
    assert budget.total == 0
    assert "clients=0" in repr(budget)  # nothing lingers per caller


def test_a_stream_that_fails_gives_its_place_back() -> None:
    budget = StreamBudget(StreamLimits(total=1, per_client=1))
    for _ in range(3):
        with pytest.raises(RuntimeError), budget.hold("a"):
            raise RuntimeError("the client went away")
    with budget.hold("a"):
        assert budget.total == 1
