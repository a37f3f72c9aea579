"""gRPC channel and server options shared by every process: HTTP/2 keepalive both ways, except
on the hub's channels to its miners, which have a liveness check of their own.

A long call (``logs -f``, ``WatchTask``) over a plain TCP link that is cut would otherwise wait
for TCP to give up, which takes many minutes: the client pings every 10 s and drops the
transport when a ping is unanswered for 10 s, so the call fails with UNAVAILABLE. Servers must
accept those pings (grpc's default policy allows one every 5 minutes and sends GOAWAY
"too_many_pings" to a client that pings more), and ping their clients in turn, so that a call
whose client vanished is cancelled instead of streaming into the void.

The hub's channels to its miners (``MINER_LINK_CLIENT_OPTIONS``, ``MINER_LINK_SERVER_OPTIONS``) run
over the libp2p bridge, inside a miner's one connection to its hub, whose liveness is
already checked twice: the hub pings every miner (``--ping-interval``, an application call on
this very channel) and drops one that misses ``--max-missed-pings``, closing the channel (every
call on it then ends with UNAVAILABLE, a log follow with "miner went offline"); the miner drops
a hub silent for ``hub_silence``, which ends every stream of the connection, and so resets the
bridge's socket under the miner's gRPC server (its calls are cancelled). HTTP/2 pings there
said nothing more, and were most of what a connected, idle miner cost its hub: each one is a
Yamux frame, a Noise message and a splice hop at both ends, in pure Python (docs/SCALING.md).
Such channels also skip grpc's BDP probe pings: the bridge's far end is a local socket, and
Yamux does the flow control over the network.
"""

from __future__ import annotations

__all__ = [
    "CLIENT_OPTIONS",
    "MINER_LINK_CLIENT_OPTIONS",
    "MINER_LINK_SERVER_OPTIONS",
    "SERVER_OPTIONS",
]

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

#: The hub's channel to a miner (over the bridge): no HTTP/2 pings of its own (see above).
MINER_LINK_CLIENT_OPTIONS: list[tuple[str, int]] = [
    ("grpc.http2.bdp_probe", 0),
    ("grpc.initial_reconnect_backoff_ms", 200),
    ("grpc.max_reconnect_backoff_ms", 2_000),
]

#: A miner's gRPC server (reached only over the bridge, by its hub): it pings nobody, and still
#: accepts a client's pings as :data:`SERVER_OPTIONS` does (a hub of an earlier version sends
#: them every 10 s).
MINER_LINK_SERVER_OPTIONS: list[tuple[str, int]] = [
    ("grpc.keepalive_time_ms", 2**31 - 1),
    ("grpc.keepalive_permit_without_calls", 1),
    ("grpc.http2.min_recv_ping_interval_without_data_ms", 5_000),
    ("grpc.http2.max_ping_strikes", 0),
    ("grpc.http2.bdp_probe", 0),
]
