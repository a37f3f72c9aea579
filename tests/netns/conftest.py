"""Fixtures for tests in network namespaces behind emulated NAT routers (root only)."""

from __future__ import annotations

import os
import secrets
import shutil
import subprocess
from collections.abc import Iterator

import pytest

from sonm_p2p.devnet.topology import Topology

SKIP_REASON = "needs root and network namespaces: CI runs as root; run `sudo make test`"


def netns_unavailable_reason() -> str | None:
    """Why namespace tests cannot run here (not root, no ``ip netns``), or None when they can."""
    if os.geteuid() != 0:
        return "not root"
    probe = f"snprobe{secrets.token_hex(3)}"
    for argv in (["ip", "netns", "add", probe], ["ip", "netns", "del", probe], ["iptables", "-V"]):
        try:
            res = subprocess.run(argv, capture_output=True, text=True, timeout=30)
        except (OSError, subprocess.SubprocessError) as exc:
            return str(exc)
        if res.returncode != 0:
            return f"{' '.join(argv)}: {res.stderr.strip()}"
    return None


@pytest.fixture(scope="session")
def _netns_problem() -> str | None:
    return netns_unavailable_reason()


@pytest.fixture(autouse=True)
def _needs_netns(_netns_problem: str | None) -> None:
    if _netns_problem is not None:
        pytest.skip(f"{SKIP_REASON} ({_netns_problem})")


@pytest.fixture
def topo(tmp_path, request) -> Iterator[Topology]:
    """A fresh emulated internet; every namespace, process and engine removed at teardown."""
    topology = Topology(tmp_path)
    try:
        yield topology
    finally:
        rep = getattr(request.node, "rep_call", None)
        if rep is not None and rep.failed:
            print(topology.logs())
        topology.close()


def _image_present(image: str) -> bool:
    if shutil.which("dockerd") is None or shutil.which("docker") is None:
        return False
    res = subprocess.run(["docker", "image", "inspect", image], capture_output=True, timeout=30)
    return res.returncode == 0


@pytest.fixture(scope="session")
def web_image() -> str:
    """sonm-test/web on the machine's engine (to copy into per-namespace engines), or skip."""
    if not _image_present("sonm-test/web"):
        pytest.skip("needs dockerd and the sonm-test/web image: run `make images`")
    return "sonm-test/web"
