"""What this node's transport sees: its public mapping and NAT type (STUN against the hub's
responder) and the overlay path to the hub with its round-trip time. Shared by ``sonmcli nat``
and ``sonmminer --check``; :class:`NatProbe` runs the STUN part for ``sonmcli forward``."""

from __future__ import annotations

import statistics
import threading
import time
from typing import TYPE_CHECKING, Any

from sonm_p2p.client import HubClient
from sonm_p2p.errors import HubUnavailable, SonmError
from sonm_p2p.identity import Identity
from sonm_p2p.transport.addrs import parse_hostport

if TYPE_CHECKING:
    from sonm_p2p.transport.stun import ClientOptions

__all__ = ["NatProbe", "check", "render"]


def _stun(endpoint: str, options: ClientOptions | None = None) -> dict[str, Any]:
    from sonm_p2p.transport.stun import ClientOptions, StunError, probe_nat

    if not endpoint:
        return {"nat_type": "unknown", "error": "the hub runs no STUN responder"}
    try:
        host, port = parse_hostport(endpoint)
        return probe_nat((host, port), options=options or ClientOptions()).as_dict()
    except (StunError, OSError, ValueError, SonmError) as exc:
        return {"nat_type": "unknown", "error": f"STUN against {endpoint} failed: {exc}"}


class NatProbe:
    """This machine's NAT type, classified against the hub's STUN responder on a thread while the
    caller goes on (``sonmcli forward``): the hub's Info RPC (for its STUN endpoint), then a
    quick STUN probe (retransmits after 0.25 s, twice per request).

    Never raises: a hub without a responder, no answer at all (``sonmcli nat``'s "blocked": UDP
    blocked) or any other failure is an ``unknown`` NAT type with the reason in ``error``. Call
    :meth:`release` before closing ``client``, then :meth:`report` (which waits at most as long
    as the probe can take; the thread has ended when it returns a STUN result).
    """

    #: Retransmission timeout and tries per STUN request (the default waits 2.1 s per request).
    RTO, ATTEMPTS = 0.25, 2
    #: At most three requests (RFC 5780 tests I-III), each of at most ``RTO * (2**ATTEMPTS - 1)``.
    BOUND = 3 * RTO * (2**ATTEMPTS - 1)

    def __init__(self, client: HubClient) -> None:
        self._client = client
        self._asked = threading.Event()  # Info answered or failed: the client may close
        self._result: dict[str, Any] | None = None
        self._thread = threading.Thread(target=self._run, name="nat-probe", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        from sonm_p2p.transport.stun import ClientOptions

        try:
            try:
                endpoint = self._client.info().stun_endpoint
            finally:
                self._asked.set()
            options = ClientOptions(rto=self.RTO, attempts=self.ATTEMPTS)
            result = _stun(endpoint, options)
            if result.get("nat_type") == "blocked":  # no answer: UDP blocked, or responder down
                error = f"no answer from the hub's STUN responder at {endpoint}"
                result = {**result, "nat_type": "unknown", "error": error}
            self._result = result
        except Exception as exc:  # a forward must not fail on STUN
            self._result = {"nat_type": "unknown", "error": f"no STUN endpoint from the hub: {exc}"}

    def release(self) -> None:
        """Wait until the probe no longer needs the client (its Info RPC, within the client's
        deadline)."""
        self._asked.wait()

    def report(self) -> dict[str, Any]:
        """``sonmcli nat``'s ``stun`` dict (``nat_type``, ``mapped``, ``error``...)."""
        self.release()
        self._thread.join(self.BOUND + 1.0)
        if self._result is None:
            return {"nat_type": "unknown", "error": f"no STUN result within {self.BOUND + 1:g}s"}
        return self._result


def _overlay_path(identity: Identity, multiaddrs: list[str]) -> dict[str, Any]:
    """Dial the hub over libp2p and time Ping calls through the gRPC bridge."""
    from sonm_p2p.config import client_listen
    from sonm_p2p.transport.bridge import GRPC_HUB
    from sonm_p2p.transport.node import NodeOptions, P2PNode

    node = P2PNode(identity, NodeOptions(listen=client_listen()))
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


def check(client: HubClient, identity: Identity) -> dict[str, Any]:
    """The whole report, as JSON-ready dict."""
    t0 = time.perf_counter()
    info = client.info()
    grpc_rtt = time.perf_counter() - t0
    report: dict[str, Any] = {
        "hub": info.node_id,
        "hub_grpc": client.target,
        "grpc_rtt_ms": round(grpc_rtt * 1000, 3),
        "stun": _stun(info.stun_endpoint),
    }
    try:
        report["overlay"] = _overlay_path(identity, list(info.multiaddrs))
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
    if o.get("error"):
        lines.append(f"Hub        {r['hub']}: {o['error']}")
    else:
        lines.append(f"Hub        {r['hub']} {o['path']} via {o['address']}, RTT {o['rtt_ms']} ms")
    return "\n".join(lines)
