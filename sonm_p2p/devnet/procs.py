"""Processes of a local network, known by PID and start time across ``sonm-devnet`` calls.

``up`` starts each node in a session of its own (a terminal's Ctrl-C reaches ``sonm-devnet``
only), writing to its log file, and returns; ``down``, from another process, stops them by PID.
A PID alone could name a later, unrelated process after a crash; the start time read from
``/proc/<pid>/stat`` tells them apart, so ``down`` never signals a process it did not start.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

__all__ = ["BIN_DIR", "Proc", "alive", "spawn", "start_time", "stop"]

#: Where sonmhub, sonmminer and sonmcli are: next to the Python running this.
BIN_DIR = Path(sys.executable).parent


@dataclass
class Proc:
    """A process this one started and waits for (a child, unlike those :func:`spawn` starts)."""

    name: str
    popen: subprocess.Popen
    log: Path

    @property
    def pid(self) -> int:
        return self.popen.pid

    def alive(self) -> bool:
        return self.popen.poll() is None

    def output(self) -> str:
        return self.log.read_text(errors="replace") if self.log.exists() else ""

    def kill9(self) -> None:
        if self.alive():
            os.kill(self.pid, signal.SIGKILL)
            self.popen.wait(timeout=10)

    def stop(self) -> int:
        if self.alive():
            self.popen.send_signal(signal.SIGTERM)
            try:
                self.popen.wait(timeout=15)
            except subprocess.TimeoutExpired:
                self.popen.kill()
                self.popen.wait(timeout=10)
        return self.popen.returncode


def start_time(pid: int) -> int:
    """The process's start time (clock ticks since boot), or 0 if there is none (or a zombie)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return 0
    fields = stat.rsplit(")", 1)[1].split()  # the command name may hold spaces and ')'
    if fields[0] == "Z":
        return 0
    return int(fields[19])


def alive(pid: int, started: int) -> bool:
    """The process ``pid`` that started at ``started`` still runs."""
    return pid > 0 and started > 0 and start_time(pid) == started


def spawn(argv: Sequence[str], log: Path, env: Mapping[str, str]) -> tuple[int, int]:
    """Start ``argv`` detached (own session, stdin closed, output appended to ``log``); return
    its (pid, start time)."""
    with open(log, "ab") as out:
        proc = subprocess.Popen(
            list(argv),
            stdout=out,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            env=dict(env),
            start_new_session=True,
        )
    # Popen's object is dropped: whoever outlives whom, the PID and start time are the handle.
    # (The child stays ours until we exit; _reap collects it if it ends first.)
    return proc.pid, start_time(proc.pid)


def _reap(pid: int) -> None:
    with contextlib.suppress(ChildProcessError, OSError):
        os.waitpid(pid, os.WNOHANG)


def stop(procs: Iterable[tuple[int, int]], *, grace: float = 15.0) -> None:
    """SIGTERM each live (pid, start time), wait up to ``grace`` seconds for all, SIGKILL the
    rest. Processes already gone (or replaced by others under the same PID) are skipped."""
    live = [(pid, t) for pid, t in dict.fromkeys(procs) if alive(pid, t)]  # a group: once
    for pid, _ in live:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGTERM)
    deadline = time.monotonic() + grace
    while live and time.monotonic() < deadline:
        for pid, _ in live:
            _reap(pid)
        live = [(pid, t) for pid, t in live if alive(pid, t)]
        if live:
            time.sleep(0.05)
    for pid, t in live:
        if alive(pid, t):
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
    deadline = time.monotonic() + 10.0  # SIGKILL cannot be refused; only a stuck kernel waits
    for pid, t in live:
        while alive(pid, t) and time.monotonic() < deadline:
            _reap(pid)
            time.sleep(0.02)
