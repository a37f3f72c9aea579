"""The state every sonmcli command gets: which hub, the deadline, output mode, client key."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from sonm_p2p.client import HubClient
from sonm_p2p.identity import load_or_create
from sonm_p2p.tasks import Endpoint, Task
from sonm_p2p.transport.addrs import parse_hostport

__all__ = ["DEFAULT_HUB", "CliContext", "endpoints_json", "task_json"]

DEFAULT_HUB = "127.0.0.1:10001"


@dataclass
class CliContext:
    hub: str
    timeout: float
    as_json: bool
    home: Path

    def client(self, *, timeout: float | None = -1.0) -> HubClient:
        """A client of the chosen hub; each call's deadline is ``--timeout`` unless given."""
        host, port = parse_hostport(self.hub, default_port=10001)
        target = f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
        deadline = self.timeout if timeout == -1.0 else timeout
        return HubClient(target, timeout=deadline, identity=load_or_create(self.home))


def endpoints_json(eps: tuple[Endpoint, ...]) -> list[dict[str, Any]]:
    return [
        {"port": f"{e.container_port}/{e.protocol}", "host": e.host_ip, "host_port": e.host_port}
        for e in eps
    ]


def task_json(t: Task) -> dict[str, Any]:
    return {
        "id": t.task_id,
        "miner": t.miner_id,
        "image": t.image,
        "state": t.state.value,
        "endpoints": endpoints_json(t.endpoints),
        "exit_code": t.exit_code,
        "error": t.error,
        "owner": t.owner,
        "created_at": t.created_at,
        "updated_at": t.updated_at,
        "container_id": t.container_id,
    }
