"""The product's NAT traversal end to end: sonmhub, sonmminer and sonmcli as users run them, in
network namespaces behind Linux NAT routers (root only).

One emulated internet serves the whole module (building it and a Docker engine per miner costs a
few seconds): a public hub with two addresses (RFC 5780 STUN), a public client that owns the task,
a Docker miner behind an endpoint-independent NAT, users behind another endpoint-independent NAT
and behind a symmetric one, an IPv6-only segment, and a second (memory-runtime) miner whose link
is cut. The task's owner is one key (one client home) used from every place, as one person
would: only the owner may forward to a task's ports.
"""

from __future__ import annotations

import json
import socket
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from sonm_p2p.devnet.topology import (
    DockerEngine,
    Greeter,
    Host,
    NatKind,
    NatRouter,
    NsHub,
    NsMiner,
    Topology,
)
from sonm_p2p.identity import load_or_create
from tests.harness import BIN, Proc

pytestmark = pytest.mark.root

EIM, SYM = NatKind.ENDPOINT_INDEPENDENT, NatKind.SYMMETRIC
PAGE = b"hello from a sonm task"
#: The hub pings every second and gives up after three misses (the default is 10 s / 5 s).
FAST_PINGS = ["--ping-interval", "1s", "--ping-timeout", "2s", "--max-missed-pings", "3"]
#: A forward must be usable within this many seconds of starting `sonmcli forward`.
FORWARD_BOUND = 15.0
#: Forwards started (each a new `sonmcli forward`) to get one on the expected path.
PUNCH_TRIES = 3
#: After a cut link, the user's connection must end within this many seconds (the transport's
#: keepalive pings a busy peer every 10 s and gives up after 10 s more).
CUT_BOUND = 25.0


@dataclass
class World:
    topo: Topology
    hub: NsHub
    client: Host  # public: starts the task
    owner: Path  # the client home whose key owns the task
    miner_nat: NatRouter
    miner: NsMiner
    engine: DockerEngine
    user_eim: Host  # behind another endpoint-independent NAT
    user_sym: Host  # behind a symmetric NAT
    started: Any  # `sonmcli --json start` of the task
    job: str
    figures: dict[str, str] = field(default_factory=dict)
    forwards: list[dict] = field(default_factory=list)  # what each `sonmcli forward` printed

    def cli(self, host: Host, *args: str, hub: NsHub | None = None) -> Any:
        """``sonmcli --hub HUB --json ARGS`` on ``host`` (as the owner): its JSON output."""
        hub = hub or self.hub
        res = host.sonmcli("--hub", hub.grpc_target, "--json", *args, home=self.owner)
        assert res.returncode == 0, f"sonmcli {' '.join(args)}: {res.stderr}"
        return json.loads(res.stdout)

    def miners(self, host: Host | None = None, hub: NsHub | None = None) -> dict[str, dict]:
        """The hub's ListMiners, by node ID."""
        return {m["node_id"]: m for m in self.cli(host or self.client, "list", hub=hub)["miners"]}


@pytest.fixture(scope="module")
def world(_netns_problem, web_image, tmp_path_factory) -> Iterator[World]:
    if _netns_problem is not None:
        pytest.skip(f"needs root and network namespaces ({_netns_problem})")
    topo = Topology(tmp_path_factory.mktemp("product-nat"))
    try:
        hub_host = topo.public_host("hub", addresses=2)
        client = topo.public_host("client")
        miner_nat = topo.nat("mnat", EIM)
        user_eim = topo.nat("unat", EIM).hosts[0]
        user_sym = topo.nat("snat", SYM).hosts[0]
        engine = miner_nat.hosts[0].docker_engine(images=[web_image])
        hub = hub_host.start_hub(extra=FAST_PINGS)
        miner = miner_nat.hosts[0].start_miner(hub.p2p_target, engine=engine)
        owner = topo.workdir / "owner"
        world = World(
            topo, hub, client, owner, miner_nat, miner, engine, user_eim, user_sym, None, ""
        )
        node_id = miner.node_id
        topo.wait(
            lambda: world.miners().get(node_id, {}).get("online"), "the miner listed", timeout=60
        )
        res = client.sonmcli(
            "--hub", hub.grpc_target, "--json", "start", "--image", web_image,
            f"--miner={node_id}", home=owner, timeout=120,
        )  # fmt: skip
        assert res.returncode == 0, res.stderr
        world.started = json.loads(res.stdout.strip().splitlines()[-1])  # after progress lines
        world.job = world.started["id"]
        yield world
        if world.figures:
            print("\n" + "\n".join(f"{k}: {v}" for k, v in world.figures.items()))
    except BaseException:
        print(_logs(topo))
        raise
    finally:
        topo.close()


