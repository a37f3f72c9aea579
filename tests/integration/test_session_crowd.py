"""A crowd of sessions opening at once (a restarted hub's miners redialling): every session
callback may block on the node (as a hub's handshake opens a tunnel back to its miner) and all
complete. With the callbacks on trio's default thread limiter, 40 of them held every token while
the tunnels they waited for needed one to bind: every handshake hung."""

from __future__ import annotations

import threading
import time

from sonm_p2p.identity import Identity
from sonm_p2p.transport._sessions import SESSION_THREADS
from sonm_p2p.transport.node import NodeOptions, P2PNode, SharedLoop
from tests.harness import wait_for

PROTO = "/sonm/test-session/1.0.0"
TRIO_DEFAULT_THREADS = 40  # trio.to_thread's default limiter
CROWD = max(SESSION_THREADS, TRIO_DEFAULT_THREADS) + 8


def test_session_callbacks_that_open_tunnels_all_finish_when_a_crowd_connects() -> None:
    listen = NodeOptions(listen=("/ip4/127.0.0.1/tcp/0",), max_connections=CROWD * 2)
    hub = P2PNode(Identity.generate(), listen)
    busy = [0]
    lock = threading.Lock()
    tunnels: list[object] = []

    def on_open(peer: str) -> None:
        with lock:
            busy[0] += 1
        # Wait (a while) until as many callbacks are inside as trio has default threads: the
        # worst case, every one of them blocked on the node at once.
        deadline = time.monotonic() + 5
        while time.monotonic() < deadline:
            with lock:
                if busy[0] >= TRIO_DEFAULT_THREADS:
                    break
            time.sleep(0.01)
        tunnel = hub.open_tunnel(peer, "/sonm/test-tunnel/1.0.0")
        with lock:
            tunnels.append(tunnel)

    hub.accept_sessions(PROTO, on_open, lambda peer: None)
    hub.start()
    loop = SharedLoop("crowd")
    crowd = [P2PNode(Identity.generate(), listen, loop=loop) for _ in range(CROWD)]
    try:
        for node in crowd:
            node.start()
        target = hub.addrs[0]
        openers = [
            threading.Thread(target=lambda n=n: n.open_session(n.connect(target), PROTO))
            for n in crowd
        ]
        for t in openers:
            t.start()
        wait_for(lambda: len(tunnels) == CROWD, f"{CROWD} session callbacks done", timeout=60)
        for t in openers:
            t.join(timeout=10)
    finally:
        for node in crowd:
            node.close()
        loop.close()
        hub.close()
