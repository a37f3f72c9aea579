"""HubDirectory: the TTL table and the choice policy, with explicit time."""

from __future__ import annotations

import random

from sonm_p2p.discovery.announcement import HubAnnouncement
from sonm_p2p.discovery.directory import HubDirectory

NOW = 1_700_000_000.0


def node(i: int) -> str:
    return f"0x{i:040x}"


def ann(
    i: int, at: float = NOW, ttl: float = 10.0, miners: int = 0, max_miners: int = 0
) -> HubAnnouncement:
    # The directory trusts what it is given (the validator checked it): no signature needed.
    return HubAnnouncement(
        node_id=node(i),
        peer_id=f"peer{i}",
        issued_at_ms=round(at * 1000),
        ttl_ms=round(ttl * 1000),
        miners_online=miners,
        max_miners=max_miners,
    )


def test_update_new_newer_older():
    d = HubDirectory()
    assert d.update(ann(1, NOW), NOW)
    assert not d.update(ann(1, NOW), NOW)  # same issue time: not news
    assert not d.update(ann(1, NOW - 1), NOW)  # older
    assert d.update(ann(1, NOW + 1, miners=5), NOW + 1)
    [entry] = d.live(NOW + 1)
    assert entry.miners_online == 5
    assert entry.first_seen == NOW and entry.last_seen == NOW + 1
    assert len(d) == 1 and node(1) in d and node(1).upper().replace("0X", "0x") in d


def test_expired_on_arrival_is_ignored():
    d = HubDirectory()
    assert not d.update(ann(1, NOW - 20, ttl=10), NOW)
    assert len(d) == 0


def test_ttl_live_and_expire():
    d = HubDirectory()
    d.update(ann(1, NOW, ttl=5), NOW)
    d.update(ann(2, NOW, ttl=10), NOW)
    assert [e.node_id for e in d.live(NOW + 5)] == [node(1), node(2)]
    assert [e.node_id for e in d.live(NOW + 5.001)] == [node(2)]
    assert d.get(node(1), NOW + 6) is None
    assert d.get(node(2), NOW + 6) is not None
    assert d.expire(NOW + 5) == []
    assert d.expire(NOW + 6) == [node(1)]
    assert len(d) == 1
    # A fresh announcement extends a hub's life.
    d.update(ann(2, NOW + 8, ttl=10), NOW + 8)
    assert d.expire(NOW + 12) == []
    assert d.expire(NOW + 18.5) == [node(2)]
    assert d.live(NOW + 20) == []


def test_latency_is_smoothed_and_survives_updates():
    d = HubDirectory()
    assert not d.record_latency(node(1), 0.1)  # unknown hub: nothing recorded
    d.update(ann(1), NOW)
    assert d.record_latency(node(1).upper().replace("0X", "0x"), 0.100)
    assert d.get(node(1), NOW).latency == 0.100
    d.record_latency(node(1), 0.200)
    assert abs(d.get(node(1), NOW).latency - 0.150) < 1e-9
    d.update(ann(1, NOW + 1), NOW + 1)
    assert abs(d.get(node(1), NOW + 1).latency - 0.150) < 1e-9


def test_choose_lowest_latency_then_unmeasured_then_fewest_miners():
    d = HubDirectory()
    for i, miners in [(1, 9), (2, 1), (3, 5), (4, 0)]:
        d.update(ann(i, miners=miners), NOW)
    # Nothing measured: fewest miners.
    assert d.choose(NOW).node_id == node(4)
    # Measured hubs come before unmeasured ones, lowest latency first.
    d.record_latency(node(1), 0.050)
    d.record_latency(node(3), 0.020)
    assert d.choose(NOW).node_id == node(3)
    assert d.choose(NOW, exclude={node(3)}).node_id == node(1)
    assert d.choose(NOW, exclude=[node(3), node(1)]).node_id == node(4)
    # Equal latency: fewest miners.
    d.record_latency(node(2), 0.020)
    assert d.get(node(2), NOW).latency == d.get(node(3), NOW).latency
    assert d.choose(NOW).node_id == node(2)


def test_choose_allow_list():
    d = HubDirectory()
    for i in (1, 2, 3):
        d.update(ann(i, miners=i), NOW)
    d.record_latency(node(1), 0.001)
    assert d.choose(NOW, allow={node(2), node(3)}).node_id == node(2)
    assert d.choose(NOW, allow={node(3).upper().replace("0X", "0x")}).node_id == node(3)
    assert d.choose(NOW, allow={node(9)}) is None
    assert d.choose(NOW, allow=set()) is None  # an empty allow-list allows nobody
    assert d.choose(NOW, allow={node(2)}, exclude={node(2)}) is None


def test_choose_skips_expired_and_puts_full_hubs_last():
    d = HubDirectory()
    d.update(ann(1, ttl=1), NOW)
    d.update(ann(2, miners=10, max_miners=10), NOW)
    d.update(ann(3, miners=50), NOW)
    d.record_latency(node(2), 0.001)
    assert d.choose(NOW).node_id == node(1)
    assert d.choose(NOW + 2).node_id == node(3)  # 1 expired; 2 is full
    assert d.choose(NOW + 2, exclude={node(3)}).node_id == node(2)  # full beats nothing
    assert d.choose(NOW + 20) is None
    assert HubDirectory().choose(NOW) is None


def test_choose_matches_a_brute_force_ranking():
    rng = random.Random(0)
    for _ in range(50):
        d = HubDirectory()
        facts = {}
        for i in range(rng.randrange(1, 12)):
            full = rng.random() < 0.2
            miners = rng.randrange(1 if full else 0, 5)
            d.update(ann(i, miners=miners, max_miners=miners if full else 0), NOW)
            latency = None
            if rng.random() < 0.6:
                latency = rng.choice([0.01, 0.02, 0.05])
                d.record_latency(node(i), latency)
            facts[node(i)] = (full, latency is None, latency or 0.0, miners, node(i))
        allow = None
        if rng.random() < 0.3:
            allow = set(rng.sample(sorted(facts), k=rng.randrange(len(facts) + 1)))
        exclude = set(rng.sample(sorted(facts), k=rng.randrange(len(facts) // 2 + 1)))
        candidates = [n for n in facts if (allow is None or n in allow) and n not in exclude]
        chosen = d.choose(NOW, allow=allow, exclude=exclude)
        if not candidates:
            assert chosen is None
        else:
            assert chosen.node_id == min(candidates, key=facts.__getitem__)


def test_copy_is_independent_and_repr_is_diagnostic():
    d = HubDirectory()
    d.update(ann(1, miners=2), NOW)
    d.record_latency(node(1), 0.012)
    c = d.copy()
    d.update(ann(2), NOW)
    assert len(c) == 1 and len(d) == 2
    assert repr(HubDirectory()) == "<HubDirectory 0 hubs>"
    text = repr(c)
    assert "1 hubs" in text and "m=2" in text and "12ms" in text
    assert "latency=12.0ms" in repr(c.get(node(1), NOW))