@pytest.fixture
def w(world: World, request) -> Iterator[World]:
    """The module's world; its processes' logs are printed when the test fails."""
    yield world
    rep = getattr(request.node, "rep_call", None)
    if rep is not None and rep.failed:
        print(_logs(world.topo))


def _logs(topo: Topology) -> str:
    """The end of every product process's output (dockerd's, which is long, left out)."""
    return "\n".join(
        f"===== {p.name} (pid {p.pid}) =====\n{p.output()[-6000:]}" for p in topo.procs
    )


# --- helpers -------------------------------------------------------------------------------------


@dataclass
class Forward:
    """A running ``sonmcli forward``: what it printed and how long it took to be ready."""

    proc: Proc
    info: dict
    began: float  # monotonic, just before the process was started
    ready: float  # seconds until it printed where it listens

    @property
    def local(self) -> tuple[str, int]:
        host, port = self.info["local"].rsplit(":", 1)
        return host, int(port)


def _printed_json(proc: Proc) -> dict | None:
    out = proc.output()
    start = out.find("{\n")  # --json output is indented; log lines never start so
    return json.JSONDecoder().raw_decode(out[start:])[0] if start >= 0 else None


def open_forward(
    w: World, host: Host, name: str, port: str, *, hub: NsHub | None = None, job: str = ""
) -> Forward:
    hub = hub or w.hub
    began = time.monotonic()
    proc = host.spawn_sonmcli(
        name, "--hub", hub.grpc_target, "--json", "forward", job or w.job, port, home=w.owner
    )
    info = w.topo.wait(
        lambda: _printed_json(proc), f"{name} to listen", FORWARD_BOUND, every=0.01, watch=[proc]
    )
    w.forwards.append(info)
    return Forward(proc, info, began, time.monotonic() - began)


def http_get(host: Host, addr: tuple[str, int], timeout: float = 10) -> tuple[float, bytes]:
    """GET / through ``addr`` from ``host``: (monotonic time of the first byte, the response)."""
    with host.connect(addr, timeout=timeout) as conn:
        conn.sendall(b"GET / HTTP/1.0\r\nHost: task\r\n\r\n")
        first = conn.recv(1)
        at = time.monotonic()
        chunks = [first]
        while chunk := conn.recv(65536):
            chunks.append(chunk)
    return at, b"".join(chunks)


def udp_echo(host: Host, addr: tuple[str, int], payload: bytes, timeout: float = 10) -> float:
    """Send ``payload`` to ``addr`` from ``host`` until it is echoed; the monotonic time it was.

    UDP may lose a datagram (the forward's stream is opened by the first one), so it is resent
    every half second until the deadline."""
    sock = host.socket(socket.AF_INET, socket.SOCK_DGRAM)
    with sock:
        sock.settimeout(0.5)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            sock.sendto(payload, addr)
            try:
                data, _ = sock.recvfrom(65536)
            except TimeoutError:
                continue
            assert data == b"echo: " + payload, data  # what sonm-test/web's udp-echo answers
            return time.monotonic()
    raise AssertionError(f"no UDP echo through {addr} within {timeout}s")


