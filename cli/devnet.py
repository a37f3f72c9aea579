"""``sonm-devnet``: a local network of hubs and miners (up, status, env, logs, down, demo).

Thin over :mod:`sonm_p2p.devnet`, which starts, finds and stops the processes.
"""

from __future__ import annotations

import shlex
import signal
import sys
import threading
import time
import urllib.request
from collections.abc import Callable
from pathlib import Path
from typing import Any

import click

from cli._common import SonmGroup, emit_json, no_birthday_punch_option, version_option
from sonm_p2p.devnet import Devnet, DevnetOptions, default_dir, env_lines, render_table
from sonm_p2p.devnet.network import BIN_DIR
from sonm_p2p.errors import SonmError
from sonm_p2p.model import RunSpec
from sonm_p2p.tasks import format_endpoints

DEMO_IMAGE = "sonm-test/web:latest"


@click.group(cls=SonmGroup, context_settings={"help_option_names": ["-h", "--help"]})
@version_option()
def main() -> None:
    """A local sonm network: hubs and miners as background processes on this machine.

    \b
      sonm-devnet up --hubs 2 --miners 3        # returns once all are up; prints a table
      eval "$(sonm-devnet env)"                 # then plain `sonmcli list` talks to it
      sonm-devnet status [--json]
      sonm-devnet logs miner-1 [-f]
      sonm-devnet down

    Several networks run side by side under different --name (every port is picked free).
    """


def _network_options(f: Callable[..., Any]) -> Callable[..., Any]:
    f = click.option(
        "--dir",
        "base",
        type=click.Path(path_type=Path),
        default=None,
        help="Where networks keep their state, homes and logs (one directory per name) "
        "[default: $SONM_DEVNET_DIR, $SONM_HOME/devnet or ~/.sonm/devnet].",
    )(f)
    return click.option(
        "--name", default="default", show_default=True, help="Which network (any number run)."
    )(f)


def _devnet(name: str, base: Path | None) -> Devnet:
    return Devnet(base or default_dir(), name)


def _env_command(net: Devnet) -> str:
    argv = [str(BIN_DIR / "sonm-devnet"), "env", "--name", net.name, "--dir", str(net.base)]
    return f'eval "$({shlex.join(argv)})"'


def _print_up(net: Devnet) -> None:
    rows = net.status()
    click.echo(render_table(rows))
    for row in rows:
        if row.get("url"):
            click.echo(f"page of {row['name']}: {row['url']}")
    click.echo(f"\nlogs and homes in {net.root}; in any shell, to use it with plain sonmcli:")
    click.echo(f"  {_env_command(net)}")
    click.echo("  sonmcli hubs; sonmcli list")


def _shape_options(f: Callable[..., Any]) -> Callable[..., Any]:
    f = click.option(
        "--runtime",
        type=click.Choice(["docker", "memory"]),
        default="docker",
        show_default=True,
        help="The miners' container engine (memory: a fake one, for many miners).",
    )(f)
    f = click.option(
        "--miners", type=int, default=2, show_default=True, help="Miners (they find a hub)."
    )(f)
    return click.option(
        "--hubs", type=int, default=1, show_default=True, help="Hubs (chained by bootstrap)."
    )(f)


@main.command()
@_network_options
@_shape_options
@click.option(
    "--nat",
    is_flag=True,
    help="(root) Every node in a network namespace of its own; miners split between a "
    "port-preserving NAT router and a symmetric one, each with a Docker engine of its own.",
)
@click.option(
    "--hub-behind-nat", is_flag=True, help="With --nat: one more hub, behind a third router."
)
@click.option(
    "--miners-per-process",
    type=int,
    default=1,
    show_default=True,
    metavar="K",
    help="Run miners K to a process (each with its own key, node and connection to its hub): "
    "less memory for many miners. Not with --nat.",
)
@click.option(
    "--chain",
    is_flag=True,
    help="A local Ethereum node (anvil, `make anvil`) with the hub registry: every hub is "
    "funded and registers with a stake; miners and `env`'s sonmcli trust registered hubs only.",
)
@click.option(
    "--timeout",
    type=float,
    default=0.0,
    help="Seconds to wait for every node [default: 60 + one per miner].",
)
@no_birthday_punch_option
def up(
    name: str,
    base: Path | None,
    hubs: int,
    miners: int,
    runtime: str,
    nat: bool,
    hub_behind_nat: bool,
    miners_per_process: int,
    chain: bool,
    timeout: float,
    no_birthday_punch: bool,
) -> None:
    """Start a network in the background; return once every hub answers and every miner is
    listed on a hub, and print its nodes."""
    net = _devnet(name, base)
    t0 = time.monotonic()
    options = DevnetOptions(
        hubs=hubs,
        miners=miners,
        runtime=runtime,
        timeout=timeout,
        nat=nat,
        hub_behind_nat=hub_behind_nat,
        miners_per_process=miners_per_process,
        chain=chain,
        birthday_punch=not no_birthday_punch,
    )
    net.up(options, progress=lambda line: click.echo(line, err=True))
    click.echo(f"network {name} up in {time.monotonic() - t0:.1f}s\n", err=True)
    _print_up(net)


