"""Zero-config discovery with real processes: hubs chained by bootstrap, miners and sonmcli
finding them with no address, failover when a miner's hub dies."""

from __future__ import annotations

import uuid

import pytest

from tests.harness import sonmcli, wait_for


@pytest.fixture
def mdns_ns(net):
    ns = "t" + uuid.uuid4().hex[:8]  # this test's own mDNS namespace: others cannot see it
    net.env["SONM_MDNS_NAMESPACE"] = ns
    return ns


def _overlay(hub) -> str:
    return hub.cli_json("info")["multiaddrs"][0]


def _hub_ids(hub) -> set[str]:
    return {h["node_id"] for h in hub.cli_json("hubs")["hubs"]}


def test_hubs_chained_by_bootstrap_all_learn_each_other_and_miners_find_them(net, mdns_ns):
    h1 = net.hub("h1", extra=["--no-mdns"])
    h2 = net.hub("h2", extra=["--no-mdns", "--bootstrap", _overlay(h1)])
    h3 = net.hub("h3", extra=["--no-mdns", "--bootstrap", h2.p2p_target])  # host:port form
    hubs = {h.cli_json("info")["node_id"] for h in (h1, h2, h3)}
    for h in (h1, h2, h3):
        wait_for(lambda h=h: _hub_ids(h) == hubs, f"{h.name} to know every hub", timeout=20)

    # miners with no hub address, bootstrapped at the far end of the chain only
    miners = [
        net.miner("", f"m{i}", runtime="memory", extra=["--no-mdns", "--bootstrap", h3.p2p_target])
        for i in range(3)
    ]
    ids = {m.node_id for m in miners}

    def listed() -> set[str]:
        return set().union(*(h.online() for h in (h1, h2, h3)))

    wait_for(lambda: listed() == ids, "every miner listed on some hub", timeout=30)

    # a client with no --hub finds one through the same bootstrap peer
    res = sonmcli("--bootstrap", h1.p2p_target, "--json", "list", home=net.root / "client")
    assert res.returncode == 0, res.stderr
    assert "using hub 0x" in res.stderr


def test_zero_flag_miner_and_client_find_the_hub_by_mdns(net, mdns_ns):
    hub = net.hub("hub")
    miner = net.miner("", "m1", runtime="memory")  # no -h, no bootstrap: mDNS only
    wait_for(lambda: miner.node_id in hub.online(), "zero-flag miner listed", timeout=20)
    res = sonmcli("list", home=net.root / "client", env={"SONM_MDNS_NAMESPACE": mdns_ns})
    assert res.returncode == 0, res.stderr
    assert miner.node_id in res.stdout and "using hub" in res.stderr
    hubs = sonmcli("--json", "hubs", home=net.root / "client", env={"SONM_MDNS_NAMESPACE": mdns_ns})
    assert hubs.returncode == 0, hubs.stderr


def test_miner_moves_to_another_hub_when_its_hub_dies(net, mdns_ns):
    h1 = net.hub("h1", extra=["--no-mdns"])
    h2 = net.hub("h2", extra=["--no-mdns", "--bootstrap", h1.p2p_target])
    ids = {h.cli_json("info")["node_id"] for h in (h1, h2)}
    wait_for(lambda: _hub_ids(h1) == ids and _hub_ids(h2) == ids, "hubs know each other")
    m = net.miner(
        "",
        "m",
        runtime="memory",
        extra=["--no-mdns", "--bootstrap", h1.p2p_target, "--bootstrap", h2.p2p_target],
    )
    first = wait_for(
        lambda: next((h for h in (h1, h2) if m.node_id in h.online()), None),
        "miner on a hub",
        timeout=20,
    )
    other = h2 if first is h1 else h1
    first.proc.kill9()
    wait_for(lambda: m.node_id in other.online(), "miner moved to the other hub", timeout=30)


def test_hub_id_pins_one_hub(net, mdns_ns):
    h1 = net.hub("h1", extra=["--no-mdns"])
    h2 = net.hub("h2", extra=["--no-mdns", "--bootstrap", h1.p2p_target])
    pinned = h2.cli_json("info")["node_id"]
    m = net.miner(
        "",
        "m",
        runtime="memory",
        extra=["--no-mdns", "--bootstrap", h1.p2p_target, "--hub-id", pinned],
    )
    wait_for(lambda: m.node_id in h2.online(), "miner on the pinned hub", timeout=20)
    assert m.node_id not in h1.online()
