"""`make run`'s demo, as a new user runs it."""

from __future__ import annotations

import subprocess

from tests.conftest import needs_docker
from tests.harness import BIN

pytestmark = needs_docker


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
    left = subprocess.run(
        ["docker", "ps", "-aq", "--filter", "label=sonm.devnet=1"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout.split()
    assert left == []
