"""``sonmminer``: the miner daemon."""

from __future__ import annotations

from pathlib import Path

import click

from cli._common import (
    Duration,
    chain_options,
    default_home,
    fail,
    no_birthday_punch_option,
    parse_size,
    serve_until_signalled,
    setup_logging,
    version_option,
)
from sonm_p2p.chain import ChainSettings
from sonm_p2p.config import bootstrap_list, load_config, mdns_namespace
from sonm_p2p.errors import SonmError
from sonm_p2p.miner.daemon import MinerDaemon, MinerOptions
from sonm_p2p.miner.hub_link import LinkOptions
from sonm_p2p.miner.miner import Offer


def _labels(values: tuple[str, ...]) -> dict[str, str]:
    out = {}
    for v in values:
        if "=" not in v:
            raise click.BadParameter(f"{v!r}: expected KEY=VALUE", param_hint="--label")
        k, _, val = v.partition("=")
        out[k] = val
    return out


@click.command(context_settings={"help_option_names": ["--help"], "show_default": True})
@version_option()
@click.option(
    "-h",
    "--hub",
    "hub",
    envvar="SONM_HUB_P2P",
    default=None,
    metavar="HOST:PORT|MULTIADDR",
    help="The hub to work for: its overlay address (port 10002), or a full multiaddr. "
    "Without it the miner finds hubs itself (bootstrap peers, mDNS on the LAN).",
)
@click.option(
    "--listen",
    multiple=True,
    default=["/ip4/0.0.0.0/tcp/0"],
    envvar="SONM_P2P_LISTEN",
    help="libp2p listen multiaddr (repeatable; env: space separated); no inbound port is "
    "needed behind NAT.",
)
@click.option(
    "--publish-ip",
    default="0.0.0.0",
    envvar="SONM_PUBLISH_IP",
    help="Address container ports are published on.",
)
@click.option(
    "--home",
    type=click.Path(path_type=Path),
    default=None,
    help="Where the miner keeps its key [default: $SONM_HOME/miner or ~/.sonm/miner].",
)
@click.option(
    "--label",
    "labels",
    multiple=True,
    metavar="KEY=VALUE",
    help="Extra label on every container this miner runs (repeatable).",
)
@click.option(
    "--runtime",
    type=click.Choice(["docker", "memory"]),
    default="docker",
    envvar="SONM_RUNTIME",
    hidden=True,
    help="Container engine (memory: a fake, for tests).",
)
@click.option(
    "--runtime-class",
    default="",
    metavar="NAME",
    envvar="SONM_RUNTIME_CLASS",
    help="OCI runtime for tasks, e.g. runsc (gVisor) for stronger isolation; it must be "
    "registered with the engine (checked at start). Default: the engine's (runc).",
)
@click.option(
    "--allow-registry",
    "allow_registries",
    multiple=True,
    metavar="HOST[:PORT]",
    help="Pull from this registry even though its address is internal (loopback, private, "
    "link-local): such pulls are refused otherwise, since a reference names where the engine "
    "sends requests from this machine (repeatable).",
)
@click.option(
    "--hub-silence",
    type=Duration(),
    default="35s",
    help="A hub that has not pinged for this long is taken as gone; the miner redials.",
)
@click.option(
    "--max-cpu",
    type=float,
    default=0.0,
    help="CPU cores offered to tasks in all (default: every core).",
)
@click.option(
    "--max-memory",
    default=None,
    help="Memory offered to tasks in all, e.g. 8g (default: all of it).",
)
@click.option(
    "--default-cpu",
    type=click.FloatRange(min=0.01),
    default=1.0,
    show_default=True,
    help="CPU cores a task that asks for none gets (and counts against --max-cpu).",
)
@click.option(
    "--default-memory",
    default="512m",
    show_default=True,
    help="Memory a task that asks for none gets (and counts against --max-memory).",
)
@click.option(
    "--hub-id",
    "hub_ids",
    multiple=True,
    metavar="0xNODEID",
    help="Only work for this hub (repeatable): found through discovery wherever it is.",
)
@click.option(
    "--bootstrap",
    multiple=True,
    metavar="MULTIADDR|HOST:PORT",
    help="Overlay peer to discover hubs through (repeatable). Env: SONM_BOOTSTRAP; "
    "file: bootstrap in <home>/config.toml.",
)
@click.option("--mdns/--no-mdns", default=True, help="Look for hubs on the LAN with mDNS.")
@chain_options
@click.option(
    "--registry-poll",
    type=Duration(),
    default="15s",
    help="How often the registry is read (a hub that leaves it is left within one poll).",
)
@click.option(
    "--check",
    is_flag=True,
    help="Print what the transport sees (public address, NAT type, path to the hub, RTT) and exit.",
)
@click.option("--json", "as_json", is_flag=True, help="With --check: print JSON.")
@no_birthday_punch_option
@click.option("-v", "--verbose", is_flag=True, help="Debug logging.")
def main(
    hub: str | None,
    listen: tuple[str, ...],
    publish_ip: str,
    home: Path | None,
    labels: tuple[str, ...],
    runtime: str,
    hub_silence: float,
    max_cpu: float,
    runtime_class: str,
    allow_registries: tuple[str, ...],
    max_memory: str | None,
    default_cpu: float,
    default_memory: str,
    hub_ids: tuple[str, ...],
    bootstrap: tuple[str, ...],
    mdns: bool,
    chain: str | None,
    registry: str | None,
    require_registered: bool | None,
    registry_poll: float,
    check: bool,
    as_json: bool,
    no_birthday_punch: bool,
    verbose: bool,
) -> None:
    """Run a miner: connect to a hub and run its tasks as Docker containers.

    \b
    Example:
      sonmminer                                  # find a hub on the LAN / via bootstrap
      sonmminer -h 192.0.2.10:10002
      sonmminer -h /ip4/192.0.2.10/tcp/10002/p2p/16Uiu2…
      sonmminer --hub-id 0xHUB --bootstrap 192.0.2.10:10002
      sonmminer --chain https://rpc.example --registry 0xREGISTRY   # hubs staked on chain
    """
    setup_logging(verbose)
    home = home or default_home("miner")
    try:
        boot = bootstrap_list(bootstrap, home)
        mdns = mdns and load_config(home).get("mdns", True)
        chain_settings = ChainSettings.resolve(
            chain, registry, home, require_registered=require_registered
        )
    except SonmError as err:
        fail(err, as_json=False, prog="sonmminer")
    if check:
        _check(home, hub or "", hub_ids, boot, as_json)
        return
    options = MinerOptions(
        home=home,
        hub=hub or "",
        hub_ids=hub_ids,
        bootstrap=boot,
        mdns=mdns,
        mdns_namespace=mdns_namespace(),
        listen=tuple(listen),
        publish_ip=publish_ip,
        labels=_labels(labels),
        runtime=runtime,
        runtime_class=runtime_class,
        allow_registries=allow_registries,
        link=LinkOptions(hub_silence=hub_silence),
        offer=Offer(
            cpus=max_cpu,
            memory_bytes=parse_size(max_memory, "--max-memory"),
            default_cpus=default_cpu,
            default_memory_bytes=parse_size(default_memory, "--default-memory"),
        ),
        chain=chain_settings,
        registry_poll=registry_poll,
        birthday_punch=not no_birthday_punch,
    )
    try:
        daemon = MinerDaemon(options)
    except SonmError as err:
        fail(err, as_json=False, prog="sonmminer")
    serve_until_signalled(daemon.start, daemon.close, "sonmminer")


