"""`sonm-devnet` as a user runs it: real processes, real ports, a real shell."""

from __future__ import annotations

import json
import os
import signal
import subprocess
from pathlib import Path

import pytest

from tests.conftest import needs_docker
from tests.devnet_cli import DEVNET, devnet, fresh_shell, ok, running, status
from tests.harness import wait_for


def _devnet_containers(name: str) -> list[str]:
    """Containers of network ``name`` (label sonm.devnet=<name>-<token>), running or not."""
    res = subprocess.run(
        ["docker", "ps", "-a", "--filter", "label=sonm.devnet", "--format",
         '{{.ID}} {{.Label "sonm.devnet"}}'],
        capture_output=True,
        text=True,
        check=True,
    )  # fmt: skip
    return [line for line in res.stdout.splitlines() if line.split()[1].startswith(f"{name}-")]


@pytest.fixture
def base(tmp_path) -> Path:
    """A devnet directory whose networks are all taken down at the end, whatever happened."""
    root = tmp_path / "devnet"
    yield root
    for state in root.glob("*/state.json"):
        devnet("down", "--dir", str(root), "--name", state.parent.name)
    assert running(str(root)) == []


def test_up_status_env_logs_down(base):
    out = ok("up", "--dir", str(base), "--hubs", "2", "--miners", "3", "--runtime", "memory")
    for node in ("hub-1", "hub-2", "miner-1", "miner-2", "miner-3"):
        assert f"\n{node} " in out, out
    rows = status(base, "default")
    assert [r["role"] for r in rows] == ["hub", "hub", "miner", "miner", "miner"]
    hubs = {r["node_id"]: r for r in rows if r["role"] == "hub"}
    for r in rows:
        assert r["alive"] is True and r["pid"] > 0 and r["node_id"].startswith("0x"), r
        assert r["addresses"], r
    for m in (r for r in rows if r["role"] == "miner"):
        assert m["hub"] in hubs and m["path"] == "direct" and m["tasks"] == [], m
        assert m["nat_type"], m
    assert {r["hub"] for r in rows if r["role"] == "miner"} == set(hubs)  # both hubs get miners

    # a fresh shell, no venv, another directory: sonmcli talks to the network after eval
    env_cmd = f'eval "$({DEVNET} env --dir {base})"'
    res = fresh_shell(f"{env_cmd} && sonmcli --json hubs && sonmcli list --json")
    assert res.returncode == 0, res.stderr
    found, end = json.JSONDecoder().raw_decode(res.stdout)
    listed = json.loads(res.stdout[end:])["miners"]
    first_hub_miners = {r["node_id"] for r in rows if r.get("hub_name") == "hub-1"}
    assert {m["node_id"] for m in listed if m["online"]} == first_hub_miners, res.stdout
    assert {h["node_id"] for h in found["hubs"]} == set(hubs)

    log = ok("logs", "--dir", str(base), "miner-2")
    assert "online" in log or "hub" in log, log
    bad = devnet("logs", "--dir", str(base), "miner-9")
    assert bad.returncode == 2 and bad.stderr.count("\n") == 1, bad.stderr

    again = devnet("up", "--dir", str(base), "--runtime", "memory")
    assert again.returncode == 2 and again.stderr.count("\n") == 1, again.stderr
    assert "up already" in again.stderr
    assert all(r["alive"] for r in status(base, "default"))  # the refusal touched nothing

    tmpdir = json.loads((base / "default" / "state.json").read_text())["tmpdir"]
    assert "network default is down" in ok("down", "--dir", str(base))
    assert running(str(base)) == [] and not (base / "default").exists()
    assert not Path(tmpdir).exists()
    assert "was not up" in ok("down", "--dir", str(base))  # idempotent


