"""``sonm-devnet``'s engine: a local network of hubs and miners as background processes.

``record`` (pure: the saved state, how it reads), ``procs`` (processes by PID and start time),
``network`` (up, status, down). ``cli/devnet.py`` is the click front end.
"""

from sonm_p2p.devnet.network import Devnet, DevnetOptions, default_dir
from sonm_p2p.devnet.record import NetworkRecord, NodeRecord, env_lines, render_table

__all__ = [
    "Devnet",
    "DevnetOptions",
    "NetworkRecord",
    "NodeRecord",
    "default_dir",
    "env_lines",
    "render_table",
]
