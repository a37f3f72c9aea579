"""``sonm-devnet up --nat`` (root): the network inside namespaces behind emulated NAT routers.

Built with :mod:`sonm_p2p.devnet.topology` (the same code the netns tests use)::

    machine (203.0.113.250) --+-- pub4 "internet" --+-- hub-1 203.0.113.10 (+198.51.100.10)
                                                     +-- hub-2 ...            (chained)
                                                     +-- nat-eim (MASQUERADE) -- miner-1, -3 ...
                                                     +-- nat-sym (--random-fully) -- miner-2 ...
                                                     +-- nat-hub (MASQUERADE) -- hub-N+1
                                                         (--hub-behind-nat: reached by relay)

Each miner is a host of its own behind its router, with its own Docker engine started in its
namespace (never a second engine in the machine's). Every namespace and engine is written to the
network's state as soon as it exists, so ``down`` removes them whatever crashed.
"""

from __future__ import annotations

import contextlib
import json
import os
import subprocess
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from sonm_p2p.devnet import procs
from sonm_p2p.devnet.procs import BIN_DIR
from sonm_p2p.devnet.record import NetworkRecord, NodeRecord
from sonm_p2p.devnet.topology import (
    NETNS_DIR,
    PUBLIC_V4,
    DockerEngine,
    Host,
    NatKind,
    Topology,
    delete_namespace,
    remove_engine_state,
)
from sonm_p2p.errors import ConfigError, SonmError

__all__ = ["MACHINE_IP", "NatNetwork", "check_nat_possible", "hub_view_in_netns", "remove_nat"]

MACHINE_IP = f"{PUBLIC_V4}.250"  #: this machine's address on the emulated internet
HUB_PORTS = {"grpc": 10001, "p2p": 10002, "stun": 3478, "http": 8080}  # each hub has its own IP
ENGINE_IMAGES = ("sonm-test/web",)  # copied into every miner's engine (no registry here)


def check_nat_possible() -> None:
    """ConfigError unless this process may build namespaces and no other --nat network is up
    (they would share the emulated internet's addresses)."""
    if os.geteuid() != 0:
        raise ConfigError("--nat needs root (network namespaces, iptables): sudo sonm-devnet up")
    shown = subprocess.run(
        ["ip", "-4", "-o", "addr", "show", "to", f"{MACHINE_IP}/32"], capture_output=True, text=True
    )
    if shown.returncode != 0:
        raise ConfigError(f"--nat: `ip` failed: {shown.stderr.strip()}")
    if shown.stdout.strip():
        raise ConfigError(
            f"--nat: another --nat network is up ({MACHINE_IP} is on "
            f"{shown.stdout.split()[1]}); one at a time: sonm-devnet down --name <it>"
        )