def forward_on_path(w: World, user: Host, port: str, paths: set[str]) -> tuple[Forward, list]:
    """``open_forward`` until its path is one of ``paths``, at most :data:`PUNCH_TRIES` times;
    the forward and the paths of the attempts that missed.

    A hole punch is a race the product gives 3 s (``NodeOptions.upgrade_wait``) before it
    reports the relayed path it falls back to: on a loaded machine it sometimes loses, and
    the report says how often."""
    missed: list[str] = []
    for attempt in range(PUNCH_TRIES):
        fwd = open_forward(w, user, f"fwd-{port.replace('/', '-')}-{user.name}-{attempt}", port)
        if fwd.info["path"] in paths:
            return fwd, missed
        missed.append(fwd.info["path"])
        fwd.proc.stop()
    raise AssertionError(f"{PUNCH_TRIES} forwards of {port} to {user.name}, none on {paths}")


def check_forwards(w: World, user: Host, label: str, paths: set[str]) -> dict:
    """Forward the task's 8080/tcp and 9090/udp to ``user``; the page and the echo come back on
    a path in ``paths``; records and returns the figures."""
    tcp, tcp_missed = forward_on_path(w, user, "8080/tcp", paths)
    try:
        first, page = http_get(user, tcp.local)
        assert PAGE in page, page
        assert tcp.info["task"] == w.job and tcp.info["port"] == "8080/tcp"
        assert tcp.info["miner"] == w.miner.node_id
        for _ in range(3):  # every connection is a new stream on the same path
            assert PAGE in http_get(user, tcp.local)[1]
    finally:
        code = tcp.proc.stop()
    assert code == 0, tcp.proc.output()  # SIGTERM ends it cleanly

    udp, udp_missed = forward_on_path(w, user, "9090/udp", paths)
    try:
        echoed = udp_echo(user, udp.local, f"ping from {user.name}".encode())
        for i in range(5):
            udp_echo(user, udp.local, b"x" * (100 * i + 1))
    finally:
        udp.proc.stop()
    figures = {
        "path": tcp.info["path"],
        "remote": tcp.info["remote"],
        "tcp_ready_s": round(tcp.ready, 2),
        "tcp_first_byte_s": round(first - tcp.began, 2),
        "udp_path": udp.info["path"],
        "udp_first_echo_s": round(echoed - udp.began, 2),
        "missed": tcp_missed + udp_missed,  # attempts that came up on another path
    }
    w.figures[label] = json.dumps(figures)
    print(f"\n{label}: {figures}")
    assert figures["tcp_first_byte_s"] < FORWARD_BOUND and figures["udp_first_echo_s"] < 20
    return figures


# --- 1. a miner behind NAT runs a task -----------------------------------------------------------


def test_miner_behind_eim_nat_is_listed_and_runs_a_task(w):
    m = w.miners()[w.miner.node_id]
    hub_peer = w.cli(w.client, "info")["peer_id"]
    assert m["online"] and m["behind_nat"], m
    assert m["nat_type"] == "endpoint-independent", m  # its own STUN check, told to the hub
    # Seen from its NAT's public address; reachable only through the hub's relay.
    assert m["remote_addr"].startswith(f"{w.miner_nat.wan_ip}:"), m
    circuit = f"/ip4/{w.hub.host.ip}/tcp/{w.hub.p2p_port}/p2p/{hub_peer}/p2p-circuit"
    assert m["multiaddrs"] == [f"{circuit}/p2p/{m['peer_id']}"], m
    assert m["task_ids"] == [w.job]
    listed = w.client.sonmcli("--hub", w.hub.grpc_target, "list", home=w.owner)
    head, body = listed.stdout.split("\n", 1)
    assert head == "Connected Miners" and json.loads(body) == {m["node_id"]: {"values": [w.job]}}

    # Published on the miner's LAN address (private: the user needs a forward).
    assert w.started["miner"] == w.miner.node_id
    ports = {e["port"]: e for e in w.started["endpoints"]}
    assert set(ports) == {"8080/tcp", "9090/udp"}
    assert {e["host"] for e in ports.values()} == {w.miner.host.ip}
    status = w.cli(w.client, "status", w.job)
    assert status["state"] == "RUNNING" and status["miner"] == w.miner.node_id
    assert status["owner"] == load_or_create(w.owner).node_id
    assert [e["port"] for e in status["endpoints"]] == ["8080/tcp", "9090/udp"]
    assert w.engine.docker("ps", "-q").stdout.strip()  # a real container in the NAT'd home
    assert not w.client.reachable((w.miner.host.ip, ports["8080/tcp"]["host_port"]), timeout=0.3)


