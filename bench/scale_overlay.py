"""The overlay part of `make bench-scale`: 100 hubs (libp2p host + discovery gossip, as in
`sonmhub`) spread over several processes, each running its share on one shared trio loop.

    python bench/scale_overlay.py --hubs 100 --procs 5      # prints one JSON line

The coordinator (this process) starts the workers one after another: worker k gets the
addresses of every hub started before it, so hub i can bootstrap to hubs (i-1)//2 and i-2 (a
sparse overlay, as a real one is: each hub knows one or two others). Once every hub knows every
other, it counts the overlay's bytes and CPU over a window, then hub 0 (which does not announce
by itself) publishes timed announcements; each worker records when each of its hubs' directory
takes each one in (validated, signature verified), on the same clock. The bytes are those on
this network namespace's loopback (bench/scale.py runs everything in a namespace of its own
when root); the CPU is the workers' own (/proc), which load does not distort.
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import IO, Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench.scale import HZ, announce_arg, cpu_seconds, lo_bytes, load_average  # noqa: E402

BENCH = "bench:"  # grpc_endpoint of the timed announcements: "bench:<round>"


def _say(**fields: object) -> None:
    print(json.dumps(fields), flush=True)


def worker(
    first: int,
    count: int,
    total: int,
    rounds: int,
    announce: float | None,
    settle_max: float = 180.0,
    tuning: dict[str, Any] | None = None,
) -> None:
    """Hubs ``first`` .. ``first + count - 1`` of ``total``; talks JSON lines to the
    coordinator (stdin: earlier hubs' addresses, then "go"; stdout: see below)."""
    from sonm_p2p.discovery import GossipOptions, HubAnnouncement, HubGossip, hub_announcer
    from sonm_p2p.identity import Identity
    from sonm_p2p.transport.node import NodeOptions, P2PNode, SharedLoop

    earlier: list[str] = json.loads(sys.stdin.readline())
    loop = SharedLoop("overlay")
    nodes: list[P2PNode] = []
    gossips: list[HubGossip] = []
    idents = [Identity.generate() for _ in range(count)]
    arrivals: dict[int, list[float]] = {}
    heard: set[int] = set()  # hubs of ours that took in any timed announcement
    publisher = ""  # hub 0's node ID (learned from the coordinator)
    lock = threading.Lock()

    def watch(gossip: HubGossip, index: int) -> None:
        directory = gossip._directory  # noqa: SLF001 - timing the moment it takes one in
        update = directory.update

        def timed(ann: Any, now: float) -> bool:
            news = update(ann, now)
            if news and ann.node_id == publisher and ann.grpc_endpoint.startswith(BENCH):
                with lock:
                    arrivals.setdefault(int(ann.grpc_endpoint[len(BENCH) :]), []).append(
                        time.time()
                    )
                    heard.add(index)
            return news

        directory.update = timed  # type: ignore[method-assign]

    pauses = _gc_pauses()
    t_setup = time.monotonic()
    addrs = list(earlier)
    for k, ident in enumerate(idents):
        i = first + k
        node = P2PNode(ident, NodeOptions(listen=("/ip4/127.0.0.1/tcp/0",)), loop=loop)
        boot = tuple(addrs[j] for j in sorted({(i - 1) // 2, max(0, i - 2)}) if i > 0)
        # An announcement lives 10/3 of its interval, at least 10 s (HubGossip, as in sonmhub).
        announcer = hub_announcer(ident, node, grpc_endpoint=f"127.0.0.1:{20000 + i}")
        options = GossipOptions(bootstrap=boot, announce_interval=announce, **(tuning or {}))
        gossip = HubGossip(node, options, announce=announcer if i else None)
        node.start()
        nodes.append(node)
        gossips.append(gossip)
        addrs.append(node.addrs[0])
    # Out of the cyclic GC's full collections: what the hubs made at start. Without it a full
    # collection of 20 hubs' heap stalled all 20 for 0.3-0.6 s (a sonmhub process holds one).
    gc.freeze()
    _say(event="addrs", addrs=addrs[len(earlier) :], node_ids=[x.node_id for x in idents])
    try:
        # Wait until every hub of ours knows every hub of the overlay (or settle_max passed:
        # then how far it got is reported, and the timed rounds still measure propagation).
        deadline = time.monotonic() + settle_max
        while any(len(g.hubs()) < total - 1 for g in gossips) and time.monotonic() < deadline:
            time.sleep(0.5)
        known = [len(g.hubs()) for g in gossips]
        _say(event="ready", setup=time.monotonic() - t_setup, known=known)
        go = json.loads(sys.stdin.readline())  # {"publisher": node ID}
        publisher = go["publisher"]
        for k, gossip in enumerate(gossips):
            if first + k:
                watch(gossip, first + k)
        if first == 0:
            published: dict[int, float] = {}
            for r in range(rounds):
                ann = HubAnnouncement.create(
                    idents[0],
                    peer_id=nodes[0].peer_id,
                    now=time.time(),
                    multiaddrs=nodes[0].addrs,
                    grpc_endpoint=f"{BENCH}{r}",
                )
                published[r] = time.time()
                gossips[0].publish(ann)
                time.sleep(2.0)  # the validator's per-origin rate limit refills
            _say(event="published", published=published)
        else:
            time.sleep(rounds * 2.0 + 10.0)
        with lock:
            deaf = [first + k for k in range(count) if first + k and first + k not in heard]
            _say(
                event="arrivals",
                arrivals=arrivals,
                deaf=deaf,
                mesh=_meshes(nodes, gossips),
                gc=sorted(pauses, reverse=True)[:5],
                gc_count=len(pauses),
            )
        sys.stdin.readline()  # "stop"
    finally:
        for node in nodes:
            node.close()
        loop.close()


def _gc_pauses() -> list[float]:
    """Durations of the process's full (generation 2) garbage collections from now on."""
    import gc

    pauses: list[float] = []
    started = [0.0]

    def note(phase: str, info: dict[str, int]) -> None:
        if info.get("generation") != 2:
            return
        if phase == "start":
            started[0] = time.perf_counter()
        else:
            pauses.append(time.perf_counter() - started[0])

    gc.callbacks.append(note)
    return pauses


def _meshes(nodes: list[Any], gossips: list[Any]) -> dict[str, list[str]]:
    """Each hub's GossipSub mesh on the hub topic (peer ID -> peer IDs), read unlocked from
    another thread: a snapshot for the mesh's shape, not an exact one."""
    from sonm_p2p.discovery import TOPIC

    out = {}
    for node, gossip in zip(nodes, gossips, strict=True):
        router = gossip._router  # noqa: SLF001 - the bench looks inside
        mesh = list(router.mesh.get(TOPIC, ())) if router is not None else []
        out[node.peer_id] = [p.to_base58() for p in mesh]
    return out


def mesh_components(mesh: dict[str, list[str]]) -> list[int]:
    """Sizes of the connected components of the hubs' meshes (links taken both ways)."""
    links: dict[str, set[str]] = {p: set() for p in mesh}
    for p, peers in mesh.items():
        for q in peers:
            links[p].add(q)
            links.setdefault(q, set()).add(p)
    seen: set[str] = set()
    sizes = []
    for start in links:
        if start in seen:
            continue
        todo, size = [start], 0
        seen.add(start)
        while todo:
            p = todo.pop()
            size += 1
            for q in links[p] - seen:
                seen.add(q)
                todo.append(q)
        sizes.append(size)
    return sorted(sizes, reverse=True)


def machine_busy() -> float:
    """Seconds of CPU the whole machine has spent busy (/proc/stat: all but idle and iowait),
    in cores x seconds."""
    fields = [int(x) for x in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
    return (sum(fields) - fields[3] - fields[4]) / HZ


def _read(out: IO[str], lines: list[dict[str, Any]], cond: threading.Condition) -> None:
    for line in out:
        if line.startswith("{"):
            with cond:
                lines.append(json.loads(line))
                cond.notify_all()


def _wait(lines: list[dict], cond: threading.Condition, event: str, timeout: float) -> dict:
    deadline = time.monotonic() + timeout
    with cond:
        while True:
            for x in lines:
                if x.get("event") == event:
                    lines.remove(x)
                    return x
            left = deadline - time.monotonic()
            if left <= 0:
                raise TimeoutError(f"no {event!r} from an overlay worker in {timeout:.0f}s")
            cond.wait(left)


def bench_overlay(
    hubs: int,
    procs: int,
    rounds: int,
    window: float,
    announce: float | None = None,
    gossip: str = "{}",
) -> dict[str, object]:
    """Run the overlay (see the module's text); the figures as a dict."""
    shares = [hubs // procs + (1 if k < hubs % procs else 0) for k in range(procs)]
    workers: list[tuple[subprocess.Popen[str], list[dict], threading.Condition]] = []
    out: dict[str, object] = {"hubs": hubs, "procs": procs, "announce": announce}
    out["load_before"] = load_average()
    t0 = time.monotonic()
    try:
        addrs: list[str] = []
        node_ids: list[str] = []
        first = 0
        for share in shares:
            argv = [sys.executable, __file__, "--worker", str(first), str(share), str(hubs)]
            argv += ["--rounds", str(rounds), "--announce", str(announce or "auto")]
            argv += ["--gossip", gossip]
            proc = subprocess.Popen(
                argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, env=os.environ
            )
            lines: list[dict] = []
            cond = threading.Condition()
            threading.Thread(target=_read, args=(proc.stdout, lines, cond), daemon=True).start()
            workers.append((proc, lines, cond))
            assert proc.stdin is not None
            proc.stdin.write(json.dumps(addrs) + "\n")
            proc.stdin.flush()
            got = _wait(lines, cond, "addrs", 120)
            addrs += got["addrs"]
            node_ids += got["node_ids"]
            first += share
        ready = [_wait(lines, cond, "ready", 600) for _, lines, cond in workers]
        out["setup"] = time.monotonic() - t0
        out["setup_per_worker"] = [r["setup"] for r in ready]
        known = [k for r in ready for k in r["known"]]
        # Hubs that knew all the others at once (an announcement lives 10 s, 3 of them).
        out["knew_all"] = sum(k >= hubs - 1 for k in known)
        out["known_min"] = min(known)
        out["load_ready"] = load_average()
        pids = [p.pid for p, _, _ in workers]
        b0, c0, w0 = lo_bytes(), sum(cpu_seconds(p) for p in pids), time.monotonic()
        time.sleep(window)
        wall = time.monotonic() - w0
        out["tx_per_hub"] = (lo_bytes() - b0) / wall / hubs
        out["cpu"] = (sum(cpu_seconds(p) for p in pids) - c0) / wall
        # Who has the machine while hub 0 publishes: the overlay's processes, and all of it.
        c1, m1, t1 = sum(cpu_seconds(p) for p in pids), machine_busy(), time.monotonic()
        for proc, _, _ in workers:
            assert proc.stdin is not None
            proc.stdin.write(json.dumps({"publisher": node_ids[0]}) + "\n")
            proc.stdin.flush()
        timeout = rounds * 2.0 + 60
        published = {
            int(k): v for k, v in _wait(*workers[0][1:], "published", timeout)["published"].items()
        }
        wall = time.monotonic() - t1
        out["cpu_rounds"] = (sum(cpu_seconds(p) for p in pids) - c1) / wall
        out["machine_rounds"] = (machine_busy() - m1) / wall
        per_round: dict[int, list[float]] = {r: [] for r in published}
        mesh: dict[str, list[str]] = {}
        for _, lines, cond in workers:
            got = _wait(lines, cond, "arrivals", timeout)
            out.setdefault("deaf", []).extend(got["deaf"])  # type: ignore[union-attr]
            mesh.update(got["mesh"])
            out.setdefault("gc_pauses", []).append([got["gc_count"], got["gc"]])  # type: ignore[union-attr]
            for r, times in got["arrivals"].items():
                per_round[int(r)] += [t - published[int(r)] for t in times]
        out["lat"] = [x for r in sorted(per_round) for x in per_round[r]]
        out["mesh_components"] = mesh_components(mesh)
        out["mesh_degree"] = sum(map(len, mesh.values())) / max(1, len(mesh))
        out["to_all"] = [max(v) for v in per_round.values() if len(v) == hubs - 1]
        out["rounds"] = [[len(v), max(v, default=0.0)] for _, v in sorted(per_round.items())]
        out["incomplete_rounds"] = sum(len(v) < hubs - 1 for v in per_round.values())
        out["missing"] = sum(hubs - 1 - len(v) for v in per_round.values())
        out["load_after"] = load_average()
        for proc, _, _ in workers:
            assert proc.stdin is not None
            proc.stdin.write("stop\n")
            proc.stdin.flush()
    finally:
        for proc, _, _ in workers:
            try:
                assert proc.stdin is not None
                proc.stdin.close()  # a worker still waiting for a line ends at EOF
            except (OSError, ValueError):
                pass
        for proc, _, _ in workers:
            try:
                proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--hubs", type=int, default=100)
    ap.add_argument("--procs", type=int, default=5)
    ap.add_argument("--rounds", type=int, default=10)
    ap.add_argument("--window", type=float, default=30.0)
    ap.add_argument(
        "--announce",
        type=announce_arg,
        default=None,
        help="hubs' announce interval, seconds, or auto (the default, as in sonmhub)",
    )
    ap.add_argument("--gossip", default="{}", help="GossipOptions fields, JSON (experiments)")
    ap.add_argument("--worker", type=int, nargs=3, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.worker:
        worker(
            *args.worker, rounds=args.rounds, announce=args.announce, tuning=json.loads(args.gossip)
        )
        return
    result = bench_overlay(
        args.hubs, args.procs, args.rounds, args.window, args.announce, args.gossip
    )
    print(json.dumps(result))


if __name__ == "__main__":
    main()
