"""The namespace harness itself, STUN against real NATs, and what already works end to end.

Everything runs in namespaces this file's topologies create (203.0.113.0/24 and 198.51.100.0/24 as
the public internet, 10.K.0.0/24 behind each NAT, fd00:6e74::/64 as an IPv6-only segment).
"""

from __future__ import annotations

import json
import re
import socket
import subprocess
import time

import pytest
import trio

from sonm_p2p.devnet.topology import Host, NatKind, Topology
from sonm_p2p.transport.stun import (
    ClientOptions,
    Filtering,
    NatType,
    ResponderAddresses,
    StunResponder,
    probe_nat,
)
from tests.harness import wait_for

pytestmark = pytest.mark.root

EIM, SYM = NatKind.ENDPOINT_INDEPENDENT, NatKind.SYMMETRIC


def _listener(host: Host, port: int, family: int = socket.AF_INET) -> socket.socket:
    srv = host.socket(family)
    srv.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    srv.bind((host.ip, port))
    srv.listen()
    srv.settimeout(5)
    return srv


def _seen_from(srv: socket.socket, client: Host, source_port: int) -> tuple[str, int]:
    """Connect from ``client``'s ``source_port`` to ``srv``; the peer address ``srv`` sees."""
    host, port = srv.getsockname()[:2]
    with client.connect((host, port), source_port=source_port):
        conn, peer = srv.accept()
        conn.close()
    return peer[0], peer[1]


# --- the harness -----------------------------------------------------------------------------


def test_topology_is_isolated_and_leaves_nothing_behind(tmp_path):
    began = time.monotonic()
    with Topology(tmp_path) as topo:
        pub = topo.public_host("pub", addresses=2, ipv6=True)
        topo.nat("eim", EIM, hosts=2)
        topo.nat("sym", SYM)
        topo.ipv6_host("v6")
        setup = time.monotonic() - began
        print(f"\n{len(topo.namespaces)} namespaces built in {setup * 1000:.0f} ms")
        listed = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True).stdout
        assert all(ns in listed for ns in topo.namespaces)
        assert len(pub.addrs) == 3 and pub.addrs[1].startswith("198.51.100.")
        # Nothing routes off the emulated internet (private hosts' default routes end at their
        # router, which has none): asked of the routing tables, no packet sent.
        lan = {h.ns for r in topo.routers.values() for h in r.hosts}
        for ns in set(topo.namespaces) - lan:
            route = subprocess.run(
                ["ip", "-n", ns, "route", "get", "192.0.2.2"], capture_output=True, text=True
            )
            assert route.returncode != 0 and "unreachable" in route.stderr, ns
        # Processes run inside their namespace, tracked by their own PID.
        sleeper = pub.spawn("sleeper", ["sleep", "600"])
        assert pub.run("ip", "netns", "identify", str(sleeper.pid)).stdout.strip() == pub.ns
        assert sleeper.alive()
    assert not sleeper.alive()
    listed = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True).stdout
    assert topo.tag not in listed
    # A failing test cleans up all the same.
    with pytest.raises(RuntimeError, match="test failed"):
        with Topology(tmp_path) as failing:
            failing.nat("home", SYM).hosts[0].spawn("sleeper", ["sleep", "600"])
            raise RuntimeError("test failed")
    listed = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True).stdout
    assert failing.tag not in listed and not failing.procs[0].alive()
    assert time.monotonic() - began < 10


def test_eim_nat_keeps_the_source_port(topo):
    web = topo.public_host("web")
    nat = topo.nat("home", EIM)
    with _listener(web, 8000) as srv:
        for port in (40001, 40002):
            assert _seen_from(srv, nat.hosts[0], port) == (nat.wan_ip, port)


def test_symmetric_nat_changes_the_port(topo):
    web = topo.public_host("web")
    nat = topo.nat("home", SYM)
    with _listener(web, 8000) as srv:
        seen = [_seen_from(srv, nat.hosts[0], port) for port in (40001, 40002, 40003)]
    assert {ip for ip, _ in seen} == {nat.wan_ip}
    assert [p for _, p in seen] != [40001, 40002, 40003]


def test_private_hosts_are_unreachable_from_the_internet(topo):
    web = topo.public_host("web")
    nat = topo.nat("home", EIM)
    with _listener(nat.hosts[0], 8000):
        assert not web.reachable((nat.hosts[0].ip, 8000), timeout=0.3)


