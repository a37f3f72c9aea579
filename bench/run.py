"""`make bench`: measure what the issues ask for and write BENCHMARKS.md.

Everything runs on this machine, against 127.0.0.1 (and network namespaces for the forward
benchmark, when root). Each section says how it was measured.
"""

from __future__ import annotations

import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from tests.harness import (  # noqa: E402
    Network,
    cli_agents,
    docker_ok,
    private_cli_agents,
    sonmcli,
    wait_for,
)

BIN = Path(sys.executable).parent


def pct(values: list[float], p: float) -> float:
    s = sorted(values)
    k = min(len(s) - 1, max(0, round(p / 100 * (len(s) - 1))))
    return s[k]


def fmt_ms(seconds: float) -> str:
    return f"{seconds * 1000:.1f} ms"


def machine() -> str:
    mem = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30
    return (
        f"{platform.machine()}, {os.cpu_count()} cores, {mem:.0f} GiB, "
        f"Linux {platform.release()}, Python {platform.python_version()}"
    )


def _seed_round(net: Network, hub: Any, miner: Any, env: dict[str, str]) -> tuple[float, float]:
    """One `sonmcli start` + `sonmcli stop` (seconds) and one `sonmcli ping` (seconds)."""
    home = net.root / "client"
    t0 = time.perf_counter()
    res = sonmcli(
        "--hub", hub.grpc_target, "start", "--image", "sonm-test/web",
        f"--miner={miner.node_id}", home=home, env=env,
    )  # fmt: skip
    assert res.returncode == 0, res.stderr
    job = res.stdout.split()[1].rstrip(",")
    assert sonmcli("--hub", hub.grpc_target, "stop", job, home=home, env=env).returncode == 0
    took = time.perf_counter() - t0
    t0 = time.perf_counter()
    assert sonmcli("--hub", hub.grpc_target, "ping", home=home, env=env).returncode == 0
    return took, time.perf_counter() - t0


def bench_seed_flow(net: Network, runs: int = 10) -> str:
    """sonmcli start+stop (through its agent, and in-process) vs docker run -d -P + docker rm -f;
    sonmcli ping. The three are interleaved run by run, so load hits them alike."""
    hub = net.hub()
    miner = net.miner(hub, "m1")
    wait_for(lambda: miner.node_id in hub.online(), "miner listed")
    agent_env = {"SONM_CLI_AGENT": "on"}
    off_env = {"SONM_CLI_AGENT": "off"}
    sonmcli("--version", home=net.root / "client", env=agent_env)  # starts the agent
    wait_for(lambda: cli_agents(Path(os.environ["SONM_CLI_AGENT_DIR"])), "the sonmcli agent")
    ours, ours_off, docker_times, pings, pings_off, rpc_pings = [], [], [], [], [], []
    for _ in range(runs):
        took, ping = _seed_round(net, hub, miner, agent_env)
        ours.append(took)
        pings.append(ping)
        took, ping = _seed_round(net, hub, miner, off_env)
        ours_off.append(took)
        pings_off.append(ping)

        t0 = time.perf_counter()
        cid = subprocess.run(
            [
                "docker",
                "run",
                "-d",
                "-P",
                "--label",
                f"sonm.test={net.test_label}",
                "sonm-test/web",
            ],
            capture_output=True,
            text=True,
            check=True,
        ).stdout
        subprocess.run(["docker", "rm", "-f", cid.strip()], capture_output=True, check=True)
        docker_times.append(time.perf_counter() - t0)

    from sonm_p2p.client import HubClient

    with HubClient(hub.grpc_target) as client:
        for _ in range(200):
            rpc_pings.append(client.ping())
    docker_median = statistics.median(docker_times)

    def row(what: str, xs: list[float], ratio: bool = False) -> str:
        tail = f" ({statistics.median(xs) / docker_median:.2f}x docker)" if ratio else ""
        return f"| {what} | {fmt_ms(statistics.median(xs))}{tail} | {fmt_ms(pct(xs, 95))} |"

    return "\n".join(
        [
            "## Seed flow: start + stop, ping",
            "",
            "`sonmcli start --image sonm-test/web` then `sonmcli stop`, against "
            f"`docker run -d -P` then `docker rm -f` of the same image, {runs} runs each, "
            "interleaved (medians). Each sonmcli call is a new process: through the resident "
            "agent (the default; cli/_launch.py), and in-process (`SONM_CLI_AGENT=off`, ~0.2 s "
            "of Python start-up and imports per process).",
            "",
            "| what | median | p95 |",
            "|---|---|---|",
            row("sonmcli start + stop (agent)", ours, ratio=True),
            row("sonmcli start + stop (SONM_CLI_AGENT=off)", ours_off, ratio=True),
            row("docker run -d -P + docker rm -f", docker_times),
            row("`sonmcli ping` (whole process, agent)", pings),
            row("`sonmcli ping` (whole process, SONM_CLI_AGENT=off)", pings_off),
            row("Ping RPC round trip (HubClient, 200 calls)", rpc_pings),
            "",
        ]
    )


