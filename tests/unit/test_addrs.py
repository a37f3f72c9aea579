from __future__ import annotations

import pytest

from sonm_p2p.errors import ConfigError
from sonm_p2p.transport.addrs import (
    Circuit,
    parse_circuit,
    parse_hostport,
    parse_target,
    tcp_multiaddr,
)


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("1.2.3.4:10002", ("1.2.3.4", 10002)),
        ("[::1]:10001", ("::1", 10001)),
        ("hub.example:7", ("hub.example", 7)),
    ],
)
def test_hostport(text, expected):
    assert parse_hostport(text) == expected


def test_default_port():
    assert parse_hostport("10.0.0.1", default_port=10001) == ("10.0.0.1", 10001)
    assert parse_hostport("::1", default_port=10001) == ("::1", 10001)


@pytest.mark.parametrize("bad", ["", ":5", "host:", "host:99999", "host:x", "[::1"])
def test_bad_hostport(bad):
    with pytest.raises(ConfigError):
        parse_hostport(bad)


def test_multiaddrs():
    assert tcp_multiaddr("1.2.3.4", 5) == "/ip4/1.2.3.4/tcp/5"
    assert tcp_multiaddr("::1", 5) == "/ip6/::1/tcp/5"
    assert tcp_multiaddr("hub.example", 5) == "/dns/hub.example/tcp/5"
    assert parse_target("1.2.3.4:10002") == ("/ip4/1.2.3.4/tcp/10002", None)
    pid = "16Uiu2HAmMqHhXA25tFPVX3ueBZJ9VXoLV8tGtn2P4yrcecn9o2ZP"
    assert parse_target(f"/ip4/1.2.3.4/tcp/10002/p2p/{pid}") == ("/ip4/1.2.3.4/tcp/10002", pid)
    with pytest.raises(ConfigError):
        parse_target("/ip4/999.1.1.1/tcp/1")


RELAY = "16Uiu2HAmMqHhXA25tFPVX3ueBZJ9VXoLV8tGtn2P4yrcecn9o2ZP"
PEER = "16Uiu2HAm2wUZs4WdeETFyQsVjHsTY8Ao6in2gHK9T3oPnCWAr7tG"


def test_circuit_addresses_in_parts():
    circuit = parse_circuit(f"/ip4/203.0.113.10/tcp/10002/p2p/{RELAY}/p2p-circuit/p2p/{PEER}")
    assert circuit == Circuit("/ip4/203.0.113.10/tcp/10002", RELAY, PEER)
    assert circuit.relay == f"/ip4/203.0.113.10/tcp/10002/p2p/{RELAY}"
    assert parse_circuit(f"/ip4/1.2.3.4/tcp/1/p2p/{PEER}") is None
    assert parse_circuit("1.2.3.4:10002") is None


@pytest.mark.parametrize(
    "bad",
    [
        f"/p2p-circuit/p2p/{PEER}",  # no relay
        f"/ip4/1.2.3.4/tcp/1/p2p-circuit/p2p/{PEER}",  # a relay without its ID
        f"/ip4/1.2.3.4/tcp/1/p2p/{RELAY}/p2p-circuit",  # no peer
        f"/ip4/1.2.3.4/tcp/1/p2p/{RELAY}/p2p-circuit/p2p/{PEER}/p2p-circuit/p2p/{RELAY}",
    ],
)
def test_bad_circuit_addresses(bad):
    with pytest.raises(ConfigError):
        parse_circuit(bad)
    # and never dialled as a direct address
    with pytest.raises(ConfigError):
        parse_target(bad)
