"""A restarted hub's herd: N light miners on one hub, then `kill -9` of the hub and a new one on
the same home; prints the online count as it grows (with the hub's CPU), then the warnings the
load generator and the hub logged, grouped (which timeouts wasted joins).

    python bench/restart_herd.py 1000      # as root: in a network namespace of its own
    python bench/restart_herd.py 1000 --max-joining 8   # further arguments go to sonmhub

docs/SCALING.md ("The limit of one hub") quotes its runs.
"""

from __future__ import annotations

import collections
import os
import re
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench.scale import cpu_seconds, loadgen_procs, online  # noqa: E402
from tests.harness import BIN, Network  # noqa: E402

_NOISE = re.compile(r"0x[0-9a-fA-F]+|16U\w+|\d+\.\d+s|/ip4/\S+|\d+\.\d+\.\d+\.\d+:\d+")


def summary(title: str, text: str) -> None:
    """The log's warnings and errors, addresses and IDs blanked, most frequent first."""
    lines = [ln for ln in text.splitlines() if "WARNING" in ln or "ERROR" in ln]
    counts = collections.Counter(_NOISE.sub("X", ln.split(": ", 1)[-1])[:150] for ln in lines)
    print(title, flush=True)
    for message, n in counts.most_common(12):
        print(f"{n:6d} {message}", flush=True)


def main(n: int, hub_args: list[str], window: float = 150.0) -> None:
    from sonm_p2p.client import HubClient
    from sonm_p2p.identity import load_or_create

    with tempfile.TemporaryDirectory() as tmp:
        net = Network(Path(tmp))
        try:
            hub = net.hub(extra=["--no-mdns", *hub_args])
            argv = [str(BIN / "sonm-loadgen"), "--hub", hub.p2p_target, "--miners", str(n)]
            argv += ["--home", str(net.root / "light"), "--json"]
            argv += ["--procs", str(loadgen_procs(n))]
            ident = load_or_create(net.root / "client")
            loadgen = net.spawn("loadgen", argv)
            t0 = time.monotonic()
            with HubClient(hub.grpc_target, identity=ident, timeout=60) as client:
                while online(client) < n and time.monotonic() - t0 < 120 + 0.3 * n:
                    time.sleep(2)
                print(f"listed {online(client)} after {time.monotonic() - t0:.1f}s", flush=True)
            time.sleep(10)
            mark = len(loadgen.output())
            hub.proc.kill9()
            t0 = time.monotonic()
            hub.restart()
            c0 = cpu_seconds(hub.proc.pid)
            with HubClient(hub.grpc_target, identity=ident, timeout=60) as client:
                last = -1
                while time.monotonic() - t0 < window and last < n:
                    try:
                        now = online(client)
                    except Exception:  # still starting, or too busy to answer in time
                        now = -1
                    if now != last:
                        cpu = cpu_seconds(hub.proc.pid) - c0
                        print(f"{time.monotonic() - t0:6.1f}s {now} online, hub CPU {cpu:.1f}s")
                        last = now
                    time.sleep(1)
            summary("load generator, after the restart:", loadgen.output()[mark:])
            summary("hub:", hub.proc.output())
        finally:
            net.close()


if __name__ == "__main__":
    if os.geteuid() == 0 and os.environ.get("SONM_HERD_NETNS") != "1":
        os.environ["SONM_HERD_NETNS"] = "1"
        shell = 'ip link set lo up && exec "$@"'
        argv = [sys.executable, __file__, *sys.argv[1:]]
        os.execvp("unshare", ["unshare", "--net", "sh", "-c", shell, "sh", *argv])
    os.environ.setdefault("SONM_P2P_LISTEN", "/ip4/127.0.0.1/tcp/0")
    main(int(sys.argv[1]) if len(sys.argv) > 1 else 1000, sys.argv[2:])
