"""`make run`'s demo, as a new user runs it."""

from __future__ import annotations

import os
import signal
import subprocess

from tests.conftest import needs_docker
from tests.harness import BIN

pytestmark = needs_docker


def _devnet_containers() -> list[str]:
    """IDs of the containers sonm-devnet's miners made (label sonm.devnet=1), running or not."""
    res = subprocess.run(
        ["docker", "ps", "-aq", "--filter", "label=sonm.devnet=1"],
        capture_output=True,
        text=True,
        check=True,
    )
    return res.stdout.split()


def test_devnet_demo_runs_a_task_and_cleans_up(tmp_path):
    res = subprocess.run(
        [str(BIN / "sonm-devnet"), "demo", "--exit", "--dir", str(tmp_path / "devnet")],
        capture_output=True,
        text=True,
        timeout=180,
        stdin=subprocess.DEVNULL,
    )
    assert res.returncode == 0, res.stdout + res.stderr
    out = res.stdout
    assert out.count("\nminer  0x") == 2
    assert "demo task started: ID " in out and "8080/tcp->127.0.0.1:" in out
    assert "hello from a sonm task" in out
    assert _devnet_containers() == []


def test_ctrl_c_stops_the_demo_task_before_the_network(tmp_path):
    # A terminal's Ctrl-C goes to the whole foreground process group. The hub and miners must
    # not take it themselves: the demo stops its task first (a miner that stops leaves its
    # containers running, to adopt them when it returns), then them.
    root = tmp_path / "devnet"
    proc = subprocess.Popen(
        [str(BIN / "sonm-devnet"), "demo", "--dir", str(root)],
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
        os.killpg(proc.pid, signal.SIGINT)
        out = "".join(lines) + proc.communicate(timeout=60)[0]
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
    assert proc.returncode == 0, out
    assert "demo task stopped; shutting the network down" in out, out
    assert _devnet_containers() == []
    running = subprocess.run(["pgrep", "-f", str(root)], capture_output=True, text=True)
    assert running.stdout.split() == [], running.stdout
