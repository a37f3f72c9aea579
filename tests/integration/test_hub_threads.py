"""The hub's threads are owned: their number does not grow with its miners, and close() ends
every one it started (an in-process HubDaemon, miners as real processes)."""

from __future__ import annotations

import threading
from pathlib import Path

from sonm_p2p.hub.daemon import HubDaemon, HubDaemonOptions
from sonm_p2p.hub.hub import HubOptions
from tests.harness import Network, free_port, wait_for


def _threads() -> set[threading.Thread]:
    return {t for t in threading.enumerate() if t.is_alive()}


def test_threads_do_not_grow_with_miners_and_close_joins_them(net: Network, tmp_path: Path) -> None:
    before = _threads()
    grpc_port, p2p_port = free_port(), free_port()
    daemon = HubDaemon(
        HubDaemonOptions(
            home=tmp_path / "hub",
            grpc_listen=f"127.0.0.1:{grpc_port}",
            p2p_listen=(f"/ip4/127.0.0.1/tcp/{p2p_port}",),
            mdns=False,
            stun_listen="127.0.0.1:0",
            reachability="public",
            hub=HubOptions(ping_interval=0.5, ping_timeout=2.0),
        )
    )
    try:
        daemon.start()
        target = f"127.0.0.1:{p2p_port}"
        net.miner(target, "m0", runtime="memory")
        wait_for(lambda: len(daemon.hub.online_miners()) == 1, "the first miner online", 60)
        with_one = len(_threads())
        for i in range(1, 6):
            net.miner(target, f"m{i}", runtime="memory")
        wait_for(lambda: len(daemon.hub.online_miners()) == 6, "six miners online", 90)
        pinged = daemon.state.get_miner(daemon.hub.online_miners()[0]).last_seen
        wait_for(
            lambda: daemon.state.get_miner(daemon.hub.online_miners()[0]).last_seen > pinged,
            "a ping round over six miners",
        )
        # Not a thread per miner: pings and event streams share one loop (a few threads more
        # can come from libp2p's stream handlers and the bounded worker pool).
        assert len(_threads()) <= with_one + 4, sorted(t.name for t in _threads())
    finally:
        daemon.close()
    left = {t for t in _threads() - before if not t.daemon or t.name.startswith("hub")}
    assert not left, sorted(t.name for t in left)
    assert not [t for t in _threads() - before if t.name.startswith(("hub", "p2p"))]
