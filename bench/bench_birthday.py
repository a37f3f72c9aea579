"""Birthday-punch benchmark: how often, how fast and at what cost a birthday-paradox punch makes
a direct path between a port-preserving NAT and a symmetric one (issue 15). Prints a Markdown
section on stdout (progress on stderr).

Network namespaces (root), as ``tests/netns/test_birthday.py`` and ``bench_forward.py``: a
public relay and Linux NAT routers (MASQUERADE, and MASQUERADE ``--random-fully``) that drop
unsolicited SYNs, plus one port-preserving router that answers them with a RST (the side behind
it must move first). Each try is between fresh nodes (new keys, new ports; ``restart``) over a
fresh relayed connection; the client is told the server's NAT type (as a hub tells it) and both
know their own (as STUN tells them). Every node is a process of its own. Run:
``python bench/bench_birthday.py`` (``make bench`` calls it); about 3 minutes as root.
"""

from __future__ import annotations

import os
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from tests.harness import wait_for  # noqa: E402
from tests.netns.node_agent import Agent  # noqa: E402

TRIES = 20  #: fresh punches per NAT pair
NAT_TYPE = {"eim": "endpoint-independent", "sym": "symmetric"}


def log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def p90(values: list[float]) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(0.9 * (len(ordered) - 1)))]


def one(client: Agent, server: Agent, relay: Agent, server_nat: str) -> dict[str, Any]:
    client.ready("restart")
    server.ready("restart")
    server.call("reserve", relay=relay.listen[0])
    addrs = server.call("advertised")
    out = client.call(
        "connect_peer", peer=server.peer_id, addrs=addrs, upgrade_wait=20, remote_nat=server_nat
    )
    mine = client.call("birthday", peer=server.peer_id)
    theirs = None
    if mine is not None:
        theirs = wait_for(lambda: server.call("birthday", peer=client.peer_id), "server's punch")
    return {"path": out["path"]["kind"], "client": mine, "server": theirs}


def series(label: str, client: Agent, server: Agent, relay: Agent, server_nat: str) -> str:
    direct: list[float] = []
    first = set()
    cost: dict[str, list[int]] = {"easy_s": [], "easy_p": [], "hard_s": [], "hard_p": []}
    failed = 0
    for i in range(TRIES):
        r = one(client, server, relay, server_nat)
        c, s = r["client"], r["server"]
        ok = r["path"] == "hole-punched" and c is not None and c["ok"]
        if c is not None and c["tried"]:
            first.add(c["first"])
            for side in (c, s):
                if side is not None:
                    cost[f"{side['side']}_s"].append(side["sockets"])
                    cost[f"{side['side']}_p"].append(side["packets"])
        if ok:
            direct.append(c["seconds"])
        else:
            failed += 1
        took = f"{c['seconds']:.2f} s" if c else "-"
        log(f"{label} {i + 1}/{TRIES}: {r['path']} ({took}) {c}")

    def med(key: str) -> str:
        return f"{statistics.median(cost[key]):.0f}" if cost[key] else "–"

    times = (
        f"{statistics.median(direct):.2f} / {p90(direct):.2f} / {max(direct):.2f} s"
        if direct
        else "–"
    )
    return (
        f"| {label} | {'/'.join(sorted(first)) or '–'} | {len(direct)}/{TRIES} | {times} | "
        f"{med('easy_s')} / {med('hard_s')} | {med('easy_p')} / {med('hard_p')} |"
    )


def netns(workdir: Path) -> list[str]:
    from sonm_p2p.devnet.topology import Inbound, NatKind, Topology

    eim, sym = NatKind.ENDPOINT_INDEPENDENT, NatKind.SYMMETRIC
    with Topology(workdir) as topo:
        relay_host = topo.public_host("relay")
        relay = Agent(
            relay_host, "relay", {"listen": [f"/ip4/{relay_host.ip}/tcp/4001"], "relay": True}
        )
        hosts = {
            "e": (topo.nat("e", eim, inbound=Inbound.DROP).hosts[0], "eim"),
            "s": (topo.nat("s", sym, inbound=Inbound.DROP).hosts[0], "sym"),
            "r": (topo.nat("r", eim, inbound=Inbound.REJECT).hosts[0], "eim"),
        }
        agents = {
            k: Agent(h, k, {"nat_type": NAT_TYPE[kind]}, wait=False)
            for k, (h, kind) in hosts.items()
        }
        for a in agents.values():
            a.ready()
        e, s, r = agents["e"], agents["s"], agents["r"]
        return [
            series("EIM → SYM", e, s, relay, NAT_TYPE["sym"]),
            series("SYM → EIM", s, e, relay, NAT_TYPE["eim"]),
            series("EIM (rejecting) → SYM", r, s, relay, NAT_TYPE["sym"]),
        ]


def main() -> None:
    began = time.monotonic()
    load_before = os.getloadavg()
    reason = _netns_unavailable()
    rows: list[str] = []
    if reason is None:
        with tempfile.TemporaryDirectory(prefix="bench-birthday-") as tmp:
            rows = netns(Path(tmp))
    load_after = os.getloadavg()
    out = [
        "## Birthday punch (EIM ↔ symmetric NAT, `/sonm/birthday/1.0.0`)",
        "",
        f"{TRIES} punches per NAT pair (client → server), each between fresh nodes (new keys and "
        "ports) over a fresh relayed connection, through Linux NAT routers in network "
        "namespaces that drop unsolicited SYNs (the rejecting one answers them with a RST), "
        "links without latency. Defaults: K = 256 mappings, P = 986 probes (98 % under uniform "
        "ports; the 1024–2047 range first), ≤ 1,000 probes/s, 2 s window. Time to direct is "
        "the initiator's whole punch: coordination over the relay (hello, RST probes, plan), the "
        "sweep, Noise and Yamux on the new connection; median / p90 / max. Sockets and SYNs "
        "(first SYNs plus Linux's retransmissions at 1 s, 3 s, … estimated from each socket's "
        "lifetime) are medians per side, easy / hard.",
        "",
        "| NAT pair | first mover | direct | time to direct | sockets easy / hard | "
        "SYNs easy / hard |",
        "|---|---|---|---|---|---|",
        *rows,
        "",
    ]
    if reason is not None:
        out += [f"Skipped: {reason}.", ""]
    out.append(
        f"_bench_birthday.py ran in {time.monotonic() - began:.0f} s; load average "
        f"{load_before[0]:.2f} before, {load_after[0]:.2f} after (1 min; 2 cores, another "
        "engineer's benchmarks may share them)._"
    )
    print("\n".join(out))


def _netns_unavailable() -> str | None:
    if os.geteuid() != 0:
        return "not root (needs network namespaces)"
    from tests.netns.conftest import netns_unavailable_reason

    return netns_unavailable_reason()


if __name__ == "__main__":
    main()
