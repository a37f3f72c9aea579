"""A flood of forged hub announcements against a running hub (a real ``sonmhub`` process): the
attackers are real libp2p hosts on 127.0.0.1 in its GossipSub mesh on ``/sonm/hubs/1``.

What a user of the hub would check: it stays up, ``ping`` and ``list`` keep answering fast, real
announcements of another hub still get through both ways, nothing forged shows in its list of
hubs, and its log counts the forgeries it dropped, by reason.
"""

from __future__ import annotations

import time

from sonm_p2p.client import HubClient
from sonm_p2p.identity import load_or_create
from tests.announce_flood import (
    FORGED_ENDPOINT,
    KINDS,
    flood_measured,
    percentile,
    settled_drops,
    start_attackers,
)
from tests.harness import wait_for

ATTACKERS = 4
PER_ATTACKER = 1000
#: The issue's bound for short calls while the hub is under load (idle: about 1 ms).
LATENCY_BOUND = 0.100


def _hubs(hub) -> dict:
    with HubClient(hub.grpc_target, timeout=10) as c:
        return {h.node_id: h for h in c.list_hubs()}


def test_a_flood_of_forged_announcements_leaves_the_hub_serving(net):
    hub = net.hub(extra=["--no-mdns"])
    other = net.hub("hub2", extra=["--no-mdns", "--bootstrap", hub.p2p_target])
    miner = net.miner(hub, "m1", runtime="memory")
    hub_id, other_id = (load_or_create(h.home).node_id for h in (hub, other))
    wait_for(lambda: miner.node_id in hub.online(), "the miner listed", 60)
    wait_for(lambda: other_id in _hubs(hub) and hub_id in _hubs(other), "the hubs to meet", 30)

    attackers = start_attackers(ATTACKERS, hub.p2p_target, hub_id)
    try:
        victim = {e.node_id: e for e in attackers[0].gossip.hubs()}[hub_id].announcement
        began = time.time()
        # A user's commands while the flood runs: each a whole sonmcli process.
        run = flood_measured(
            hub.grpc_target,
            attackers,
            victim,
            PER_ATTACKER,
            during=lambda: [hub.cli(cmd, timeout=30) for cmd in ("ping", "list", "ping")],
        )
    finally:
        for a in attackers:
            a.close()
    print("\n" + run.summary())
    sent = sum(run.sent.values())
    assert sent == ATTACKERS * PER_ATTACKER

    assert hub.proc.alive(), hub.proc.output()[-3000:]
    for res in run.during:
        assert res.returncode == 0, (res.args, res.stderr)
    assert miner.node_id in run.during[1].stdout
    p95 = {k: percentile(v, 95) for k, v in run.latency.items()}
    assert all(len(v) >= 20 for v in run.latency.values()), run.latency
    assert p95["Ping"] < LATENCY_BOUND and p95["ListMiners"] < LATENCY_BOUND, p95

    # Real announcements still cross, both ways, and nothing forged was believed.
    wait_for(
        lambda: (
            _hubs(hub)[other_id].last_seen > time.time() - 5
            and _hubs(other)[hub_id].last_seen > time.time() - 5
        ),
        "fresh announcements between the hubs",
        timeout=10,
    )
    assert _hubs(hub)[other_id].last_seen > began
    for h in (hub, other):
        listed = _hubs(h)
        assert set(listed) == {hub_id, other_id}, listed
        assert all(e.grpc_endpoint != FORGED_ENDPOINT for e in listed.values()), listed

    # The hub's log counts what its validator dropped, by reason, in a line every 10 s at most.
    # Under load, py-libp2p's own pubsub drops part of a flood before the validator sees it
    # (uncounted, and cheaper still): on an idle machine all 4000 were counted, under load ~77%.
    drops = settled_drops(hub.proc.output, sent)
    print(f"hub's drops: {dict(drops)}")
    forged = drops.total() - drops["replayed"]  # replays are the hubs' own, echoed back
    assert sent / 2 <= forged <= sent, drops
    assert drops["throttled"] >= 0.9 * forged
    for kind in KINDS:  # each kind got past the rate limit at least once, and was dropped
        assert drops[kind] >= 1, (kind, drops)
