"""A local network of hubs and miners as background processes: up, status, down.

Every port is picked free, every name carries the network's name, and everything a network starts
is written to its state file as soon as it starts, so two networks run side by side and ``down``
removes all of one, whatever crashed.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import secrets
import shutil
import socket
import tempfile
import time
import urllib.request
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from sonm_p2p.client import HubClient
from sonm_p2p.devnet import procs
from sonm_p2p.devnet.chainnet import chain_flags, hub_stakes, start_chain
from sonm_p2p.devnet.minergroup import group_spec
from sonm_p2p.devnet.natnet import NatNetwork, check_nat_possible, hub_view_in_netns, remove_nat
from sonm_p2p.devnet.procs import BIN_DIR
from sonm_p2p.devnet.record import (
    NetworkRecord,
    NodeRecord,
    check_counts,
    check_name,
    miner_path,
)
from sonm_p2p.errors import ConfigError, SonmError, Timeout
from sonm_p2p.identity import load_or_create

__all__ = ["Devnet", "DevnetOptions", "default_dir"]

_KEEP_ENV = {"SONM_DEBUG"}  # every other SONM_* variable is the caller's, not the network's
_NO_PROXY = urllib.request.build_opener(urllib.request.ProxyHandler({}))  # local pages only


def default_dir() -> Path:
    """``$SONM_DEVNET_DIR``, else ``$SONM_HOME/devnet``, else ``~/.sonm/devnet``."""
    given = os.environ.get("SONM_DEVNET_DIR")
    if given:
        return Path(given)
    home = os.environ.get("SONM_HOME")
    return (Path(home) if home else Path.home() / ".sonm") / "devnet"


@dataclass(frozen=True, kw_only=True)
class DevnetOptions:
    """What ``up`` starts.

    hubs: hubs, each bootstrapped from the one before (a chain); defaults to 1.
    miners: miners, started with no hub address (they find one by discovery); defaults to 2.
    runtime: the miners' container engine, ``docker`` or ``memory`` (a fake); defaults to docker.
    http: every hub serves its page and /metrics on a free port; defaults to True.
    timeout: seconds ``up`` waits for every hub to answer and every miner to be listed;
        defaults to 60 plus one per miner (plus 30 per Docker engine with ``nat``).
    nat: (root) the nodes in network namespaces, miners behind two NAT routers (see natnet);
        defaults to False. hub_behind_nat: with ``nat``, one more hub behind a third router.
    miners_per_process: miners sharing one process (each with its own key, node and
        connection; see minergroup); defaults to 1 (each its own ``sonmminer``).
    chain: a local Ethereum node (anvil) with the hub registry; every hub registers with a
        stake and miners and ``env``'s sonmcli trust registered hubs only (see chainnet);
        defaults to False.
    birthday_punch: False passes ``--no-birthday-punch`` to every hub and ``sonmminer`` (not to
        miner groups); defaults to True.
    """

    hubs: int = 1
    miners: int = 2
    runtime: str = "docker"
    http: bool = True
    timeout: float = 0.0
    nat: bool = False
    hub_behind_nat: bool = False
    miners_per_process: int = 1
    chain: bool = False
    birthday_punch: bool = True

    @property
    def deadline(self) -> float:
        engines = self.miners if self.nat and self.runtime == "docker" else 0
        return self.timeout or 60.0 + self.miners + 30.0 * engines


class Devnet:
    """The network called ``name`` under ``base`` (its files are in ``base/name``)."""

    def __init__(self, base: Path, name: str) -> None:
        self.name = check_name(name)
        self.base = base
        self.root = base / name

    def __repr__(self) -> str:
        return f"<Devnet {self.name} {self.root}>"

    # -- reading ------------------------------------------------------------------------------

    def record(self) -> NetworkRecord:
        """The saved state; ConfigError (exit 2) if this network is not up."""
        if not (self.root / "state.json").exists():
            raise ConfigError(
                f"network {self.name} is not up (no state in {self.root}): "
                f"sonm-devnet up --name {self.name}"
            )
        return NetworkRecord.load(self.root)

    def is_up(self) -> bool:
        """Some process of this network still runs."""
        if not (self.root / "state.json").exists():
            return False
        rec = NetworkRecord.load(self.root)
        return any(procs.alive(n.pid, n.start_time) for n in rec.nodes) or any(
            procs.alive(e["pid"], e["start_time"]) for e in rec.engines
        )

    def client(self, hub: NodeRecord, timeout: float = 5.0) -> HubClient:
        return HubClient(
            hub.grpc_target, timeout=timeout, identity=load_or_create(self.client_home)
        )

    @property
    def client_home(self) -> Path:
        return self.root / "client"  # what SONM_HOME=<root> gives sonmcli (see env_lines)

    def status(self) -> list[dict[str, Any]]:
        """One object per node: name, role, node_id, pid, alive, addresses, log; for a miner
        also hub (node ID), hub_name, nat_type, path and tasks (IDs of its running tasks)."""
        rec = self.record()
        hub_names = {h.node_id: h.name for h in rec.hubs}
        seen: dict[str, tuple[str, str, dict]] = {}  # miner -> (hub, reachability, it)
        rows = [{**self._row(n), "registry": rec.registry} for n in rec.nodes if n.role == "chain"]
        stakes = hub_stakes(rec)
        for hub in rec.hubs:
            row = self._row(hub)
            if rec.chain_url:
                row["stake"] = stakes.get(hub.node_id)
            rows.append(row)
            if not row["alive"]:
                continue
            try:
                reach, miners = self.hub_view(hub)
            except SonmError as exc:
                row["error"] = str(exc)
                continue
            row["reachability"] = reach
            paths = self._paths(hub)
            for m in miners:
                if m["online"]:
                    m["path"] = paths.get(m["node_id"], "")
                    seen[m["node_id"]] = (hub.node_id, reach, m)
        for miner in rec.miners:
            row = self._row(miner)
            hub_id, reach, m = seen.get(miner.node_id, ("", "", None))
            row["hub"] = hub_id
            row["hub_name"] = hub_names.get(hub_id, "")
            if m is not None:
                row["addresses"] = list(m["multiaddrs"])
                row["nat_type"] = m["nat_type"] or "unknown"
                relays = {h.p2p_target for h in rec.hubs}
                row["path"] = m["path"] or miner_path(m["remote_addr"], reach, relays)
                row["tasks"] = list(m["task_ids"])
            else:
                row.update(nat_type="", path="", tasks=[])
            rows.append(row)
        return rows

    @staticmethod
    def _row(node: NodeRecord) -> dict[str, Any]:
        return {
            "name": node.name,
            "role": node.role,
            "node_id": node.node_id,
            "pid": node.pid,
            "alive": procs.alive(node.pid, node.start_time),
            "addresses": node.addresses(),
            "log": node.log,
            # a hub behind NAT serves its page inside its namespace only
            **({"url": node.http_url} if node.http_url and not node.behind_nat else {}),
        }

    # -- up ------------------------------------------------------------------------------------

    def up(
        self, options: DevnetOptions, *, progress: Callable[[str], None] = print
    ) -> NetworkRecord:
        """Start the network and return once every hub answers and every miner is listed on
        one. ConfigError (exit 2) if it is up already; on any failure everything started is
        stopped again (a network is never left half-started)."""
        check_counts(options.hubs, options.miners)
        if options.runtime not in ("docker", "memory"):
            raise ConfigError(f"--runtime {options.runtime!r}: docker or memory")
        if options.hub_behind_nat and not options.nat:
            raise ConfigError("--hub-behind-nat needs --nat")
        if options.miners_per_process < 1 or (options.nat and options.miners_per_process > 1):
            raise ConfigError(
                f"--miners-per-process {options.miners_per_process}: at least 1, and 1 with "
                "--nat (each miner has a namespace of its own there)"
            )
        if options.chain and (options.nat or options.miners_per_process > 1):
            raise ConfigError("--chain: not with --nat or --miners-per-process (not yet)")
        if options.nat:
            check_nat_possible()
        self.base.mkdir(parents=True, exist_ok=True, mode=0o700)
        with self._locked(wait=False):
            if self.is_up():
                raise ConfigError(
                    f"network {self.name} is up already (sonm-devnet status --name {self.name}; "
                    f"sonm-devnet down --name {self.name})"
                )
            self._clear()  # what a crashed earlier network of this name left
            self.root.mkdir(mode=0o700)
            (self.root / "logs").mkdir()
            rec = NetworkRecord(
                name=self.name,
                root=str(self.root),
                runtime=options.runtime,
                nat=options.nat,
                token=secrets.token_hex(4),
                tmpdir=tempfile.mkdtemp(prefix=f"sonm-devnet-{self.name}-"),
                bin_dir=str(BIN_DIR),
            )
            rec.save()
            try:
                self._start(rec, options, progress)
            except BaseException:
                self._teardown(rec)
                raise
            return rec

    def _start(
        self, rec: NetworkRecord, options: DevnetOptions, progress: Callable[[str], None]
    ) -> None:
        deadline = time.monotonic() + options.deadline
        nat = NatNetwork(rec, self._env(rec)) if options.nat else None
        if nat is not None:
            progress("building the namespaces and NAT routers ...")
            hub_names, miner_names = nat.build(options.hubs, options.miners, options.hub_behind_nat)
        else:
            hub_names = [f"hub-{i}" for i in range(1, options.hubs + 1)]
            miner_names = [f"miner-{i}" for i in range(1, options.miners + 1)]
        hubs = [self._node(rec, "hub", name) for name in hub_names]
        miners = [self._node(rec, "miner", name) for name in miner_names]
        if options.hub_behind_nat:
            hubs[-1].behind_nat = True
        if options.chain:
            chain = NodeRecord(
                name="chain", role="chain", node_id="", home="",
                log=str(self.root / "logs" / "chain.log"),
            )  # fmt: skip
            rec.nodes.insert(0, chain)  # down stops it last: the hubs talk to it to the end
            progress("starting a local chain (anvil) and deploying the hub registry ...")
            start_chain(rec, chain, self._env(rec), [h.node_id for h in hubs], deadline)
            chain.node_id = rec.registry
        if nat is not None:
            for node in rec.nodes:
                nat.place(node)
        else:
            with _free_ports(len(hubs)) as ports:
                for hub, hub_ports in zip(hubs, ports, strict=True):
                    hub.ports = hub_ports
        if not options.http:
            for hub in hubs:
                hub.ports["http"] = 0
        for i, hub in enumerate(hubs):
            argv = self._hub_argv(hub, hubs[0] if hub.behind_nat else hubs[i - 1] if i else None)
            argv += chain_flags(rec, "hub")
            argv += [] if options.birthday_punch else ["--no-birthday-punch"]
            if nat is not None:
                argv = nat.argv(hub, argv + nat.hub_extra(hub))
            self._spawn(rec, hub, argv, nat.node_env(hub) if nat else None)
        progress(f"started {len(hubs)} hub(s); waiting for them to answer ...")
        self._wait(
            rec, lambda: all(self._answers(h) for h in hubs), "every hub to answer", deadline
        )
        # No hub address: each miner learns its hub (the hubs in turn, by node ID) from the
        # gossip it hears through the first hub, so every hub of the chain gets miners.
        if options.miners_per_process > 1:
            self._spawn_groups(rec, miners, hubs, options)
        for i, miner in enumerate(miners if options.miners_per_process == 1 else []):
            argv = self._miner_argv(rec, miner, hubs[0], options)
            argv += ["--hub-id", hubs[i % len(hubs)].node_id, *chain_flags(rec, "miner")]
            argv += [] if options.birthday_punch else ["--no-birthday-punch"]
            env = None
            if nat is not None:
                env = nat.node_env(miner)
                if options.runtime == "docker":
                    progress(f"starting the Docker engine of {miner.name} in its namespace ...")
                    env.update(nat.engine(miner, progress))
                argv = nat.argv(miner, argv)
            self._spawn(rec, miner, argv, env)
        if miners:
            progress(f"started {len(miners)} miner(s); waiting for each to be listed on a hub ...")
        want = {m.node_id for m in miners}
        self._wait(rec, lambda: want <= self._listed(hubs), "every miner to be listed", deadline)

    def _spawn_groups(
        self,
        rec: NetworkRecord,
        miners: list[NodeRecord],
        hubs: list[NodeRecord],
        options: DevnetOptions,
    ) -> None:
        """Miners by ``miners_per_process`` in ``sonm-devnet _miner-group`` processes: each
        miner's record gets its group's PID and log."""
        size = options.miners_per_process
        for g, first in enumerate(range(0, len(miners), size), start=1):
            group = miners[first : first + size]
            specs = [
                group_spec(
                    home=m.home,
                    bootstrap=hubs[0].p2p_target,
                    hub_id=hubs[(first + k) % len(hubs)].node_id,
                    publish_ip=m.ip,
                    runtime=options.runtime,
                    label=rec.label,
                )
                for k, m in enumerate(group)
            ]
            path = self.root / "nodes" / f"miner-group-{g}.json"
            path.write_text(json.dumps(specs, indent=2))
            log = str(self.root / "logs" / f"miner-group-{g}.log")
            argv = [str(BIN_DIR / "sonm-devnet"), "_miner-group", str(path)]
            pid, started = procs.spawn(argv, Path(log), self._env(rec))
            for m in group:
                m.pid, m.start_time, m.log = pid, started, log
            rec.save()

    def _node(self, rec: NetworkRecord, role: str, name: str) -> NodeRecord:
        home = self.root / "nodes" / name
        node = NodeRecord(
            name=name,
            role=role,
            node_id=load_or_create(home).node_id,  # made now: status knows it from the start
            home=str(home),
            log=str(self.root / "logs" / f"{name}.log"),
        )
        rec.nodes.append(node)
        return node

    @staticmethod
    def _hub_argv(hub: NodeRecord, previous: NodeRecord | None) -> list[str]:
        p = hub.ports
        argv = [
            str(BIN_DIR / "sonmhub"),
            "--home", hub.home,
            "--grpc-listen", hub.grpc_target,
            "--p2p-listen", f"/ip4/{hub.ip}/tcp/{p['p2p']}",
            "--stun-listen", f"{hub.ip}:{p['stun']}",
            "--no-mdns",
            # a hub behind NAT is told so (and reserves on the hub it bootstraps from) at once
            "--reachability", "private" if hub.behind_nat else "public",
        ]  # fmt: skip
        if p.get("http"):
            argv += ["--http-listen", f"{hub.ip}:{p['http']}"]
        if previous is not None:
            argv += ["--bootstrap", previous.p2p_target]
        return argv

    @staticmethod
    def _miner_argv(
        rec: NetworkRecord, miner: NodeRecord, via: NodeRecord, options: DevnetOptions
    ) -> list[str]:
        return [
            str(BIN_DIR / "sonmminer"),
            "--home", miner.home,
            "--bootstrap", via.p2p_target,
            "--no-mdns",
            "--publish-ip", miner.ip,
            "--runtime", options.runtime,
            "--label", rec.label,
        ]  # fmt: skip

    def _env(self, rec: NetworkRecord) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items() if not k.startswith("SONM_") or k in _KEEP_ENV}
        return {
            **env,
            "PYTHONUNBUFFERED": "1",
            "SONM_P2P_LISTEN": "/ip4/127.0.0.1/tcp/0",
            "SONM_MDNS_INTERFACES": "127.0.0.1",
            "SONM_MDNS_NAMESPACE": rec.mdns_namespace,
            "TMPDIR": rec.tmpdir,  # the nodes' private sockets: down removes them after a crash
        }

    def _spawn(
        self, rec: NetworkRecord, node: NodeRecord, argv: list[str], env: dict | None = None
    ) -> None:
        node.pid, node.start_time = procs.spawn(argv, Path(node.log), env or self._env(rec))
        rec.save()  # at once: a crash of `up` from here on leaves it findable by `down`

    def _answers(self, hub: NodeRecord) -> bool:
        if hub.behind_nat:
            hub_view_in_netns(hub, self.client_home)
            return True
        with self.client(hub, timeout=2.0) as c:
            c.ping()
        return True

    def _listed(self, hubs: list[NodeRecord]) -> set[str]:
        return {m["node_id"] for hub in hubs for m in self.hub_view(hub)[1] if m["online"]}

    @staticmethod
    def _paths(hub: NodeRecord) -> dict[str, str]:
        """Miner -> path (direct, hole-punched, relayed) as the hub's own node sees each
        connection, from its page's JSON ({} when it has no page or the machine cannot reach
        it: status then tells the path from the hub's view of the remote address)."""
        if not hub.http_url or hub.behind_nat:
            return {}
        try:
            with _NO_PROXY.open(hub.http_url + "api/network", timeout=5) as r:
                return {m["node_id"]: m["path"] for m in json.load(r)["miners"]}
        except (OSError, ValueError, KeyError):
            return {}

    def hub_view(self, hub: NodeRecord) -> tuple[str, list[dict[str, Any]]]:
        """(reachability, miners) of a hub, each miner as ``sonmcli list --json`` gives it."""
        if hub.behind_nat:
            return hub_view_in_netns(hub, self.client_home)
        with self.client(hub) as c:
            return c.info().reachability, [dict(m.__dict__) for m in c.list_miners()]

    def _wait(
        self, rec: NetworkRecord, cond: Callable[[], bool], what: str, deadline: float
    ) -> None:
        while True:
            dead = [n for n in rec.nodes if n.pid and not procs.alive(n.pid, n.start_time)]
            if dead:
                raise SonmError(f"{dead[0].name} exited while starting: {_tail(dead[0].log)}")
            try:
                if cond():
                    return
            except SonmError:
                pass
            if time.monotonic() > deadline:
                raise Timeout(f"network {rec.name}: timed out waiting for {what}")
            time.sleep(0.2)

    # -- down ----------------------------------------------------------------------------------

    def down(self) -> bool:
        """Stop this network's task containers, then its processes (by PID), then remove its
        task networks, temp files and directory. Idempotent: False if there was nothing."""
        if not self.root.exists():
            return False
        with self._locked(wait=True):
            self._clear()
            (self.base / f".{self.name}.lock").unlink(missing_ok=True)
        return True

    def _teardown(self, rec: NetworkRecord) -> None:
        on_machine = rec.runtime == "docker" and not rec.nat  # else on engines in namespaces
        if on_machine:
            _remove_labelled(rec.label)  # first: a stopping miner leaves its tasks running
        procs.stop([(n.pid, n.start_time) for n in reversed(rec.nodes)])
        if on_machine:
            _remove_labelled(rec.label)  # any a miner started while it was being stopped
        if rec.nat:
            remove_nat(rec)  # the engines in the namespaces (and their tasks), the namespaces
        if rec.tmpdir:
            shutil.rmtree(rec.tmpdir, ignore_errors=True)

    def _remove(self) -> None:
        shutil.rmtree(self.root, ignore_errors=True)

    def _clear(self) -> None:
        """Tear down what an earlier network of this name left (its processes are gone, but
        its containers, namespaces or temp files may not be), then remove its directory."""
        try:
            self._teardown(NetworkRecord.load(self.root))
        except ConfigError:
            pass  # no state (or not ours): nothing to find by it
        self._remove()

    @contextlib.contextmanager
    def _locked(self, *, wait: bool) -> Iterator[None]:
        """One ``up`` or ``down`` of this network at a time (the lock lives beside its dir)."""
        self.base.mkdir(parents=True, exist_ok=True, mode=0o700)
        with open(self.base / f".{self.name}.lock", "a") as f:
            try:
                fcntl.flock(f, fcntl.LOCK_EX | (0 if wait else fcntl.LOCK_NB))
            except BlockingIOError:
                raise ConfigError(
                    f"network {self.name} is being started or stopped by another sonm-devnet"
                ) from None
            yield


