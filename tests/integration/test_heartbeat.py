"""Heartbeats end to end: a real `sonmhub` process and light miners in this process (real
libp2p connections, sessions and gRPC). A miner of today opens a beat session and is pinged
with Yamux keepalive pings, which it counts as the hub's contact; a miner that only speaks the
older session protocol is pinged over gRPC as before; both stay online with no ping missed."""

from __future__ import annotations

import time

import pytest

from sonm_p2p.loadgen import start_light_miners
from sonm_p2p.miner import hub_link
from sonm_p2p.transport.bridge import SESSION
from sonm_p2p.transport.heartbeat import SESSION_BEAT
from tests.harness import Network, wait_for

INTERVAL = 0.5


@pytest.mark.parametrize(
    ("offered", "protocol"),
    [(hub_link.SESSIONS, SESSION_BEAT), ((SESSION,), SESSION)],
    ids=["beat-session", "older-miner"],
)
def test_miners_are_pinged_on_the_session_they_open_and_stay_online(
    net: Network, monkeypatch: pytest.MonkeyPatch, offered: tuple[str, ...], protocol: str
) -> None:
    hub = net.hub(extra=["--ping-interval", f"{INTERVAL}s", "--ping-timeout", "1s", "--no-mdns"])
    monkeypatch.setattr(hub_link, "SESSIONS", offered)
    with start_light_miners(hub.p2p_target, 2, net.root / "light") as miners:
        miners.wait_connected(timeout=30)
        daemon = miners.daemons[0]
        wait_for(lambda: daemon.link.connected.is_set(), "a session", timeout=10)
        assert daemon.link.protocol == protocol
        # The hub's contact, as the miner counts it: it keeps coming, ping after ping.
        first = daemon.miner.hub_clock.last_ping
        wait_for(
            lambda: daemon.miner.hub_clock.last_ping > first + 2 * INTERVAL,
            "the hub's pings keep coming",
            timeout=10,
            every=0.1,
        )
        t0 = time.monotonic()
        listed = hub.cli_json("list")["miners"]
        assert len(listed) == 2 and all(m["online"] for m in listed)
        wait_for(lambda: time.monotonic() - t0 > 4 * INTERVAL, "four more intervals", timeout=10)
        assert miners.connected == 2
    assert "missed a ping" not in hub.proc.output()
