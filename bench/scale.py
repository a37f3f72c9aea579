"""`make bench-scale`: one hub holding 100, 300 and 1,000 light miners, and an overlay of 100
hubs; writes the "Scale" section of BENCHMARKS.md (replacing the previous one).

    python bench/scale.py                      # 100, 300, 1000 miners, then the overlay
    python bench/scale.py --miners 100 --no-overlay --no-write

Each hub figure comes from a real `sonmhub` process and one `sonm-loadgen` process on
127.0.0.1 (the miners in one `sonm-loadgen` worker process per 250); the overlay runs its hubs
(libp2p host + discovery gossip, as in `sonmhub`) in several processes (bench/scale_overlay.py).
Everything runs in a network namespace of its own when root, so the bytes on its loopback are
the benchmark's only.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import signal
import statistics
import sys
import tempfile
import time
from concurrent import futures
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench.run import fmt_ms, machine, pct  # noqa: E402
from tests.harness import BIN, Network, private_cli_agents  # noqa: E402

START = "<!-- scale: written by `make bench-scale` (bench/scale.py) -->"
END = "<!-- /scale -->"
HZ = os.sysconf("SC_CLK_TCK")


# -- the hub process, as /proc shows it -------------------------------------------------------


def proc_status(pid: int) -> dict[str, int]:
    """RSS (bytes), threads and open files of ``pid``."""
    out = {"fds": len(os.listdir(f"/proc/{pid}/fd"))}
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        key, _, value = line.partition(":")
        if key == "VmRSS":
            out["rss"] = int(value.split()[0]) * 1024
        elif key == "Threads":
            out["threads"] = int(value)
    return out


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / HZ  # utime + stime


def children(pid: int) -> list[int]:
    """``pid`` and its child processes (a `sonm-loadgen --procs` and its workers)."""
    path = Path(f"/proc/{pid}/task/{pid}/children")
    return [pid] + [int(p) for p in path.read_text().split()] if path.exists() else [pid]


def cpu_share(pid: int, seconds: float) -> float:
    """Share of one core ``pid`` used over the next ``seconds``."""
    c0, t0 = cpu_seconds(pid), time.monotonic()
    time.sleep(seconds)
    return (cpu_seconds(pid) - c0) / (time.monotonic() - t0)


#: Set when this run has a network namespace of its own (root: see main), so that the bytes on
#: its loopback are the benchmark's only.
ISOLATED = os.environ.get("SONM_SCALE_NETNS") == "1"


def lo_bytes() -> int:
    """Bytes sent on this network namespace's loopback (/proc/net/dev is the caller's
    namespace; /sys/class/net is the namespace /sys was mounted in, which an ``unshare --net``
    does not change)."""
    for line in Path("/proc/net/dev").read_text().splitlines():
        name, _, fields = line.partition(":")
        if name.strip() == "lo":
            return int(fields.split()[8])
    return 0


def load_average() -> str:
    return " ".join(Path("/proc/loadavg").read_text().split()[:3])


# -- one hub, N light miners ------------------------------------------------------------------


def online(client: object) -> int:
    return sum(m.online for m in client.list_miners())  # type: ignore[attr-defined]


def wait_listed(client: object, n: int, t0: float, stall: float = 90.0) -> tuple[int, float]:
    """Until all ``n`` are listed online, the count has not grown for ``stall`` seconds, or
    120 s + 0.3 s a miner have passed: (the most listed at once, seconds from ``t0`` until that
    count was first reached)."""
    best, best_at, changed = 0, time.monotonic(), time.monotonic()
    limit = t0 + 120 + 0.3 * n
    while best < n and time.monotonic() - changed < stall and time.monotonic() < limit:
        try:
            now_online = online(client)
        except Exception:  # the hub is still starting, or too busy to answer in time
            now_online = 0
        if now_online > best:
            best, best_at, changed = now_online, time.monotonic(), time.monotonic()
        time.sleep(1.0)
    return best, best_at - t0


def timed(fn: object, *args: object) -> float:
    t0 = time.perf_counter()
    fn(*args)  # type: ignore[operator]
    return time.perf_counter() - t0


def loadgen_procs(n: int) -> int:
    """Worker processes for ``n`` light miners: one per 250 (one trio loop carries ~250 well
    on this machine kind; see docs/SCALING.md)."""
    return max(1, -(-n // 250))


def bench_hub(n: int, steady: float, starts: int = 100, settle: float = 40.0) -> dict[str, object]:
    """The figures for one hub with ``n`` light miners (see the section's text)."""
    from sonm_p2p.client import HubClient
    from sonm_p2p.identity import load_or_create
    from sonm_p2p.model import RunSpec
    from sonm_p2p.tasks import TaskState

    r: dict[str, object] = {"miners": n, "load_before": load_average()}
    with tempfile.TemporaryDirectory() as tmp:
        net = Network(Path(tmp))
        try:
            hub = net.hub(extra=["--no-mdns"])
            hub_pid = hub.proc.pid
            r["idle"] = proc_status(hub_pid)
            argv = [str(BIN / "sonm-loadgen"), "--hub", hub.p2p_target, "--miners", str(n)]
            argv += ["--home", str(net.root / "light"), "--json"]
            r["procs"] = loadgen_procs(n)
            argv += ["--procs", str(r["procs"])]
            ident = load_or_create(net.root / "client")
            with HubClient(hub.grpc_target, identity=ident, timeout=60) as client:
                t0 = time.monotonic()
                loadgen = net.spawn("loadgen", argv)
                r["listed"], r["listed_after"] = wait_listed(client, n, t0)
                r["load_listed"] = load_average()
                # The joins' work done (a relay reservation's stream lingers 30 s at the hub):
                # what is left is pings.
                time.sleep(settle)
                b0 = lo_bytes()
                workers = children(loadgen.pid)
                g0 = sum(cpu_seconds(p) for p in workers)
                r["steady_cpu"] = cpu_share(hub_pid, steady)
                r["loadgen_steady_cpu"] = (sum(cpu_seconds(p) for p in workers) - g0) / steady
                r["steady"] = proc_status(hub_pid)
                r["online_steady"] = online(client)
                if ISOLATED:  # every byte on this namespace's loopback is hub <-> miners
                    r["steady_bytes_per_s"] = (lo_bytes() - b0) / steady

                r["list_rpc"] = [timed(client.list_miners) for _ in range(50)]
                r["list_cli"] = [timed(hub.cli, "--json", "list") for _ in range(10)]

                ids = sorted(m.node_id for m in client.list_miners() if m.online)[:starts]
                spec = RunSpec(image="sonm-test/busybox")

                def start(miner: str) -> tuple[float, str]:
                    with HubClient(hub.grpc_target, identity=ident, timeout=60) as own:
                        t = time.perf_counter()
                        try:
                            task_id = own.start_task(miner, spec).task_id
                        except Exception as exc:
                            print(f"start on {miner}: {exc}", flush=True)
                            task_id = ""
                        return time.perf_counter() - t, task_id

                with futures.ThreadPoolExecutor(max(1, len(ids))) as pool:
                    t = time.perf_counter()
                    done = list(pool.map(start, ids))
                    r["starts_wall"] = time.perf_counter() - t
                r["starts"] = [d for d, tid in done if tid]
                r["starts_failed"] = sum(not tid for _, tid in done)
                r["after_starts"] = proc_status(hub_pid)
                task_ids = {tid for _, tid in done if tid}

            # kill -9 and restart: every miner redials (its backoff), the hub re-adopts tasks.
            hub.proc.kill9()
            t0 = time.monotonic()
            hub.restart()
            with HubClient(hub.grpc_target, identity=ident, timeout=60) as client:
                r["relisted"], r["relisted_after"] = wait_listed(client, n, t0)
                tasks = {t.task_id: t for t in client.list_tasks()}
                kept = [t for t in task_ids if tasks.get(t) and tasks[t].state is TaskState.RUNNING]
                r["tasks_kept"] = len(kept)
                r["tasks_started"] = len(task_ids)
            r["restarted"] = proc_status(hub.proc.pid)
            r["missed_pings"] = len(re.findall("missed a ping", hub.proc.output()))
            r["load_after"] = load_average()
        finally:
            net.close()
    return r


# -- the report -------------------------------------------------------------------------------


def mib(n: object) -> str:
    return f"{int(n) / 2**20:.0f} MiB"  # type: ignore[call-overload]


def listed(r: dict, key: str) -> str:
    if r[key] == r["miners"]:
        return f"{r[key + '_after']:.1f} s"
    return f"{r[key]} of {r['miners']} at most, reached after {r[key + '_after']:.0f} s"


def hub_table(results: list[dict]) -> list[str]:
    cols = [str(r["miners"]) for r in results]
    rows = [
        ("time until all listed", [listed(r, "listed") for r in results]),
        ("hub RSS (steady)", [mib(r["steady"]["rss"]) for r in results]),
        ("hub RSS after 100 starts", [mib(r["after_starts"]["rss"]) for r in results]),
        ("hub threads (idle hub → steady)", [
            f"{r['idle']['threads']} → {r['steady']['threads']}" for r in results
        ]),
        ("hub open files", [str(r["steady"]["fds"]) for r in results]),
        ("hub ↔ miners bytes/s, steady (pings)", [
            f"{r['steady_bytes_per_s']:.0f}" if "steady_bytes_per_s" in r else "n/a"
            for r in results
        ]),
        ("hub CPU, steady state (pings only)", [
            f"{r['steady_cpu'] * 100:.1f} % of a core" for r in results
        ]),
        ("… per miner per 10 s ping interval", [
            f"{r['steady_cpu'] * 10 / r.get('online_steady', r['miners']) * 1000:.2f} ms"
            for r in results
        ]),
        ("load generator: processes, CPU at steady state", [
            f"{r.get('procs', 1)}, {r['loadgen_steady_cpu'] * 100:.0f} % of a core"
            if "loadgen_steady_cpu" in r else "1, n/a"
            for r in results
        ]),
        ("`ListMiners` p50 / p95 (50 calls)", [
            f"{fmt_ms(statistics.median(r['list_rpc']))} / {fmt_ms(pct(r['list_rpc'], 95))}"
            for r in results
        ]),
        ("`sonmcli list` p50 / p95 (10 runs, whole process)", [
            f"{fmt_ms(statistics.median(r['list_cli']))} / {fmt_ms(pct(r['list_cli'], 95))}"
            for r in results
        ]),
        ("100 concurrent starts: tasks/s (failed)", [
            f"{len(r['starts']) / r['starts_wall']:.1f} ({r['starts_failed']})" for r in results
        ]),
        ("… one start p50 / p95", [
            f"{fmt_ms(statistics.median(r['starts']))} / {fmt_ms(pct(r['starts'], 95))}"
            if r["starts"] else "none started"
            for r in results
        ]),
        ("hub `kill -9` + restart: all listed again after", [
            listed(r, "relisted") for r in results
        ]),
        ("… tasks still RUNNING", [f"{r['tasks_kept']}/{r['tasks_started']}" for r in results]),
        ("missed pings (hub log)", [str(r["missed_pings"]) for r in results]),
        ("load average before → all listed → after", [
            f"{r['load_before']} → {r.get('load_listed', '?')} → {r['load_after']}"
            for r in results
        ]),
    ]  # fmt: skip
    out = ["| miners | " + " | ".join(cols) + " |", "|---|" + "---|" * len(cols)]
    out += [f"| {name} | " + " | ".join(vals) + " |" for name, vals in rows]
    return out


def announce_arg(text: str) -> float | None:
    """``--announce``: seconds, or ``auto`` (None: sonmhub's default, growing with the overlay)."""
    return None if text == "auto" else float(text)


def overlay_lines(o: dict) -> list[str]:
    from sonm_p2p.discovery.cadence import auto_interval

    lat, to_all = o["lat"] or [float("nan")], o["to_all"]
    every = (
        f"{o['announce']:g} s"
        if o["announce"] is not None
        else f"{auto_interval(o['hubs']):g} s, `auto` for {o['hubs']} hubs"
    )
    where = (
        "in a network namespace of its own (so every byte on its loopback is the overlay's)"
        if o["isolated"]
        else "on the shared loopback (not root: the byte count includes other traffic)"
    )
    return [
        f"### Overlay: {o['hubs']} hubs (announcing every {every})",
        "",
        f"{o['hubs']} hubs (libp2p host + discovery gossip as in `sonmhub`, each announcing "
        f"every {every}) in {o['procs']} processes (`bench/scale_overlay.py`), "
        "each running its share on one shared trio loop, " + where + "; each hub bootstrapped "
        "to one or two earlier hubs (a sparse overlay). Hub 0 then publishes "
        f"{len(o['to_all']) + o['incomplete_rounds']} timed announcements, 2 s apart; each "
        "one's arrival in every other hub's directory (validated, signature verified) is timed "
        "on the machine's one clock.",
        "",
        "| what | figure |",
        "|---|---|",
        f"| until every hub knows every other (from the first start) | {o['setup']:.1f} s |"
        if o.get("knew_all", o["hubs"]) == o["hubs"]
        else f"| hubs that knew every other at once, after {o['setup']:.0f} s | "
        f"{o['knew_all']} of {o['hubs']} (the fewest known: {o['known_min']}) |",
        f"| arrival at one hub, p50 / p95 / max | {fmt_ms(statistics.median(lat))} / "
        f"{fmt_ms(pct(lat, 95))} / {fmt_ms(max(lat))} |",
        f"| propagation to all {o['hubs'] - 1} others (the last arrival), p50 / p95 | "
        + (
            f"{fmt_ms(statistics.median(to_all))} / {fmt_ms(pct(to_all, 95))} |"
            if o["to_all"]
            else "not reached: no announcement reached every hub |"
        ),
        f"| announcements that missed a hub | {o['missing']} of "
        f"{(len(o['to_all']) + o['incomplete_rounds']) * (o['hubs'] - 1)} |",
        f"| gossip bytes sent per hub per second | {o['tx_per_hub']:.0f} B/s |",
        f"| CPU of all overlay processes | {o['cpu'] * 100:.0f} % of a core "
        f"({o['cpu'] * 1000 / o['hubs']:.1f} ms/s per hub) |",
        *(
            [
                f"| CPU while hub 0 published: the overlay's / the whole machine's | "
                f"{o['cpu_rounds'] * 100:.0f} % / {o['machine_rounds'] * 100:.0f} % of a core |"
            ]
            if "machine_rounds" in o
            else []
        ),
        *(
            [
                f"| GossipSub mesh after the rounds: components, mean degree | "
                f"{len(o['mesh_components'])} ({', '.join(map(str, o['mesh_components']))} "
                f"hubs), {o['mesh_degree']:.1f} |"
            ]
            if "mesh_components" in o
            else []
        ),
        f"| load average before → ready → after | {o['load_before']} → {o['load_ready']} → "
        f"{o['load_after']} |",
        "",
    ]


def write_section(text: str) -> None:
    path = ROOT / "BENCHMARKS.md"
    doc = path.read_text() if path.exists() else "# Benchmarks\n"
    block = f"{START}\n{text.rstrip()}\n{END}\n"
    if START in doc and END in doc:
        head, rest = doc.split(START, 1)
        doc = head + block + rest.split(END, 1)[1].lstrip("\n")
    else:
        doc = doc.rstrip() + "\n\n" + block
    path.write_text(doc)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--miners", type=int, nargs="*", default=[100, 300, 1000])
    ap.add_argument("--steady", type=float, default=30.0, help="seconds of steady state")
    ap.add_argument("--hubs", type=int, default=100)
    ap.add_argument("--rounds", type=int, default=10)
    ap.add_argument("--window", type=float, default=30.0, help="seconds of gossip counted")
    ap.add_argument("--no-overlay", action="store_true")
    ap.add_argument("--no-write", action="store_true")
    ap.add_argument("--results", type=Path, help="JSON lines of earlier hub runs to include")
    ap.add_argument(
        "--overlay-results", type=Path, nargs="*", help="earlier overlay runs' output to include"
    )
    ap.add_argument("--overlay-procs", type=int, default=5, help="processes the hubs run in")
    ap.add_argument(
        "--announce",
        type=announce_arg,
        default=None,
        help="hubs' announce interval, seconds, or auto (the default, as in sonmhub)",
    )
    args = ap.parse_args()
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))  # stop what it started, then exit
    if not ISOLATED and os.geteuid() == 0 and shutil.which("unshare"):
        # Again in a network namespace of its own: the hub's bytes per miner can be read off
        # its loopback, and nothing else on the machine shares it.
        os.environ["SONM_SCALE_NETNS"] = "1"
        argv = [sys.executable, __file__, *sys.argv[1:]]
        shell = 'ip link set lo up && exec "$@"'
        os.execvp("unshare", ["unshare", "--net", "sh", "-c", shell, "sh", *argv])
    results = []
    if args.results:
        lines_in = args.results.read_text().splitlines()
        results = [json.loads(x) for x in lines_in if x.startswith('{"miners"')]
    for n in args.miners:
        print(f"== {n} light miners", flush=True)
        results.append(bench_hub(n, args.steady))
        print(json.dumps(results[-1]), flush=True)
    lines = [
        "## Scale: one hub, many miners; an overlay of hubs",
        "",
        f"Written by `make bench-scale` (`python bench/scale.py`) on {time.strftime('%Y-%m-%d')}.",
        f"Machine: {machine()}. See docs/SCALING.md for the capacity model built on these.",
        "",
    ]
    if results:
        lines += [
            "One `sonmhub` process (pings every 10 s, the default) and one `sonm-loadgen` "
            "running the light miners in one worker process per 250 (`--procs`; real miners on "
            "the memory runtime: own key, libp2p connection, Noise, session, ping answers), on "
            "127.0.0.1, in a network namespace of the benchmark's own. Listed: "
            "`ListMiners` shows them all online, timed from starting `sonm-loadgen`. Steady "
            f"state: hub CPU over {args.steady:.0f} s, 40 s after all are listed (pings only; "
            "per miner: its own CPU time, which load distorts least). Starts: "
            "100 clients at once, each `StartTask` on its own miner (memory runtime), until "
            "RUNNING. Restart: `kill -9` of the hub, a new `sonmhub` on the same home, until "
            "`ListMiners` shows every miner online again and the 100 tasks RUNNING.",
            "",
            *hub_table(results),
            "",
        ]
    if args.overlay_results:
        for path in args.overlay_results:
            found = [x for x in path.read_text().splitlines() if x.startswith('{"hubs"')]
            lines += overlay_lines(json.loads(found[-1]))
    elif not args.no_overlay:
        from bench.scale_overlay import bench_overlay

        print(f"== overlay of {args.hubs} hubs", flush=True)
        overlay = bench_overlay(
            args.hubs, args.overlay_procs, args.rounds, args.window, args.announce
        )
        overlay["isolated"] = ISOLATED
        print(json.dumps(overlay), flush=True)
        lines += overlay_lines(overlay)
    text = "\n".join(lines)
    print(text)
    if not args.no_write:
        write_section(text)


if __name__ == "__main__":
    with private_cli_agents():  # the `sonmcli list` runs' agents, stopped at the end
        main()
