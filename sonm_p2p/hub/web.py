"""A hub's read-only HTTP page (``sonmhub --http-listen``): a drawing of the network as this hub
sees it, ``/api/network`` (the same as JSON) and ``/metrics`` (Prometheus text format).

Off by default; ``sonm-devnet`` turns it on for every hub. It shows what ``ListMiners`` and
``ListHubs`` show anyone (node IDs, task IDs and states), never a task's image or endpoints.
"""

from __future__ import annotations

import json
import logging
import threading
import time
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from importlib import resources
from typing import Any

from sonm_p2p.errors import ConfigError
from sonm_p2p.hub.metrics import CONTENT_TYPE
from sonm_p2p.transport.addrs import format_hostport, parse_hostport

__all__ = ["HubWeb", "network_view"]

log = logging.getLogger(__name__)


class HubWeb:
    """An HTTP server on ``listen`` (``host:port``; port 0 picks one): ``network()`` gives the
    JSON of ``/api/network``, ``metrics()`` the body of ``/metrics``. ``start()`` binds (a
    ConfigError if it cannot) and serves on a thread of its own; ``close()`` stops and joins it.
    """

    def __init__(
        self, listen: str, network: Callable[[], dict[str, Any]], metrics: Callable[[], bytes]
    ) -> None:
        self.listen = listen
        self.network = network
        self.metrics = metrics
        self.url = ""
        self._server: ThreadingHTTPServer | None = None
        self._thread: threading.Thread | None = None

    def __repr__(self) -> str:
        return f"<HubWeb {self.url or self.listen}>"

    def start(self) -> None:
        host, port = parse_hostport(self.listen, allow_zero=True)
        try:
            server = ThreadingHTTPServer((host, port), _handler(self))
        except OSError as exc:
            raise ConfigError(
                f"cannot serve the hub's page on {self.listen}: {exc.strerror} "
                "(give another with --http-listen HOST:PORT)"
            ) from None
        server.daemon_threads = True  # a stalled browser must not hold the hub's shutdown
        self._server = server
        self.url = f"http://{format_hostport(host, server.server_address[1])}/"
        self._thread = threading.Thread(target=server.serve_forever, name="hub-web", daemon=True)
        self._thread.start()
        log.info("hub page on %s (metrics on %smetrics)", self.url, self.url)

    def close(self) -> None:
        """Stop serving and join the thread. Idempotent."""
        server, self._server = self._server, None
        if server is not None:
            server.shutdown()
            server.server_close()
        if self._thread is not None:
            self._thread.join(10)
            self._thread = None


def _page() -> bytes:
    return resources.files("sonm_p2p.hub").joinpath("page.html").read_bytes()


def _handler(web: HubWeb) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        server_version = "sonmhub"

        def do_GET(self) -> None:  # noqa: N802 - the name http.server calls
            path = self.path.split("?", 1)[0]
            try:
                if path in ("/", "/index.html"):
                    self._send(200, "text/html; charset=utf-8", _page())
                elif path == "/api/network":
                    body = json.dumps(web.network(), sort_keys=True).encode()
                    self._send(200, "application/json", body)
                elif path == "/metrics":
                    self._send(200, CONTENT_TYPE, web.metrics())
                else:
                    self._send(404, "text/plain", b"not found\n")
            except Exception:  # one broken reading must not take the page down
                log.exception("hub page: %s failed", path)
                self._send(500, "text/plain", b"internal error (see the hub's log)\n")

        def _send(self, code: int, kind: str, body: bytes) -> None:
            self.send_response(code)
            self.send_header("Content-Type", kind)
            self.send_header("Content-Length", str(len(body)))
            self.send_header("Cache-Control", "no-store")
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 - base's name
            log.debug("hub page: " + format, *args)

    return Handler


def network_view(
    *, node_id: str, reachability: Callable[[], str], hub: Any, node: Any, gossip: Any
) -> dict[str, Any]:
    """What the page draws: this hub, the hubs it knows from gossip, its miners with their NAT
    type, their path as this hub's node sees its connection (direct, hole-punched, relayed) and
    their active tasks (ID and state)."""
    tasks: dict[str, list[dict[str, str]]] = {}
    for t in hub.state.list_tasks(active_only=True):
        tasks.setdefault(t.miner_id, []).append({"id": t.task_id, "state": t.state.value})
    miners = []
    for view in hub.list_miners():
        rec = view.record
        path = node.path(rec.peer_id, rtt=False) if rec.online else None
        miners.append(
            {
                "node_id": rec.node_id,
                "online": rec.online,
                "nat_type": hub.miner_nat(rec.node_id) if rec.online else "",
                "path": str(path.kind) if path is not None else "",
                "remote": path.remote if path is not None else "",
                "tasks": tasks.get(rec.node_id, []) if rec.online else [],
            }
        )
    hubs = [
        {
            "node_id": e.node_id,
            "grpc_endpoint": e.grpc_endpoint,
            "miners_online": e.miners_online,
            "self": e.node_id == node_id,
        }
        for e in (gossip.hubs() if gossip is not None else [])
    ]
    if not any(h["self"] for h in hubs):
        hubs.insert(0, {"node_id": node_id, "grpc_endpoint": "", "miners_online": 0, "self": True})
    return {
        "hub": {"node_id": node_id, "reachability": reachability()},
        "hubs": hubs,
        "miners": miners,
        "time": time.time(),
    }
