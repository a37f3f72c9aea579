"""``sonmhub``: the hub daemon."""

from __future__ import annotations

from pathlib import Path

import click

from cli._common import (
    AnnounceInterval,
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
from sonm_p2p.chain import ChainSettings, format_eth, parse_eth
from sonm_p2p.config import bootstrap_list, load_config, mdns_namespace
from sonm_p2p.errors import ConfigError, SonmError
from sonm_p2p.hub.daemon import HUB_RESERVATIONS, HubDaemon, HubDaemonOptions
from sonm_p2p.hub.hub import HubOptions
from sonm_p2p.hub.limits import StreamLimits
from sonm_p2p.transport.relay import RelayOptions


@click.command(context_settings={"help_option_names": ["--help"], "show_default": True})
@version_option()
@click.option(
    "--grpc-listen",
    default="0.0.0.0:10001",
    envvar="SONM_GRPC_LISTEN",
    help="host:port of the client gRPC API (any gRPC client can call it).",
)
@click.option(
    "--p2p-listen",
    multiple=True,
    default=["/ip4/0.0.0.0/tcp/10002"],
    envvar="SONM_HUB_P2P_LISTEN",
    help="libp2p listen multiaddr for miners (repeatable). Env: SONM_HUB_P2P_LISTEN (not the "
    "miner's and client's SONM_P2P_LISTEN, so one machine can set both).",
)
@click.option(
    "--home",
    type=click.Path(path_type=Path),
    default=None,
    help="Where the hub keeps its key and database [default: $SONM_HOME/hub or ~/.sonm/hub].",
)
@click.option(
    "--ping-interval", type=Duration(), default="10s", help="How often each miner is pinged."
)
@click.option("--ping-timeout", type=Duration(), default="5s", help="How long a ping may take.")
@click.option(
    "--max-missed-pings", type=int, default=3, help="Missed pings that make a miner offline."
)
@click.option(
    "--task-retention",
    type=Duration(),
    default="7d",
    show_default=True,
    help="How long an ended task stays listed before the hub forgets it; 0: for ever.",
)
@click.option(
    "--bootstrap",
    multiple=True,
    metavar="MULTIADDR|HOST:PORT",
    help="Overlay peer (another hub) to stay connected to (repeatable). "
    "Env: SONM_BOOTSTRAP; file: bootstrap in <home>/config.toml.",
)
@click.option("--mdns/--no-mdns", default=True, help="Advertise this hub on the LAN with mDNS.")
@click.option(
    "--announce-grpc",
    default="",
    metavar="HOST:PORT",
    help="Client-API endpoint to announce [default: --grpc-listen, with this "
    "machine's address for 0.0.0.0].",
)
@click.option(
    "--announce-interval",
    type=AnnounceInterval(),
    default="auto",
    metavar="auto|DURATION",
    help="How often this hub announces itself on the overlay; each announcement lives 10/3 of "
    "it (at least 10s). auto: 3s up to 10 hubs, then 0.3s per hub known (100 hubs: 30s), so "
    "each hub's gossip work stays flat as the overlay grows; at most 90s.",
)
@click.option(
    "--stun-listen",
    default="0.0.0.0:3478",
    metavar="HOST:PORT",
    help="STUN responder (UDP) address; it also answers on the next port (3479), so clients "
    "and miners tell a symmetric NAT from one that keeps its mapping (port 0: two free ports); "
    "'' turns it off.",
)
@click.option(
    "--stun-alternate",
    default="",
    metavar="IP:PORT",
    help="Second STUN address (other IP and port) for full NAT classification (RFC 5780; "
    "then no next port).",
)
@click.option(
    "--relay/--no-relay", default=True, help="Be a circuit relay v2 for miners behind NAT."
)
@click.option(
    "--relay-reservations",
    type=int,
    default=HUB_RESERVATIONS,
    show_default=True,
    help="Peers that may hold a relay reservation at once (every miner of the hub holds one).",
)
@click.option(
    "--relay-circuits",
    type=int,
    default=16,
    show_default=True,
    help="Relayed connections open at once to one reserved peer.",
)
@click.option(
    "--relay-circuit-bytes",
    default="1g",
    show_default=True,
    metavar="SIZE",
    help="Bytes one relayed connection may carry (both ways) before the relay resets it; "
    "0: no limit.",
)
@click.option(
    "--relay-circuit-duration",
    type=Duration(),
    default="1h",
    show_default=True,
    help="How long one relayed connection may last before the relay resets it; 0: no limit.",
)
@click.option(
    "--reachability",
    type=click.Choice(["auto", "public", "private"]),
    default="auto",
    envvar="SONM_HUB_REACHABILITY",
    help="auto: ask the bootstrap hubs to dial this hub back and, if they cannot (NAT), "
    "reserve on them and announce the relayed addresses; private: always do; public: never.",
)
@click.option(
    "--relay-via",
    multiple=True,
    metavar="MULTIADDR|HOST:PORT",
    help="Hub to reserve on when this hub is behind NAT (repeatable) [default: --bootstrap].",
)
@click.option(
    "--tls-cert",
    type=click.Path(path_type=Path),
    default=None,
    metavar="PEM",
    help="Serve the client API (--grpc-listen) over TLS with this certificate (and --tls-key); "
    "clients then pass --tls-ca. Clients over the overlay are encrypted (Noise) either way.",
)
@click.option("--tls-key", type=click.Path(path_type=Path), default=None, metavar="PEM",
              help="The private key of --tls-cert.")  # fmt: skip
@click.option(
    "--max-streams",
    type=click.IntRange(min=1),
    default=StreamLimits.total,
    show_default=True,
    help="Open watch and log-follow streams this hub serves at once, from all clients.",
)
@click.option(
    "--max-streams-per-client",
    type=click.IntRange(min=1),
    default=StreamLimits.per_client,
    show_default=True,
    help="... from one client address (clients over the overlay share the hub's loopback).",
)
@click.option(
    "--http-listen",
    default="",
    envvar="SONM_HTTP_LISTEN",
    metavar="HOST:PORT",
    help="Serve a read-only page that draws this hub's network (refreshing itself) and "
    "/metrics (Prometheus text format) here; off when empty.",
)
@chain_options
@click.option(
    "--stake",
    default=None,
    metavar="ETH",
    help="With --chain and --registry: register this hub (from its node key) with this stake, "
    "and keep its registered endpoints current. Without enough balance it serves unregistered "
    "and says how much to send to its address.",
)
@click.option(
    "--registry-poll",
    type=Duration(),
    default="15s",
    help="How often the registry is read (hubs that leave it drop out within one poll).",
)
@click.option(
    "--deregister",
    is_flag=True,
    help="Deregister this hub from the registry (its stake unlocks after the registry's "
    "delay; withdraw it with sonmcli chain withdraw) and exit.",
)
@click.option(
    "--max-connections",
    type=click.IntRange(min=1),
    default=10_000,
    show_default=True,
    help="Overlay connections held at once (each miner holds one; see docs/SCALING.md).",
)
@click.option(
    "--max-joining",
    type=click.IntRange(min=0),
    default=32,
    show_default=True,
    help="Peers joining at once (handshakes and session set-up); the rest wait their turn, so "
    "a herd of redialling miners is served first come, first served. 0: no limit.",
)
@no_birthday_punch_option
@click.option("-v", "--verbose", is_flag=True, help="Debug logging.")
def main(
    grpc_listen: str,
    p2p_listen: tuple[str, ...],
    home: Path | None,
    ping_interval: float,
    ping_timeout: float,
    max_missed_pings: int,
    bootstrap: tuple[str, ...],
    mdns: bool,
    announce_grpc: str,
    announce_interval: float | None,
    stun_listen: str,
    stun_alternate: str,
    relay: bool,
    relay_reservations: int,
    relay_circuits: int,
    relay_circuit_bytes: str,
    relay_circuit_duration: float,
    reachability: str,
    relay_via: tuple[str, ...],
    task_retention: float,
    tls_cert: Path | None,
    tls_key: Path | None,
    max_streams: int,
    max_streams_per_client: int,
    http_listen: str,
    chain: str | None,
    registry: str | None,
    require_registered: bool | None,
    stake: str | None,
    registry_poll: float,
    deregister: bool,
    max_connections: int,
    max_joining: int,
    no_birthday_punch: bool,
    verbose: bool,
) -> None:
    """Run a hub: miners connect to it over libp2p, clients call its gRPC API.

    \b
    Example:
      sonmhub                         # gRPC on :10001, miners on :10002
      sonmminer -h <hubip:10002>      # on each miner machine
      sonmcli --hub <hubip:10001> list

    \b
    Behind NAT (no port forwarded), bootstrap from a public hub: this hub finds it cannot be
    dialled, reserves on that hub's relay and announces the relayed address, so miners and
    clients reach it through the overlay:
      sonmhub --bootstrap <publichub:10002>
      sonmcli --bootstrap <publichub:10002> --hub <this hub's node ID> list
    """
    setup_logging(verbose)
    home = home or default_home("hub")
    try:
        chain_settings = ChainSettings.resolve(
            chain, registry, home, require_registered=require_registered
        )
        if deregister:
            _deregister(chain_settings, home)
            return
        if stake is not None and not chain_settings.enabled:
            raise ConfigError("--stake needs a chain and a registry: --chain URL --registry 0x…")
        options = HubDaemonOptions(
            home=home,
            grpc_listen=grpc_listen,
            p2p_listen=tuple(p2p_listen),
            announce_grpc=announce_grpc,
            bootstrap=bootstrap_list(bootstrap, home),
            mdns=mdns and load_config(home).get("mdns", True),
            mdns_namespace=mdns_namespace(),
            announce_interval=announce_interval,
            stun_listen=stun_listen,
            stun_alternate=stun_alternate,
            relay=_relay_options(
                relay_reservations, relay_circuits, relay_circuit_bytes, relay_circuit_duration
            )
            if relay
            else None,
            reachability=reachability,
            relay_via=relay_via,
            hub=HubOptions(
                ping_interval=ping_interval,
                ping_timeout=ping_timeout,
                max_missed_pings=max_missed_pings,
                task_retention=task_retention,
            ),
            streams=StreamLimits(total=max_streams, per_client=max_streams_per_client),
            tls_cert=tls_cert,
            tls_key=tls_key,
            http_listen=http_listen,
            chain=chain_settings,
            stake=parse_eth(stake, "--stake") if stake is not None else 0,
            registry_poll=registry_poll,
            max_connections=max_connections,
            max_joining=max_joining,
            birthday_punch=not no_birthday_punch,
        )
        daemon = HubDaemon(options)
    except SonmError as err:
        fail(err, as_json=False, prog="sonmhub")
    serve_until_signalled(daemon.start, daemon.close, "sonmhub")


def _deregister(chain: ChainSettings, home: Path) -> None:
    """``--deregister``: sign the registry's deregister with the hub's key; say when the stake
    unlocks."""
    import time

    from sonm_p2p.chain.registry import Registry
    from sonm_p2p.identity import load_or_create

    if not chain.enabled:
        raise ConfigError("--deregister needs a chain and a registry: --chain URL --registry 0x…")
    identity = load_or_create(home)
    reg = Registry.open(chain.url, chain.registry)
    unlock = reg.deregister(identity)
    when = time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime(unlock))
    click.echo(
        f"hub {identity.node_id} deregistered; its stake of "
        f"{format_eth(reg.stake_of(identity.node_id))} ETH can be withdrawn from {when}"
    )


def _relay_options(reservations: int, circuits: int, size: str, duration: float) -> RelayOptions:
    try:
        return RelayOptions(
            max_reservations=reservations,
            max_circuits=circuits,
            circuit_bytes=parse_size(size, "--relay-circuit-bytes"),
            circuit_duration=duration,
        )
    except ValueError as exc:
        raise ConfigError(f"relay limits: {exc}") from None


if __name__ == "__main__":
    main()
