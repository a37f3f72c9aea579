"""The dial ladder's policy: which addresses, in which order, and when to hole-punch. No I/O."""

from __future__ import annotations

import ipaddress
import random

import pytest

from sonm_p2p.transport.dial_ladder import (
    AttemptKind,
    LadderOptions,
    PathKind,
    Scope,
    UpgradePolicy,
    UpgradeState,
    classify,
    plan,
)

PEER = "16Uiu2HAmPeer"
RELAY = "16Uiu2HAmRelay"
OTHER_RELAY = "16Uiu2HAmOther"


def circuit(relay_addr: str, relay: str = RELAY, peer: str = PEER) -> str:
    return f"{relay_addr}/p2p/{relay}/p2p-circuit/p2p/{peer}"


def kinds_and_addrs(attempts):
    return [(a.kind, a.addr) for a in attempts]


@pytest.mark.parametrize(
    ("ip", "scope"),
    [
        ("203.0.113.7", Scope.PUBLIC),  # documentation ranges are the tests' internet
        ("198.51.100.7", Scope.PUBLIC),
        ("8.8.8.8", Scope.PUBLIC),
        ("2a00:1450::1", Scope.PUBLIC),
        ("2001:db8::1", Scope.PUBLIC),
        ("10.1.0.2", Scope.SITE),
        ("172.20.0.1", Scope.SITE),
        ("192.168.1.5", Scope.SITE),
        ("100.64.3.4", Scope.SITE),
        ("fd00:6e74::5", Scope.SITE),
        ("127.0.0.1", Scope.LOOPBACK),
        ("::1", Scope.LOOPBACK),
        ("0.0.0.0", Scope.UNUSABLE),
        ("::", Scope.UNUSABLE),
        ("fe80::1", Scope.UNUSABLE),
        ("169.254.1.1", Scope.UNUSABLE),
        ("224.0.0.251", Scope.UNUSABLE),
        ("::ffff:10.0.0.1", Scope.SITE),
    ],
)
def test_classify(ip, scope):
    assert classify(ipaddress.ip_address(ip)) is scope


def test_public_ipv6_first_then_ipv4_then_relays():
    addrs = [
        circuit("/ip4/203.0.113.10/tcp/10002"),
        "/ip4/198.51.100.20/tcp/4001",
        f"/ip6/2a00:1450::20/tcp/4001/p2p/{PEER}",
        "/ip4/203.0.113.20/tcp/4001",
    ]
    attempts = plan(PEER, addrs, local_ips=["203.0.113.30"])
    assert kinds_and_addrs(attempts) == [
        (AttemptKind.DIRECT, "/ip6/2a00:1450::20/tcp/4001"),
        (AttemptKind.DIRECT, "/ip4/198.51.100.20/tcp/4001"),
        (AttemptKind.DIRECT, "/ip4/203.0.113.20/tcp/4001"),
        (AttemptKind.RELAY, "/ip4/203.0.113.10/tcp/10002"),
    ]
    assert attempts[-1].relay_id == RELAY
    assert attempts[0].timeout == LadderOptions().direct_timeout
    assert attempts[-1].timeout == LadderOptions().relay_timeout


def test_private_addresses_only_on_our_own_network():
    addrs = ["/ip4/10.1.0.2/tcp/4001", "/ip4/192.168.7.3/tcp/4001", "/ip6/fd00:6e74::9/tcp/1"]
    ours = ["10.1.0.3", "fd00:6e74::4"]
    attempts = plan(PEER, addrs, local_ips=ours)
    assert [a.addr for a in attempts] == ["/ip6/fd00:6e74::9/tcp/1", "/ip4/10.1.0.2/tcp/4001"]
    assert all(a.timeout == LadderOptions().local_timeout for a in attempts)
    # Behind another NAT (10.2.0.0/16 is not 10.1.0.0/16): not worth a timeout.
    assert plan(PEER, addrs, local_ips=["10.2.0.2"]) == []


def test_loopback_only_when_we_have_loopback_ourselves():
    addrs = ["/ip4/127.0.0.1/tcp/4001", circuit("/ip4/127.0.0.1/tcp/4002")]
    assert [a.kind for a in plan(PEER, addrs, local_ips=["127.0.0.1"])] == [
        AttemptKind.DIRECT,
        AttemptKind.RELAY,
    ]
    # A node that only advertises real interfaces never dials another machine's loopback.
    assert [a.kind for a in plan(PEER, addrs, local_ips=["203.0.113.5"])] == [AttemptKind.RELAY]


