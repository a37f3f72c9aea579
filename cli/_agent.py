"""The resident ``sonmcli`` agent: commands forked from a process that has imported everything.

Started by the front end (``cli/_launch.py``, which says why) as ``python -m cli._agent SOCKET``.
One thread, one ``selectors`` loop over the listening socket, the connected front ends and a
pidfd per running command; no threads, so forking is safe. Per connection:

1. the front end sends a length-prefixed JSON request (argv, environment, working directory)
   with its stdin, stdout and stderr attached (``SCM_RIGHTS``);
2. the agent forks; the child puts those descriptors on 0, 1 and 2, takes the environment, the
   directory and argv, and runs ``sonmcli`` exactly as the front end would have, ending in
   ``os._exit``; the agent answers ``{"pid": N}``;
3. when the child's pidfd is readable the agent reaps it and answers ``{"exit": CODE}`` (minus
   the signal number when a signal ended it).

A front end that hangs up while its command runs gets its command interrupted (SIGINT, as Ctrl-C
would). Only the user who owns the agent may connect (``SO_PEERCRED``). The agent refuses a
command (``{"stale": true}``) and leaves when a ``.py`` file of the installation changed since it
started, so an upgrade never runs old code; it also leaves after ``SONM_CLI_AGENT_IDLE`` seconds
(600) without a command, when its socket file is removed or replaced, and on SIGTERM or
``sonmcli agent stop`` (after the commands it runs have ended; it takes no new ones).
"""

from __future__ import annotations

import contextlib
import fcntl
import gc
import os
import selectors
import signal
import socket
import struct
import sys
import time
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path

from cli._launch import PROTOCOL, frame, install_root, namespaces, unframe

__all__ = ["fingerprint", "serve"]

_MAX_REQUEST = 1 << 20
_CHECK_EVERY = 5.0  #: seconds between checks that the installed code is still ours


def fingerprint(roots: Iterable[Path]) -> frozenset[tuple[str, int, int]]:
    """What changes when the code under ``roots`` does: each ``.py`` file's path, mtime, size.

    Checked before every command, so kept to ``os.scandir`` (~1 ms for this project)."""
    found = set()
    stack = [str(root) for root in roots]
    while stack:
        try:
            entries = list(os.scandir(stack.pop()))
        except OSError:
            continue
        for entry in entries:
            if entry.name.endswith(".py"):
                with contextlib.suppress(OSError):
                    st = entry.stat()
                    found.add((entry.path, st.st_mtime_ns, st.st_size))
            elif entry.name != "__pycache__" and entry.is_dir(follow_symlinks=False):
                stack.append(entry.path)
    return frozenset(found)


def _code_roots() -> list[Path]:
    base = Path(install_root())
    return [base / "cli", base / "sonm_p2p"]


def _preload() -> None:
    """Import what commands import when they run, so each forked child finds it loaded (the
    list is what `ping`, `list`, `status`, `start`, `stop`, `logs` and `info` imported in a
    child on top of ``cli.sonmcli``), and fill the caches they fill (regular expressions)."""
    import grpc._channel  # noqa: F401  (made on a channel's first use)
    import grpc._simple_stubs  # noqa: F401
    import grpc.experimental  # noqa: F401

    import cli._discover  # noqa: F401  (the hub's target; libp2p only if it must be found)
    import cli.sonmcli  # noqa: F401  (click, gRPC, protobuf, the client)
    import sonm_p2p.auth  # noqa: F401
    import sonm_p2p.client  # noqa: F401
    import sonm_p2p.identity  # noqa: F401
    from cli._common import Duration

    Duration().convert("60s", None, None)


@dataclass
class _Conn:
    sock: socket.socket
    child: int | None = None
    pidfd: int | None = None
    buf: bytes = b""
    fds: list[int] = field(default_factory=list)


