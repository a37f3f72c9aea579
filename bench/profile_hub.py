"""What a hub's miners cost it at steady state: one `sonmhub`, N light miners, the hub's own CPU
time per miner per ping interval (from /proc, so the machine's load does not distort it), and
optionally a `py-spy` profile of the hub over the same window.

    python bench/profile_hub.py --miners 150 --window 60
    python bench/profile_hub.py --miners 150 --window 30 --py-spy /tmp/hub.txt

Before/after figures in docs/SCALING.md come from this command.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench.scale import cpu_seconds, lo_bytes, load_average, online, proc_status  # noqa: E402
from tests.harness import BIN, Network, wait_for  # noqa: E402


def strace_counts(pid: int, seconds: float) -> dict[str, int]:
    """System calls of every thread of ``pid`` over ``seconds`` (``strace -c``), by name: each
    socket send is one Noise message or one gRPC write into the bridge, so these count frames.
    Taken after the CPU window (strace slows the process it traces)."""
    argv = ["strace", "-f", "-c", "-p", str(pid), "-o", "/dev/stdout"]
    spy = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    time.sleep(seconds)
    spy.send_signal(signal.SIGINT)
    out, _ = spy.communicate(timeout=30)
    counts: dict[str, int] = {}
    for line in out.splitlines():
        parts = line.split()
        if len(parts) >= 5 and parts[0][0].isdigit() and parts[-1].isidentifier():
            counts[parts[-1]] = int(parts[3])
    return counts


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--miners", type=int, default=150)
    ap.add_argument("--procs", type=int, default=1, help="sonm-loadgen worker processes")
    ap.add_argument("--window", type=float, default=60.0, help="seconds of steady state measured")
    ap.add_argument("--settle", type=float, default=15.0, help="seconds after all are listed")
    ap.add_argument("--idle", type=float, default=20.0, help="seconds of the idle hub measured")
    ap.add_argument("--ping-interval", default="10s")
    ap.add_argument("--py-spy", type=Path, help="write a py-spy profile of the hub here")
    ap.add_argument("--strace", type=float, default=0, help="seconds of strace -c after")
    ap.add_argument("--py-spy-format", default="raw", help="py-spy record --format")
    ap.add_argument(
        "--py-spy-join",
        type=Path,
        help="write a py-spy profile of the hub's first 20 s of joins here",
    )
    ap.add_argument(
        "--py-spy-of", choices=("hub", "loadgen"), default="hub", help="whose --py-spy profile"
    )
    ap.add_argument(
        "--netns", action="store_true", help="run in a network namespace of its own (root)"
    )
    args = ap.parse_args()
    if args.netns and os.environ.get("SONM_PROFILE_NETNS") != "1":
        os.environ["SONM_PROFILE_NETNS"] = "1"
        argv = [sys.executable, __file__, *sys.argv[1:]]
        shell = 'ip link set lo up && exec "$@"'
        os.execvp("unshare", ["unshare", "--net", "sh", "-c", shell, "sh", *argv])

    from sonm_p2p.client import HubClient
    from sonm_p2p.identity import load_or_create

    out: dict[str, object] = {"miners": args.miners, "load_before": load_average()}
    with tempfile.TemporaryDirectory() as tmp:
        net = Network(Path(tmp))
        try:
            hub = net.hub(extra=["--no-mdns", "--ping-interval", args.ping_interval])
            pid = hub.proc.pid
            out["idle"] = proc_status(pid)
            # The hub's own cost with no miner (announcements, its STUN and reachability
            # loops): the per-miner figure is net of it.
            i0, t_idle = cpu_seconds(pid), time.monotonic()
            time.sleep(args.idle)
            idle_share = (cpu_seconds(pid) - i0) / (time.monotonic() - t_idle)
            argv = [str(BIN / "sonm-loadgen"), "--hub", hub.p2p_target]
            argv += ["--miners", str(args.miners), "--home", str(net.root / "light"), "--json"]
            if args.procs > 1:
                argv += ["--procs", str(args.procs)]
            with HubClient(hub.grpc_target, identity=load_or_create(net.root / "c")) as client:
                join_spy = None
                if args.py_spy_join:
                    join_spy = subprocess.Popen(
                        [shutil.which("py-spy") or str(BIN / "py-spy"), "record", "--pid",
                         str(pid), "--duration", "20", "--threads", "--nonblocking", "--rate",
                         "100", "--format", args.py_spy_format, "--output",
                         str(args.py_spy_join)],
                        stdout=subprocess.DEVNULL,
                    )  # fmt: skip
                t0, j0 = time.monotonic(), cpu_seconds(pid)
                loadgen = net.spawn("loadgen", argv)
                wait_for(
                    lambda: online(client) >= args.miners,
                    f"{args.miners} listed",
                    timeout=60 + args.miners * 0.5,
                    every=1.0,
                )
                out["listed_after"] = round(time.monotonic() - t0, 1)
                # What joining cost each: the hub's CPU from the first dial to the last listed
                # (with the idle hub's share taken out), and the load generator's, per miner.
                joined = time.monotonic() - t0
                out["join_hub_ms_per_miner"] = round(
                    (cpu_seconds(pid) - j0 - idle_share * joined) * 1000 / args.miners, 1
                )
                out["join_loadgen_ms_per_miner"] = round(
                    cpu_seconds(loadgen.pid) * 1000 / args.miners, 1
                )
                if join_spy is not None:
                    join_spy.wait(timeout=120)
                time.sleep(args.settle)  # the joins' work done: what is left is steady state
                spy = None
                if args.py_spy:
                    spy_argv = [shutil.which("py-spy") or str(BIN / "py-spy"), "record"]
                    spied = pid if args.py_spy_of == "hub" else loadgen.pid
                    spy_argv += ["--pid", str(spied), "--duration", str(int(args.window))]
                    spy_argv += ["--threads", "--nonblocking", "--rate", "100"]
                    spy_argv += ["--format", args.py_spy_format, "--output", str(args.py_spy)]
                    spy = subprocess.Popen(spy_argv, stdout=subprocess.DEVNULL)
                c0, w0, b0 = cpu_seconds(pid), time.monotonic(), lo_bytes()
                l0 = cpu_seconds(loadgen.pid)
                time.sleep(args.window)
                cpu, wall = cpu_seconds(pid) - c0, time.monotonic() - w0
                sent = lo_bytes() - b0
                out["loadgen_cpu_share"] = round((cpu_seconds(loadgen.pid) - l0) / wall, 3)
                if spy is not None:
                    spy.wait(timeout=args.window + 60)
                still = online(client)
                if args.strace and shutil.which("strace"):
                    calls = strace_counts(pid, args.strace)
                    per = args.strace / float(args.ping_interval.rstrip("s")) * args.miners
                    top = sorted(calls.items(), key=lambda kv: -kv[1])[:12]
                    out["syscalls_per_miner_per_interval"] = {k: round(v / per, 1) for k, v in top}
            interval = float(args.ping_interval.rstrip("s"))
            out.update(
                online_at_end=still,
                steady=proc_status(pid),
                hub_cpu_share=round(cpu / wall, 4),
                idle_hub_cpu_share=round(idle_share, 4),
                ms_per_miner_per_interval=round(cpu / wall * interval / args.miners * 1000, 3),
                net_ms_per_miner_per_interval=round(
                    (cpu / wall - idle_share) * interval / args.miners * 1000, 3
                ),
                # Only the benchmark's when it has a network namespace of its own (--netns).
                lo_bytes_per_miner_per_s=round(sent / wall / args.miners, 1),
                missed_pings=hub.proc.output().count("missed a ping"),
                load_after=load_average(),
            )
        finally:
            net.close()
    print(json.dumps(out))


if __name__ == "__main__":
    os.environ.setdefault("SONM_P2P_LISTEN", "/ip4/127.0.0.1/tcp/0")
    main()
