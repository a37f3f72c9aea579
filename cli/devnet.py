"""``sonm-devnet``: a hub and miners as processes on this machine, and a demo task."""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from pathlib import Path

import click

from cli._common import SonmGroup
from sonm_p2p.client import HubClient
from sonm_p2p.errors import SonmError, Timeout
from sonm_p2p.identity import load_or_create
from sonm_p2p.model import RunSpec
from sonm_p2p.tasks import format_endpoints

BIN = Path(sys.executable).parent
DEMO_IMAGE = "sonm-test/web:latest"


def _port_free(port: int) -> bool:
    with socket.socket() as s:
        try:
            s.bind(("127.0.0.1", port))
        except OSError:
            return False
        return True


def _pick(port: int) -> int:
    if _port_free(port):
        return port
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _pick_udp(port: int) -> int:
    """``port`` when it and the next one (the hub's second STUN port) are free, else 0 (the
    hub then takes two free ports)."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as a:
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as b:
            try:
                a.bind(("127.0.0.1", port))
                b.bind(("127.0.0.1", port + 1))
                return port
            except OSError:
                return 0


class Devnet:
    """Processes started here are stopped (by PID) in :meth:`close`."""

    def __init__(self, root: Path, miners: int, runtime: str) -> None:
        self.root = root
        self.n_miners = miners
        self.runtime = runtime
        self.procs: list[subprocess.Popen] = []
        self.grpc_port = _pick(10001)
        self.p2p_port = _pick(10002)
        self.stun_port = _pick_udp(3478)

    @property
    def hub_target(self) -> str:
        return f"127.0.0.1:{self.grpc_port}"

    def _spawn(self, name: str, argv: list[str]) -> subprocess.Popen:
        log = open(self.root / f"{name}.log", "ab")  # noqa: SIM115 - lives as long as the process
        # everything stays on this machine: loopback listens, mDNS on loopback only
        env = {
            **os.environ,
            "SONM_P2P_LISTEN": "/ip4/127.0.0.1/tcp/0",
            "SONM_MDNS_INTERFACES": "127.0.0.1",
        }
        # Its own session: Ctrl-C (or a SIGTERM to the group) reaches sonm-devnet alone, which
        # stops the demo task while the miner still runs, then stops each process by PID.
        proc = subprocess.Popen(
            argv,
            stdout=log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            env=env,
            start_new_session=True,
        )
        self.procs.append(proc)
        return proc

    def up(self, timeout: float = 60) -> HubClient:
        self._spawn(
            "hub",
            [
                str(BIN / "sonmhub"),
                "--home",
                str(self.root / "hub"),
                "--grpc-listen",
                self.hub_target,
                "--p2p-listen",
                f"/ip4/127.0.0.1/tcp/{self.p2p_port}",
                "--stun-listen",
                f"127.0.0.1:{self.stun_port}",
            ],
        )
        client = HubClient(
            self.hub_target, timeout=5, identity=load_or_create(self.root / "client")
        )
        _wait(lambda: client.ping() is not None, "the hub to answer", timeout)
        for i in range(1, self.n_miners + 1):
            self._spawn(
                f"miner{i}",
                [
                    str(BIN / "sonmminer"),
                    "-h",
                    f"127.0.0.1:{self.p2p_port}",
                    "--home",
                    str(self.root / f"miner{i}"),
                    "--publish-ip",
                    "127.0.0.1",
                    "--runtime",
                    self.runtime,
                    "--label",
                    "sonm.devnet=1",
                ],
            )
        _wait(
            lambda: sum(m.online for m in client.list_miners()) >= self.n_miners,
            f"{self.n_miners} miners to connect",
            timeout,
        )
        return client

    def close(self) -> None:
        for p in reversed(self.procs):
            if p.poll() is None:
                p.send_signal(signal.SIGTERM)
        for p in self.procs:
            try:
                p.wait(timeout=15)
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait()


def _wait(cond, what: str, timeout: float) -> None:  # noqa: ANN001
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            if cond():
                return
        except SonmError:
            pass
        time.sleep(0.1)
    raise Timeout(f"timed out after {timeout:.0f}s waiting for {what}")


@click.group(cls=SonmGroup, context_settings={"help_option_names": ["-h", "--help"]})
def main() -> None:
    """A local sonm network: a hub and miners as processes on 127.0.0.1."""


@main.command()
@click.option("--miners", default=2, show_default=True, help="How many miners to start.")
@click.option("--exit", "exit_after", is_flag=True, help="Stop everything after the demo.")
@click.option(
    "--dir",
    "root",
    type=click.Path(path_type=Path),
    default=None,
    help="Keep homes and logs here (default: a temp dir, removed at the end).",
)
@click.option(
    "--runtime",
    type=click.Choice(["docker", "memory"]),
    default="docker",
    show_default=True,
    help="The miners' container engine.",
)
def demo(miners: int, exit_after: bool, root: Path | None, runtime: str) -> None:
    """Bring up a hub and miners, run a web task on one, show how to reach it.

    Runs until Ctrl-C (or returns at once with --exit); then stops the task and every process.
    """
    tmp = root is None
    root = root or Path(tempfile.mkdtemp(prefix="sonm-devnet-"))
    root.mkdir(parents=True, exist_ok=True)
    net = Devnet(root, miners, runtime)
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    try:
        click.echo(f"starting a hub and {miners} miners (logs in {root}) ...")
        client = net.up()
        ids = sorted(m.node_id for m in client.list_miners() if m.online)
        click.echo(
            f"hub    {client.info().node_id}  gRPC {net.hub_target}  "
            f"overlay /ip4/127.0.0.1/tcp/{net.p2p_port}"
        )
        for mid in ids:
            click.echo(f"miner  {mid}")
        client.timeout = 300
        task = client.start_task(ids[0], RunSpec(image=DEMO_IMAGE))
        # From here Ctrl-C means "stop the demo", whenever it comes: the task is stopped first.
        signal.signal(signal.SIGINT, lambda *_: stop.set())
        click.echo(
            f"demo task started: ID {task.task_id}, Endpoint {format_endpoints(task.endpoints)}"
        )
        web = next((e for e in task.endpoints if e.protocol == "tcp"), None)
        if web is not None and runtime == "docker":
            url = f"http://{web.host_ip}:{web.host_port}/"
            body = _fetch(url)
            click.echo(f"fetched {url}: {body.strip()}")
        cli = f"sonmcli --hub {net.hub_target} --home {root / 'client'}"
        click.echo("\ntry:")
        click.echo(f"  {cli} list")
        click.echo(f"  {cli} status {task.task_id}")
        click.echo(f"  {cli} stop {task.task_id}")
        if not exit_after:
            click.echo("\nthe network runs until Ctrl-C")
            stop.wait()
        try:
            client.stop_task(task.task_id)
            click.echo("demo task stopped; shutting the network down")
        except SonmError as exc:  # stopped by the user already, or the hub is gone
            click.echo(f"demo task not stopped ({exc}); shutting the network down")
    finally:
        net.close()
        if tmp:
            shutil.rmtree(root, ignore_errors=True)


def _fetch(url: str, timeout: float = 20) -> str:
    deadline = time.monotonic() + timeout
    while True:
        try:
            return urllib.request.urlopen(url, timeout=2).read().decode(errors="replace")
        except OSError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.1)


if __name__ == "__main__":
    main()
