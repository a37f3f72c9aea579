"""sonmcli ping, info."""

from __future__ import annotations

import click

from cli._common import emit_json
from cli._context import CliContext


@click.command()
@click.pass_obj
def ping(c: CliContext) -> None:
    """Check that the hub is reachable and alive (prints OK)."""
    with c.client() as client:
        rtt = client.ping()
    if c.as_json:
        emit_json({"status": "OK", "hub": c.hub, "rtt_ms": round(rtt * 1000, 3)})
    else:
        click.echo("OK")


@click.command()
@click.pass_obj
def info(c: CliContext) -> None:
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
