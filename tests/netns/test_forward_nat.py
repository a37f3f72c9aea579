"""`sonmcli forward` classifies the user's NAT (STUN against the hub) and, behind a symmetric NAT,
skips the hole punch that cannot work (root only: network namespaces behind Linux NAT routers).

No Docker: the miner runs the in-memory runtime, and the task's published port is served by a
small TCP listener in the miner's namespace at the address the miner reports for it, so the
bytes that come back through the forward prove the whole path works.
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

#: A forward must print where it listens within this many seconds of starting.
FORWARD_BOUND = 15.0


@dataclass
class World:
    topo: Topology
    hub: NsHub
    miner: NsMiner
    user_eim: Host  # behind an endpoint-independent NAT
    user_sym: Host  # behind a symmetric NAT
    owner: Path  # the client home whose key owns the task
    job: str


@pytest.fixture(scope="module")
def world(_netns_problem, tmp_path_factory) -> Iterator[World]:
    if _netns_problem is not None:
        pytest.skip(f"needs root and network namespaces ({_netns_problem})")
    topo = Topology(tmp_path_factory.mktemp("forward-nat"))
    service: Greeter | None = None
    try:
        hub_host = topo.public_host("hub", addresses=2)  # RFC 5780 STUN: NAT types can be told
        miner_host = topo.nat("mnat", NatKind.ENDPOINT_INDEPENDENT).hosts[0]
        user_eim = topo.nat("unat", NatKind.ENDPOINT_INDEPENDENT).hosts[0]
        user_sym = topo.nat("snat", NatKind.SYMMETRIC).hosts[0]
        hub = hub_host.start_hub()
        miner = miner_host.start_miner(hub.p2p_target)  # the in-memory runtime
        owner = topo.workdir / "owner"

        def listed() -> bool:
            res = user_eim.sonmcli("--hub", hub.grpc_target, "--json", "list", home=owner)
            miners = json.loads(res.stdout)["miners"] if res.returncode == 0 else []
            return any(m["node_id"] == miner.node_id and m["online"] for m in miners)

        topo.wait(listed, "the miner listed", timeout=60)
        res = user_eim.sonmcli(
            "--hub", hub.grpc_target, "--json", "start", "--image", "sonm-test/web",
            f"--miner={miner.node_id}", home=owner,
        )  # fmt: skip
        assert res.returncode == 0, res.stderr
        started = json.loads(res.stdout.strip().splitlines()[-1])
        tcp = next(e for e in started["endpoints"] if e["port"] == "8080/tcp")
        service = Greeter(miner_host, (tcp["host"], tcp["host_port"]))
        yield World(topo, hub, miner, user_eim, user_sym, owner, started["id"])
    except BaseException:
        print(topo.logs())
        raise
    finally:
        if service is not None:
            service.close()
        topo.close()


def _printed_json(proc: Proc) -> dict | None:
    out = proc.output()
    start = out.find("{\n")  # --json output is indented; log lines never start so
    return json.JSONDecoder().raw_decode(out[start:])[0] if start >= 0 else None


def _printed_text(proc: Proc) -> list[str] | None:
    lines = proc.output().splitlines()
    at = next((i for i, line in enumerate(lines) if line.startswith("forwarding ")), None)
    return lines[at : at + 2] if at is not None and len(lines) > at + 1 else None


def forward(
    w: World, user: Host, name: str, *, as_json: bool = True, job: str = ""
) -> tuple[Proc, object]:
    """Start ``sonmcli forward JOB 8080/tcp`` on ``user``; it and what it printed."""
    flags = ["--json"] if as_json else []
    proc = user.spawn_sonmcli(
        name, "--hub", w.hub.grpc_target, *flags, "forward", job or w.job, "8080/tcp",
        home=w.owner,
    )  # fmt: skip
    printed = _printed_json if as_json else _printed_text
    out = w.topo.wait(
        lambda: printed(proc), f"{name} to listen", FORWARD_BOUND, every=0.02, watch=[proc]
    )
    return proc, out


def greeting(user: Host, local: str) -> bytes:
    host, port = local.rsplit(":", 1)
    with user.connect((host, int(port)), timeout=10) as conn:
        chunks = []
        while chunk := conn.recv(4096):
            chunks.append(chunk)
    return b"".join(chunks)


def test_behind_a_symmetric_nat_the_punch_is_skipped_and_the_relay_used(world):
    proc, info = forward(world, world.user_sym, "fwd-sym")
    try:
        assert info["nat_type"] == "symmetric" and info["nat_error"] is None, info
        assert info["punch_skipped"] is True, info
        assert info["path"] == "relayed", info
        assert "/p2p-circuit" in info["remote"], info
        assert greeting(world.user_sym, info["local"]) == Greeter.GREETING
    finally:
        assert proc.stop() == 0, proc.output()


def test_the_text_output_says_so_too(world):
    proc, lines = forward(world, world.user_sym, "fwd-sym-text", as_json=False)
    try:
        assert "(relayed path)" in lines[0], lines
        assert lines[1].startswith(
            "NAT here: symmetric, at the miner: endpoint-independent; hole punch skipped"
        ), lines
    finally:
        assert proc.stop() == 0, proc.output()


def test_behind_an_endpoint_independent_nat_the_punch_is_tried(world):
    proc, info = forward(world, world.user_eim, "fwd-eim")
    try:
        assert info["nat_type"] == "endpoint-independent" and info["nat_error"] is None, info
        assert info["miner_nat_type"] == "endpoint-independent", info
        assert info["punch_skipped"] is False, info
        # A punch is a race: hole-punched when it wins within the wait, relayed meanwhile if not.
        assert info["path"] in ("hole-punched", "relayed"), info
        assert greeting(world.user_eim, info["local"]) == Greeter.GREETING
    finally:
        assert proc.stop() == 0, proc.output()


def test_a_stun_failure_does_not_stop_the_forward(world):
    user = world.user_eim
    # The hub's STUN answers never arrive, as behind a firewall that blocks UDP.
    drop = ["INPUT", "-p", "udp", "-s", world.hub.host.ip, "-j", "DROP"]
    drop_alt = ["INPUT", "-p", "udp", "-s", world.hub.host.addrs[1], "-j", "DROP"]
    for rule in (drop, drop_alt):
        assert user.run("iptables", "-A", *rule).returncode == 0
    try:
        proc, info = forward(world, user, "fwd-no-stun")
        try:
            assert info["nat_type"] == "unknown", info
            assert "no answer from the hub's STUN responder" in info["nat_error"], info
            assert info["punch_skipped"] is False, info
            assert greeting(user, info["local"]) == Greeter.GREETING
        finally:
            assert proc.stop() == 0, proc.output()
        text, lines = forward(world, user, "fwd-no-stun-text", as_json=False)
        text.stop()
        assert lines[1].startswith("NAT here: unknown (no answer from the hub's STUN"), lines
    finally:
        for rule in (drop, drop_alt):
            user.run("iptables", "-D", *rule)


def test_towards_a_miner_behind_a_symmetric_nat_the_punch_is_skipped(world):
    # The miner classifies its own NAT against the hub's STUN responder when the hub first
    # calls it; the hub lists it, and a forward does not punch towards it.
    host = world.topo.nat("msym", NatKind.SYMMETRIC).hosts[0]
    miner = host.start_miner(world.hub.p2p_target, "miner-sym")
    node_id = miner.node_id
    service = None
    try:

        def listed() -> dict | None:
            res = world.user_eim.sonmcli(
                "--hub", world.hub.grpc_target, "--json", "list", home=world.owner
            )
            miners = json.loads(res.stdout)["miners"] if res.returncode == 0 else []
            return next((m for m in miners if m["node_id"] == node_id and m["online"]), None)

        m = world.topo.wait(listed, "the miner behind a symmetric NAT listed", timeout=60)
        assert m["nat_type"] == "symmetric", m
        res = world.user_eim.sonmcli(
            "--hub", world.hub.grpc_target, "--json", "start", "--image", "sonm-test/web",
            f"--miner={node_id}", home=world.owner,
        )  # fmt: skip
        assert res.returncode == 0, res.stderr
        started = json.loads(res.stdout.strip().splitlines()[-1])
        tcp = next(e for e in started["endpoints"] if e["port"] == "8080/tcp")
        service = Greeter(host, (tcp["host"], tcp["host_port"]))
        proc, info = forward(world, world.user_eim, "fwd-to-sym", job=started["id"])
        try:
            assert info["nat_type"] == "endpoint-independent", info
            assert info["miner_nat_type"] == "symmetric", info
            assert info["punch_skipped"] is True and info["path"] == "relayed", info
            assert greeting(world.user_eim, info["local"]) == Greeter.GREETING
        finally:
            assert proc.stop() == 0, proc.output()
    finally:
        if service is not None:
            service.close()
        miner.proc.stop()