def test_endpoints_say_forward_when_the_miner_is_behind_nat(w):
    status = w.cli(w.client, "status", w.job)
    assert {e["reach"] for e in status["endpoints"]} == {"forward"}, status["endpoints"]
    text = w.client.sonmcli("--hub", w.hub.grpc_target, "status", w.job, home=w.owner).stdout
    assert f"8080/tcp reachable via `sonmcli forward {w.job} 8080/tcp`" in text, text
    assert {e["reach"] for e in w.started["endpoints"]} == {"forward"}, w.started


# --- 2, 3. users behind NAT reach the task's ports -----------------------------------------------


def test_user_behind_another_eim_nat_gets_a_hole_punched_forward(w):
    figures = check_forwards(w, w.user_eim, "EIM user -> EIM miner", {"hole-punched", "direct"})
    # A hole-punched path ends at the miner's NAT's public mapping.
    assert figures["remote"].startswith(f"/ip4/{w.miner_nat.wan_ip}/tcp/"), figures


def test_only_the_owner_may_forward(w):
    res = w.user_eim.sonmcli(
        "--hub", w.hub.grpc_target, "forward", w.job, "8080/tcp",
        home=w.topo.workdir / "stranger", timeout=60,
    )  # fmt: skip
    assert res.returncode == 8, (res.returncode, res.stdout, res.stderr)
    assert "owner" in res.stderr and len(res.stderr.strip().splitlines()) == 1, res.stderr


def test_user_behind_symmetric_nat_gets_a_relayed_forward(w):
    figures = check_forwards(w, w.user_sym, "SYM user -> EIM miner", {"relayed"})
    hub_peer = w.cli(w.client, "info")["peer_id"]
    assert f"/p2p/{hub_peer}/p2p-circuit" in figures["remote"], figures


# --- 4. what each place sees --------------------------------------------------------------------


def test_nat_type_and_path_to_the_hub_from_each_place(w):
    alternate = f"{w.hub.host.addrs[1]}:{w.hub.stun_port + 1}"
    cases = [
        (w.client, "open", w.client.ip),
        (w.user_eim, "endpoint-independent", w.topo.routers["unat"].wan_ip),
        (w.user_sym, "symmetric", w.topo.routers["snat"].wan_ip),
    ]
    for host, nat_type, public_ip in cases:
        report = w.cli(host, "nat")
        stun, overlay = report["stun"], report["overlay"]
        assert stun["nat_type"] == nat_type, (host, report)
        assert stun["mapped"].startswith(f"{public_ip}:"), (host, report)
        assert stun["local"].startswith(f"{host.ip}:"), (host, report)
        assert stun["other_address"] == alternate, report
        assert overlay["path"] == "direct", report  # the hub is public
        assert overlay["remote"] == w.hub.p2p_target and overlay["rtt_ms"] > 0, report
        print(f"\nsonmcli nat on {host.name}: {nat_type}, hub {overlay['path']} "
              f"RTT {overlay['rtt_ms']} ms (gRPC {report['grpc_rtt_ms']} ms)")  # fmt: skip

    # sonmminer --check, in the miner's namespace, with the running miner's own home and key.
    res = w.miner.host.run(
        str(BIN / "sonmminer"), "--check", "--json", "-h", w.hub.p2p_target,
        "--home", str(w.miner.home), timeout=60,
    )  # fmt: skip
    assert res.returncode == 0, res.stderr
    report = json.loads(res.stdout)
    assert report["stun"]["nat_type"] == "endpoint-independent", report
    assert report["stun"]["mapped"].startswith(f"{w.miner_nat.wan_ip}:"), report
    assert report["overlay"]["path"] == "direct" and report["overlay"]["rtt_ms"] > 0, report
    text = w.miner.host.run(
        str(BIN / "sonmminer"), "--check", "-h", w.hub.p2p_target, "--home", str(w.miner.home)
    )
    assert text.returncode == 0, text.stderr
    assert "NAT        endpoint-independent" in text.stdout, text.stdout
    assert f"Public     {w.miner_nat.wan_ip}:" in text.stdout, text.stdout
    # The check used the miner's key beside the running miner: the miner is undisturbed.
    assert w.miners()[w.miner.node_id]["online"]


