"""What this node's transport sees: its public mapping and NAT type (STUN against the hub's
responder) and the overlay path to the hub with its round-trip time. Shared by ``sonmcli nat``
and ``sonmminer --check`` (the STUN part is ``sonm_p2p.transport.nat``)."""

from __future__ import annotations

import statistics
import time
from typing import Any

from sonm_p2p.client import HubClient
from sonm_p2p.errors import HubUnavailable, SonmError

__all__ = ["check", "render"]


def _overlay_path(multiaddrs: list[str]) -> dict[str, Any]:
    """Dial the hub over libp2p and time Ping calls through the gRPC bridge."""
    from cli._discover import client_node
    from sonm_p2p.transport.bridge import GRPC_HUB

    node = client_node()
    node.start()
    try:
        last: SonmError | None = None
        for addr in multiaddrs:
            try:
                peer = node.connect(addr)
            except SonmError as exc:
                last = exc
                continue
            tunnel = node.open_tunnel(peer, GRPC_HUB)
            try:
                with HubClient(tunnel.target, timeout=5) as c:
                    c.ping()
                    rtts = [c.ping() for _ in range(5)]
            finally:
                tunnel.close()
            path = node.path(peer) if hasattr(node, "path") else None
            kind = getattr(path, "kind", None) or (
                "relayed" if "/p2p-circuit" in addr else "direct"
            )
            return {
                "path": str(getattr(kind, "value", kind)),
                "address": addr,
                "remote": node.remote_addr(peer),
                "rtt_ms": round(statistics.median(rtts) * 1000, 3),
            }
        raise HubUnavailable(f"no overlay path to the hub: {last}")
    finally:
        node.close()


def check(client: HubClient) -> dict[str, Any]:
    """The whole report, as JSON-ready dict."""
    from sonm_p2p.transport.nat import stun_report

    t0 = time.perf_counter()
    info = client.info()
    grpc_rtt = time.perf_counter() - t0
    report: dict[str, Any] = {
        "hub": info.node_id,
        "hub_grpc": client.target,
        "grpc_rtt_ms": round(grpc_rtt * 1000, 3),
        "stun": stun_report(info.stun_endpoints),
    }
    try:
        report["overlay"] = _overlay_path(list(info.multiaddrs))
    except SonmError as exc:
        report["overlay"] = {"path": "none", "error": str(exc)}
    return report


def render(r: dict[str, Any]) -> str:
    s, o = r["stun"], r["overlay"]
    lines = [
        f"Local      {s.get('local') or '-'}",
        f"Public     {s.get('mapped') or '-'}",
        f"NAT        {s.get('nat_type')}"
        + (f" (filtering: {s['filtering']})" if s.get("filtering") else ""),
    ]
    if s.get("error"):
        lines.append(f"           {s['error']}")
    if untold := s.get("not_told_apart"):
        lines.append(f"           not told apart from {', '.join(untold['types'])}:")
        lines.append(f"           {untold['why']}")
    if o.get("error"):
        lines.append(f"Hub        {r['hub']}: {o['error']}")
    else:
        lines.append(f"Hub        {r['hub']} {o['path']} via {o['address']}, RTT {o['rtt_ms']} ms")
    return "\n".join(lines)