def test_two_networks_side_by_side_and_down_after_kill_9(base):
    ok("up", "--dir", str(base), "--name", "one", "--miners", "1", "--runtime", "memory")
    ok("up", "--dir", str(base), "--name", "two", "--miners", "1", "--runtime", "memory")
    one, two = status(base, "one"), status(base, "two")
    assert set(one[0]["addresses"]).isdisjoint(two[0]["addresses"])
    assert all(r["alive"] for r in one + two)
    assert {r["node_id"] for r in one}.isdisjoint(r["node_id"] for r in two)

    hub = one[0]
    os.kill(hub["pid"], signal.SIGKILL)
    wait_for(lambda: not status(base, "one")[0]["alive"], "the killed hub to show as dead")
    ok("down", "--dir", str(base), "--name", "one")
    assert running(str(base / "one")) == []
    assert all(r["alive"] for r in status(base, "two"))  # the other network is untouched
    ok("down", "--dir", str(base), "--name", "two")
    assert running(str(base)) == [] and list(base.iterdir()) == []


@pytest.mark.parametrize(
    "args, words",
    [
        (["--hubs", "0"], "--hubs 0"),
        (["--miners", "-1"], "--miners -1"),
        (["--name", "A/b"], "--name"),
        (["--miners-per-process", "0"], "--miners-per-process 0"),
        (["--hub-behind-nat"], "needs --nat"),
    ],
)
def test_bad_counts_are_one_line_exit_2(base, args, words):
    res = devnet("up", "--dir", str(base), *args)
    assert res.returncode == 2, res.stdout + res.stderr
    assert res.stderr.count("\n") == 1 and words in res.stderr, res.stderr
    assert not base.exists() or not any(base.glob("*/state.json"))


@needs_docker
def test_devnet_demo_runs_a_task_and_cleans_up(tmp_path):
    base = tmp_path / "devnet"
    res = devnet("demo", "--exit", "--dir", str(base), "--name", "demo1")
    assert res.returncode == 0, res.stdout + res.stderr
    out = res.stdout
    assert out.count("\nminer-") == 2
    assert "demo task started on miner-1: ID " in out and "8080/tcp->127.0.0.1:" in out
    assert "hello from a sonm task" in out
    assert f'eval "$({DEVNET} env --name demo1 --dir {base})"' in out
    assert _devnet_containers("demo1") == []
    assert running(str(base)) == []


@needs_docker
def test_ctrl_c_stops_the_demo_task_and_the_network(tmp_path):
    # A terminal's Ctrl-C goes to the whole foreground process group. The hub and miners must
    # not take it themselves: the demo stops its task first (a miner that stops leaves its
    # containers running, to adopt them when it returns), then them. While it runs, the lines
    # it prints work as pasted into a new shell.
    base = tmp_path / "devnet"
    proc = subprocess.Popen(
        [DEVNET, "demo", "--dir", str(base), "--name", "demo2"],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        stdin=subprocess.DEVNULL,
        start_new_session=True,  # its own group, as a shell gives a foreground job
    )
    try:
        lines = []
        for line in proc.stdout:  # type: ignore[union-attr]
            lines.append(line)
            if "the network runs until Ctrl-C" in line:
                break
        else:
            raise AssertionError("".join(lines))
        text = "".join(lines)
        pasted = text.split("reach it from any shell:\n", 1)[1].split("\n\n", 1)[0]
        res = fresh_shell(" && ".join(x.strip() for x in pasted.splitlines()))
        assert res.returncode == 0, pasted + res.stdout + res.stderr
        assert "RUNNING" in res.stdout.upper() and "hello from a sonm task" in res.stdout
        os.killpg(proc.pid, signal.SIGINT)
        out = text + proc.communicate(timeout=60)[0]
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
        devnet("down", "--dir", str(base), "--name", "demo2")
    assert proc.returncode == 0, out
    assert "demo task stopped; taking the network down" in out, out
    assert _devnet_containers("demo2") == []
    assert running(str(base)) == []


