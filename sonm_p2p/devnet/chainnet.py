"""``sonm-devnet up --chain``: a real Ethereum node (anvil) beside the network, the hub registry
deployed on it, every hub funded from the node's dev balance and registered with a stake.

anvil runs as one more node of the network (role ``chain``), started first and stopped last by
``down`` like every other process (by PID and start time). Hubs get ``--chain --registry
--stake 1``, miners ``--chain --registry`` (they join registered hubs only), and ``env`` exports
``SONM_CHAIN``/``SONM_REGISTRY`` so the user's ``sonmcli`` trusts the same registry. web3 is
imported only here, only with ``--chain``.
"""

from __future__ import annotations

import time
from collections.abc import Mapping
from pathlib import Path

from sonm_p2p.devnet import procs
from sonm_p2p.devnet.record import NetworkRecord, NodeRecord
from sonm_p2p.errors import ConfigError, SonmError, Timeout

__all__ = ["STAKE_ETH", "chain_flags", "hub_stakes", "start_chain"]

STAKE_ETH = 1  #: what each hub stakes (the registry's minimum)
_BALANCE_ETH = 100  #: what each hub is given to stake from


def start_chain(
    rec: NetworkRecord,
    node: NodeRecord,
    env: Mapping[str, str],
    hub_ids: list[str],
    deadline: float,
) -> None:
    """Start anvil as ``node``, deploy a registry, fund ``hub_ids``; record the chain's URL and
    the registry's address in ``rec`` (saved)."""
    from sonm_p2p.chain import WEI
    from sonm_p2p.chain.devchain import anvil_argv, deploy_registry, listening_url, set_balance

    log = Path(node.log)
    node.pid, node.start_time = procs.spawn(anvil_argv(), log, env)
    rec.save()  # down finds it from here on
    while (url := listening_url(log.read_bytes() if log.exists() else b"")) is None:
        if not procs.alive(node.pid, node.start_time):
            raise ConfigError(f"anvil exited: {log.read_text(errors='replace')[-400:]}")
        if time.monotonic() > deadline:
            raise Timeout("anvil did not listen in time")
        time.sleep(0.05)
    node.ports = {"rpc": int(url.rsplit(":", 1)[1])}
    rec.chain_url = url
    rec.registry = deploy_registry(url, min_stake=STAKE_ETH * WEI)
    for node_id in hub_ids:
        set_balance(url, node_id, _BALANCE_ETH * WEI)
    rec.save()


def chain_flags(rec: NetworkRecord, role: str) -> list[str]:
    """What a hub (registering, with a stake) or a miner is told of the chain; [] without."""
    if not rec.chain_url:
        return []
    flags = ["--chain", rec.chain_url, "--registry", rec.registry]
    return flags + ["--stake", str(STAKE_ETH)] if role == "hub" else flags


def hub_stakes(rec: NetworkRecord) -> dict[str, float]:
    """Each registered hub's stake in ETH, by node ID ({} without a chain or when it does not
    answer: ``status`` still shows the rest)."""
    if not rec.chain_url:
        return {}
    from sonm_p2p.chain import WEI
    from sonm_p2p.chain.registry import Registry

    try:
        registry = Registry.open(rec.chain_url, rec.registry, timeout=3)
        return {h.node_id: registry.stake_of(h.node_id) / WEI for h in rec.hubs}
    except SonmError:
        return {}
