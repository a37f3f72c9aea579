"""The hub registry against a real chain (anvil on 127.0.0.1): prints a BENCHMARKS.md section.

    python bench/bench_chain.py        # needs anvil: make anvil

Measures a registration (sign, send, mined receipt), a read of the registry (one page, 100
hubs), what web3 costs a process (import; sonmcli chain hubs against sonmcli ping), and the time
from `sonmminer --chain URL --registry ADDR` (nothing else) to listed on a registered hub.
"""

from __future__ import annotations

import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from sonm_p2p.chain import WEI  # noqa: E402
from sonm_p2p.chain.devchain import LocalChain  # noqa: E402
from sonm_p2p.identity import Identity, load_or_create  # noqa: E402
from tests.harness import BIN, Network, wait_for  # noqa: E402


def pct(values: list[float], p: float) -> float:
    s = sorted(values)
    return s[min(len(s) - 1, max(0, round(p / 100 * (len(s) - 1))))]


def row(what: str, values: list[float]) -> str:
    ms = [v * 1000 for v in values]
    return f"| {what} | {statistics.median(ms):.1f} ms | {pct(ms, 95):.1f} ms | {len(ms)} |"


def timed(argv: list[str], **kw: object) -> float:
    t0 = time.perf_counter()
    res = subprocess.run(argv, capture_output=True, text=True, timeout=120, **kw)
    assert res.returncode == 0, res.stderr
    return time.perf_counter() - t0


def _peer(ident: Identity) -> str:
    from libp2p.peer.id import ID

    return ID.from_pubkey(ident.libp2p_key_pair().public_key).to_base58()


def main() -> None:
    from sonm_p2p.chain.registry import Registry

    rows: list[str] = []
    with LocalChain.start() as chain, tempfile.TemporaryDirectory() as tmp:
        address = chain.deploy_registry(min_stake=WEI)
        reg = Registry.open(chain.url, address)
        regs = []
        for i in range(100):
            ident = Identity.generate()
            chain.fund(ident.node_id, 10 * WEI)
            addr = f"/ip4/192.0.2.1/tcp/{10000 + i}/p2p/{_peer(ident)}"
            t0 = time.perf_counter()
            reg.register(ident, [addr], f"192.0.2.1:{10000 + i}", stake=WEI)
            regs.append(time.perf_counter() - t0)
        rows.append(row("register (sign, send, receipt; in-process)", regs))
        reads = []
        for _ in range(20):
            t0 = time.perf_counter()
            assert len(reg.entries()) == 100
            reads.append(time.perf_counter() - t0)
        rows.append(row("read the registry, 100 hubs (count + one page)", reads))

        imports = [
            timed([sys.executable, "-c", "import web3"]) - timed([sys.executable, "-c", "pass"])
            for _ in range(5)
        ]
        rows.append(row("`import web3` (process, less a bare Python)", imports))
        client = Path(tmp) / "client"
        cli = [str(BIN / "sonmcli"), "--home", str(client)]
        hubs = [
            timed(
                [*cli, "--chain", chain.url, "--registry", address, "chain", "hubs", "--wait", "0"]
            )  # fmt: skip
            for _ in range(5)
        ]
        rows.append(row("`sonmcli chain hubs --wait 0` (whole process, 100 hubs)", hubs))

        # A miner with only the chain and the registry, until a registered hub lists it.
        net = Network(Path(tmp) / "net")
        net.env["SONM_MDNS_NAMESPACE"] = "b" + uuid.uuid4().hex[:8]
        listed: list[float] = []
        direct: list[float] = []
        try:
            fresh = LocalChain.start()
            net_reg = fresh.deploy_registry(min_stake=WEI)
            hub_home = Path(tmp) / "net" / "hub"
            fresh.fund(load_or_create(hub_home).node_id, 10 * WEI)
            flags = ["--chain", fresh.url, "--registry", net_reg]
            hub = net.hub("hub", extra=[*flags, "--stake", "1", "--no-mdns"])
            node = load_or_create(hub_home).node_id
            r2 = Registry.open(fresh.url, net_reg)
            wait_for(lambda: r2.is_registered(node), "the hub to register", timeout=60)
            for i in range(5):
                for kind, times, target, extra in (
                    ("chain", listed, "", flags),
                    ("direct", direct, hub.p2p_target, []),
                ):
                    t0 = time.perf_counter()
                    m = net.miner(target, f"{kind}{i}", runtime="memory", extra=extra)
                    wait_for(lambda m=m: m.node_id in hub.online(), "listed", 60, every=0.02)
                    times.append(time.perf_counter() - t0)
                    m.proc.stop()
        finally:
            net.close()
            fresh.close()
    lines = [
        "## Chain registry (anvil)",
        "",
        "A real chain: anvil (npm @foundry-rs/anvil 1.7.1) on 127.0.0.1, blocks mined on each "
        "transaction; the registry from `contracts/HubRegistry.vy`, web3 8.0.0. "
        "`python bench/bench_chain.py`.",
        "",
        "| what | median | p95 | runs |",
        "|---|---|---|---|",
        *rows,
        "",
        "`sonmminer --chain URL --registry ADDR` (nothing else: mDNS finds no hub, no bootstrap "
        "peer) until the registered hub lists it online; includes the process start, the "
        "registry read and the dial of the registered hub.",
        "",
        "| miner started with | median | p95 | min | runs |",
        "|---|---|---|---|---|",
        *(
            f"| {what} | {statistics.median(t):.2f} s | {pct(t, 95):.2f} s | {min(t):.2f} s"
            f" | {len(t)} |"
            for what, t in (
                ("`--chain URL --registry ADDR` only", listed),
                ("`-h HUB` (no chain; the baseline, same run)", direct),
            )
        ),
        "",
    ]
    print("\n".join(lines))


if __name__ == "__main__":
    main()
