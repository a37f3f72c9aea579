"""A task under gVisor: ``sonmminer --runtime-class runsc`` on a real Docker engine that has
Debian's runsc registered, end to end through sonmhub and sonmcli (root only).

The machine's own engine is left as it is (other tests and people use it): the test starts a
private ``dockerd`` inside a network namespace of its own, with a daemon.json that registers
runsc the way this kernel needs it. Debian 12's runsc (2022) runs only on the ptrace platform,
and its default (netstack) networking fails on kernels from about 6.11 on (gVisor bug 10704), so
it is registered with ``--network=host``: the sandbox uses the container's own network
namespace, and published ports work.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from sonm_p2p.devnet.topology import (
    DockerEngine,
    Host,
    NsHub,
    NsMiner,
    Topology,
    runsc_processes,
)

pytestmark = pytest.mark.root

#: How a miner's engine registers gVisor here (see the module docstring).
RUNSC = {"path": "/usr/bin/runsc", "runtimeArgs": ["--platform=ptrace", "--network=host"]}
PAGE = "hello from a sonm task"


@pytest.fixture(scope="module")
def runsc() -> str:
    path = shutil.which("runsc")
    if path is None:
        pytest.skip("needs Debian's runsc: run `sudo make debs` (or `sudo make test`)")
    return path


class Box:
    """One namespace with a hub, a runsc miner on a private engine, and the owner's sonmcli."""

    def __init__(self, topo: Topology, host: Host, engine: DockerEngine, hub: NsHub) -> None:
        self.topo, self.host, self.engine, self.hub = topo, host, engine, hub
        self.owner = topo.workdir / "owner"
        self.miner: NsMiner | None = None

    def cli(self, *args: str, timeout: float = 120) -> dict:
        """``sonmcli --hub HUB --json ARGS`` as the owner: what it printed (the last line of
        ``start``)."""
        res = self.host.sonmcli(
            "--hub", self.hub.grpc_target, "--json", *args, home=self.owner, timeout=timeout
        )  # fmt: skip
        assert res.returncode == 0, (args, res.stdout[-2000:], res.stderr[-2000:])
        try:
            return json.loads(res.stdout)
        except json.JSONDecodeError:  # `start` prints progress lines first
            return json.loads(res.stdout.strip().splitlines()[-1])

    def logs(self, job: str) -> str:
        res = self.host.sonmcli("--hub", self.hub.grpc_target, "logs", job, home=self.owner)
        assert res.returncode == 0, res.stderr
        return res.stdout

    def start(self, image: str, *command: str) -> dict:
        assert self.miner is not None
        extra = ["--", *command] if command else []
        return self.cli("start", "--image", image, f"--miner={self.miner.node_id}", *extra)

    def inspect(self, job: str) -> dict:
        res = self.engine.docker("inspect", f"sonm-{job}")
        assert res.returncode == 0, res.stderr
        return json.loads(res.stdout)[0]


@pytest.fixture
def box(runsc: str, tmp_path: Path, request) -> Iterator[Box]:
    topo = Topology(tmp_path, prefix="sg")
    try:
        host = topo.public_host("box")
        images = ("sonm-test/busybox", "sonm-test/web")
        for image in images:
            if not _image_present(image):
                pytest.skip(f"needs dockerd and the {image} image: run `make images`")
        engine = host.docker_engine(images=images, config={"runtimes": {"runsc": RUNSC}})
        yield Box(topo, host, engine, host.start_hub())
        rep = getattr(request.node, "rep_call", None)
        if rep is not None and rep.failed:
            print(topo.logs())
    finally:
        topo.close()


def _image_present(image: str) -> bool:
    if shutil.which("dockerd") is None or shutil.which("docker") is None:
        return False
    res = subprocess.run(["docker", "image", "inspect", image], capture_output=True, timeout=30)
    return res.returncode == 0


