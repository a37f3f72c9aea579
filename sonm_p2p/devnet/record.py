"""What a local network is made of, as saved in ``<dir>/<name>/state.json``, and how it reads.

Pure: no process, socket or clock here. ``sonm-devnet up`` writes a :class:`NetworkRecord` after
every process it starts (so ``down`` finds them all, even after ``up`` itself crashed); ``status``,
``env``, ``logs`` and ``down`` read it from another process.
"""

from __future__ import annotations

import json
import re
import shlex
from collections.abc import Collection, Iterable, Mapping
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from sonm_p2p.errors import ConfigError

__all__ = [
    "STATE_FILE",
    "NetworkRecord",
    "NodeRecord",
    "check_counts",
    "check_name",
    "env_lines",
    "miner_path",
    "render_table",
]

STATE_FILE = "state.json"
_NAME = re.compile(r"[a-z0-9][a-z0-9-]{0,15}")  # short: it names netns, labels, temp dirs


def check_name(name: str) -> str:
    """``name`` if it can name a network (lower-case letters, digits, '-', at most 16)."""
    if not _NAME.fullmatch(name):
        raise ConfigError(
            f"--name {name!r}: use 1-16 lower-case letters, digits or '-' (starting with "
            "a letter or digit)"
        )
    return name


def check_counts(hubs: int, miners: int) -> None:
    """A network has at least one hub and no negative number of miners."""
    if hubs < 1:
        raise ConfigError(f"--hubs {hubs}: a network needs at least one hub")
    if miners < 0:
        raise ConfigError(f"--miners {miners}: cannot be negative")


@dataclass
class NodeRecord:
    """One process of the network. ``start_time`` (from /proc) tells it from a later process
    that was given the same PID; ``ports`` are the hub's (grpc, p2p, stun, http)."""

    name: str
    role: str  # hub | miner | chain (anvil, with --chain; its node_id: the registry)
    node_id: str
    home: str
    log: str
    pid: int = 0
    start_time: int = 0
    ports: dict[str, int] = field(default_factory=dict)
    netns: str = ""  # the namespace it runs in ("" the machine's own)
    ip: str = "127.0.0.1"  # where its ports listen
    behind_nat: bool = False  # a hub the machine cannot dial (asked from inside its netns)

    @property
    def grpc_target(self) -> str:
        return f"{self.ip}:{self.ports['grpc']}"

    @property
    def p2p_target(self) -> str:
        return f"{self.ip}:{self.ports['p2p']}"

    @property
    def http_url(self) -> str:
        port = self.ports.get("http")
        return f"http://{self.ip}:{port}/" if port else ""

    def addresses(self) -> list[str]:
        """The hub's endpoints (the chain's JSON-RPC URL), as a user would type them."""
        if self.role == "chain":
            return [f"rpc http://{self.ip}:{self.ports['rpc']}"] if self.ports.get("rpc") else []
        if self.role != "hub":
            return []
        out = [f"grpc {self.grpc_target}", f"overlay /ip4/{self.ip}/tcp/{self.ports['p2p']}"]
        if self.ports.get("stun"):
            out.append(f"stun {self.ip}:{self.ports['stun']}/udp")
        if self.http_url:
            out.append(f"http {self.http_url}")
        return out


