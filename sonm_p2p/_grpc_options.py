"""gRPC channel and server options shared by every process: HTTP/2 keepalive both ways.

A long call (``logs -f``, ``WatchTask``, the hub's follow of a miner's logs) over a link that is
cut would otherwise wait for TCP to give up, which takes many minutes: the client pings every
10 s and drops the transport when a ping is unanswered for 10 s, so the call fails with
UNAVAILABLE. Servers must accept those pings (grpc's default policy allows one every 5 minutes
and sends GOAWAY "too_many_pings" to a client that pings more), and ping their clients in turn,
so that a call whose client vanished is cancelled instead of streaming into the void.
"""

from __future__ import annotations

__all__ = ["CLIENT_OPTIONS", "SERVER_OPTIONS"]

CLIENT_OPTIONS: list[tuple[str, int]] = [
    ("grpc.keepalive_time_ms", 10_000),
    ("grpc.keepalive_timeout_ms", 10_000),
    ("grpc.keepalive_permit_without_calls", 1),
    ("grpc.http2.max_pings_without_data", 0),
]

SERVER_OPTIONS: list[tuple[str, int]] = [
    ("grpc.keepalive_time_ms", 20_000),
    ("grpc.keepalive_timeout_ms", 10_000),
    ("grpc.keepalive_permit_without_calls", 1),
    ("grpc.http2.min_recv_ping_interval_without_data_ms", 5_000),
    ("grpc.http2.max_ping_strikes", 0),
]