def test_routers_drop_or_reject_unsolicited_syns_as_told(topo):
    """What the birthday punch's first-mover rule depends on: a RST back, or silence."""
    from sonm_p2p.devnet.topology import Inbound

    outside = topo.public_host("probe")
    routers = {
        inbound: topo.nat(f"in{inbound.value[0]}", NatKind.ENDPOINT_INDEPENDENT, inbound=inbound)
        for inbound in Inbound
    }
    for inbound, router in routers.items():
        began = time.monotonic()
        try:
            outside.connect((router.wan_ip, 40000), timeout=1.0).close()
            got = "connected"
        except ConnectionRefusedError:
            got = "reset"
        except TimeoutError:
            got = "silence"
        want = "silence" if inbound is Inbound.DROP else "reset"
        assert got == want, (inbound, got, time.monotonic() - began)
    # a host behind a dropping router still gets its answers (only new inbound SYNs drop)
    srv = _listener(outside, 7007)
    try:
        inside = routers[Inbound.DROP].hosts[0]
        inside.connect((outside.ip, 7007), timeout=5).close()
    finally:
        srv.close()


def test_cut_link_breaks_connectivity_and_restoring_it_heals(topo):
    web = topo.public_host("web")
    nat = topo.nat("home", EIM)
    lan = nat.hosts[0]
    with _listener(web, 8000) as srv, lan.connect((web.ip, 8000)) as old:
        conn, _ = srv.accept()
        with conn:
            nat.wan.down()
            assert not lan.reachable((web.ip, 8000), timeout=0.5)
            old.sendall(b"sent during the cut")
            nat.wan.up()
            wait_for(lambda: lan.reachable((web.ip, 8000), timeout=0.5), "the link back")
            srv.accept()[0].close()  # the probe's connection
            conn.settimeout(10)
            # TCP retransmits: an established connection survives a short cut.
            assert conn.recv(100) == b"sent during the cut"
    web.uplink.down()  # a public host's own uplink works the same way
    assert not lan.reachable((web.ip, 8000), timeout=0.3)


def test_ipv6_only_segment(topo):
    a, b = topo.ipv6_host("v6a"), topo.ipv6_host("v6b")
    v4 = topo.public_host("v4")
    assert ":" in a.ip and a.ip.startswith("fd00:6e74:")
    with _listener(a, 8000, socket.AF_INET6) as srv:
        assert _seen_from(srv, b, 40001) == (b.ip, 40001)
    assert not a.reachable((v4.ip, 8000), timeout=0.3)  # no IPv4 on that segment
    route = a.run("ip", "route", "get", v4.ip)
    assert route.returncode != 0


# --- STUN against real NATs ------------------------------------------------------------------


FAST = ClientOptions(rto=0.1, attempts=3, filtering=True)


def test_stun_classifies_each_kind_of_nat(topo):
    stun_host = topo.public_host("stun", addresses=2)
    open_host = topo.public_host("open")
    eim, sym = topo.nat("eim", EIM), topo.nat("sym", SYM)
    primary = (stun_host.addrs[0], 3478)
    responder = StunResponder(ResponderAddresses(primary, (stun_host.addrs[1], 3479)))
    with stun_host.netns():
        responder.bind()
    responder.start()
    try:
        cases = [
            (open_host, NatType.OPEN, Filtering.ENDPOINT_INDEPENDENT, open_host.ip),
            (eim.hosts[0], NatType.ENDPOINT_INDEPENDENT, Filtering.ADDRESS_AND_PORT_DEPENDENT,
             eim.wan_ip),
            (sym.hosts[0], NatType.SYMMETRIC, Filtering.ADDRESS_AND_PORT_DEPENDENT, sym.wan_ip),
        ]  # fmt: skip
        for host, nat_type, filtering, public_ip in cases:
            with host.netns():
                report = probe_nat(primary, options=FAST)
            assert (report.nat_type, report.filtering) == (nat_type, filtering), report
            assert report.mapped is not None and report.mapped[0] == public_ip
            assert report.local[0] == host.ip
            assert report.other_address == (stun_host.addrs[1], 3479)
        # An EIM NAT keeps the socket's port; a symmetric one does not.
        with eim.hosts[0].netns():
            sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        with sock:
            sock.bind(("0.0.0.0", 0))
            with eim.hosts[0].netns():
                report = probe_nat(primary, sock=sock, options=FAST)
            assert report.mapped == (eim.wan_ip, sock.getsockname()[1])
    finally:
        responder.close()
    assert responder.answered > 0


def test_stun_with_single_address_responders_degrades_cleanly(topo):
    one, two = topo.public_host("stun1"), topo.public_host("stun2")
    eim, sym = topo.nat("eim", EIM), topo.nat("sym", SYM)
    responders = [StunResponder(ResponderAddresses((h.ip, 3478))) for h in (one, two)]
    for host, responder in zip((one, two), responders, strict=True):
        with host.netns():
            responder.bind()
        responder.start()
    try:
        first, second = (one.ip, 3478), (two.ip, 3478)
        with eim.hosts[0].netns():
            alone = probe_nat(first, options=FAST)
            both = probe_nat(first, extra_servers=[second], options=FAST)
        # No OTHER-ADDRESS: one responder can only tell "behind NAT"; CHANGE-REQUEST is refused.
        assert (alone.nat_type, alone.filtering, alone.other_address) == (
            NatType.UNKNOWN,
            None,
            None,
        )
        assert alone.mapped is not None and alone.mapped[0] == eim.wan_ip
        assert both.nat_type is NatType.ENDPOINT_INDEPENDENT
        with sym.hosts[0].netns():
            assert probe_nat(first, extra_servers=[second], options=FAST).nat_type is (
                NatType.SYMMETRIC
            )
        with eim.hosts[0].netns():  # nothing listens there: blocked, after the retransmissions
            assert probe_nat((one.ip, 9), options=FAST).nat_type is NatType.BLOCKED
    finally:
        for responder in responders:
            responder.close()