# --- 6. IPv6 ------------------------------------------------------------------------------------


def test_ipv6_peers_connect_directly(w):
    hub_host, miner_host = w.topo.ipv6_host("hub6"), w.topo.ipv6_host("miner6")
    user = w.topo.ipv6_host("user6")
    engine = miner_host.docker_engine(images=["sonm-test/web"])
    hub = hub_host.start_hub("hub6", extra=FAST_PINGS)
    assert hub.grpc_target == f"[{hub_host.ip}]:10001"
    miner = miner_host.start_miner(hub.p2p_target, "miner6", engine=engine)
    node_id = miner.node_id

    def listed() -> dict | None:
        m = w.miners(user, hub).get(node_id)
        return m if m and m["online"] else None

    m = w.topo.wait(listed, "the IPv6 miner listed", timeout=60)
    assert not m["behind_nat"] and m["remote_addr"].startswith(f"[{miner_host.ip}]:"), m
    assert m["multiaddrs"][0].startswith(f"/ip6/{miner_host.ip}/tcp/"), m  # direct first

    res = user.sonmcli(
        "--hub", hub.grpc_target, "--json", "start", "--image", "sonm-test/web",
        f"--miner={node_id}", home=w.owner, timeout=120,
    )  # fmt: skip
    assert res.returncode == 0, res.stderr
    started = json.loads(res.stdout.strip().splitlines()[-1])
    assert {e["host"] for e in started["endpoints"]} == {miner_host.ip}

    fwd = open_forward(w, user, "fwd-v6", "8080/tcp", hub=hub, job=started["id"])
    try:
        first, page = http_get(user, fwd.local)
    finally:
        fwd.proc.stop()
    assert PAGE in page
    assert fwd.info["path"] == "direct", fwd.info
    assert fwd.info["remote"].startswith(f"/ip6/{miner_host.ip}/tcp/"), fwd.info
    figures = {"path": "direct", "tcp_ready_s": round(fwd.ready, 2),
               "tcp_first_byte_s": round(first - fwd.began, 2)}  # fmt: skip
    w.figures["IPv6 user -> IPv6 miner"] = json.dumps(figures)
    print(f"\nIPv6: {figures}")
    stopped = user.sonmcli("--hub", hub.grpc_target, "stop", started["id"], home=w.owner)
    assert stopped.returncode == 0, stopped.stderr


# --- 5. a hub behind NAT ------------------------------------------------------------------------


