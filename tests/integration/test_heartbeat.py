"""Heartbeats end to end: a real `sonmhub` process and light miners in this process (real
libp2p connections, sessions and gRPC). A miner of today opens a message session and is pinged
with Yamux keepalive pings, which it counts as the hub's contact; one a version older opens a
beat session, pinged the same way; a miner that only speaks the first session protocol is
pinged over gRPC as before. All stay online with no ping missed, and the hub follows the tasks
of each (on the message session itself, or by ``WatchTasks``)."""

from __future__ import annotations

import threading
import time

import pytest

from sonm_p2p.loadgen import start_light_miners
from sonm_p2p.miner import hub_link
from sonm_p2p.transport.bridge import SESSION
from sonm_p2p.transport.heartbeat import SESSION_BEAT, SESSION_MESSAGES
from tests.harness import Network, wait_for

INTERVAL = 0.5


@pytest.mark.parametrize(
    ("offered", "protocol"),
    [
        (hub_link.SESSIONS, SESSION_MESSAGES),
        ((SESSION_BEAT, SESSION), SESSION_BEAT),
        ((SESSION,), SESSION),
    ],
    ids=["message-session", "beat-session", "older-miner"],
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
        # A task that ends by itself: only the miner's task events tell the hub.
        started = hub.cli("start", "--image", "sonm-test/web", f"--miner={daemon.node_id}")
        assert started.returncode == 0, started.stderr
        task_id = started.stdout.split()[1].rstrip(",")
        daemon.runtime.exit(task_id, 3)
        wait_for(
            lambda: hub.cli_json("status", task_id)["state"] == "EXITED",
            "the hub learns the task exited",
            timeout=10,
        )
    assert "missed a ping" not in hub.proc.output()


def test_a_session_is_pinged_while_its_handshake_waits_its_turn() -> None:
    """A restarted hub's herd: a session's ``on_open`` (the hub's handshake) may wait behind
    hundreds of others for longer than a miner's patience with a silent hub (35 s). The hub
    pings the session's connection from its first moment, so the miner hears it all along."""
    from sonm_p2p.identity import Identity
    from sonm_p2p.transport.heartbeat import Heartbeat
    from sonm_p2p.transport.node import NodeOptions, P2PNode

    listen = NodeOptions(listen=("/ip4/127.0.0.1/tcp/0",))
    hub, miner = P2PNode(Identity.generate(), listen), P2PNode(Identity.generate(), listen)
    release = threading.Event()
    results: list[tuple[str, bool, str]] = []
    beats: list[float] = []
    hub.accept_sessions(
        SESSION_BEAT,
        lambda peer: release.wait(30),  # the handshake, stuck in the queue
        lambda peer: None,
        heartbeat=Heartbeat(interval=INTERVAL, timeout=1.0, report=results.extend),
    )
    hub.start()
    miner.start()
    try:
        peer = miner.connect(hub.addrs[0])
        heard = lambda: beats.append(time.monotonic())  # noqa: E731
        session = miner.open_session(peer, hub_link.SESSIONS, heard)
        assert session.protocol == SESSION_BEAT
        wait_for(lambda: len(beats) >= 3, "three pings before the handshake ended", timeout=10)
        assert not release.is_set()
        wait_for(lambda: any(ok for _, ok, _ in results), "an answered ping reported", timeout=10)
        assert all(ok for _, ok, _ in results)
    finally:
        release.set()
        miner.close()
        hub.close()