@main.command()
@_network_options
@click.option("--json", "as_json", is_flag=True, help="Print JSON (a list of node objects).")
def status(name: str, base: Path | None, as_json: bool) -> None:
    """One row per node: its ID, PID, whether it runs; a miner's hub, NAT type, path, tasks."""
    rows = _devnet(name, base).status()
    if as_json:
        emit_json(rows)
    else:
        click.echo(render_table(rows))


@main.command()
@_network_options
def env(name: str, base: Path | None) -> None:
    """Shell lines for `eval "$(sonm-devnet env)"`: sonmcli on PATH, talking to this network."""
    net = _devnet(name, base)
    for line in env_lines(net.record(), net.base):
        click.echo(line)


@main.command()
@_network_options
@click.argument("node")
@click.option("-f", "--follow", is_flag=True, help="Keep printing what it writes (Ctrl-C ends).")
def logs(name: str, base: Path | None, node: str, follow: bool) -> None:
    """Print the log of NODE (a name from status: hub-1, miner-2, ...)."""
    path = Path(_devnet(name, base).record().node(node).log)
    out = sys.stdout.buffer
    with open(path, "rb") as f:
        while True:
            chunk = f.read(65536)
            if chunk:
                out.write(chunk)
                out.flush()
            elif not follow:
                return
            else:
                time.sleep(0.2)


@main.command()
@_network_options
def down(name: str, base: Path | None) -> None:
    """Stop every task container, then every process of the network; remove its files.
    Works whatever crashed; a network that is not up is left as it is (exit 0)."""
    if _devnet(name, base).down():
        click.echo(f"network {name} is down")
    else:
        click.echo(f"network {name} was not up")


@main.command()
@_network_options
@_shape_options
@click.option("--exit", "exit_after", is_flag=True, help="Take it all down after the demo.")
def demo(
    name: str, base: Path | None, hubs: int, miners: int, exit_after: bool, runtime: str
) -> None:
    """`up`, then a web task on a miner and how to reach it; Ctrl-C takes the network down.

    With --exit the network goes down at once after the demo.
    """
    net = _devnet(name, base)
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    net.up(
        DevnetOptions(hubs=hubs, miners=miners, runtime=runtime),
        progress=lambda line: click.echo(line),
    )
    try:
        _print_up(net)
        rec = net.record()
        with net.client(rec.hubs[0], timeout=300) as client:
            miner = rec.miners[0].node_id
            task = client.start_task(miner, RunSpec(image=DEMO_IMAGE))
            # From here Ctrl-C means "stop the demo", whenever it comes: the task goes first.
            signal.signal(signal.SIGINT, lambda *_: stop.set())
            click.echo(
                f"\ndemo task started on {rec.miners[0].name}: ID {task.task_id}, "
                f"Endpoint {format_endpoints(task.endpoints)}"
            )
            web = next((e for e in task.endpoints if e.protocol == "tcp"), None)
            if web is not None and runtime == "docker":
                url = f"http://{web.host_ip}:{web.host_port}/"
                click.echo(f"fetched {url}: {_fetch(url).strip()}")
            click.echo("\nreach it from any shell:")
            click.echo(f"  {_env_command(net)}")
            click.echo(f"  sonmcli status {task.task_id}")
            click.echo(f"  sonmcli logs {task.task_id}")
            if web is not None and runtime == "docker":
                click.echo(f"  curl {url}")
            if not exit_after:
                click.echo("\nthe network runs until Ctrl-C")
                stop.wait()
            try:
                client.stop_task(task.task_id)
                click.echo("demo task stopped; taking the network down")
            except SonmError as exc:  # stopped by the user already, or the hub is gone
                click.echo(f"demo task not stopped ({exc}); taking the network down")
    finally:
        net.down()


@main.command("_miner-group", hidden=True)
@click.argument("spec", type=click.Path(path_type=Path, exists=True))
def miner_group(spec: Path) -> None:
    """Run the miners of SPEC (written by `up --miners-per-process`) until SIGTERM."""
    from cli._common import serve_until_signalled, setup_logging
    from sonm_p2p.devnet.minergroup import start_group

    setup_logging(False)
    daemons = []

    def start() -> None:
        daemons.extend(start_group(spec))

    def close() -> None:
        for daemon in reversed(daemons):
            daemon.close()

    serve_until_signalled(start, close, "sonm-devnet miners")


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