def bench_zero_config_miner(net: Network, runs: int = 5) -> str:
    """Time from starting `sonmminer` with no flags (mDNS) to its appearance in `list`."""
    net.env["SONM_MDNS_NAMESPACE"] = "b" + uuid.uuid4().hex[:8]
    hub = net.hub("zhub")
    from sonm_p2p.client import HubClient

    times = []
    with HubClient(hub.grpc_target, timeout=5) as client:
        for i in range(runs):
            t0 = time.perf_counter()
            m = net.miner("", f"z{i}", runtime="memory")
            node_id = m.node_id
            wait_for(
                lambda nid=node_id: any(
                    x.node_id == nid and x.online for x in client.list_miners()
                ),
                "zero-flag miner listed",
                timeout=30,
                every=0.02,
            )
            times.append(time.perf_counter() - t0)
            m.proc.stop()
    return "\n".join(
        [
            "## Zero-config miner: start to listed",
            "",
            f"`sonmminer` with no flags (mDNS on 127.0.0.1) until its hub lists it online, polled "
            f"every 20 ms with an in-process client; {runs} runs. Includes the process start "
            "(`import libp2p` alone is ~0.8 s).",
            "",
            "| median | p95 | min |",
            "|---|---|---|",
            f"| {statistics.median(times):.2f} s | {pct(times, 95):.2f} s | {min(times):.2f} s |",
            "",
        ]
    )


