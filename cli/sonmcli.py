"""``sonmcli``: the user's tool. Thin over :class:`sonm_p2p.client.HubClient`."""

from __future__ import annotations

import json
import re
import time
from pathlib import Path
from typing import Any

import click

from cli._common import Duration, SonmGroup, default_home, emit_json
from sonm_p2p.client import HubClient
from sonm_p2p.errors import ConfigError
from sonm_p2p.identity import load_or_create
from sonm_p2p.miner.runtime import RunSpec
from sonm_p2p.tasks import Task, format_endpoints
from sonm_p2p.transport.addrs import parse_hostport

DEFAULT_HUB = "127.0.0.1:10001"
_SIZE = {"": 1, "b": 1, "k": 1024, "m": 1024**2, "g": 1024**3}


class _Ctx:
    def __init__(self, hub: str, timeout: float, as_json: bool, home: Path) -> None:
        self.hub, self.timeout, self.as_json, self.home = hub, timeout, as_json, home

    def client(self) -> HubClient:
        host, port = parse_hostport(self.hub, default_port=10001)
        target = f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
        client_id = load_or_create(self.home).node_id
        return HubClient(target, timeout=self.timeout, client_id=client_id)


def _task_json(t: Task) -> dict[str, Any]:
    return {
        "id": t.task_id,
        "miner": t.miner_id,
        "image": t.image,
        "state": t.state.value,
        "endpoints": [
            {
                "port": f"{e.container_port}/{e.protocol}",
                "host": e.host_ip,
                "host_port": e.host_port,
            }
            for e in t.endpoints
        ],
        "exit_code": t.exit_code,
        "error": t.error,
        "owner": t.owner,
        "created_at": t.created_at,
        "updated_at": t.updated_at,
        "container_id": t.container_id,
    }


def _when(ts: float) -> str:
    return time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(ts)) if ts else "-"


