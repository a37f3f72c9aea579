"""sonmcli list, miner-status."""

from __future__ import annotations

import json
import time

import click

from cli._common import emit_json
from cli._context import CliContext, task_json
from cli.cmd_shell import complete_miner


def _gib(n: int) -> str:
    return f"{n / (1 << 30):.1f} GiB" if n >= 1 << 30 else f"{n / (1 << 20):.0f} MiB"


@click.command("list")
@click.option("--all", "show_all", is_flag=True, help="Include offline miners (--json: always).")
@click.pass_obj
def list_(c: CliContext, show_all: bool) -> None:
    """Miners connected to the hub, each with its tasks."""
    with c.client() as client:
        miners = client.list_miners()
    if c.as_json:
        emit_json({"miners": [m.__dict__ | {"task_ids": list(m.task_ids)} for m in miners]})
        return
    shown = {m.node_id: {"values": list(m.task_ids)} for m in miners if m.online or show_all}
    click.echo("Connected Miners")
    click.echo(json.dumps(shown, indent=2))


@click.command("miner-status")
@click.argument("miner", shell_complete=complete_miner)
@click.pass_obj
def miner_status(c: CliContext, miner: str) -> None:
    """A miner's resources, what it offers, and what its tasks use."""
    with c.client() as client:
        r = client.miner_status(miner)
    s = r.status
    if c.as_json:
        emit_json({
            "miner": s.node_id, "online": r.online, "remote_addr": r.remote_addr,
            "last_seen": r.last_seen, "resources": s.info.__dict__,
            "offered": {"cpus": s.cpus_offered, "memory_bytes": s.memory_offered},
            "allocated": {"cpus": s.cpus_allocated, "memory_bytes": s.memory_allocated},
            "usage": [u.__dict__ for u in s.load],
            "tasks": [task_json(t) for t in s.tasks],
        })  # fmt: skip
        return
    ago = time.time() - r.last_seen if r.last_seen else 0
    where = f"online from {r.remote_addr}" if r.online else f"OFFLINE (last seen {ago:.0f}s ago)"
    click.echo(f"Miner      {s.node_id}")
    click.echo(f"State      {where}")
    click.echo(
        f"Engine     {s.info.version or '-'} {s.info.os}/{s.info.arch}, "
        f"{s.info.cpu_cores} cores, {_gib(s.info.memory_bytes)}"
    )
    if r.online:
        click.echo(f"Offers     {s.cpus_offered:g} CPUs, {_gib(s.memory_offered)}")
        click.echo(f"Allocated  {s.cpus_allocated:g} CPUs, {_gib(s.memory_allocated)}")
    if s.load:
        click.echo(f"\n{'TASK':36}  {'CPU%':>6}  {'MEMORY':>10}  {'LIMIT':>10}  CPUS")
        for u in s.load:
            limit = _gib(u.memory_limit) if u.memory_limit else "-"
            cpus = f"{u.cpus_limit:g}" if u.cpus_limit else "-"
            click.echo(
                f"{u.task_id:36}  {u.cpu_percent:6.1f}  {_gib(u.memory_bytes):>10}  "
                f"{limit:>10}  {cpus}"
            )
    elif r.online:
        click.echo("no running tasks")
