"""`sonm-devnet up --nat` (root): the network in namespaces behind NAT routers, used from the
machine with plain sonmcli, then taken away without a trace."""

from __future__ import annotations

import re
import subprocess
import urllib.request

import pytest

from sonm_p2p.devnet.natnet import MACHINE_IP
from tests.devnet_cli import DEVNET, devnet, fresh_shell, ok, running, status
from tests.harness import wait_for

pytestmark = pytest.mark.root


def _leftovers(base) -> dict:
    netns = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True).stdout
    mounts = open("/proc/self/mountinfo").read()
    link = subprocess.run(
        ["ip", "-4", "-o", "addr", "show", "to", f"{MACHINE_IP}/32"], capture_output=True, text=True
    ).stdout
    return {
        "processes": running(str(base)),
        "namespaces": [n for n in netns.split("\n") if n.startswith("sd")],
        "mounts": [m for m in mounts.splitlines() if str(base) in m],
        "machine link": link.strip(),
    }


@pytest.fixture
def base(tmp_path):
    root = tmp_path / "devnet"
    yield root
    devnet("down", "--dir", str(root))
    assert _leftovers(root) == {
        "processes": [], "namespaces": [], "mounts": [], "machine link": ""
    }  # fmt: skip


def test_nat_network_status_forward_and_down(base, web_image):
    out = ok(
        "up", "--dir", str(base), "--nat", "--miners", "2", "--hub-behind-nat", timeout=400
    )  # fmt: skip
    assert "hub-2" in out and "miner-2" in out, out
    rows = {r["name"]: r for r in status(base, "default")}
    hub1, hub2 = rows["hub-1"], rows["hub-2"]
    assert hub1["reachability"] == "public" and hub2["reachability"] == "private"
    m1, m2 = rows["miner-1"], rows["miner-2"]
    # miner-1 behind the port-preserving router, on the public hub: its own dial out
    assert (m1["nat_type"], m1["hub"], m1["path"]) == (
        "endpoint-independent", hub1["node_id"], "direct"
    )  # fmt: skip
    # miner-2 behind --random-fully, on the hub behind NAT: no punch works, the relay carries it
    assert (m2["nat_type"], m2["hub"], m2["path"]) == ("symmetric", hub2["node_id"], "relayed")

    # From the machine, in a fresh shell: a task on the NATed miner, reached by forward.
    env = f'eval "$({DEVNET} env --dir {base})"'
    res = fresh_shell(f"{env} && sonmcli start --image {web_image} --miner={m1['node_id']}")
    assert res.returncode == 0, res.stderr
    job = re.search(r"^ID ([^,]+),", res.stdout, re.M).group(1)
    assert "->10.1.0." in res.stdout  # published inside the miner's namespace
    fwd = subprocess.Popen(
        ["bash", "-c", f"{env} && exec sonmcli forward {job} 8080/tcp --local 127.0.0.1:0"],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        cwd="/",
        env={"HOME": "/root", "PATH": "/usr/bin:/bin"},
    )
    try:
        line = fwd.stdout.readline()  # type: ignore[union-attr]
        local = re.search(r"forwarding (\S+) ->", line)
        assert local, line
        url = f"http://{local.group(1)}/"
        body = wait_for(lambda: urllib.request.urlopen(url, timeout=3).read(), f"GET {url}")
        assert b"hello from a sonm task" in body
    finally:
        fwd.terminate()
        fwd.wait(timeout=30)
    assert [job] == rows_tasks(base, "miner-1")

    dup = devnet("up", "--dir", str(base), "--name", "other", "--nat", "--runtime", "memory")
    assert dup.returncode == 2 and "another --nat network is up" in dup.stderr, dup.stderr

    ok("down", "--dir", str(base), timeout=120)
    assert _leftovers(base) == {
        "processes": [], "namespaces": [], "mounts": [], "machine link": ""
    }  # fmt: skip


def rows_tasks(base, name: str) -> list[str]:
    return next(r["tasks"] for r in status(base, "default") if r["name"] == name)


def test_nat_without_root_or_with_hub_behind_nat_alone_is_one_line(base):
    res = devnet("up", "--dir", str(base), "--hub-behind-nat")
    assert res.returncode == 2 and res.stderr.count("\n") == 1, res.stderr
