"""Many miners in one process (``sonm-devnet up --miners-per-process K``).

Each miner keeps its own key, home, libp2p node and connection to its hub, exactly as a
``sonmminer`` process would; they only share the interpreter (its ~60 MB of imports, libp2p's
above all). ``up`` writes a group's miners to a JSON file and starts ``sonm-devnet
_miner-group FILE``, which runs them until SIGTERM.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from sonm_p2p.miner.daemon import MinerDaemon, MinerOptions

__all__ = ["group_spec", "miner_options", "start_group"]


def group_spec(
    *, home: str, bootstrap: str, hub_id: str, publish_ip: str, runtime: str, label: str
) -> dict[str, Any]:
    """One miner of a group, as written to the group's file (what ``sonmminer`` flags say)."""
    return {
        "home": home,
        "bootstrap": bootstrap,
        "hub_id": hub_id,
        "publish_ip": publish_ip,
        "runtime": runtime,
        "label": label,
    }


def miner_options(spec: dict[str, Any]) -> MinerOptions:
    """``sonmminer --home H --bootstrap B --hub-id I --no-mdns --publish-ip P --runtime R
    --label K=V``, listening on loopback."""
    key, _, value = spec["label"].partition("=")
    return MinerOptions(
        home=Path(spec["home"]),
        hub_ids=(spec["hub_id"],),
        bootstrap=(spec["bootstrap"],),
        mdns=False,
        listen=("/ip4/127.0.0.1/tcp/0",),
        publish_ip=spec["publish_ip"],
        labels={key: value},
        runtime=spec["runtime"],
    )


def start_group(path: Path) -> list[MinerDaemon]:
    """Start every miner of the group file ``path``; on a failure, close those started."""
    daemons: list[MinerDaemon] = []
    try:
        for spec in json.loads(path.read_text()):
            daemon = MinerDaemon(miner_options(spec))
            daemons.append(daemon)
            daemon.start()
    except BaseException:
        for daemon in reversed(daemons):
            daemon.close()
        raise
    return daemons
