"""The chain: hubs registered with a stake on an Ethereum contract (``contracts/HubRegistry.vy``).

Importing this package costs nothing: web3 (over a second to import) is loaded by
:mod:`sonm_p2p.chain.registry` only, which only chain paths import. Here: what every front-end
needs to parse and show chain settings without web3.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from decimal import Decimal, InvalidOperation
from pathlib import Path

from sonm_p2p.errors import ConfigError

__all__ = ["ChainSettings", "WEI", "format_eth", "parse_eth"]

WEI = 10**18  # wei in one ether


def parse_eth(text: str, flag: str) -> int:
    """``1``, ``0.5``, ``2.25`` (ether) → wei. ConfigError naming ``flag`` otherwise."""
    try:
        value = Decimal(str(text).strip()) * WEI
    except InvalidOperation:
        value = Decimal(-1)
    if not value.is_finite() or value < 0 or value != value.to_integral_value():
        raise ConfigError(f"{flag} {text!r}: expected an amount of ether, like 1 or 0.25")
    return int(value)


def format_eth(wei: int) -> str:
    """wei → ether, as short as exact: ``1``, ``0.25``, ``0.000000000000000001``."""
    text = f"{Decimal(wei) / WEI:f}"
    return text.rstrip("0").rstrip(".") if "." in text else text


@dataclass(frozen=True)
class ChainSettings:
    """Where the chain is and which registry to use ("" each when not configured).

    require_registered: only registered hubs are used (default on whenever a registry is set).
    """

    url: str = ""
    registry: str = ""
    require_registered: bool = True

    @property
    def enabled(self) -> bool:
        return bool(self.url and self.registry)

    @property
    def trusting(self) -> bool:
        """True when unregistered hubs are refused."""
        return self.enabled and self.require_registered

    @classmethod
    def resolve(
        cls,
        url: str | None,
        registry: str | None,
        home: Path,
        *,
        require_registered: bool | None = None,
    ) -> ChainSettings:
        """Flags > ``SONM_CHAIN`` / ``SONM_REGISTRY`` > ``chain`` / ``registry`` /
        ``require_registered`` in ``<home>/config.toml``. A registry without a chain URL is a
        ConfigError."""
        from sonm_p2p.config import load_config

        cfg: dict | None = None

        def pick(flag: str | None, env: str, key: str) -> str:
            nonlocal cfg
            if flag:
                return flag.strip()
            if os.environ.get(env, "").strip():
                return os.environ[env].strip()
            if cfg is None:
                cfg = load_config(home)
            return str(cfg.get(key, "")).strip()

        url = pick(url, "SONM_CHAIN", "chain")
        registry = pick(registry, "SONM_REGISTRY", "registry")
        if registry and not url:
            raise ConfigError(
                f"registry {registry} given but no chain: pass --chain URL (or SONM_CHAIN)"
            )
        if registry and not (registry.startswith("0x") and len(registry) == 42):
            raise ConfigError(f"--registry {registry!r}: expected a 0x… contract address")
        if require_registered is None:
            if cfg is None:
                cfg = load_config(home)
            require_registered = bool(cfg.get("require_registered", True))
        return cls(url, registry, require_registered)
