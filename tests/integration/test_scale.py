"""One real hub, 100 light miners from one `sonm-loadgen` process (the scaled-down run of the
scale benchmark, `make bench-scale`): every miner is listed, pinged and runs a task; and
`sonm-loadgen --procs 2`, the miners split over two worker processes."""

from __future__ import annotations

import json
import os
import time
from concurrent import futures
from pathlib import Path

from sonm_p2p.client import HubClient
from sonm_p2p.identity import load_or_create
from sonm_p2p.model import RunSpec
from sonm_p2p.tasks import TaskState
from tests.harness import BIN, Network, wait_for

MINERS = 100


def test_a_hub_lists_pings_and_runs_tasks_on_100_light_miners(net: Network) -> None:
    t0 = time.monotonic()
    hub = net.hub(extra=["--ping-interval", "1s", "--no-mdns"])
    loadgen = net.spawn(
        "loadgen",
        [str(BIN / "sonm-loadgen"), "--hub", hub.p2p_target, "--miners", str(MINERS)]
        + ["--home", str(net.root / "light"), "--json", "--every", "0.5"],
    )
    client_home = net.root / "client"
    with HubClient(hub.grpc_target, identity=load_or_create(client_home)) as client:
        # Listed: every light miner online, as `sonmcli list` shows them.
        wait_for(
            lambda: sum(m.online for m in client.list_miners()) == MINERS,
            f"{MINERS} light miners online",
            timeout=45,
            every=0.5,
        )
        listed = {m["node_id"]: m for m in hub.cli_json("list")["miners"]}
        assert len(listed) == MINERS and all(m["online"] for m in listed.values())

        def reported_all() -> bool:  # the load generator's own count, printed every 0.5 s
            lines = [json.loads(x) for x in loadgen.output().splitlines() if x.startswith("{")]
            return any(x["connected"] == MINERS for x in lines if x["event"] == "progress")

        wait_for(reported_all, f"sonm-loadgen to report {MINERS} connected", timeout=10)

        # Pinged: each miner's last_seen moves on (a ping answered), none went offline.
        seen = {m.node_id: m.last_seen for m in client.list_miners()}
        wait_for(
            lambda: all(m.online and m.last_seen > seen[m.node_id] for m in client.list_miners()),
            "a ping round answered by every miner",
            timeout=20,
            every=0.5,
        )

        # A task on each: one through sonmcli, the rest at once through the hub's API.
        ids = sorted(listed)
        res = hub.cli("--json", "start", "--image", "sonm-test/web", "--miner", ids[0])
        assert res.returncode == 0, res.stderr
        first = json.loads(res.stdout.splitlines()[-1])["id"]
        with futures.ThreadPoolExecutor(16) as pool:
            started = list(
                pool.map(
                    lambda m: client.start_task(m, RunSpec(image="sonm-test/busybox")), ids[1:]
                )
            )
        tasks = {t.task_id: t for t in client.list_tasks()}
        assert {t.miner_id for t in tasks.values()} == set(ids)
        assert all(tasks[s.task_id].state is TaskState.RUNNING for s in started)
        assert tasks[first].state is TaskState.RUNNING
        running = {m["node_id"]: m["task_ids"] for m in hub.cli_json("list")["miners"]}
        assert all(len(running[m]) == 1 for m in ids)
    assert loadgen.alive(), loadgen.output()[-2000:]
    assert "missed a ping" not in hub.proc.output()
    print(f"\n{MINERS} light miners: listed, pinged and ran a task in {time.monotonic() - t0:.1f}s")


def _children(pid: int) -> list[int]:
    return [int(p) for p in Path(f"/proc/{pid}/task/{pid}/children").read_text().split()]


def _cmdline(pid: int) -> list[str]:
    return Path(f"/proc/{pid}/cmdline").read_bytes().decode().split("\0")


def test_loadgen_procs_splits_the_miners_over_worker_processes(net: Network) -> None:
    n = 20
    hub = net.hub(extra=["--ping-interval", "1s", "--no-mdns"])
    home = net.root / "light"
    loadgen = net.spawn(
        "loadgen",
        [str(BIN / "sonm-loadgen"), "--hub", hub.p2p_target, "--miners", str(n), "--procs", "2"]
        + ["--home", str(home), "--json", "--every", "0.5"],
    )
    with HubClient(hub.grpc_target, identity=load_or_create(net.root / "client")) as client:
        wait_for(
            lambda: sum(m.online for m in client.list_miners()) == n,
            f"{n} light miners online",
            timeout=60,
            every=0.5,
        )
        # Two workers, each with its own range of keys: together exactly m0000..m0019, and
        # the hub lists exactly those miners.
        workers = _children(loadgen.pid)
        assert len(workers) == 2, workers
        firsts = sorted(int(_cmdline(w)[_cmdline(w).index("--first") + 1]) for w in workers)
        assert firsts == [0, n // 2]
        keys = {load_or_create(home / f"m{i:04d}").node_id for i in range(n)}
        assert {m.node_id for m in client.list_miners()} == keys
        # Every miner runs a task, whichever process it lives in.
        ids = sorted(keys)
        with futures.ThreadPoolExecutor(8) as pool:
            started = list(
                pool.map(lambda m: client.start_task(m, RunSpec(image="sonm-test/busybox")), ids)
            )
        assert {t.miner_id for t in started} == keys
        assert all(t.state is TaskState.RUNNING for t in client.list_tasks())

    def reported_all() -> bool:  # the parent's sum of its workers' counts
        lines = [json.loads(x) for x in loadgen.output().splitlines() if x.startswith("{")]
        return any(x["connected"] == n for x in lines if x["event"] == "progress")

    wait_for(reported_all, f"sonm-loadgen to report {n} connected", timeout=10)
    # Stopping the parent stops its workers.
    assert loadgen.stop() == 0, loadgen.output()[-2000:]
    for w in workers:
        wait_for(lambda w=w: not Path(f"/proc/{w}").exists(), f"worker {w} to end", timeout=15)
    summary = [x for x in (json.loads(y) for y in loadgen.output().splitlines() if y[:1] == "{")]
    assert summary[-1]["event"] == "summary" and summary[-1]["connected"] == n
    assert os.path.isdir(home / f"m{n - 1:04d}") and not (home / f"m{n:04d}").exists()