def test_stun_over_ipv6_as_a_trio_task(topo):
    server, client = topo.ipv6_host("stun6"), topo.ipv6_host("client6")
    responder = StunResponder(ResponderAddresses((server.ip, 0)))
    with server.netns():
        responder.bind()

    def probe(addr):
        with client.netns():  # this worker thread's namespace, not the test's
            return probe_nat(addr, options=FAST)

    async def main():
        async with trio.open_nursery() as nursery:
            addresses = await nursery.start(responder.serve)
            report = await trio.to_thread.run_sync(probe, addresses.primary)
            nursery.cancel_scope.cancel()
        return addresses, report

    addresses, report = trio.run(main)
    assert addresses.primary[0] == server.ip and addresses.primary[1] > 0
    assert report.nat_type is NatType.OPEN and report.mapped == report.local
    assert report.local[0] == client.ip
    assert responder.answered == 1


# --- the product, end to end -----------------------------------------------------------------


def _online(client: Host, hub_target: str) -> set[str]:
    res = client.sonmcli("--hub", hub_target, "--json", "list", timeout=30)
    assert res.returncode == 0, res.stderr
    return {m["node_id"] for m in json.loads(res.stdout)["miners"] if m["online"]}


def test_miners_behind_both_kinds_of_nat_are_listed(topo):
    hub_host, client = topo.public_host("hub"), topo.public_host("client")
    eim, sym = topo.nat("eim", EIM), topo.nat("sym", SYM)
    hub = hub_host.start_hub()
    miners = [
        eim.hosts[0].start_miner(hub.p2p_target, "miner-eim"),
        sym.hosts[0].start_miner(hub.p2p_target, "miner-sym"),
    ]
    ids = {m.node_id for m in miners}
    wait_for(lambda: _online(client, hub.grpc_target) == ids, "both miners listed", timeout=60)
    listed = client.sonmcli("--hub", hub.grpc_target, "list")
    head, body = listed.stdout.split("\n", 1)
    assert head == "Connected Miners" and json.loads(body) == {i: {"values": []} for i in ids}
    for m in miners:
        assert m.proc.alive(), m.proc.output()


_ENDPOINT = re.compile(r"8080/tcp->([0-9.]+):(\d+)")


def _http_get(host: Host, addr: tuple[str, int]) -> bytes:
    with host.connect(addr) as conn:
        conn.sendall(b"GET / HTTP/1.0\r\nHost: task\r\n\r\n")
        chunks = []
        while chunk := conn.recv(65536):
            chunks.append(chunk)
    return b"".join(chunks)


def test_docker_miner_behind_nat_serves_its_task_on_the_lan(topo, web_image):
    hub_host, client = topo.public_host("hub"), topo.public_host("client")
    nat = topo.nat("home", SYM, hosts=2)
    miner_host, neighbour = nat.hosts
    engine = miner_host.docker_engine(images=[web_image])
    print(
        f"\nper-namespace dockerd: start {engine.start_seconds:.2f} s, "
        f"image load {engine.load_seconds:.2f} s"
    )
    hub = hub_host.start_hub()
    miner = miner_host.start_miner(hub.p2p_target, engine=engine)
    wait_for(lambda: miner.node_id in _online(client, hub.grpc_target), "miner listed", 60)

    res = client.sonmcli(
        "--hub", hub.grpc_target, "start", "--image", web_image, f"--miner={miner.node_id}"
    )
    assert res.returncode == 0, res.stderr + miner.proc.output()
    job = res.stdout.split()[1].rstrip(",")
    match = _ENDPOINT.search(res.stdout)
    assert match, res.stdout
    addr = (match.group(1), int(match.group(2)))
    assert addr[0] == miner_host.ip  # published on the miner's LAN address

    page = wait_for(lambda: _http_get(neighbour, addr), "the task's page on the LAN")
    assert b"hello from a sonm task" in page
    assert b"hello from a sonm task" in _http_get(miner_host, addr)
    assert not client.reachable(addr, timeout=0.3)  # the LAN stays private
    assert engine.docker("ps", "-q").stdout.strip()

    stopped = client.sonmcli("--hub", hub.grpc_target, "stop", job)
    assert stopped.returncode == 0, stopped.stderr
    wait_for(lambda: not miner_host.reachable(addr, timeout=0.3), "the task's port to close")
