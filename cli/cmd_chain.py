"""sonmcli whoami, and sonmcli chain: deploy the hub registry, list it, leave it, withdraw.

web3 is imported inside the commands only (``sonm_p2p.chain.registry``): other commands never
pay for it.
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

import click

from cli._common import Duration, emit_json
from cli._context import CliContext
from sonm_p2p.chain import format_eth, parse_eth
from sonm_p2p.identity import Identity, load_or_create


@click.command()
@click.pass_obj
def whoami(c: CliContext) -> None:
    """This client's node ID: its Ethereum address (fund it to deploy a registry)."""
    node_id = c.identity().node_id
    if c.as_json:
        emit_json({"node_id": node_id, "home": str(c.home)})
    else:
        click.echo(node_id)


@click.group()
def chain() -> None:
    """The hub registry on chain (needs --chain URL; all but deploy need --registry 0x…).

    \b
    Examples:
      sonmcli --chain http://127.0.0.1:8545 chain deploy --min-stake 1 --unlock-delay 7d
      sonmcli --chain URL --registry 0xREG chain hubs
      sonmcli --chain URL --registry 0xREG chain deregister --key-home ~/.sonm/hub
    """


_key_home = click.option(
    "--key-home",
    type=click.Path(path_type=Path),
    default=None,
    metavar="DIR",
    help="Sign with the key in this home (a hub's: ~/.sonm/hub) [default: this client's].",
)


def _signer(c: CliContext, key_home: Path | None) -> Identity:
    return load_or_create(key_home) if key_home is not None else c.identity()


@chain.command()
@click.option(
    "--min-stake",
    default="1",
    show_default=True,
    metavar="ETH",
    help="Smallest stake a hub may register with.",
)
@click.option(
    "--unlock-delay",
    type=Duration(),
    default="7d",
    show_default=True,
    help="How long after deregistering a hub's stake stays locked.",
)
@click.pass_obj
def deploy(c: CliContext, min_stake: str, unlock_delay: float) -> None:
    """Deploy a hub registry from this client's key; prints its address."""
    from sonm_p2p.chain.registry import connect
    from sonm_p2p.chain.registry import deploy as deploy_registry
    from sonm_p2p.errors import ConfigError

    url = c.chain().url
    if not url:
        raise ConfigError("no chain: give --chain URL (or SONM_CHAIN)")
    wei = parse_eth(min_stake, "--min-stake")
    w3 = connect(url, timeout=min(c.timeout, 10.0))
    address = deploy_registry(
        w3, c.identity(), min_stake=wei, unlock_delay=int(unlock_delay), timeout=c.timeout
    )
    if c.as_json:
        emit_json(
            {"registry": address, "min_stake": format_eth(wei), "unlock_delay": int(unlock_delay)}
        )
    else:
        click.echo(f"Registry {address}")


@chain.command(name="hubs")
@click.option(
    "--wait",
    type=Duration(),
    default="3s",
    show_default=True,
    help="How long to listen to the overlay for the hubs' announcements; 0: do not join it.",
)
@click.pass_obj
def chain_hubs(c: CliContext, wait: float) -> None:
    """Registered hubs: stake, endpoints, and whether each announces on the overlay now."""
    from contextlib import suppress

    from cli._discover import _overlay
    from sonm_p2p.config import bootstrap_list, mdns_namespace
    from sonm_p2p.discovery.registered import RegisteredHubs

    reg = c.registry()
    assert reg is not None
    entries = reg.entries()
    registered = RegisteredHubs.of(entries)
    announcing: set[str] = set()
    if wait > 0 and len(registered):
        boot = bootstrap_list(c.bootstrap, c.home)
        _, gossip = _overlay(c.stack, boot, mdns_namespace(), registered)
        deadline = time.monotonic() + wait
        with suppress(Exception):
            gossip.wait_for_hubs(len(registered), timeout=wait)
        while time.monotonic() < deadline and len(announcing) < len(registered):
            announcing = {e.node_id.lower() for e in gossip.hubs()}
            time.sleep(0.1)
        announcing = {e.node_id.lower() for e in gossip.hubs()}
    rows = []
    for e in entries:
        row = e.as_dict()
        row["announcing"] = e.node_id.lower() in announcing
        row["skipped"] = registered.skipped.get(e.node_id, "")
        rows.append(row)
    if c.as_json:
        emit_json(
            {
                "registry": reg.address,
                "chain": reg.chain,
                "min_stake": format_eth(reg.min_stake()),
                "unlock_delay": reg.unlock_delay(),
                "hubs": rows,
                "skipped": len(registered.skipped),
            }
        )
        return
    if not rows:
        click.echo(f"no hubs registered in {reg.address}")
        return
    click.echo(f"{'NODE ID':42}  {'STAKE':>10}  {'ANNOUNCING':10}  {'CLIENT API':21}  OVERLAY")
    for r in rows:
        if r["skipped"]:
            continue
        first = r["multiaddrs"][0] if r["multiaddrs"] else "-"
        yes = "yes" if r["announcing"] else "no"
        ep = r["grpc_endpoint"] or "-"
        click.echo(f"{r['node_id']:42}  {r['stake']:>10}  {yes:10}  {ep:21}  {first}")
    for node_id, reason in registered.skipped.items():
        print(f"skipped {node_id}: {reason}", file=sys.stderr)


@chain.command()
@_key_home
@click.pass_obj
def deregister(c: CliContext, key_home: Path | None) -> None:
    """Leave the registry (signed with --key-home's key: a hub's); the stake unlocks later."""
    reg = c.registry()
    assert reg is not None
    signer = _signer(c, key_home)
    unlock = reg.deregister(signer)
    when = time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime(unlock))
    if c.as_json:
        emit_json({"node_id": signer.node_id, "unlock_at": unlock})
    else:
        click.echo(f"{signer.node_id} deregistered; the stake can be withdrawn from {when}")


@chain.command()
@_key_home
@click.pass_obj
def withdraw(c: CliContext, key_home: Path | None) -> None:
    """Take a deregistered hub's stake back, once the unlock delay is over."""
    reg = c.registry()
    assert reg is not None
    signer = _signer(c, key_home)
    amount = reg.withdraw(signer)
    if c.as_json:
        emit_json({"node_id": signer.node_id, "withdrawn": format_eth(amount)})
    else:
        click.echo(f"{signer.node_id} withdrew {format_eth(amount)} ETH")
