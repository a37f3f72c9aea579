"""The state every sonmcli command gets: which hub, the deadline, output mode, client key."""

from __future__ import annotations

from contextlib import ExitStack
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from sonm_p2p.chain import ChainSettings
from sonm_p2p.client import HubClient
from sonm_p2p.errors import ConfigError
from sonm_p2p.identity import Identity, load_or_create
from sonm_p2p.tasks import Endpoint, Task
from sonm_p2p.transport.addrs import format_hostport, parse_hostport

if TYPE_CHECKING:
    from sonm_p2p.chain.registry import Registry
    from sonm_p2p.discovery.registered import RegisteredHubs

__all__ = ["CliContext", "endpoints_json", "task_json"]


@dataclass
class CliContext:
    """``hub``: host:port, a multiaddr, a hub node ID (or prefix), or "" (discover one)."""

    hub: str
    timeout: float
    as_json: bool
    home: Path
    bootstrap: tuple[str, ...] = ()
    tls_ca: Path | None = None  # the hub's client API serves TLS: check it against these
    chain_flags: tuple[str | None, str | None, bool | None] = (None, None, None)
    birthday_punch: bool = True  # --no-birthday-punch: the forward keeps a relayed path
    stack: ExitStack = field(default_factory=ExitStack)  # closed when the command ends

    def identity(self) -> Identity:
        return load_or_create(self.home)

    def chain(self) -> ChainSettings:
        """--chain / --registry / --require-registered, completed from env and config.toml."""
        url, registry, require = self.chain_flags
        return ChainSettings.resolve(url, registry, self.home, require_registered=require)

    def registry(self, *, need: bool = True) -> Registry | None:
        """The registry (imports web3), checked; None when none is configured and not
        ``need``ed (ConfigError then)."""
        chain = self.chain()
        if not chain.enabled:
            if not need:
                return None
            what = "--registry 0x…" if chain.url else "--chain URL and --registry 0x…"
            raise ConfigError(f"no hub registry: give {what} (or SONM_CHAIN, SONM_REGISTRY)")
        from sonm_p2p.chain.registry import Registry

        return Registry.open(chain.url, chain.registry, timeout=min(self.timeout, 10.0))

    def registered(self) -> RegisteredHubs | None:
        """The registered hubs when a registry is configured (None otherwise)."""
        reg = self.registry(need=False)
        if reg is None:
            return None
        from sonm_p2p.discovery.registered import RegisteredHubs

        return RegisteredHubs.of(reg.entries())

    def target(self) -> str:
        """The gRPC target of the chosen hub (joins the overlay only when it must)."""
        from cli._discover import classify, open_hub

        if classify(self.hub) == "direct":
            host, port = parse_hostport(self.hub, default_port=10001)
            return format_hostport(host, port)
        from sonm_p2p.config import bootstrap_list, mdns_namespace

        boot = bootstrap_list(self.bootstrap, self.home)
        chain = self.chain()
        return open_hub(
            self.stack,
            self.hub,
            boot,
            mdns_namespace(),
            timeout=self.timeout,
            registered=self.registered() if chain.enabled else None,
            require_registered=chain.trusting,
        )

    def client(self, *, timeout: float | None = -1.0) -> HubClient:
        """A client of the chosen hub; each call's deadline is ``--timeout`` unless given."""
        target = self.target()
        deadline = self.timeout if timeout == -1.0 else timeout
        ca = None
        if self.tls_ca is not None:
            try:
                ca = self.tls_ca.read_bytes()
            except OSError as exc:
                raise ConfigError(f"--tls-ca {self.tls_ca}: {exc.strerror}") from None
        return HubClient(target, timeout=deadline, identity=self.identity(), tls_ca=ca)


def endpoints_json(eps: tuple[Endpoint, ...]) -> list[dict[str, Any]]:
    return [
        {
            "port": f"{e.container_port}/{e.protocol}",
            "host": e.host_ip,
            "host_port": e.host_port,
            "reach": e.reach,
        }
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
