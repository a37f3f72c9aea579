"""Other hubs' STUN endpoints: asked once per TTL, failures remembered, one per IP."""

from __future__ import annotations

from dataclasses import dataclass

from sonm_p2p.hub.stun_peers import StunPeers


@dataclass(frozen=True)
class Entry:
    node_id: str
    peer_id: str
    grpc_endpoint: str


A = Entry("0xA", "peerA", "203.0.113.20:10001")
B = Entry("0xB", "peerB", "203.0.113.21:10001")
C = Entry("0xC", "peerC", "203.0.113.22:10001")
DOWN = Entry("0xD", "peerD", "203.0.113.23:10001")
SAME_IP = Entry("0xE", "peerE", "203.0.113.20:20001")


class Clock:
    now = 0.0

    def __call__(self) -> float:
        return self.now


def test_asked_once_per_ttl_and_failures_remembered():
    asked: list[str] = []
    answers = {
        A.grpc_endpoint: "203.0.113.20:3478",
        B.grpc_endpoint: "203.0.113.21:3478",
        C.grpc_endpoint: "203.0.113.22:3478",
        SAME_IP.grpc_endpoint: "203.0.113.20:4478",
    }

    def ask(endpoint: str) -> str:
        asked.append(endpoint)
        if endpoint not in answers:
            raise ConnectionError("no answer")
        return answers[endpoint]

    clock = Clock()
    peers = StunPeers(ask, ttl=600.0, limit=2, clock=clock)
    hubs = [DOWN, A, SAME_IP, B, C]
    assert peers.known(hubs) == []  # known() never asks
    peers.refresh(hubs)
    peers.refresh(hubs)
    assert len(asked) == 4  # each once, the one that failed too, until two IPs are known
    peers.refresh(hubs, besides=["203.0.113.20:3478"])  # A's IP is the hub's own: one more
    assert len(asked) == 5
    # At most two, one per IP, none on the hub's own IPs.
    assert peers.known(hubs) == ["203.0.113.20:3478", "203.0.113.21:3478"]
    assert peers.known(hubs, besides=["203.0.113.20:3478", "203.0.113.20:3479"]) == [
        "203.0.113.21:3478",
        "203.0.113.22:3478",
    ]
    clock.now = 601.0
    assert peers.known(hubs) == []  # stale: not named until asked again
    peers.refresh([A])
    assert len(asked) == 6 and peers.known(hubs) == ["203.0.113.20:3478"]