def bench_propagation(nodes: int = 20, rounds: int = 10) -> str:
    """Announcement propagation across an overlay of ``nodes`` (one publishing hub)."""
    from sonm_p2p.discovery import GossipOptions, HubAnnouncement, HubGossip
    from sonm_p2p.identity import Identity
    from sonm_p2p.transport.node import NodeOptions, P2PNode

    listen = ("/ip4/127.0.0.1/tcp/0",)
    ps: list[P2PNode] = []
    gs: list[HubGossip] = []
    hub_ident = Identity.generate()
    for i in range(nodes):
        ident = hub_ident if i == 0 else Identity.generate()
        node = P2PNode(ident, NodeOptions(listen=listen))
        # a sparse overlay: each node bootstraps to one or two earlier ones
        boot = tuple(ps[j].addrs[0] for j in {(i - 1) // 2, max(0, i - 2)} if i > 0)
        g = HubGossip(node, GossipOptions(bootstrap=boot, announce_interval=3600))
        node.start()
        ps.append(node)
        gs.append(g)
    try:
        wait_for(lambda: all(g.stats()["mesh"] >= 1 for g in gs), "every node in the mesh", 60)
        lat: list[float] = []
        for r in range(rounds):
            ann = HubAnnouncement.create(
                hub_ident,
                peer_id=ps[0].peer_id,
                now=time.time(),
                multiaddrs=ps[0].addrs,
                grpc_endpoint=f"bench:{r}",
            )
            t0 = time.perf_counter()
            gs[0].publish(ann)
            pending = set(range(1, nodes))
            deadline = time.perf_counter() + 30
            while pending and time.perf_counter() < deadline:
                for i in list(pending):
                    hubs = gs[i].hubs()
                    if hubs and hubs[0].grpc_endpoint == f"bench:{r}":
                        lat.append(time.perf_counter() - t0)
                        pending.discard(i)
                time.sleep(0.002)
            assert not pending, f"{len(pending)} nodes never got round {r}"
            time.sleep(1.1)  # let the validator's per-origin rate limit (1/s) refill
    finally:
        for node in ps:
            node.close()
    return "\n".join(
        [
            f"## Announcement propagation, {nodes} nodes",
            "",
            f"{nodes} P2PNodes in one process on 127.0.0.1, each bootstrapped to one or two "
            f"earlier nodes (a sparse overlay, not a mesh); the hub publishes {rounds} "
            "announcements and we "
            "time each one's arrival in every other node's directory (validated and verified).",
            "",
            "| median | p95 | max |",
            "|---|---|---|",
            f"| {fmt_ms(statistics.median(lat))} | {fmt_ms(pct(lat, 95))} | {fmt_ms(max(lat))} |",
            "",
        ]
    )


def bench_bridge(n: int = 300) -> str:
    """gRPC through the libp2p bridge vs plain gRPC, both on loopback."""
    from sonm_p2p.client import HubClient
    from sonm_p2p.identity import Identity
    from sonm_p2p.transport.bridge import GRPC_HUB
    from sonm_p2p.transport.node import NodeOptions, P2PNode

    with tempfile.TemporaryDirectory() as tmp:
        net = Network(Path(tmp))
        try:
            hub = net.hub(extra=["--no-mdns"])
            addr = hub.cli_json("info")["multiaddrs"][0]
            node = P2PNode(Identity.generate(), NodeOptions(listen=("/ip4/127.0.0.1/tcp/0",)))
            node.start()
            try:
                peer = node.connect(addr)
                tunnel = node.open_tunnel(peer, GRPC_HUB)
                out = []
                for name, target in (
                    ("plain gRPC", hub.grpc_target),
                    ("over libp2p", tunnel.target),
                ):
                    with HubClient(target) as c:
                        c.ping()
                        rtts = [c.ping() for _ in range(n)]
                    out.append(
                        f"| {name} | {fmt_ms(statistics.median(rtts))} | {fmt_ms(pct(rtts, 95))} |"
                    )
                tunnel.close()
            finally:
                node.close()
        finally:
            net.close()
    return "\n".join(
        [
            "## gRPC bridge",
            "",
            f"Ping RPC round trip to a hub, {n} calls: plain gRPC on its client port vs the same "
            "service through `/sonm/grpc/hub/1.0.0` (private Unix-socket tunnel → libp2p stream → "
            "hub).",
            "",
            "| path | median | p95 |",
            "|---|---|---|",
            *out,
            "",
        ]
    )


def bench_streams(streams: int = 1000, calls: int = 50) -> str:
    """Ping and ListMiners while ``streams`` unsigned WatchTask streams are open on the hub."""
    import asyncio

    import grpc

    from sonm_p2p._pb.sonm.v1 import common_pb2, hub_pb2_grpc
    from sonm_p2p.client import HubClient

    with tempfile.TemporaryDirectory() as tmp:
        net = Network(Path(tmp))
        try:
            limit = str(2 * streams)
            hub = net.hub(extra=["--max-streams", limit, "--max-streams-per-client", limit])
            miner = net.miner(hub, "m1", runtime="memory")
            wait_for(lambda: miner.node_id in hub.online(), "the miner listed")
            started = hub.cli("start", "--image", "sonm-test/web", f"--miner={miner.node_id}")
            job = started.stdout.split()[1].rstrip(",")

            def measure() -> tuple[list[float], list[float]]:
                pings, lists = [], []
                with HubClient(hub.grpc_target, timeout=10) as c:
                    for _ in range(calls):
                        pings.append(c.ping())
                        t0 = time.perf_counter()
                        c.list_miners()
                        lists.append(time.perf_counter() - t0)
                return pings, lists

            async def flood() -> tuple[list[float], list[float]]:
                async with grpc.aio.insecure_channel(hub.grpc_target) as channel:
                    stub = hub_pb2_grpc.HubStub(channel)
                    ref = common_pb2.TaskRef(task_id=job)
                    open_ = [stub.WatchTask(ref) for _ in range(streams)]
                    await asyncio.gather(*(c.read() for c in open_))  # each one is served
                    try:
                        return await asyncio.to_thread(measure)
                    finally:
                        for c in open_:
                            c.cancel()

            pings, lists = asyncio.run(flood())
        finally:
            net.close()
    return "\n".join(
        [
            "## Open streams vs short calls",
            "",
            f"{streams} unsigned `WatchTask` streams held open on one hub (one process, grpc.aio), "
            f"then {calls} `Ping` and {calls} `ListMiners` calls from another client. Streams hold "
            "no worker, so short calls keep their latency (target: under 100 ms).",
            "",
            "| call | median | p95 |",
            "|---|---|---|",
            f"| Ping | {fmt_ms(statistics.median(pings))} | {fmt_ms(pct(pings, 95))} |",
            f"| ListMiners | {fmt_ms(statistics.median(lists))} | {fmt_ms(pct(lists, 95))} |",
            "",
        ]
    )


def bench_image() -> str:
    """`make image`: build time (with the Debian base made or already present) and size."""
    base = "sonm-base/bookworm-python:latest"
    had_base = (
        subprocess.run(["docker", "image", "inspect", base], capture_output=True).returncode == 0
    )
    t0 = time.perf_counter()
    res = subprocess.run(
        ["bash", "scripts/build-image.sh"],
        cwd=ROOT,
        env={**os.environ, "PY": sys.executable},
        capture_output=True,
        text=True,
        timeout=1800,
    )
    took = time.perf_counter() - t0
    if res.returncode != 0:
        return f"## Container image\n\nbuild-image.sh failed:\n\n```\n{res.stderr[-2000:]}\n```\n"

    def size(image: str) -> str:
        out = subprocess.run(
            ["docker", "image", "inspect", image, "--format", "{{.Size}}"],
            capture_output=True,
            text=True,
        ).stdout
        return f"{int(out) / 1e6:.0f} MB"

    made = "present already" if had_base else "made by debootstrap in this run"
    return "\n".join(
        [
            "## Container image",
            "",
            "`make image` (scripts/build-image.sh): wheels built on the host, installed offline.",
            "",
            "| image | size | build time |",
            "|---|---|---|",
            f"| sonm-p2p:latest | {size('sonm-p2p:latest')} | {took:.0f} s (base {made}) |",
            f"| {base} | {size(base)} | |",
            "",
        ]
    )


def bench_announce_flood(attackers: int = 4, per_attacker: int = 1000) -> str:
    """Ping and ListMiners on a hub while peers in its mesh flood the hub topic with forgeries."""
    from sonm_p2p.identity import load_or_create
    from tests.announce_flood import flood_measured, settled_drops, start_attackers

    with tempfile.TemporaryDirectory() as tmp:
        net = Network(Path(tmp))
        try:
            hub = net.hub(extra=["--no-mdns"])
            hub_id = load_or_create(hub.home).node_id
            evil = start_attackers(attackers, hub.p2p_target, hub_id)
            try:
                victim = {e.node_id: e for e in evil[0].gossip.hubs()}[hub_id].announcement
                run = flood_measured(hub.grpc_target, evil, victim, per_attacker)
            finally:
                for a in evil:
                    a.close()
            sent = sum(run.sent.values())
            drops = settled_drops(hub.proc.output, sent)
        finally:
            net.close()
    rows = [
        f"| {k} | {fmt_ms(statistics.median(v))} | {fmt_ms(pct(v, 95))} | {fmt_ms(max(v))} |"
        for k, v in run.latency.items()
    ]
    return "\n".join(
        [
            "## Forged announcements vs short calls",
            "",
            f"{attackers} peers in a hub's GossipSub mesh (real libp2p hosts, one process) publish "
            f"{sent} forged announcements on `/sonm/hubs/1` in {run.seconds:.1f} s (bad "
            "signatures, another hub's peer ID, expired, from the future, unsigned, oversized, "
            "junk, in turn); meanwhile two clients call `Ping` and `ListMiners` every 20 ms "
            f"(idle Ping: {fmt_ms(statistics.median(run.idle))} median). Target: under 100 ms.",
            "",
            "| call | median | p95 | max |",
            "|---|---|---|---|",
            *rows,
            "",
            "Dropped by the hub's validator (its log): "
            + ", ".join(f"{k} {v}" for k, v in drops.most_common())
            + f". That is {drops.total() - drops['replayed']} of the {sent} forgeries (replays are"
            " the hub's own announcements echoed back by the attackers); the rest never reached"
            " the validator (lost inside py-libp2p's pubsub, uncounted).",
            "",
        ]
    )


def main() -> None:
    with private_cli_agents():  # sonmcli's agents: the bench's own, stopped at its end
        _main()


def _main() -> None:
    sections = []
    with tempfile.TemporaryDirectory() as tmp:
        net = Network(Path(tmp))
        try:
            if docker_ok():
                sections.append(bench_seed_flow(net))
                sections.append(bench_image())
            sections.append(bench_zero_config_miner(net))
        finally:
            net.close()
            net.remove_containers()
    sections.append(bench_propagation())
    sections.append(bench_bridge())
    sections.append(bench_streams())
    sections.append(bench_announce_flood())
    for script, title in (
        ("bench_forward.py", "Forward"),
        ("bench_birthday.py", "Birthday punch"),
        ("bench_devnet.py", "Local network"),
        ("bench_chain.py", "Chain"),
    ):
        res = subprocess.run(
            [sys.executable, str(ROOT / "bench" / script)],
            capture_output=True,
            text=True,
            timeout=900,
        )
        sections.append(
            res.stdout
            if res.returncode == 0
            else f"## {title}\n\n{script} failed:\n\n```\n{res.stderr[-2000:]}\n```\n"
        )
    head = "\n".join(
        [
            "# Benchmarks",
            "",
            f"Written by `make bench` (`python bench/run.py`) on {time.strftime('%Y-%m-%d')}.",
            f"Machine: {machine()}.",
            "",
        ]
    )
    text = head + "\n" + "\n".join(sections)
    (ROOT / "BENCHMARKS.md").write_text(text)
    print(text)


if __name__ == "__main__":
    main()