class NatNetwork:
    """Builds the namespaces of one network, writing each part to ``rec`` as it appears."""

    def __init__(self, rec: NetworkRecord, env: dict[str, str]) -> None:
        self.rec = rec
        self.env = env
        self.topo = Topology(Path(rec.root) / "logs", prefix="sd")
        self.hosts: dict[str, Host] = {}

    @contextlib.contextmanager
    def recording(self) -> Iterator[None]:
        """Whatever happens in the block, the namespaces made so far are in the state file."""
        try:
            yield
        finally:
            self.rec.namespaces = list(self.topo.namespaces)
            self.rec.save()

    def build(self, hubs: int, miners: int, hub_behind_nat: bool) -> tuple[list[str], list[str]]:
        """Namespaces for ``hubs`` public hubs, two routers with ``miners`` hosts between them,
        and a router with one more hub if ``hub_behind_nat``. Returns the node names of the
        hubs and the miners, in order (every host is in :attr:`hosts`)."""
        with self.recording():
            self.topo.inet  # noqa: B018 - made first: the machine's link joins it
            self.rec.machine_link = self.topo.attach_machine(MACHINE_IP)
            self.rec.client_listen = f"/ip4/{MACHINE_IP}/tcp/0"
            hub_names = [f"hub-{i}" for i in range(1, hubs + 1)]
            for name in hub_names:
                self.hosts[name] = self.topo.public_host(name, addresses=2)
            routers = [
                self.topo.nat("nat-eim", NatKind.ENDPOINT_INDEPENDENT, hosts=0),
                self.topo.nat("nat-sym", NatKind.SYMMETRIC, hosts=0),
            ]
            miner_names = [f"miner-{i}" for i in range(1, miners + 1)]
            for i, name in enumerate(miner_names):
                self.hosts[name] = routers[i % 2].add_host(name)
            if hub_behind_nat:
                name = f"hub-{hubs + 1}"
                self.hosts[name] = self.topo.nat("nat-hub", NatKind.ENDPOINT_INDEPENDENT).hosts[0]
                hub_names.append(name)
        return hub_names, miner_names

    def place(self, node: NodeRecord) -> None:
        """The node runs in its host's namespace, on its address (a hub on the usual ports)."""
        host = self.hosts[node.name]
        node.netns, node.ip = host.ns, host.ip
        if node.role == "hub":
            node.ports = dict(HUB_PORTS)

    def hub_extra(self, node: NodeRecord) -> list[str]:
        """A hub's flags for its namespace: a second STUN address (so NAT types can be told)."""
        host = self.hosts[node.name]
        extra = []
        if len(host.addrs) > 1:
            extra += ["--stun-alternate", f"{host.addrs[1]}:{node.ports['stun'] + 1}"]
        return extra

    def engine(self, node: NodeRecord, log: Callable[[str], None]) -> dict[str, str]:
        """Start a Docker engine in the miner's namespace (images copied in); its environment."""
        host = self.hosts[node.name]
        engine = DockerEngine(host, Path(self.rec.root) / "engines" / node.name)
        try:
            engine.start()
        finally:
            if engine.proc is not None:
                self.rec.engines.append(
                    {
                        "pid": engine.proc.pid,
                        "start_time": procs.start_time(engine.proc.pid),
                        "root": str(engine.root),
                        "exec_root": str(engine.exec_root),
                        "socket": str(engine.socket),
                        "url": engine.url,
                    }
                )
                self.rec.save()
        for image in ENGINE_IMAGES:
            try:
                engine.load_image(image)
            except RuntimeError as exc:
                log(f"{node.name}: {image} not copied into its engine: {exc}")
        return engine.env

    def argv(self, node: NodeRecord, argv: list[str]) -> list[str]:
        return self.hosts[node.name].exec_argv(argv)

    def node_env(self, node: NodeRecord) -> dict[str, str]:
        return {**self.env, **self.hosts[node.name].env}


def hub_view_in_netns(hub: NodeRecord, client_home: Path) -> tuple[str, list[dict[str, Any]]]:
    """(reachability, miners as ``sonmcli list --json`` gives them) of a hub the machine cannot
    dial (behind NAT), asked by a ``sonmcli`` run inside the hub's own namespace."""
    out = []
    for command in ("info", "list"):
        argv = ["ip", "netns", "exec", hub.netns, str(BIN_DIR / "sonmcli")]
        argv += ["--home", str(client_home), "--hub", hub.grpc_target, "--json", command]
        # SONM_CLI_AGENT=off: no resident sonmcli agent left in a namespace `down` deletes
        env = {**os.environ, "SONM_CLI_AGENT": "off"}
        res = subprocess.run(argv, capture_output=True, text=True, timeout=60, env=env)
        if res.returncode != 0:
            raise SonmError(f"{hub.name}: {res.stderr.strip() or res.stdout.strip()}")
        out.append(json.loads(res.stdout))
    return out[0].get("reachability", ""), out[1]["miners"]


def remove_nat(rec: NetworkRecord) -> None:
    """Remove the engines' containers, stop the engines (by PID), unmount and delete their
    state, then delete the namespaces (and so the machine's link) of ``rec``."""
    for e in rec.engines:
        if procs.alive(e["pid"], e["start_time"]):
            docker = ["docker", "-H", e["url"]]
            ids = subprocess.run([*docker, "ps", "-aq"], capture_output=True, text=True).stdout
            if ids.split():
                subprocess.run([*docker, "rm", "-f", *ids.split()], capture_output=True)
    procs.stop([(e["pid"], e["start_time"]) for e in rec.engines])
    for e in rec.engines:
        remove_engine_state(Path(e["root"]), Path(e["exec_root"]), Path(e["socket"]))
    for ns in reversed(rec.namespaces):
        if (NETNS_DIR / ns).exists():
            delete_namespace(ns)
    if rec.machine_link:  # it would go with the "internet" namespace, but only some time later
        subprocess.run(["ip", "link", "del", rec.machine_link], capture_output=True)