@click.group(cls=SonmGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.option(
    "--hub",
    envvar="SONM_HUB",
    default=DEFAULT_HUB,
    show_default=True,
    metavar="HOST:PORT",
    help="The hub's client API (port 10001). Env: SONM_HUB.",
)
@click.option(
    "--timeout",
    type=Duration(),
    default="60s",
    show_default=True,
    help="Deadline of the whole command (e.g. 30s, 5m, 3000s).",
)
@click.option("--json", "as_json", is_flag=True, help="Print JSON instead of text.")
@click.option(
    "--home",
    type=click.Path(path_type=Path),
    default=None,
    help="Where this client's key lives [default: $SONM_HOME/client or ~/.sonm/client].",
)
@click.pass_context
def main(ctx: click.Context, hub: str, timeout: float, as_json: bool, home: Path | None) -> None:
    """Talk to a sonm hub: see its miners, start, inspect and stop tasks.

    \b
    Examples:
      sonmcli --hub 192.0.2.10:10001 ping
      sonmcli --hub 192.0.2.10:10001 list
      sonmcli --hub 192.0.2.10:10001 --timeout=3000s start --image IMG --miner=0xMINER
      sonmcli --hub 192.0.2.10:10001 stop JOBID

    Exit codes: 0 ok, 2 bad usage or config, 3 not found, 4 unreachable,
    5 timed out, 6 refused, 7 the miner's container engine failed.
    """
    ctx.obj = _Ctx(hub, timeout, as_json, home or default_home("client"))


@main.command()
@click.pass_obj
def ping(c: _Ctx) -> None:
    """Check that the hub is reachable and alive (prints OK)."""
    with c.client() as client:
        rtt = client.ping()
    if c.as_json:
        emit_json({"status": "OK", "hub": c.hub, "rtt_ms": round(rtt * 1000, 3)})
    else:
        click.echo("OK")


@main.command()
@click.pass_obj
def info(c: _Ctx) -> None:
    """Show the hub's identity, addresses and load."""
    with c.client() as client:
        i = client.info()
    if c.as_json:
        emit_json(i.__dict__ | {"multiaddrs": list(i.multiaddrs)})
        return
    click.echo(f"Hub        {i.node_id}")
    click.echo(f"Peer ID    {i.peer_id}")
    click.echo(f"gRPC       {i.grpc_endpoint}")
    for a in i.multiaddrs:
        click.echo(f"Overlay    {a}")
    click.echo(f"Miners     {i.miners_online} online")
    click.echo(f"Version    {i.version}, up {i.uptime_seconds}s")


@main.command("list")
@click.option(
    "--all", "show_all", is_flag=True, help="Include offline miners (with --json: always)."
)
@click.pass_obj
def list_(c: _Ctx, show_all: bool) -> None:
    """Miners connected to the hub, each with its tasks."""
    with c.client() as client:
        miners = client.list_miners()
    if c.as_json:
        emit_json({"miners": [m.__dict__ | {"task_ids": list(m.task_ids)} for m in miners]})
        return
    shown = {m.node_id: {"values": list(m.task_ids)} for m in miners if m.online or show_all}
    click.echo("Connected Miners")
    click.echo(json.dumps(shown, indent=2))


def _parse_env(values: tuple[str, ...]) -> dict[str, str]:
    env = {}
    for v in values:
        k, sep, val = v.partition("=")
        if not sep or not k:
            raise ConfigError(f"--env {v!r}: expected KEY=VALUE")
        env[k] = val
    return env


def _parse_size(text: str | None) -> int:
    if not text:
        return 0
    m = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([bkmg]?)i?b?\s*", text.lower())
    if not m:
        raise ConfigError(f"--memory {text!r}: expected a size like 512m or 2g")
    return int(float(m.group(1)) * _SIZE[m.group(2)])


@main.command(context_settings={"ignore_unknown_options": False})
@click.option("--image", required=True, help="Docker image to run (must have ENTRYPOINT or CMD).")
@click.option("--miner", required=True, help="Miner node ID, or a unique prefix of it.")
@click.option("--env", "env", multiple=True, metavar="KEY=VALUE", help="Environment (repeatable).")
@click.option("--cpu", type=float, default=0.0, help="CPU cores the task may use (0: no limit).")
@click.option("--memory", default=None, help="Memory limit, e.g. 512m, 2g (default: no limit).")
@click.argument("command", nargs=-1)
@click.pass_obj
def start(
    c: _Ctx,
    image: str,
    miner: str,
    env: tuple[str, ...],
    cpu: float,
    memory: str | None,
    command: tuple[str, ...],
) -> None:
    """Start IMAGE on a miner; prints the job ID and where its ports are.

    Anything after the options (use `--` first) replaces the image's CMD.
    """
    spec = RunSpec(
        image=image,
        command=command,
        env=_parse_env(env),
        cpus=cpu,
        memory_bytes=_parse_size(memory),
    )
    with c.client() as client:
        t = client.start_task(miner, spec)
    if c.as_json:
        emit_json(
            {
                "id": t.task_id,
                "miner": t.miner_id,
                "endpoints": [
                    {
                        "port": f"{e.container_port}/{e.protocol}",
                        "host": e.host_ip,
                        "host_port": e.host_port,
                    }
                    for e in t.endpoints
                ],
            }
        )
    else:
        click.echo(f"ID {t.task_id}, Endpoint {format_endpoints(t.endpoints)}")


@main.command()
@click.argument("job")
@click.pass_obj
def stop(c: _Ctx, job: str) -> None:
    """Stop a task (gracefully, then killed) and remove its container."""
    with c.client() as client:
        t = client.stop_task(job)
    if c.as_json:
        emit_json(_task_json(t))
    else:
        code = f" (exit code {t.exit_code})" if t.exit_code is not None else ""
        click.echo(f"{t.task_id} {t.state.value}{code}")


@main.command()
@click.argument("job")
@click.pass_obj
def status(c: _Ctx, job: str) -> None:
    """Show one task: state, miner, endpoints, exit code or error."""
    with c.client() as client:
        t = client.task_status(job)
    if c.as_json:
        emit_json(_task_json(t))
        return
    click.echo(f"ID         {t.task_id}")
    click.echo(f"State      {t.state.value}")
    click.echo(f"Miner      {t.miner_id}")
    click.echo(f"Image      {t.image}")
    click.echo(f"Endpoint   {format_endpoints(t.endpoints)}")
    if t.exit_code is not None:
        click.echo(f"Exit code  {t.exit_code}")
    if t.error:
        click.echo(f"Error      {t.error}")
    click.echo(f"Owner      {t.owner or '-'}")
    click.echo(f"Created    {_when(t.created_at)}")
    click.echo(f"Updated    {_when(t.updated_at)}")


@main.command()
@click.option("--miner", default="", help="Only this miner's tasks (node ID or prefix).")
@click.pass_obj
def tasks(c: _Ctx, miner: str) -> None:
    """Every task the hub knows, oldest first."""
    with c.client() as client:
        ts = client.list_tasks(miner)
    if c.as_json:
        emit_json({"tasks": [_task_json(t) for t in ts]})
        return
    if not ts:
        click.echo("no tasks")
        return
    click.echo(f"{'ID':36}  {'STATE':8}  {'MINER':12}  {'IMAGE':24}  ENDPOINTS")
    for t in ts:
        click.echo(
            f"{t.task_id:36}  {t.state.value:8}  {t.miner_id[:12]:12}  "
            f"{t.image[:24]:24}  {format_endpoints(t.endpoints)}"
        )


if __name__ == "__main__":
    main()