class Agent:
    def __init__(self, path: str, idle: float, lock: int) -> None:
        self.path = path
        self.lock: int | None = lock
        self.idle = idle
        self.sel = selectors.DefaultSelector()
        self.conns: dict[int, _Conn] = {}
        self.last = time.monotonic()
        self.served = 0
        self.started = time.time()
        self.code = fingerprint(_code_roots())
        self.checked = time.monotonic()
        self.terminated = False  #: SIGTERM: take no more commands, finish the running ones
        self.listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.inode = 0

    def bind(self) -> None:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(self.path)
        self.listener.bind(self.path)
        os.chmod(self.path, 0o600)
        self.listener.listen(64)
        self.listener.setblocking(False)
        self.inode = os.stat(self.path).st_ino
        self.sel.register(self.listener, selectors.EVENT_READ, None)

    # -- the loop --------------------------------------------------------------------------

    def run(self) -> None:
        """Serve until there is reason to leave, then finish the commands still running."""
        while self.lock is not None or self._busy():
            if self.lock is not None and (self.terminated or self._should_leave()):
                self.stop_listening()
            for key, _ in self.sel.select(timeout=1.0):
                if key.data is None:
                    self._accept()
                elif key.data[0] == "conn":
                    self._readable(key.data[1])
                else:
                    self._reap(key.data[1])

    def _should_leave(self) -> bool:
        try:
            if os.stat(self.path).st_ino != self.inode:
                return True  # removed or replaced
        except OSError:
            return True
        now = time.monotonic()
        if now - self.checked > _CHECK_EVERY:
            self.checked = now
            if self._stale():
                return True  # a front end of newer code may not even speak to us
        return not self._busy() and now - self.last > self.idle

    def _stale(self) -> bool:
        return fingerprint(_code_roots()) != self.code

    def _busy(self) -> bool:
        return any(c.child is not None for c in self.conns.values())

    def stop_listening(self) -> None:
        """Take no more commands: the socket, its pid file and the lock go at once (so a new
        agent can start while the commands of this one finish)."""
        if self.lock is None:
            return
        with contextlib.suppress(KeyError, ValueError):
            self.sel.unregister(self.listener)
        with contextlib.suppress(OSError):
            if os.stat(self.path).st_ino == self.inode:
                os.unlink(self.path)
        with contextlib.suppress(OSError, ValueError):
            if int(Path(self.path + ".pid").read_text()) == os.getpid():
                os.unlink(self.path + ".pid")
        self.listener.close()
        os.close(self.lock)
        self.lock = None

    def _accept(self) -> None:
        try:
            sock, _ = self.listener.accept()
        except OSError:
            return
        creds = sock.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, struct.calcsize("3i"))
        _pid, uid, _gid = struct.unpack("3i", creds)
        if uid != os.getuid():
            sock.close()
            return
        sock.setblocking(False)
        conn = _Conn(sock)
        self.conns[sock.fileno()] = conn
        self.sel.register(sock, selectors.EVENT_READ, ("conn", conn))
        self.last = time.monotonic()

    def _drop(self, conn: _Conn) -> None:
        with contextlib.suppress(KeyError, ValueError):
            self.sel.unregister(conn.sock)
        self.conns.pop(conn.sock.fileno(), None)
        for fd in conn.fds:
            with contextlib.suppress(OSError):
                os.close(fd)
        conn.fds = []
        conn.sock.close()

    def _readable(self, conn: _Conn) -> None:
        if conn.child is not None:
            # A running command's front end said something or hung up: only a hang-up is legal.
            try:
                data = conn.sock.recv(1)
            except OSError:
                data = b""
            if not data:
                with contextlib.suppress(OSError):
                    os.kill(conn.child, signal.SIGINT)
                self.sel.unregister(conn.sock)
            return
        try:
            data, fds, _flags, _addr = socket.recv_fds(conn.sock, 65536, 8)
        except BlockingIOError:
            return
        except OSError:
            data, fds = b"", []
        conn.fds.extend(fds)
        if not data:
            self._drop(conn)
            return
        conn.buf += data
        try:
            if int.from_bytes(conn.buf[:4], "big") > _MAX_REQUEST:
                raise ValueError("too long")
            request, _ = unframe(conn.buf)
        except ValueError:
            self._drop(conn)
            if self._stale():  # perhaps a front end of newer code
                self.stop_listening()
            return
        if request is not None:
            self._start(conn, request)

    def _answer(self, conn: _Conn, msg: dict) -> None:
        with contextlib.suppress(OSError):
            conn.sock.setblocking(True)
            conn.sock.sendall(frame(msg))
            conn.sock.setblocking(False)

    def _control(self, conn: _Conn, op: str) -> None:
        """``sonmcli agent status|stop``: what this agent is, or stop taking commands."""
        if op == "stop":
            self.stop_listening()
        self._answer(
            conn,
            {
                "pid": os.getpid(),
                "started": self.started,
                "served": self.served,
                "running": [c.child for c in self.conns.values() if c.child is not None],
                "listening": self.lock is not None,
            },
        )
        self._drop(conn)

    def _start(self, conn: _Conn, request: dict) -> None:
        if request.get("op") in ("status", "stop") and len(conn.fds) == 0:
            self._control(conn, request["op"])
            return
        if (
            request.get("v") != PROTOCOL
            or request.get("root") != install_root()
            or request.get("ns") != namespaces()
            or len(conn.fds) != 3
            or self._stale()
        ):
            self._answer(conn, {"stale": True})
            self._drop(conn)
            if self._stale():
                self.stop_listening()  # the installation changed under us
            return
        pid = os.fork()
        if pid == 0:
            self._child(conn, request)  # never returns
        for fd in conn.fds:
            os.close(fd)
        conn.fds = []
        conn.child = pid
        conn.pidfd = os.pidfd_open(pid)
        self.sel.register(conn.pidfd, selectors.EVENT_READ, ("child", conn))
        self.served += 1
        self._answer(conn, {"pid": pid})

    def _reap(self, conn: _Conn) -> None:
        assert conn.child is not None and conn.pidfd is not None
        _, status = os.waitpid(conn.child, 0)
        self.sel.unregister(conn.pidfd)
        os.close(conn.pidfd)
        conn.child = conn.pidfd = None
        self._answer(conn, {"exit": os.waitstatus_to_exitcode(status)})
        self._drop(conn)
        self.last = time.monotonic()

    # -- the child -------------------------------------------------------------------------

    def _child(self, conn: _Conn, request: dict) -> None:
        code = 1
        try:
            self.sel.close()
            self.listener.close()
            stdin, stdout, stderr = conn.fds
            for src, dst in ((stdin, 0), (stdout, 1), (stderr, 2)):
                os.dup2(src, dst)
            os.closerange(3, 1 << 20)
            for sig in (signal.SIGTERM, signal.SIGHUP, signal.SIGQUIT):
                signal.signal(sig, signal.SIG_DFL)
            signal.signal(signal.SIGINT, signal.default_int_handler)
            os.environ.clear()
            os.environ.update(request["env"])
            os.chdir(request["cwd"])
            sys.argv = list(request["argv"])
            # click names the program after argv[0] unless __main__ is a package's (`-m`).
            sys.modules["__main__"].__package__ = None
            _reopen_stdio()
            from cli.sonmcli import run

            run()  # ends in os._exit
        except SystemExit as done:
            code = done.code if isinstance(done.code, int) else 1
        except BaseException:  # noqa: BLE001  (the child must never return into the agent loop)
            with contextlib.suppress(Exception):
                import traceback

                traceback.print_exc()
        os._exit(code)


