"""The libp2p host's resource manager admits as many connections as ``max_connections`` says:
py-libp2p's default per-direction limits held a hub at 256 inbound connections (256 miners),
whatever ``sonmhub --max-connections`` was (issue 14)."""

from __future__ import annotations

import pytest

from sonm_p2p.transport._conn import resource_manager


@pytest.mark.parametrize("n", [300, 1000, 10_000])
def test_a_host_admits_max_connections_inbound(n: int) -> None:
    manager = resource_manager(n)
    limits = manager.connection_limits
    assert limits.max_established_inbound == n
    assert limits.max_established_total == n
    assert limits.max_established_outbound == n
    assert manager.limits.max_connections == n
    assert manager.circuit_breaker is None  # no lock-out after a few refusals