def _check(
    home: Path, hub: str, hub_ids: tuple[str, ...], boot: tuple[str, ...], as_json: bool
) -> None:
    """``--check``: reach the hub the way the miner would, then report (exit 4 if none)."""
    from contextlib import ExitStack

    from cli._common import emit_json
    from cli._discover import client_node, open_hub
    from cli._natcheck import check, render
    from sonm_p2p.client import HubClient
    from sonm_p2p.identity import load_or_create
    from sonm_p2p.transport.bridge import GRPC_HUB

    try:
        identity = load_or_create(home)
        with ExitStack() as stack:
            if hub:
                node = client_node()  # a peer ID of its own: its miner may be running
                node.start()
                stack.callback(node.close)
                tunnel = node.open_tunnel(node.connect(hub), GRPC_HUB)
                stack.callback(tunnel.close)
                target = tunnel.target
            else:
                target = open_hub(
                    stack,
                    hub_ids[0] if hub_ids else "",
                    boot,
                    mdns_namespace(),
                    timeout=10,
                )
            with HubClient(target, timeout=10, identity=identity) as client:
                report = check(client)
    except SonmError as err:
        fail(err, as_json=as_json, prog="sonmminer")
    if as_json:
        emit_json(report)
    else:
        click.echo(render(report))


if __name__ == "__main__":
    main()
