"""Local sockets only this process can reach.

A daemon talks to itself through local sockets (the hub's tunnels to its miners, a miner's own
gRPC server). On a loopback TCP port any local process could connect and speak as the daemon
(start containers labelled with someone else's ID, say); a Unix socket inside a directory of
mode 0700 keeps every other user out, and the path is known only to this process.
"""

from __future__ import annotations

import atexit
import itertools
import os
import shutil
import tempfile
import threading

__all__ = ["private_socket_path"]

_lock = threading.Lock()
_dir: str | None = None
_count = itertools.count()


def private_socket_path(kind: str) -> str:
    """A fresh path for a Unix socket in this process's private directory (0700, under the
    temp dir: short enough for the 107-byte limit of socket paths; removed at exit)."""
    global _dir
    with _lock:
        if _dir is None or not os.path.isdir(_dir):
            _dir = tempfile.mkdtemp(prefix="sonm-")  # mode 0700
            atexit.register(shutil.rmtree, _dir, True)
        return os.path.join(_dir, f"{kind}{next(_count)}.sock")
