"""Scale of ``sonm-devnet``: ``up --miners 50 --runtime memory`` on this machine, then ``down``.

Prints a Markdown section on stdout (progress on stderr). ``make bench`` calls it; run alone with
``python bench/bench_devnet.py [--miners N] [--write]`` (``--write`` puts the section into
BENCHMARKS.md in place of the old one).
"""

from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
DEVNET = str(Path(sys.executable).parent / "sonm-devnet")
TITLE = "## Local network scale (`sonm-devnet up`)"


def _pss_kib(pid: int) -> tuple[int, int]:
    """(PSS, RSS) of a process in KiB: PSS shares each shared page among its users."""
    out = {"Pss:": 0, "Rss:": 0}
    with open(f"/proc/{pid}/smaps_rollup") as f:
        for line in f:
            key = line.split()[0]
            if key in out:
                out[key] = int(line.split()[1])
    return out["Pss:"], out["Rss:"]


def _cpu_seconds(pids: list[int]) -> float:
    total = 0
    for pid in pids:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        total += int(fields[11]) + int(fields[12])  # utime + stime
    return total / os.sysconf("SC_CLK_TCK")


def measure(miners: int, hubs: int, per_process: int) -> str:
    """One table row: ``up`` of ``hubs`` + ``miners`` (``per_process`` to a process), down."""
    with tempfile.TemporaryDirectory(prefix="bench-devnet-") as base:
        argv = [DEVNET, "up", "--dir", base, "--name", "bench", "--runtime", "memory"]
        argv += ["--hubs", str(hubs), "--miners", str(miners)]
        argv += ["--miners-per-process", str(per_process)]
        print(f"bench_devnet: {' '.join(argv[1:])}", file=sys.stderr)
        t0 = time.perf_counter()
        res = subprocess.run(argv, capture_output=True, text=True, timeout=900)
        up = time.perf_counter() - t0
        try:
            if res.returncode != 0:
                raise SystemExit(f"up failed: {res.stderr[-2000:]}")
            rows = json.loads(
                subprocess.run(
                    [DEVNET, "status", "--json", "--dir", base, "--name", "bench"],
                    capture_output=True,
                    text=True,
                    check=True,
                ).stdout
            )
            assert all(r["alive"] for r in rows) and len(rows) == hubs + miners
            listed = sum(1 for r in rows if r["role"] == "miner" and r["hub"])
            pids = list(dict.fromkeys(r["pid"] for r in rows))  # a group's miners share one
            mem = [_pss_kib(p) for p in pids]
            hub_pids = {r["pid"] for r in rows if r["role"] == "hub"}
            hub_pss = sum(m[0] for m, p in zip(mem, pids, strict=True) if p in hub_pids)
            pss = sum(m[0] for m in mem)
            rss = sum(m[1] for m in mem)
            c0 = _cpu_seconds(pids)
            time.sleep(10)  # the network left alone: what its pings and gossip cost
            idle = (_cpu_seconds(pids) - c0) / 10
        finally:
            t0 = time.perf_counter()
            subprocess.run(
                [DEVNET, "down", "--dir", base, "--name", "bench"], capture_output=True, timeout=300
            )
            down = time.perf_counter() - t0
        left = subprocess.run(["pgrep", "-f", base], capture_output=True, text=True).stdout.split()
    per_miner = (pss - hub_pss) / max(miners, 1) / 1024
    return (
        f"| {hubs} hub + {miners} miners | {per_process} | {len(pids)} | {up:.1f} s "
        f"| {listed}/{miners} | {pss / 1024:.0f} MiB | {per_miner:.0f} MiB | {rss / 1024:.0f} MiB "
        f"| {idle * 100:.0f}% of a core | {down:.1f} s | {len(left)} |"
    )


def section(miners: int, hubs: int, groups: list[int]) -> str:
    load = os.getloadavg()[0]  # the machine may be shared: up is CPU-bound (imports)
    rows = [measure(miners, hubs, k) for k in groups]
    return "\n".join(
        [
            TITLE,
            "",
            f"Measured on {time.strftime('%Y-%m-%d')} with `bench/bench_devnet.py` (part of "
            f"`make bench`). `sonm-devnet up --runtime memory --hubs {hubs} --miners {miners} "
            "--miners-per-process K` as a fresh process until it returns (every hub answers, "
            "every miner listed on a hub); memory is the sum over the processes of PSS (shared "
            "pages divided among their users) and of RSS (counted in each); idle CPU is the "
            "network's own use over the 10 s after `up`; then `down`. Load average when it "
            f"began: {load:.1f} on {os.cpu_count()} cores.",
            "",
            "| nodes | miners per process | processes | up | listed | memory (PSS) | per miner "
            "| memory (RSS sum) | idle CPU | down | processes left |",
            "|---|---|---|---|---|---|---|---|---|---|---|",
            *rows,
            "",
        ]
    )


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--miners", type=int, default=50)
    p.add_argument("--hubs", type=int, default=1)
    p.add_argument("--groups", default="1,10", help="miners per process, one row each")
    p.add_argument("--write", action="store_true", help="replace the section in BENCHMARKS.md")
    args = p.parse_args()
    text = section(args.miners, args.hubs, [int(k) for k in args.groups.split(",")])
    print(text)
    if args.write:
        path = ROOT / "BENCHMARKS.md"
        old = path.read_text()
        pattern = re.compile(re.escape(TITLE) + r".*?(?=\n## |\Z)", re.S)
        new = pattern.sub(lambda _: text, old) if pattern.search(old) else old + "\n" + text
        path.write_text(new)


if __name__ == "__main__":
    main()
