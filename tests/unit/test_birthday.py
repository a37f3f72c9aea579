"""The birthday punch's pure policy: budget, who moves first, port sampling, rate limit."""

from __future__ import annotations

import math
import random

import pytest

from sonm_p2p.transport.birthday import (
    PORTS,
    SKEWED,
    BirthdayOptions,
    RateLimit,
    Side,
    eligible,
    first_mover,
    plan,
    probes_for,
    sample_ports,
    success_probability,
    sweepable,
    syn_packets,
    worth_asking,
)

EIM, SYM = "endpoint-independent", "symmetric"


def test_port_space_is_1024_to_65535():
    assert PORTS == 64_512


def test_budget_follows_the_birthday_formula():
    # P = ceil(-N ln(1-p) / K)
    assert probes_for(0.98, 256) == math.ceil(-64_512 * math.log(0.02) / 256) == 986
    assert probes_for(0.99, 256) == 1161
    # half the mappings, twice the probes
    assert probes_for(0.98, 128) == pytest.approx(2 * probes_for(0.98, 256), abs=1)
    # never more probes than ports
    assert probes_for(0.999999, 1) == PORTS
    with pytest.raises(ValueError):
        probes_for(1.0, 256)
    with pytest.raises(ValueError):
        probes_for(0.9, 0)


def test_the_budget_reaches_its_target_under_the_uniform_model():
    for target, k in [(0.5, 64), (0.9, 256), (0.98, 256), (0.99, 512)]:
        p = probes_for(target, k)
        ports = list(range(2048, 2048 + p))  # outside the skewed range: uniform
        assert success_probability(k, ports, skew=1.0) >= target
        assert success_probability(k, ports[:-1] if p > 1 else [], skew=1.0) < target + 0.01


def test_options_default_near_the_measured_budget():
    o = BirthdayOptions()
    assert o.mappings == 256 and 900 <= o.probes <= 1100 and o.rate == 1000 and o.deadline == 2
    assert BirthdayOptions(target=0.9999, max_probes=1500).probes == 1500
    with pytest.raises(ValueError):
        BirthdayOptions(target=0)


def test_sampled_ports_are_distinct_in_range_and_the_skewed_range_first():
    rng = random.Random(0)
    ports = sample_ports(rng, 3000)
    assert len(ports) == len(set(ports)) == 3000
    assert all(1024 <= p <= 65535 for p in ports)
    width = SKEWED[1] - SKEWED[0] + 1
    assert sorted(ports[:width]) == list(range(SKEWED[0], SKEWED[1] + 1))
    assert all(not SKEWED[0] <= p <= SKEWED[1] for p in ports[width:])
    # shuffled, not an ascending sweep (an IDS sees a scan in order more easily)
    assert ports[:width] != sorted(ports[:width])
    # seeded: the same ports again
    assert sample_ports(random.Random(0), 3000) == ports
    assert sample_ports(random.Random(1), 3000) != ports
    assert len(sample_ports(rng, 10)) == 10 and sample_ports(rng, 0) == []
    assert len(sample_ports(rng, PORTS + 5)) == PORTS


def test_probing_the_skewed_range_first_beats_a_uniform_sweep():
    rng = random.Random(7)
    k, p = 256, 1024
    skewed_first = sample_ports(rng, p)
    uniform = rng.sample(range(1024, 65536), p)
    assert success_probability(k, skewed_first) > success_probability(k, uniform)
    assert success_probability(k, skewed_first) > 0.999
    assert 0.97 < success_probability(k, uniform) < 0.99


def test_simulated_punches_succeed_as_the_model_says():
    """Monte Carlo against a NAT that draws K ports with the measured skew."""
    rng = random.Random(0)
    low = list(range(SKEWED[0], SKEWED[1] + 1))
    population = list(range(1024, 65536))
    weights = [2.0 if SKEWED[0] <= q <= SKEWED[1] else 1.0 for q in population]
    k, p, tries = 64, 580, 400
    hits = 0
    probed = set(sample_ports(rng, p))
    for _ in range(tries):
        mapped = set(rng.choices(population, weights, k=k))
        hits += bool(mapped & probed)
    expected = success_probability(k, probed)
    assert abs(hits / tries - expected) < 0.08, (hits, expected)
    assert set(low) <= set(population)


