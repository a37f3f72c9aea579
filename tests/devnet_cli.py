"""Running ``sonm-devnet`` (and a fresh shell) as a user does, for the devnet tests."""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

from tests.harness import BIN

DEVNET = str(BIN / "sonm-devnet")


def devnet(*args: str, timeout: float = 180) -> subprocess.CompletedProcess:
    return subprocess.run(
        [DEVNET, *args], capture_output=True, text=True, timeout=timeout, stdin=subprocess.DEVNULL
    )


def ok(*args: str, timeout: float = 180) -> str:
    res = devnet(*args, timeout=timeout)
    assert res.returncode == 0, res.stdout + res.stderr
    return res.stdout


def fresh_shell(script: str) -> subprocess.CompletedProcess:
    """``script`` in bash with nothing of ours in its environment, run from /."""
    return subprocess.run(
        ["bash", "-c", script],
        capture_output=True,
        text=True,
        timeout=120,
        cwd="/",
        env={
            "HOME": os.environ.get("HOME", "/root"),
            "PATH": "/usr/bin:/bin",
            # where the test run keeps the sonmcli agents it stops at its end (tests/conftest.py)
            **{k: v for k, v in os.environ.items() if k == "SONM_CLI_AGENT_DIR"},
        },
    )


def running(pattern: str) -> list[str]:
    res = subprocess.run(["pgrep", "-f", pattern], capture_output=True, text=True)
    return res.stdout.split()


def status(base: Path, name: str) -> list[dict]:
    return json.loads(ok("status", "--json", "--dir", str(base), "--name", name))
