"""How sonmcli finds and reaches a hub when ``--hub`` is not a plain ``host:port``.

Joining the overlay costs an ``import libp2p`` (most of a second), so only the commands that need
it pay: a ``host:port`` hub is called with plain gRPC and never imports this module's I/O.
"""

from __future__ import annotations

import re
import sys
import time
from concurrent import futures
from contextlib import ExitStack
from typing import TYPE_CHECKING

from sonm_p2p.client import HubClient
from sonm_p2p.errors import HubUnavailable, MinerNotFound, SonmError, Timeout
from sonm_p2p.identity import Identity

if TYPE_CHECKING:
    from sonm_p2p.discovery.registered import RegisteredHubs

__all__ = ["HubRef", "classify", "client_node", "discover_hubs", "open_hub", "ping_endpoints"]

_NODE_ID = re.compile(r"(0x)?[0-9a-fA-F]{1,40}")


def classify(hub: str) -> str:
    """ "direct" (host:port), "multiaddr", "node-id" (an ID or prefix) or "discover" (empty)."""
    hub = hub.strip()
    if not hub:
        return "discover"
    if hub.startswith("/"):
        return "multiaddr"
    if hub.lower().startswith("0x") and _NODE_ID.fullmatch(hub) and ":" not in hub:
        return "node-id"
    return "direct"


class HubRef:
    """Where a discovered hub can be reached."""

    def __init__(self, node_id: str, grpc_endpoint: str, multiaddrs: tuple[str, ...]) -> None:
        self.node_id, self.grpc_endpoint, self.multiaddrs = node_id, grpc_endpoint, multiaddrs


def client_node():  # noqa: ANN201 - P2PNode is imported lazily (import cost)
    """A node for this process on the overlay (not started), with a peer ID of its own.

    Never the client's (or miner's) key: libp2p keeps one connection, one hole punch and one
    relay state per peer ID, so two processes of one key (two ``sonmcli forward``, a
    ``sonmminer --check`` beside its miner) would take each other's connections. What needs the
    key's authority signs with it instead (gRPC requests; ``auth.peer_grant`` for forwards).
    """
    from sonm_p2p.config import client_listen
    from sonm_p2p.transport.node import NodeOptions, P2PNode

    return P2PNode(Identity.generate(), NodeOptions(listen=client_listen()))


def _overlay(  # noqa: ANN202
    stack: ExitStack,
    bootstrap: tuple[str, ...],
    mdns_ns: str,
    registered: RegisteredHubs | None = None,
    require_registered: bool = False,
):
    """A node on the overlay, its gossip bootstrapped from ``registered`` hubs too (and, with
    ``require_registered``, hearing only them)."""
    from sonm_p2p.discovery import GossipOptions, HubGossip

    node = client_node()
    options = GossipOptions(
        bootstrap=bootstrap,
        mdns=True,
        mdns_namespace=mdns_ns,
        require_registered=require_registered and registered is not None,
    )
    gossip = HubGossip(node, options)
    if registered is not None:
        gossip.set_registered(registered)
    node.start()
    stack.callback(node.close)
    return node, gossip


def discover_hubs(
    stack: ExitStack,
    bootstrap: tuple[str, ...],
    mdns_ns: str,
    *,
    wait: float,
    settle: float = 0.5,
    want: str = "",
    registered: RegisteredHubs | None = None,
    require_registered: bool = False,
) -> tuple[object, list]:
    """Join the overlay and collect live hubs: at least one within ``wait`` seconds (Timeout
    otherwise), then ``settle`` seconds more for the rest. With ``want`` (a node ID or prefix),
    until a hub it names is among them, or ``wait`` is over. ``registered``: the registry's
    hubs, dialled to join; with ``require_registered`` only they are heard. Returns (node,
    entries)."""
    node, gossip = _overlay(stack, bootstrap, mdns_ns, registered, require_registered)
    deadline = time.monotonic() + wait
    try:
        gossip.wait_for_hubs(1, timeout=wait)
    except Timeout:
        where = "its bootstrap peers and the LAN" if bootstrap else "the LAN (mDNS)"
        if registered is not None:
            where = f"the registry ({len(registered)} registered), " + where
        unregistered = gossip.stats()["dropped"]["unregistered"]
        if unregistered:
            raise HubUnavailable(
                f"no registered hub announced within {wait:g}s ({unregistered} announcements "
                "of unregistered hubs dropped): name one with --hub to use it anyway, or "
                "--no-require-registered"
            ) from None
        raise HubUnavailable(
            f"no hub found on {where} within {wait:g}s: give one with --hub HOST:10001 "
            "or a bootstrap peer with --bootstrap / SONM_BOOTSTRAP"
        ) from None
    prefix = want.strip().lower().removeprefix("0x")
    while prefix and time.monotonic() < deadline:  # a hub further away announces later
        if any(e.node_id.lower().removeprefix("0x").startswith(prefix) for e in gossip.hubs()):
            break
        time.sleep(0.05)
    time.sleep(settle)  # one more round of announcements from hubs further away
    return node, gossip.hubs()


