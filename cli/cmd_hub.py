"""sonmcli ping, info."""

from __future__ import annotations

import click

from cli._common import Duration, emit_json
from cli._context import CliContext
from sonm_p2p.chain import format_eth
from sonm_p2p.client import HubSummary


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
    if i.reachability:
        how = " (reached through the relays below)" if i.reachability == "private" else ""
        click.echo(f"Reachable  {i.reachability}{how}")
    for a in i.multiaddrs:
        click.echo(f"Overlay    {a}")
    if i.stun_endpoints:
        click.echo(f"STUN       {' '.join(i.stun_endpoints)}")
    click.echo(f"Miners     {i.miners_online} online")
    click.echo(f"Version    {i.version}, up {i.uptime_seconds}s")


@click.command()
@click.option(
    "--wait",
    type=Duration(),
    default="3s",
    show_default=True,
    help="How long to listen to the overlay (one announcement period finds every hub).",
)
@click.pass_obj
def hubs(c: CliContext, wait: float) -> None:
    """Hubs known on the overlay: node ID, client API, miners, latency.

    With --hub HOST:PORT, that hub's own list is printed (no overlay needed); otherwise this
    command joins the overlay through --bootstrap peers and mDNS for --wait seconds. With a
    registry (--chain, --registry), its hubs are dialled too, and each hub's row says whether
    it is registered and with what stake (unregistered hubs are listed, not used).
    """
    from cli._discover import classify, discover_hubs, ping_endpoints

    registered = c.registered() if c.chain().enabled else None
    if c.hub and classify(c.hub) == "direct":
        with c.client() as client:
            found = client.list_hubs()
    else:
        from sonm_p2p.config import bootstrap_list, mdns_namespace

        boot = bootstrap_list(c.bootstrap, c.home)
        _, entries = discover_hubs(
            c.stack,
            boot,
            mdns_namespace(),
            wait=c.timeout,
            settle=wait,
            registered=registered,
        )
        found = [HubSummary.from_entry(e) for e in entries]
    rtts = ping_endpoints([h.grpc_endpoint for h in found if h.grpc_endpoint])
    rows = [h.with_latency(rtts.get(h.grpc_endpoint)) for h in found]

    def stake(node_id: str) -> int | None:
        return None if registered is None else registered.stake(node_id)

    if c.as_json:
        out = []
        for r in rows:
            d = r.as_dict()
            if registered is not None:
                held = stake(r.node_id)
                d["registered"] = held is not None
                d["stake"] = None if held is None else format_eth(held)
            out.append(d)
        emit_json({"hubs": out})
        return
    if not rows:
        click.echo("no hubs")
        return
    reg_head = f"  {'REGISTERED':10}  {'STAKE':>8}" if registered is not None else ""
    click.echo(
        f"{'NODE ID':42}  {'CLIENT API':21}  {'MINERS':>6}  {'LATENCY':>8}{reg_head}  OVERLAY"
    )
    for r in rows:
        lat = f"{r.latency * 1000:.1f}ms" if r.latency is not None else "-"
        # A hub behind NAT announces its LAN address too; others reach it through its relay.
        relayed = [a for a in r.multiaddrs if "/p2p-circuit/" in a]
        first = (relayed or list(r.multiaddrs) or ["-"])[0]
        reg_cols = ""
        if registered is not None:
            held = stake(r.node_id)
            yes, amount = ("yes", format_eth(held)) if held is not None else ("no", "-")
            reg_cols = f"  {yes:10}  {amount:>8}"
        click.echo(
            f"{r.node_id:42}  {r.grpc_endpoint:21}  {r.miners_online:6}  {lat:>8}{reg_cols}"
            f"  {first}"
        )


@click.command()
@click.pass_obj
def nat(c: CliContext) -> None:
    """What the transport sees from here: public address, NAT type, path to the hub, RTT.

    The NAT type comes from STUN against the hub's responder (RFC 5780 tests when the hub has a
    second address: sonmhub --stun-alternate) or else the mappings its two ports (3478 and 3479)
    and the other hubs it knows from discovery see: two ports of one IP tell a symmetric NAT
    from one that keeps its mapping, other IPs tell an address-dependent one. What the answers
    could not tell apart is said, and why. The path is how libp2p reached the hub (direct,
    relayed or hole-punched) and the RTT of a gRPC Ping over it.
    """
    from cli._natcheck import check, render

    with c.client() as client:
        report = check(client)
    if c.as_json:
        emit_json(report)
    else:
        click.echo(render(report))
