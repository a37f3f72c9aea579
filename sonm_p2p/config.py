"""Node configuration: flags > environment > ``<home>/config.toml`` > defaults.

The file is optional. Keys used today::

    bootstrap = ["/ip4/192.0.2.10/tcp/10002/p2p/16Uiu2...", "hub.example:10002"]
    mdns = true
    chain = "http://127.0.0.1:8545"         # an Ethereum JSON-RPC URL (see sonm_p2p/chain)
    registry = "0x5FbDB2315678afecb367f032d93F642f64180aa3"
    require_registered = true

Every error names the file.
"""

from __future__ import annotations

import os
import re
import tomllib
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from sonm_p2p.errors import ConfigError

__all__ = ["CONFIG_FILE", "bootstrap_list", "client_listen", "load_config", "mdns_namespace"]

CONFIG_FILE = "config.toml"
_KNOWN = {
    "bootstrap": list,
    "mdns": bool,
    "chain": str,
    "registry": str,
    "require_registered": bool,
}


def load_config(home: Path) -> dict[str, Any]:
    """``home/config.toml`` as a dict ({} when absent). Raises ConfigError naming the file."""
    path = home / CONFIG_FILE
    if not path.exists():
        return {}
    try:
        data = tomllib.loads(path.read_text())
    except (OSError, tomllib.TOMLDecodeError) as exc:
        raise ConfigError(f"{path}: {exc}") from None
    for key, kind in _KNOWN.items():
        if key in data and not isinstance(data[key], kind):
            raise ConfigError(f"{path}: '{key}' must be a {kind.__name__}")
    if "bootstrap" in data and not all(isinstance(x, str) for x in data["bootstrap"]):
        raise ConfigError(f"{path}: 'bootstrap' must be a list of addresses (strings)")
    return data


def bootstrap_list(flags: Iterable[str], home: Path) -> tuple[str, ...]:
    """Bootstrap peers: ``--bootstrap`` flags, else ``SONM_BOOTSTRAP`` (comma or space
    separated), else the config file's ``bootstrap``."""
    given = tuple(flags)
    if given:
        return given
    env = os.environ.get("SONM_BOOTSTRAP", "").strip()
    if env:
        return tuple(x for x in re.split(r"[,\s]+", env) if x)
    return tuple(load_config(home).get("bootstrap", ()))


def mdns_namespace() -> str:
    """The mDNS namespace nodes meet in: ``SONM_MDNS_NAMESPACE`` or "hub" (tests isolate)."""
    return os.environ.get("SONM_MDNS_NAMESPACE", "hub")


def client_listen() -> tuple[str, ...]:
    """Where a short-lived node (sonmcli's overlay commands) listens: ``SONM_P2P_LISTEN``
    (space separated multiaddrs) or an ephemeral TCP port on all IPv4 interfaces."""
    text = os.environ.get("SONM_P2P_LISTEN", "").strip()
    return tuple(text.split()) if text else ("/ip4/0.0.0.0/tcp/0",)
