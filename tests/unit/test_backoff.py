"""The miner's reconnect backoff: doubling to a cap, jittered so a crowd does not redial in step."""

from __future__ import annotations

import pytest

from sonm_p2p.miner.hub_link import Backoff


def test_backoff_doubles_to_its_cap_and_resets() -> None:
    b = Backoff(0.5, 3.0)
    assert [b.next() for _ in range(5)] == [0.5, 1.0, 2.0, 3.0, 3.0]
    b.reset()
    assert b.next() == 0.5


def test_jitter_takes_up_to_its_share_off_each_wait() -> None:
    draws = iter([0.0, 0.999, 0.5])
    b = Backoff(1.0, 8.0, jitter=0.5, rand=lambda: next(draws))
    assert b.next() == 1.0  # nothing off
    assert b.next() == pytest.approx(2.0 * (1 - 0.4995))  # almost half off
    assert b.next() == pytest.approx(3.0)  # a quarter off 4


def test_jitter_out_of_range_is_refused() -> None:
    with pytest.raises(ValueError):
        Backoff(1.0, 2.0, jitter=1.5)