def test_relays_we_are_connected_to_come_first():
    addrs = [
        circuit("/ip4/203.0.113.10/tcp/10002", OTHER_RELAY),
        circuit("/ip4/203.0.113.11/tcp/10002", RELAY),
    ]
    attempts = plan(PEER, addrs, connected_relays=[RELAY])
    assert [a.relay_id for a in attempts] == [RELAY, OTHER_RELAY]


def test_relay_known_only_by_id_is_kept():
    attempts = plan(PEER, [f"/p2p/{RELAY}/p2p-circuit/p2p/{PEER}"], connected_relays=[RELAY])
    assert kinds_and_addrs(attempts) == [(AttemptKind.RELAY, "")]


def test_unusable_foreign_and_duplicate_addresses_are_dropped():
    addrs = [
        "/ip4/0.0.0.0/tcp/4001",
        "/ip6/fe80::1/tcp/4001",
        "/ip4/203.0.113.9/tcp/4001/p2p/16Uiu2HAmSomeoneElse",
        "/ip4/203.0.113.9/udp/4001/quic",
        "/dns4/example.com/tcp/4001",
        "/ip4/203.0.113.8/tcp/4001",
        f"/ip4/203.0.113.8/tcp/4001/p2p/{PEER}",
        circuit("/ip4/203.0.113.10/tcp/1", peer="16Uiu2HAmSomeoneElse"),
        circuit("/ip4/203.0.113.10/tcp/1", relay=PEER),  # a peer is not its own relay
        circuit("/ip4/203.0.113.11/tcp/1"),
        circuit("/ip4/203.0.113.11/tcp/1"),
        "garbage",
    ]
    assert kinds_and_addrs(plan(PEER, addrs)) == [
        (AttemptKind.DIRECT, "/ip4/203.0.113.8/tcp/4001"),
        (AttemptKind.RELAY, "/ip4/203.0.113.11/tcp/1"),
    ]


def test_order_does_not_depend_on_input_order_beyond_ties():
    rng = random.Random(0)
    addrs = [
        "/ip4/203.0.113.1/tcp/1",
        "/ip6/2a00::1/tcp/1",
        circuit("/ip4/203.0.113.10/tcp/2"),
        "/ip4/10.0.0.1/tcp/1",
    ]
    expected = ["/ip6/2a00::1/tcp/1", "/ip4/203.0.113.1/tcp/1", "/ip4/10.0.0.1/tcp/1"]
    for _ in range(20):
        rng.shuffle(addrs)
        attempts = plan(PEER, addrs, local_ips=["10.0.0.2"])
        assert [a.addr for a in attempts[:3]] == expected
        assert attempts[3].kind is AttemptKind.RELAY


def test_upgrade_at_once_then_with_doubling_backoff_then_never():
    policy = UpgradePolicy(max_attempts=3, backoff=30)
    state = UpgradeState()
    assert policy.next_attempt(state, path=PathKind.RELAYED) == 0.0
    assert policy.should_attempt(state, 100.0, path=PathKind.RELAYED)
    state = policy.record(state, 100.0, succeeded=False)
    assert policy.next_attempt(state, path=PathKind.RELAYED) == 130.0
    assert not policy.should_attempt(state, 129.9, path=PathKind.RELAYED)
    assert policy.should_attempt(state, 130.0, path=PathKind.RELAYED)
    state = policy.record(state, 130.0, succeeded=False)
    assert policy.next_attempt(state, path=PathKind.RELAYED) == 190.0
    state = policy.record(state, 190.0, succeeded=False)
    assert policy.next_attempt(state, path=PathKind.RELAYED) is None


def test_no_upgrade_of_direct_paths_or_after_success():
    policy = UpgradePolicy()
    assert policy.next_attempt(UpgradeState(), path=PathKind.DIRECT) is None
    assert policy.next_attempt(UpgradeState(), path=PathKind.HOLE_PUNCHED) is None
    done = policy.record(UpgradeState(), 5.0, succeeded=True)
    assert policy.next_attempt(done, path=PathKind.RELAYED) is None


@pytest.mark.parametrize(
    ("local", "remote", "attempt"),
    [
        (None, None, True),
        ("endpoint-independent", "endpoint-independent", True),
        ("symmetric", None, False),
        (None, "symmetric", False),
        ("endpoint-independent", "symmetric", False),
    ],
)
def test_no_hole_punch_towards_a_symmetric_nat(local, remote, attempt):
    policy = UpgradePolicy()
    at = policy.next_attempt(
        UpgradeState(), path=PathKind.RELAYED, local_nat=local, remote_nat=remote
    )
    assert (at is not None) is attempt


def test_zero_attempts_disables_upgrades():
    assert UpgradePolicy(max_attempts=0).next_attempt(UpgradeState(), path=PathKind.RELAYED) is None