@dataclass
class NetworkRecord:
    """A network: its options, its nodes (hubs first), the things ``down`` must remove."""

    name: str
    root: str  # this network's directory
    runtime: str = "docker"
    nat: bool = False
    token: str = ""  # random, per up: two networks of one name (other --dir) never share labels
    tmpdir: str = ""  # TMPDIR of every node (their private sockets): removed by down
    bin_dir: str = ""  # where sonmhub, sonmminer and sonmcli are
    client_listen: str = "/ip4/127.0.0.1/tcp/0"  # where sonmcli's overlay node listens
    nodes: list[NodeRecord] = field(default_factory=list)
    namespaces: list[str] = field(default_factory=list)  # --nat: netns names, removed by down
    machine_link: str = ""  # --nat: this machine's interface on the emulated internet
    engines: list[dict[str, Any]] = field(default_factory=list)  # --nat: {pid, start_time, root}
    chain_url: str = ""  # --chain: anvil's JSON-RPC URL
    registry: str = ""  # --chain: the hub registry's address on it

    @property
    def hubs(self) -> list[NodeRecord]:
        return [n for n in self.nodes if n.role == "hub"]

    @property
    def miners(self) -> list[NodeRecord]:
        return [n for n in self.nodes if n.role == "miner"]

    @property
    def mdns_namespace(self) -> str:
        """The network's own mDNS namespace (at most 9 characters, as every node checks)."""
        return f"dn-{self.token[:6]}" if self.token else "devnet"

    @property
    def label(self) -> str:
        """The label on every task container and network of this network's miners."""
        return f"sonm.devnet={self.name}-{self.token}" if self.token else f"sonm.devnet={self.name}"

    def node(self, name: str) -> NodeRecord:
        for n in self.nodes:
            if n.name == name:
                return n
        names = ", ".join(n.name for n in self.nodes)
        raise ConfigError(f"network {self.name} has no node {name!r} (it has {names})")

    def save(self) -> None:
        path = Path(self.root) / STATE_FILE
        tmp = path.with_suffix(".tmp")
        tmp.write_text(json.dumps(asdict(self), indent=2))
        tmp.replace(path)  # a reader never sees half a file

    @classmethod
    def load(cls, root: Path) -> NetworkRecord:
        path = root / STATE_FILE
        try:
            data = json.loads(path.read_text())
            data["nodes"] = [NodeRecord(**n) for n in data.get("nodes", [])]
            return cls(**data)
        except (OSError, ValueError, TypeError) as exc:
            raise ConfigError(f"{path}: not a sonm-devnet state file ({exc})") from None


def miner_path(remote_addr: str, hub_reachability: str, relays: Collection[str] = ()) -> str:
    """How a miner's connection reaches its hub, as the hub sees it: ``relayed`` when it came
    through a relay (no remote address, or a relay's own: ``relays`` are the overlay
    ``host:port`` of the network's hubs, every one a relay), ``hole-punched`` when the hub itself
    is behind NAT (a direct connection to it was punched), ``direct`` otherwise."""
    if not remote_addr or remote_addr in relays:
        return "relayed"
    if hub_reachability == "private":
        return "hole-punched"
    return "direct"


def env_lines(record: NetworkRecord, devnet_dir: Path) -> list[str]:
    """``export`` lines after which a fresh shell's ``sonmcli`` talks to this network."""
    hub = record.hubs[0]
    values = {
        "PATH": f"{record.bin_dir}:$PATH",
        "SONM_HOME": record.root,
        "SONM_HUB": hub.grpc_target,
        "SONM_BOOTSTRAP": " ".join(h.p2p_target for h in record.hubs),
        # sonmcli's overlay commands (hubs, forward): listen where the network is, meet it only
        "SONM_P2P_LISTEN": record.client_listen,
        "SONM_MDNS_NAMESPACE": record.mdns_namespace,
        "SONM_DEVNET_DIR": str(devnet_dir),
    }
    if record.chain_url:  # sonmcli trusts the hubs of the network's registry
        values.update(SONM_CHAIN=record.chain_url, SONM_REGISTRY=record.registry)
    out = []
    for key, value in values.items():
        if key == "PATH":  # $PATH must expand: quote only the part we add
            out.append(f'export PATH={shlex.quote(record.bin_dir)}:"$PATH"')
        else:
            out.append(f"export {key}={shlex.quote(value)}")
    return out


def render_table(rows: Iterable[Mapping[str, Any]]) -> str:
    """``status`` rows (the JSON objects) as aligned text columns."""
    header = ("NAME", "ROLE", "NODE ID", "PID", "ALIVE", "NAT", "PATH", "TASKS", "HUB / ADDRESSES")
    lines = [header]
    for r in rows:
        if r["role"] != "miner":
            nat = path = tasks = ""
            stake = f"stake {r['stake']:g} ETH  " if r.get("stake") is not None else ""
            where = stake + "  ".join(r["addresses"])
        else:
            nat, path = r.get("nat_type") or "-", r.get("path") or "-"
            tasks = str(len(r.get("tasks", [])))
            where = r.get("hub_name") or r.get("hub") or "-"
        alive = "yes" if r["alive"] else "NO"
        lines.append(
            (r["name"], r["role"], r["node_id"], str(r["pid"]), alive, nat, path, tasks, where)
        )
    widths = [max(len(row[i]) for row in lines) for i in range(len(header) - 1)]
    return "\n".join(
        "  ".join([*(c.ljust(w) for c, w in zip(row, widths, strict=False)), row[-1]]).rstrip()
        for row in lines
    )
