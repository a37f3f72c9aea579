"""NAT types told with a hub on its defaults: `sonmhub` with no STUN flags, on one address (root
only: network namespaces behind Linux NAT routers).

The hub answers STUN on 3478 and 3479 of its one IP: a port-preserving NAT (MASQUERADE) keeps
the mapping on both, so it is reported endpoint-independent (an address-dependent NAT would look
the same, and `sonmcli nat` says so); MASQUERADE --random-fully maps the two ports apart, so it
is symmetric. `sonmcli nat`, `sonmcli forward` and the miner (as its hub lists it) all tell. A
second hub on another address, known to the first from discovery, removes the doubt.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from sonm_p2p.devnet.topology import Greeter, Host, NatKind, NsHub, NsMiner, Topology
from tests.harness import Proc

pytestmark = pytest.mark.root

EIM, SYM = NatKind.ENDPOINT_INDEPENDENT, NatKind.SYMMETRIC
FORWARD_BOUND = 15.0


@dataclass
class World:
    topo: Topology
    hub: NsHub
    miners: dict[NatKind, NsMiner]
    users: dict[NatKind, Host]
    owner: Path
    job: str  # a task on the miner behind the port-preserving NAT

    def cli(self, user: Host, *args: str) -> dict:
        res = user.sonmcli("--hub", self.hub.grpc_target, "--json", *args, home=self.owner)
        assert res.returncode == 0, f"sonmcli {' '.join(args)}: {res.stderr}"
        return json.loads(res.stdout.strip().splitlines()[-1] if args[0] == "start" else res.stdout)


@pytest.fixture(scope="module")
def world(_netns_problem, tmp_path_factory) -> Iterator[World]:
    if _netns_problem is not None:
        pytest.skip(f"needs root and network namespaces ({_netns_problem})")
    topo = Topology(tmp_path_factory.mktemp("nat-defaults"))
    service: Greeter | None = None
    try:
        hub = topo.public_host("hub").start_hub(default_stun=True)  # one address, no flags
        miner_hosts = {kind: topo.nat(f"m{kind.value}", kind).hosts[0] for kind in (EIM, SYM)}
        miners = {
            kind: host.start_miner(hub.p2p_target, f"miner-{kind.value}")
            for kind, host in miner_hosts.items()
        }
        users = {kind: topo.nat(f"u{kind.value}", kind).hosts[0] for kind in (EIM, SYM)}
        world = World(topo, hub, miners, users, topo.workdir / "owner", "")
        ids = {m.node_id for m in miners.values()}

        def listed() -> bool:
            online = {m["node_id"] for m in world.cli(users[EIM], "list")["miners"] if m["online"]}
            return ids <= online

        topo.wait(listed, "both miners listed", timeout=60)
        started = world.cli(
            users[EIM], "start", "--image", "sonm-test/web", f"--miner={miners[EIM].node_id}"
        )
        tcp = next(e for e in started["endpoints"] if e["port"] == "8080/tcp")
        service = Greeter(miner_hosts[EIM], (tcp["host"], tcp["host_port"]))
        world.job = started["id"]
        yield world
    except BaseException:
        print(topo.logs())
        raise
    finally:
        if service is not None:
            service.close()
        topo.close()


def test_the_hub_names_two_stun_ports_of_its_one_address(world):
    info = world.cli(world.users[EIM], "info")
    ip = world.hub.host.ip
    assert info["stun_endpoint"] == f"{ip}:3478", info
    assert info["stun_endpoints"] == [f"{ip}:3478", f"{ip}:3479"], info


def test_nat_tells_a_port_preserving_nat_and_says_what_it_could_not_tell(world):
    stun = world.cli(world.users[EIM], "nat")["stun"]
    assert stun["nat_type"] == "endpoint-independent", stun
    assert stun["not_told_apart"]["types"] == ["address-dependent"], stun
    assert f"on one IP ({world.hub.host.ip})" in stun["not_told_apart"]["why"], stun
    res = world.users[EIM].sonmcli("--hub", world.hub.grpc_target, "nat", home=world.owner)
    assert res.returncode == 0, res.stderr
    assert "NAT        endpoint-independent" in res.stdout, res.stdout
    assert "not told apart from address-dependent" in res.stdout, res.stdout


def test_nat_tells_a_random_fully_nat_symmetric(world):
    stun = world.cli(world.users[SYM], "nat")["stun"]
    assert stun["nat_type"] == "symmetric", stun
    assert stun["not_told_apart"] is None, stun  # two ports of one IP saw two mappings: certain
    ports = {o["server"]: o["mapped"] for o in stun["observations"]}
    assert len(ports) == 2 and len(set(ports.values())) == 2, stun


def test_the_hub_lists_each_miners_nat_type(world):
    listed = {m["node_id"]: m for m in world.cli(world.users[EIM], "list")["miners"]}
    assert listed[world.miners[EIM].node_id]["nat_type"] == "endpoint-independent"
    assert listed[world.miners[SYM].node_id]["nat_type"] == "symmetric"


def _forward(world: World, user: Host, name: str) -> tuple[Proc, dict]:
    proc = user.spawn_sonmcli(
        name, "--hub", world.hub.grpc_target, "--json", "forward", world.job, "8080/tcp",
        home=world.owner,
    )  # fmt: skip

    def printed() -> dict | None:
        out = proc.output()
        start = out.find("{\n")
        return json.JSONDecoder().raw_decode(out[start:])[0] if start >= 0 else None

    return proc, world.topo.wait(printed, f"{name} to listen", FORWARD_BOUND, watch=[proc])


@pytest.mark.parametrize("kind, nat_type", [(EIM, "endpoint-independent"), (SYM, "symmetric")])
def test_forward_tells_too_and_skips_the_punch_only_behind_a_symmetric_nat(world, kind, nat_type):
    user = world.users[kind]
    proc, info = _forward(world, user, f"fwd-{kind.value}")
    try:
        assert (info["nat_type"], info["nat_error"]) == (nat_type, None), info
        assert info["miner_nat_type"] == "endpoint-independent", info
        assert info["punch_skipped"] is (kind is SYM), info
        host, port = info["local"].rsplit(":", 1)
        with user.connect((host, int(port)), timeout=10) as conn:
            assert conn.recv(4096) == Greeter.GREETING
    finally:
        assert proc.stop() == 0, proc.output()


def test_a_second_hub_from_discovery_tells_the_rest(topo):
    first = topo.public_host("hub1").start_hub(default_stun=True)
    second = topo.public_host("hub2").start_hub(
        "hub2", default_stun=True, extra=["--bootstrap", first.p2p_target]
    )
    user = topo.nat("unat", EIM).hosts[0]

    def info() -> dict | None:
        res = user.sonmcli("--hub", first.grpc_target, "--json", "info")
        got = json.loads(res.stdout) if res.returncode == 0 else {}
        return got if len(got.get("stun_endpoints", [])) == 3 else None

    named = topo.wait(info, "the first hub to name the second's STUN endpoint", timeout=60)
    assert named["stun_endpoints"][2] == f"{second.host.ip}:3478", named
    stun = json.loads(user.sonmcli("--hub", first.grpc_target, "--json", "nat").stdout)["stun"]
    # Two IPs saw one mapping: endpoint-independent for certain.
    assert (stun["nat_type"], stun["not_told_apart"]) == ("endpoint-independent", None), stun
