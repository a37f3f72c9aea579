"""The birthday punch in the product (root only): a miner behind one NAT, a user behind another,
``sonmcli forward`` reports a direct (hole-punched) path and a TCP session works through it.

Real ``sonmhub`` (public, two addresses: its STUN tells NAT types apart, as on its defaults),
``sonmminer`` (in-memory runtime; a greeter in its namespace stands for the task's port) and
``sonmcli``, behind Linux NAT routers that drop unsolicited SYNs (most home routers), or one
that answers them with a RST on each side (both rejecting: the relay is kept, quickly).
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from sonm_p2p.devnet.topology import Greeter, Host, Inbound, NatKind, NsHub, NsMiner, Topology
from tests.netns.test_forward_nat import forward, greeting

pytestmark = pytest.mark.root

EIM, SYM = NatKind.ENDPOINT_INDEPENDENT, NatKind.SYMMETRIC


@dataclass
class Site:
    """A miner with a started task, and the users that forward to it."""

    miner: NsMiner
    job: str
    service: Greeter


@dataclass
class World:
    topo: Topology
    hub: NsHub
    owner: Path
    sites: dict[str, Site]
    users: dict[str, Host]
    job: str = ""  # what forward() uses: set per test

    def at(self, site: str) -> World:
        return World(self.topo, self.hub, self.owner, self.sites, self.users, self.sites[site].job)


@pytest.fixture(scope="module")
def world(_netns_problem, tmp_path_factory) -> Iterator[World]:
    if _netns_problem is not None:
        pytest.skip(f"needs root and network namespaces ({_netns_problem})")
    topo = Topology(tmp_path_factory.mktemp("birthday-product"))
    services: list[Greeter] = []
    try:
        hub = topo.public_host("hub", addresses=2).start_hub()
        owner = topo.workdir / "owner"
        sites: dict[str, Site] = {}
        miners = {
            "eim": topo.nat("me", EIM, inbound=Inbound.DROP).hosts[0],
            "sym": topo.nat("ms", SYM, inbound=Inbound.DROP).hosts[0],
            "sym_rst": topo.nat("msr", SYM, inbound=Inbound.REJECT).hosts[0],
        }
        users = {
            "eim": topo.nat("ue", EIM, inbound=Inbound.DROP).hosts[0],
            "sym": topo.nat("us", SYM, inbound=Inbound.DROP).hosts[0],
            "eim_rst": topo.nat("uer", EIM, inbound=Inbound.REJECT).hosts[0],
        }
        started = {
            name: host.start_miner(hub.p2p_target, f"miner-{name}") for name, host in miners.items()
        }
        any_user = users["eim"]

        def listed() -> dict | None:
            res = any_user.sonmcli("--hub", hub.grpc_target, "--json", "list", home=owner)
            if res.returncode != 0:
                return None
            seen = {m["node_id"]: m for m in json.loads(res.stdout)["miners"]}
            want = [seen.get(m.node_id) for m in started.values()]
            # listed, and its NAT classified by the hub's STUN (what the client is told)
            ok = all(m and m["online"] and m["nat_type"] not in ("", "unknown") for m in want)
            return seen if ok else None

        topo.wait(listed, "the miners listed with their NAT types", timeout=90)
        for name, miner in started.items():
            res = any_user.sonmcli(
                "--hub", hub.grpc_target, "--json", "start", "--image", "sonm-test/web",
                f"--miner={miner.node_id}", home=owner,
            )  # fmt: skip
            assert res.returncode == 0, res.stderr
            task = json.loads(res.stdout.strip().splitlines()[-1])
            tcp = next(e for e in task["endpoints"] if e["port"] == "8080/tcp")
            service = Greeter(miners[name], (tcp["host"], tcp["host_port"]))
            services.append(service)
            sites[name] = Site(miner, task["id"], service)
        yield World(topo, hub, owner, sites, users)
    except BaseException:
        print(topo.logs())
        raise
    finally:
        for service in services:
            service.close()
        topo.close()


@pytest.fixture
def net(world: World, request) -> Iterator[World]:
    yield world
    rep = getattr(request.node, "rep_call", None)
    if rep is not None and rep.failed:
        print(world.topo.logs())


@pytest.mark.parametrize(
    ("user", "site", "nat", "miner_nat"),
    [
        ("sym", "eim", "symmetric", "endpoint-independent"),  # SYM user, EIM miner
        ("eim", "sym", "endpoint-independent", "symmetric"),  # EIM user, SYM miner
        ("eim_rst", "sym", "endpoint-independent", "symmetric"),  # the user's NAT rejects
    ],
)
def test_forward_goes_direct_between_an_easy_and_a_hard_nat(net, user, site, nat, miner_nat):
    w = net.at(site)
    began = time.perf_counter()
    proc, info = forward(w, w.users[user], f"bday-{user}-{site}")
    took = time.perf_counter() - began
    try:
        print(f"\n{user} -> miner {site}: {info['path']} after {took:.2f} s: {info}")
        assert info["nat_type"] == nat and info["miner_nat_type"] == miner_nat, info
        assert info["path"] == "hole-punched", info
        assert info["punch_skipped"] is False, info
        assert greeting(w.users[user], info["local"]) == Greeter.GREETING
    finally:
        proc.stop()


def test_both_nats_rejecting_keep_the_relay(net):
    w = net.at("sym_rst")
    began = time.perf_counter()
    proc, info = forward(w, w.users["eim_rst"], "bday-both-rst")
    took = time.perf_counter() - began
    try:
        print(f"\nboth NATs reject: {info['path']} after {took:.2f} s")
        assert info["path"] == "relayed", info
        assert info["punch_skipped"] is True, info  # coordinated, and no SYN swept
        assert greeting(w.users["eim_rst"], info["local"]) == Greeter.GREETING
    finally:
        proc.stop()
    log = w.topo.logs()
    assert "both NATs answer unsolicited SYNs with a RST" in log


def test_no_birthday_punch_keeps_the_relay(net):
    w = net.at("sym")
    user = w.users["eim"]
    proc = user.spawn_sonmcli(
        "bday-off", "--hub", w.hub.grpc_target, "forward", w.job, "8080/tcp",
        "--json", "--no-birthday-punch", home=w.owner,
    )  # fmt: skip
    try:
        from tests.netns.test_forward_nat import FORWARD_BOUND, _printed_json

        info = w.topo.wait(
            lambda: _printed_json(proc), "bday-off to listen", FORWARD_BOUND, every=0.02,
            watch=[proc],
        )  # fmt: skip
        assert info["path"] == "relayed" and info["punch_skipped"] is True, info
        assert greeting(user, info["local"]) == Greeter.GREETING
    finally:
        proc.stop()