def test_hub_behind_nat_is_reached_through_its_relay_address(w):
    # A hub at home, behind an endpoint-independent NAT, with no port forwarded: all it is told
    # is a bootstrap hub. It asks that hub to dial it back (AutoNAT), learns it cannot be
    # dialled, reserves on it and announces its circuit address.
    home = w.topo.nat("hnat", EIM).hosts[0]
    hub = home.start_hub("hub-nat", extra=[*FAST_PINGS, "--bootstrap", w.hub.p2p_target])
    public = w.cli(w.client, "info")
    hub_id = load_or_create(hub.home).node_id

    def own_info() -> dict | None:  # asked from its own LAN: its gRPC port is private
        res = home.sonmcli("--hub", hub.grpc_target, "--json", "info")
        info = json.loads(res.stdout) if res.returncode == 0 else {}
        return info if info.get("reachability") == "private" and _circuits(info) else None

    info = w.topo.wait(own_info, "the hub behind NAT to reserve on the public hub", timeout=60)
    circuit = (
        f"/ip4/{w.hub.host.ip}/tcp/{w.hub.p2p_port}/p2p/{public['peer_id']}"
        f"/p2p-circuit/p2p/{info['peer_id']}"
    )
    assert _circuits(info) == [circuit], info
    assert not w.client.reachable((home.ip, hub.grpc_port), timeout=0.3)
    assert not w.client.reachable((home.ip, hub.p2p_port), timeout=0.3)

    # The overlay carries its circuit address to everyone.
    def announced() -> dict | None:
        res = w.client.sonmcli("--bootstrap", w.hub.p2p_target, "--json", "hubs", home=w.owner)
        hubs = {h["node_id"]: h for h in json.loads(res.stdout)["hubs"]} if res.stdout else {}
        entry = hubs.get(hub_id)
        return entry if entry and circuit in entry["multiaddrs"] else None

    w.topo.wait(announced, "the hub's circuit address announced", timeout=30)
    text = w.client.sonmcli("--bootstrap", w.hub.p2p_target, "hubs", home=w.owner).stdout
    row = next(line for line in text.splitlines() if line.startswith(hub_id))
    assert row.endswith(circuit), text  # what others can dial, not its LAN address

    # A miner behind another NAT, told only a bootstrap peer and which hub it wants, finds the
    # hub by gossip and connects to it through the relay.
    miner_host = w.topo.nat("hmnat", EIM).hosts[0]
    miner = miner_host.start_miner(
        "", "miner-of-nat-hub", extra=["--bootstrap", w.hub.p2p_target, "--hub-id", hub_id]
    )
    miner_id = miner.node_id

    def listed() -> dict | None:
        res = w.client.sonmcli("--hub", circuit, "--json", "list", home=w.owner)
        if res.returncode != 0:
            return None
        m = {m["node_id"]: m for m in json.loads(res.stdout)["miners"]}.get(miner_id)
        return m if m and m["online"] else None

    began = time.monotonic()
    m = w.topo.wait(listed, "the miner listed on the hub behind NAT", timeout=60)
    listed_s = time.monotonic() - began
    assert m["behind_nat"] or not m["remote_addr"], m  # behind NAT, or reached through a relay
    # The hub's own STUN responder is out of the miner's reach: it points the miner at its relay's.
    assert m["nat_type"] == "endpoint-independent", m

    # A user behind a third NAT names the hub by node ID only (found through the overlay) and
    # runs a task on that miner; the public client stops it through the circuit address.
    res = w.user_eim.sonmcli(
        "--bootstrap", w.hub.p2p_target, "--hub", hub_id, "--json", "start",
        "--image", "sonm-test/web", f"--miner={miner_id}", home=w.owner, timeout=120,
    )  # fmt: skip
    assert res.returncode == 0, res.stderr
    assert f"using hub {hub_id} over the overlay" in res.stderr, res.stderr
    started = json.loads(res.stdout.strip().splitlines()[-1])
    job = started["id"]
    status = w.client.sonmcli("--hub", circuit, "--json", "status", job, home=w.owner)
    assert status.returncode == 0 and json.loads(status.stdout)["state"] == "RUNNING", status

    # The task's port, from a third NAT, through `sonmcli forward`: nobody but the public hub
    # can be dialled. (The miner runs the in-memory engine; a listener stands in for the port.)
    tcp = next(e for e in started["endpoints"] if e["port"] == "8080/tcp")
    assert tcp["reach"] == "forward", started
    greeter = Greeter(miner_host, (tcp["host"], tcp["host_port"]))
    try:
        proc = w.user_eim.spawn_sonmcli(
            "fwd-nat-hub", "--bootstrap", w.hub.p2p_target, "--hub", hub_id, "--json",
            "forward", job, "8080/tcp", home=w.owner,
        )  # fmt: skip
        try:
            # Discovery, two relayed dials and two punch windows: more than a plain forward.
            info = w.topo.wait(
                lambda: _printed_json(proc),
                "the forward",
                2 * FORWARD_BOUND,
                every=0.02,
                watch=[proc],
            )
            host, port = info["local"].rsplit(":", 1)
            with w.user_eim.connect((host, int(port)), timeout=10) as conn:
                got = b"".join(iter(lambda: conn.recv(4096), b""))
            assert got == Greeter.GREETING, (got, info)
        finally:
            assert proc.stop() == 0, proc.output()
    finally:
        greeter.close()
    stopped = w.client.sonmcli("--hub", circuit, "--json", "stop", job, home=w.owner)
    assert stopped.returncode == 0, stopped.stderr
    w.figures["hub behind NAT"] = json.dumps({"miner_listed_s": round(listed_s, 1)})
    miner.proc.stop()
    hub.proc.stop()