def _reopen_stdio() -> None:
    """New ``sys.std*`` on descriptors 0-2, buffered as Python would for a fresh process."""
    import io

    def stream(fd: int, mode: str, errors: str, line: bool) -> io.TextIOWrapper:
        raw = io.FileIO(fd, mode, closefd=False)
        buffered = io.BufferedReader(raw) if mode == "r" else io.BufferedWriter(raw)
        return io.TextIOWrapper(buffered, encoding="utf-8", errors=errors, line_buffering=line)

    sys.stdin = stream(0, "r", "strict", False)
    sys.stdout = stream(1, "w", "strict", os.isatty(1))
    sys.stderr = stream(2, "w", "backslashreplace", True)
    sys.__stdin__, sys.__stdout__, sys.__stderr__ = sys.stdin, sys.stdout, sys.stderr


def _lock(path: str, wait: float = 3.0) -> int | None:
    """One agent per socket: hold ``SOCKET.lock``; wait a little for one that is leaving."""
    fd = os.open(path + ".lock", os.O_CREAT | os.O_RDWR, 0o600)
    deadline = time.monotonic() + wait
    while True:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            return fd
        except BlockingIOError:
            if time.monotonic() > deadline:
                os.close(fd)
                return None
            time.sleep(0.05)


def serve(path: str) -> None:
    """Run the agent on ``path`` until it has reason to leave."""
    lock = _lock(path)
    if lock is None:
        return  # another agent serves this socket
    with contextlib.suppress(FileNotFoundError):
        probe = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            probe.connect(path)
            return  # a live agent holds the socket (it took the lock before us and left it)
        except OSError:
            pass
        finally:
            probe.close()
    idle = float(os.environ.get("SONM_CLI_AGENT_IDLE", "600") or 600)
    agent = Agent(path, idle, lock)
    signal.signal(signal.SIGTERM, lambda *_: setattr(agent, "terminated", True))
    _preload()
    gc.freeze()  # what is loaded stays shared with the children: no copy-on-write by the GC
    agent.bind()
    with open(path + ".pid", "w") as f:
        f.write(f"{os.getpid()}\n")
    try:
        agent.run()
    finally:
        agent.stop_listening()


if __name__ == "__main__":
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # a Ctrl-C meant for the front end's command
    serve(sys.argv[1])