@contextlib.contextmanager
def _free_ports(hubs: int) -> Iterator[list[dict[str, int]]]:
    """Free ports for each hub (grpc, p2p, http over TCP; stun over UDP), held until the block
    ends so no two are the same; the kernel picks them, so they collide with no other network."""
    held: list[socket.socket] = []

    def grab(kind: int) -> int:
        s = socket.socket(socket.AF_INET, kind)
        s.bind(("127.0.0.1", 0))
        held.append(s)
        return s.getsockname()[1]

    def grab_stun() -> int:
        """A UDP port whose next one is free too (a hub may answer STUN on both)."""
        while True:
            port = grab(socket.SOCK_DGRAM)
            s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
            try:
                s.bind(("127.0.0.1", port + 1))
                held.append(s)
                return port
            except OSError:
                s.close()

    try:
        yield [
            {
                "grpc": grab(socket.SOCK_STREAM),
                "p2p": grab(socket.SOCK_STREAM),
                "http": grab(socket.SOCK_STREAM),
                "stun": grab_stun(),
            }
            for _ in range(hubs)
        ]
    finally:
        for s in held:
            s.close()


def _remove_labelled(label: str) -> None:
    """Remove the containers, then the task networks, carrying ``label`` (none if no engine)."""
    try:
        import docker

        client = docker.from_env()
        client.ping()
    except Exception:  # no engine: nothing of ours can be on it
        return
    try:
        for container in client.containers.list(all=True, filters={"label": label}):
            with contextlib.suppress(docker.errors.NotFound):
                container.remove(force=True, v=True)
        for network in client.networks.list(filters={"label": label}):
            with contextlib.suppress(docker.errors.NotFound):
                network.remove()
    finally:
        client.close()


def _tail(log: str, lines: int = 5) -> str:
    try:
        text = Path(log).read_text(errors="replace").strip().splitlines()
    except OSError:
        return "(no log)"
    return " | ".join(text[-lines:]) or "(empty log)"