def _circuits(info: dict) -> list[str]:
    return [a for a in info["multiaddrs"] if "/p2p-circuit/" in a]


# --- product bugs found on the way ---------------------------------------------------------------


def test_forward_reports_the_rtt_of_its_path(w):
    if not w.forwards:  # run on its own
        open_forward(w, w.user_eim, "fwd-rtt", "8080/tcp").proc.stop()
    assert all((f["rtt_ms"] or 0) > 0 for f in w.forwards), w.forwards


def test_hub_on_its_default_wildcard_listen_address_serves_forwards(w):
    hub_host, miner_host = w.topo.public_host("hubw"), w.miner_nat.add_host("mnat-w")
    engine = miner_host.docker_engine(images=["sonm-test/web"])
    hub = hub_host.start_hub("hubw", wildcard=True, extra=FAST_PINGS)
    miner = miner_host.start_miner(hub.p2p_target, "minerw", engine=engine)
    try:
        node_id = miner.node_id
        m = w.topo.wait(
            lambda: (w.miners(hub=hub).get(node_id) or {}).get("multiaddrs"),
            "the miner listed on the wildcard hub",
            timeout=60,
        )
        wildcard = ("/ip4/0.0.0.0/", "/ip6/::/")
        assert not [a for a in m if a.startswith(wildcard)], m
        assert not [a for a in w.cli(w.client, "info", hub=hub)["multiaddrs"]
                    if a.startswith(wildcard)]  # fmt: skip
        res = w.client.sonmcli(
            "--hub", hub.grpc_target, "--json", "start", "--image", "sonm-test/web",
            f"--miner={node_id}", home=w.owner, timeout=120,
        )  # fmt: skip
        assert res.returncode == 0, res.stderr
        job = json.loads(res.stdout.strip().splitlines()[-1])["id"]
        fwd = open_forward(w, w.user_eim, "fwd-wildcard", "8080/tcp", hub=hub, job=job)
        try:
            assert PAGE in http_get(w.user_eim, fwd.local)[1]
        finally:
            fwd.proc.stop()
    finally:
        miner.proc.stop()
        hub.proc.stop()


# --- 7. cut links -------------------------------------------------------------------------------


def test_cut_links_end_forwards_and_miners_come_back(w):
    # A second miner (no container needed, default settings) beside the first, whose own
    # uplink is cut.
    host = w.miner_nat.add_host("mnat-m2")
    miner2 = host.start_miner(w.hub.p2p_target, "miner2")
    node_id = miner2.node_id

    def online() -> bool:
        return bool(w.miners().get(node_id, {}).get("online"))

    w.topo.wait(online, "the second miner listed", timeout=60)

    user_nat = w.topo.routers["unat"]
    fwd = open_forward(w, w.user_eim, "fwd-cut", "8080/tcp")
    assert PAGE in http_get(w.user_eim, fwd.local)[1]
    # A connection in use: a request whose headers are still coming.
    conn = w.user_eim.connect(fwd.local)
    conn.sendall(b"GET / HTTP/1.0\r\n")
    conn.settimeout(0.2)

    user_nat.wan.down()
    host.uplink.down()
    cut = time.monotonic()
    ended: tuple[str, float] | None = None
    offline: float | None = None
    try:
        while (ended is None or offline is None) and time.monotonic() - cut < CUT_BOUND + 5:
            if ended is None:
                try:
                    conn.sendall(b"X-Still-Typing: 1\r\n")
                    if conn.recv(4096) == b"":
                        ended = ("closed", time.monotonic() - cut)
                except TimeoutError:
                    pass
                except OSError as exc:  # reset: the clear error we want
                    ended = (type(exc).__name__, time.monotonic() - cut)
            if offline is None and not online():
                offline = time.monotonic() - cut
    finally:
        conn.close()
        user_nat.wan.up()
        host.uplink.up()
    back = time.monotonic()
    print(f"\nuser's link cut: connection ended ({ended}); miner link cut: offline after "
          f"{offline if offline is None else round(offline, 1)} s")  # fmt: skip
    assert ended is not None and ended[1] < CUT_BOUND, ended
    assert offline is not None and offline < CUT_BOUND, offline

    w.topo.wait(online, "the second miner back on its hub", timeout=45)
    relisted = time.monotonic() - back
    # The forward keeps running and redials the miner: new connections work again.
    recovered = w.topo.wait(
        lambda: PAGE in http_get(w.user_eim, fwd.local, timeout=5)[1],
        "the forward working again",
        timeout=45,
        every=0.5,
        watch=[fwd.proc],
    )
    assert recovered
    forward_back = time.monotonic() - back
    fwd.proc.stop()
    m = w.miners()[node_id]
    assert m["online"] and m["behind_nat"], m
    w.figures["cut links"] = json.dumps(
        {
            "user_conn_end": ended[0],
            "user_conn_end_s": round(ended[1], 1),
            "miner_offline_s": round(offline, 1),
            "miner_relisted_s": round(relisted, 1),
            "forward_back_s": round(forward_back, 1),
        }
    )
    print(f"miner listed again {relisted:.1f} s after the link came back; forward works again "
          f"after {forward_back:.1f} s")  # fmt: skip