def ping_endpoints(endpoints: list[str], timeout: float = 1.0) -> dict[str, float | None]:
    """Round-trip time of a gRPC Ping to each endpoint (None when it does not answer)."""

    def one(ep: str) -> float | None:
        try:
            with HubClient(ep, timeout=timeout) as c:
                return c.ping()
        except SonmError:
            return None

    if not endpoints:
        return {}
    with futures.ThreadPoolExecutor(max_workers=min(8, len(endpoints))) as pool:
        return dict(zip(endpoints, pool.map(one, endpoints), strict=True))


def open_hub(
    stack: ExitStack,
    hub: str,
    bootstrap: tuple[str, ...],
    mdns_ns: str,
    *,
    timeout: float,
    registered: RegisteredHubs | None = None,
    require_registered: bool = False,
) -> str:
    """A gRPC target (``host:port``) for the hub named by ``hub`` (see :func:`classify`).

    A multiaddr is dialled over the overlay and tunnelled; a node ID (prefix) or nothing means
    discovery: the hub's announced endpoint is used when it answers, else the overlay. Says on
    stderr which hub it picked. With ``require_registered``, discovery uses registered hubs
    only: an unregistered one must be named in full (a whole node ID, an address).
    """
    from sonm_p2p.tasks import resolve_prefix

    kind = classify(hub)
    if kind == "multiaddr":
        node, _ = _overlay(stack, (), mdns_ns)
        peer = node.connect(hub)
        return _tunnel(stack, node, peer)
    wait = min(timeout, 10)
    want = hub if kind == "node-id" else ""
    named = kind == "node-id" and len(hub.strip().lower().removeprefix("0x")) == 40
    node, entries = discover_hubs(
        stack,
        bootstrap,
        mdns_ns,
        wait=wait,
        want=want,
        registered=registered,
        require_registered=require_registered and not named,
    )
    by_id = {e.node_id: e for e in entries}
    if kind == "node-id":
        try:
            chosen = by_id[resolve_prefix(by_id, hub, kind="miner").strip()]
        except MinerNotFound:
            raise HubUnavailable(
                f"no hub {hub} announced on the overlay within {wait:g}s "
                f"({len(by_id)} other hubs seen)"
            ) from None
    else:
        rtts = ping_endpoints([e.grpc_endpoint for e in entries if e.grpc_endpoint])
        ranked = sorted(
            entries,
            key=lambda e: (
                rtts.get(e.grpc_endpoint) is None,
                rtts.get(e.grpc_endpoint) or 0,
                e.miners_online,
                e.node_id,
            ),
        )
        chosen = ranked[0]
    if chosen.grpc_endpoint and ping_endpoints([chosen.grpc_endpoint]).get(chosen.grpc_endpoint):
        print(f"using hub {chosen.node_id} at {chosen.grpc_endpoint}", file=sys.stderr)
        return chosen.grpc_endpoint
    try:  # the dial ladder: direct addresses first, then relayed ones (a hub behind NAT)
        path = node.connect_peer(chosen.peer_id, list(chosen.multiaddrs))  # type: ignore[attr-defined]
    except SonmError as exc:
        raise HubUnavailable(
            f"hub {chosen.node_id} was announced but cannot be reached: {exc}"
        ) from None
    print(f"using hub {chosen.node_id} over the overlay ({path.kind} path)", file=sys.stderr)
    return _tunnel(stack, node, chosen.peer_id)


def _tunnel(stack: ExitStack, node: object, peer: str) -> str:
    from sonm_p2p.transport.bridge import GRPC_HUB

    tunnel = node.open_tunnel(peer, GRPC_HUB)  # type: ignore[attr-defined]
    stack.callback(tunnel.close)
    return tunnel.target