def test_only_an_easy_and_a_hard_side_are_eligible():
    assert eligible(EIM, SYM) and eligible(SYM, EIM)
    assert not eligible(SYM, SYM)  # both symmetric: never
    assert not eligible(EIM, EIM)  # DCUtR's case
    assert not eligible(EIM, None) and not eligible(None, SYM)
    assert not eligible("address-dependent", SYM) and not eligible("unknown", SYM)
    # the side that drives asks when it knows one side is symmetric and the other may not be
    assert worth_asking(EIM, SYM) and worth_asking(SYM, None) and worth_asking(None, SYM)
    assert worth_asking(EIM, None)  # after DCUtR failed: the peer may be symmetric
    assert not worth_asking(SYM, SYM) and not worth_asking(EIM, EIM)
    assert not worth_asking(None, None) and not worth_asking("unknown", EIM)
    assert not worth_asking(None, EIM) and not worth_asking("unknown", None)


@pytest.mark.parametrize(
    ("hard_rejects", "easy_rejects", "first"),
    [
        (False, False, Side.HARD),  # neither: the hard side opens its K mappings first
        (None, None, Side.HARD),
        (True, False, Side.HARD),  # the rejecting side sends first
        (True, None, Side.HARD),
        (False, True, Side.EASY),
        (None, True, Side.EASY),
        (True, True, None),  # both reject: not over TCP
    ],
)
def test_the_side_behind_a_rejecting_nat_moves_first(hard_rejects, easy_rejects, first):
    assert first_mover(hard_rejects=hard_rejects, easy_rejects=easy_rejects) is first


def test_plan():
    o = BirthdayOptions()
    p = plan(o, local_nat=EIM, remote_nat=SYM, hard_rejects=False, easy_rejects=True)
    assert p.go and p.first is Side.EASY
    assert (p.mappings, p.probes, p.rate, p.deadline) == (256, o.probes, 1000, 2)
    both = plan(o, local_nat=SYM, remote_nat=EIM, hard_rejects=True, easy_rejects=True)
    assert not both.go and "RST" in both.reason
    sym = plan(o, local_nat=SYM, remote_nat=SYM, hard_rejects=False, easy_rejects=False)
    assert not sym.go and "symmetric" in sym.reason


def test_rate_limit_per_peer():
    limit = RateLimit(60, max_peers=2)
    assert limit.allow("a", 0)
    assert not limit.allow("a", 59.9)
    assert limit.allow("b", 1)  # per peer
    assert limit.allow("a", 60)
    assert not limit.allow("a", 100)
    assert limit.allow("c", 101)  # a third peer: the oldest ("b") is forgotten
    assert len(limit) == 2
    assert limit.allow("b", 102)


def test_syn_packets_count_linux_retransmissions():
    assert syn_packets([]) == 0
    assert syn_packets([0.5]) == 1
    assert syn_packets([2.0]) == 2  # retransmitted at 1 s
    assert syn_packets([3.5, 0.1]) == 3 + 1  # at 1 s and 3 s
    assert syn_packets([120]) == 1 + 6  # 1, 3, 7, 15, 31, 63


def test_only_public_ipv4_addresses_are_swept():
    # the peer only says where it is: never scan our own networks for it
    assert sweepable("203.0.113.7") and sweepable("8.8.8.8")
    for ip in ["10.0.0.1", "192.168.1.1", "172.16.0.9", "100.64.0.1", "127.0.0.1", "0.0.0.0"]:
        assert not sweepable(ip), ip
    assert not sweepable("169.254.1.1") and not sweepable("224.0.0.1")
    assert not sweepable("2001:db8::1") and not sweepable("nonsense") and not sweepable("")