def _ended(proc: Proc, bound: float) -> float | None:
    """Seconds until ``proc`` exited, waiting at most ``bound``; None if it is still running."""
    began = time.monotonic()
    while time.monotonic() - began < bound:
        if not proc.alive():
            return time.monotonic() - began
        time.sleep(0.05)
    return None


def test_cut_links_end_log_streams_with_a_clear_error(w):
    # A task that prints a line every 0.2 s, on the Docker miner behind NAT, followed with
    # `sonmcli logs -f`: first from the public client while the miner's uplink is cut, then from
    # the user behind NAT while the user's own link is cut. Each follower must end, within the
    # bound, with one clear line and the "unreachable" exit code (4) - not hang.
    ticker = "i=0; while true; do i=$((i+1)); echo tick $i; sleep 0.2; done"
    res = w.client.sonmcli(
        "--hub", w.hub.grpc_target, "--json", "start", "--image", "sonm-test/web",
        f"--miner={w.miner.node_id}", "--", "sh", "-c", ticker, home=w.owner, timeout=120,
    )  # fmt: skip
    assert res.returncode == 0, res.stderr
    job = json.loads(res.stdout.strip().splitlines()[-1])["id"]
    uplink = w.miner.host.uplink
    user_wan = w.topo.routers["unat"].wan
    figures: dict[str, object] = {}
    try:
        for name, host, link in (
            ("miner's uplink", w.client, uplink),
            ("user's link", w.user_eim, user_wan),
        ):
            follow = host.spawn_sonmcli(
                f"logs-{host.name}", "--hub", w.hub.grpc_target, "logs", "-f", job, home=w.owner
            )
            w.topo.wait(lambda f=follow: "tick 3" in f.output(), "ticks", 30, watch=[follow])
            link.down()
            try:
                took = _ended(follow, CUT_BOUND)
            finally:
                link.up()
            out = follow.output()
            assert took is not None, f"logs -f still running {CUT_BOUND}s after the cut: {out}"
            code = follow.popen.returncode
            error = [line for line in out.splitlines() if line.startswith("sonmcli: error:")]
            assert code == 4 and len(error) == 1, (code, out[-2000:])
            figures[name] = {"ended_s": round(took, 1), "error": error[0]}
            print(f"\nlogs -f, {name} cut: exit {code} after {took:.1f} s: {error[0]}")
            w.topo.wait(
                lambda: w.miners().get(w.miner.node_id, {}).get("online"),
                "the miner back on its hub",
                timeout=60,
            )
    finally:
        uplink.up()
        user_wan.up()
        w.client.sonmcli("--hub", w.hub.grpc_target, "stop", job, home=w.owner, timeout=120)
    w.figures["log streams over cut links"] = json.dumps(figures)