def test_fifty_miners_come_up_and_go(base):
    # issue 12.7, with miners ten to a process (BENCHMARKS.md has one process per miner too)
    args = ("--miners", "50", "--miners-per-process", "10", "--runtime", "memory")
    ok("up", "--dir", str(base), *args, timeout=600)
    rows = status(base, "default")
    assert len(rows) == 51 and all(r["alive"] for r in rows)
    assert all(r["hub"] == rows[0]["node_id"] for r in rows[1:])
    assert len({r["pid"] for r in rows[1:]}) == 5 and len({r["node_id"] for r in rows}) == 51
    ok("down", "--dir", str(base), timeout=300)
    assert running(str(base)) == [] and list(base.iterdir()) == []


def test_down_after_up_itself_was_killed_mid_start_and_logs_follow(base):
    # `up` writes each process to the state as it starts it: kill -9 `up` half-way and `down`
    # still finds every process it had started.
    proc = subprocess.Popen(
        [DEVNET, "up", "--dir", str(base), "--miners", "3", "--runtime", "memory"],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
    state = base / "default" / "state.json"

    def miners_started() -> bool:
        nodes = json.loads(state.read_text())["nodes"] if state.exists() else []
        return sum(1 for n in nodes if n["role"] == "miner" and n["pid"]) == 3

    try:
        wait_for(miners_started, "up to start the miners", timeout=120)
        busy = devnet("up", "--dir", str(base), "--runtime", "memory")
        assert busy.returncode == 2 and busy.stderr.count("\n") == 1, busy.stderr
    finally:
        proc.kill()
        proc.wait()
    assert running(str(base))  # what it started runs on without it

    follow = subprocess.Popen(
        [DEVNET, "logs", "--dir", str(base), "-f", "hub-1"], stdout=subprocess.PIPE, text=True
    )
    try:
        first = follow.stdout.readline()  # type: ignore[union-attr]
        assert first.strip(), first
        assert follow.poll() is None  # -f: still following
    finally:
        follow.terminate()
        follow.wait(timeout=10)

    ok("down", "--dir", str(base))
    assert running(str(base)) == [] and list(base.iterdir()) == []


@pytest.mark.skipif(
    __import__("sonm_p2p.chain.devchain", fromlist=["anvil_path"]).anvil_path() is None,
    reason="needs anvil: run 'make anvil' (npm @foundry-rs/anvil)",
)
def test_up_with_a_chain_registers_every_hub_and_down_stops_the_node(base):
    ok("up", "--dir", str(base), "--name", "chain", "--chain", "--runtime", "memory",
       "--hubs", "2", "--miners", "2")  # fmt: skip
    rows = status(base, "chain")
    assert [r["role"] for r in rows] == ["chain", "hub", "hub", "miner", "miner"]
    chain = rows[0]
    assert chain["alive"] and chain["registry"].startswith("0x"), chain
    assert chain["addresses"][0].startswith("rpc http://127.0.0.1:"), chain
    assert [r["stake"] for r in rows if r["role"] == "hub"] == [1.0, 1.0]
    hubs = {r["node_id"] for r in rows if r["role"] == "hub"}
    assert {r["hub"] for r in rows if r["role"] == "miner"} <= hubs  # miners joined staked hubs

    # after env, plain sonmcli reads the same registry: both hubs registered, with their stake
    env_cmd = f'eval "$({DEVNET} env --dir {base} --name chain)"'
    res = fresh_shell(f"{env_cmd} && sonmcli chain hubs --json")
    assert res.returncode == 0, res.stderr
    listed = json.loads(res.stdout)
    assert listed["registry"] == chain["registry"], listed
    assert {h["node_id"] for h in listed["hubs"]} == hubs, res.stdout

    assert "network chain is down" in ok("down", "--dir", str(base), "--name", "chain")
    assert running(str(base)) == []
    wait_for(lambda: not Path(f"/proc/{chain['pid']}").exists(), "the chain node to stop")