def _http_get(host: Host, ip: str, port: int) -> str:
    with host.connect((ip, port)) as sock:
        sock.sendall(b"GET / HTTP/1.0\r\n\r\n")
        return b"".join(iter(lambda: sock.recv(65536), b"")).decode(errors="replace")


def test_a_task_runs_under_gvisor(box: Box):
    host, engine = box.host, box.engine
    assert "runsc" in json.loads(engine.docker("info", "--format", "{{json .Runtimes}}").stdout)
    began = time.monotonic()
    miner = box.miner = host.start_miner(
        box.hub.p2p_target, engine=engine, extra=["--runtime-class", "runsc"]
    )
    node_id = miner.node_id
    box.topo.wait(
        lambda: any(m["node_id"] == node_id and m["online"] for m in box.cli("list")["miners"]),
        "the runsc miner listed",
        timeout=60,
    )
    # The operator is told, at start, what keeps tasks apart.
    said = box.topo.wait(
        lambda: [ln for ln in miner.proc.output().splitlines() if "tasks are isolated by" in ln],
        "the miner's isolation line",
    )
    assert "runtime runsc;" in said[0] and "at most 10240 processes per task" in said[0], said

    # A web task: runs in a gVisor sandbox, its published port serves its page.
    web = box.start("sonm-test/web")
    listed_s = time.monotonic() - began
    job = web["id"]
    status = box.cli("status", job)
    assert status["state"] == "RUNNING", status
    host_config = box.inspect(job)["HostConfig"]
    assert host_config["Runtime"] == "runsc"
    assert host_config["PidsLimit"] == 10240 and host_config["CapDrop"] == ["ALL"]
    (port,) = [e for e in status["endpoints"] if e["port"] == "8080/tcp"]
    assert PAGE in _http_get(host, port["host"], port["host_port"])

    # A start that fails inside the sandbox (no such command) is refused, and leaves no sandbox.
    sandboxes = len(runsc_processes(engine.exec_root))
    bad = host.sonmcli(
        "--hub", box.hub.grpc_target, "start", "--image", "sonm-test/busybox",
        f"--miner={node_id}", "--", "/no/such/command", home=box.owner, timeout=120,
    )  # fmt: skip
    # As under runc: the image cannot run that command (FAILED_PRECONDITION), not INTERNAL.
    assert bad.returncode == 6, bad.stderr
    assert "cannot run its command" in bad.stderr and "/no/such/command" in bad.stderr
    box.topo.wait(
        lambda: len(runsc_processes(engine.exec_root)) <= sandboxes,
        "the failed start's sandbox to go",
        timeout=30,
    )

    # A command's output comes back, and it ran on gVisor's kernel, not the host's.
    began_task = time.monotonic()
    probe = box.start(
        "sonm-test/busybox", "sh", "-c", "dmesg | head -1; uname -r; echo done; sleep 600"
    )["id"]

    def output() -> str | None:
        text = box.logs(probe)
        return text if "done" in text else None

    out = box.topo.wait(output, "the probe's output", timeout=60)
    first_output_s = time.monotonic() - began_task
    assert "Starting gVisor" in out, out
    assert host.run("uname", "-r").stdout.strip() not in out.splitlines()  # gVisor's own kernel
    assert len(runsc_processes(engine.exec_root)) >= 4  # a sandbox and a gofer per task

    # Stop leaves nothing behind: no container, no sandbox process.
    for task in (job, probe):
        stopped = box.cli("stop", task)
        assert stopped["state"] == "STOPPED", stopped
        assert box.cli("status", task)["state"] == "STOPPED"
    left = engine.docker("ps", "-aq", "--filter", f"label=sonm.test={box.topo.tag}")
    assert left.returncode == 0 and left.stdout.strip() == ""
    box.topo.wait(lambda: not runsc_processes(engine.exec_root), "the sandboxes to end")
    print(
        f"\nrunsc: miner start to web task running {listed_s:.1f} s; "
        f"busybox start to its output {first_output_s:.1f} s"
    )
