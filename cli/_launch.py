"""``sonmcli``'s entry point: hand the command to a resident agent, or run it here.

A ``sonmcli`` process spends ~0.2 s importing gRPC, protobuf, click and this project before it
sends its first byte, and a short command (``ping``, ``start``, ``stop``) is over in tens of
milliseconds after that. So, as the docker CLI talks to a running dockerd, this front end (the
standard library only: ~20 ms) passes its command line, environment, working directory and its
three standard descriptors to a per-user agent (``cli/_agent.py``) that has all of that imported
already. The agent forks a child per command; the child *is* the command, with this process's
stdin, stdout and stderr, and its exit status comes back here. The output, the exit codes and
the files a command writes are those of an in-process run: it is the same code.

The first call finds no agent: it starts one in the background and runs its command in-process
(no slower than without an agent). The agent leaves after ``SONM_CLI_AGENT_IDLE`` seconds without
a command (600), when its socket is removed, or when the installed code changes under it (the
command that noticed then runs in-process). Signals that stop a command (Ctrl-C, SIGTERM,
SIGHUP) are passed on to the child; if this process dies, the agent interrupts the child.

``SONM_CLI_AGENT=off`` runs every command in-process; ``SONM_CLI_AGENT_DIR`` moves the agent's
directory (default ``$XDG_RUNTIME_DIR/sonm-cli``, else ``/tmp/sonm-cli-<uid>``, mode 0700).
"""

from __future__ import annotations

# Only modules that cost nothing to import: ``socket``, ``signal`` and ``json`` would bring in
# ``enum``, ``selectors`` and ``re`` (~15 ms, most of what an agent-served command costs here).
import _signal
import _socket
import marshal
import os
import sys
import zlib

__all__ = ["agent_dir", "agent_socket", "ask_agent", "main", "namespaces"]

PROTOCOL = 1
_FORWARDED = (_signal.SIGINT, _signal.SIGTERM, _signal.SIGHUP, _signal.SIGQUIT)


def agent_dir() -> str:
    """The directory of this user's agents (not created here)."""
    given = os.environ.get("SONM_CLI_AGENT_DIR", "").strip()
    if given:
        return given
    runtime = os.environ.get("XDG_RUNTIME_DIR", "").strip()
    if runtime:
        return os.path.join(runtime, "sonm-cli")
    return f"/tmp/sonm-cli-{os.getuid()}"


def install_root() -> str:
    """The directory this project's code is imported from (one agent per installation)."""
    return os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def namespaces() -> str:
    """This process's network namespace and root directory: a command forked by an agent runs
    in the agent's, so each pair has an agent of its own. (``ip netns exec`` also makes a new
    mount namespace each time, with the same view of the network's files: not counted.)"""
    try:
        root = os.stat("/")
        return f"{os.stat('/proc/self/ns/net').st_ino}-{root.st_dev}-{root.st_ino}"
    except OSError:
        return ""


def agent_socket() -> str:
    """The agent's socket for this interpreter, installation and namespaces."""
    key = f"{os.path.realpath(sys.executable)}\0{install_root()}\0{namespaces()}".encode()
    return os.path.join(agent_dir(), f"agent-{zlib.crc32(key):08x}.sock")


def _private_dir(path: str) -> bool:
    """``path`` exists or was made, is a directory of ours, and nobody else may enter it."""
    try:
        os.makedirs(path, mode=0o700, exist_ok=True)
        st = os.lstat(path)
    except OSError:
        return False
    return (
        st.st_uid == os.getuid()
        and (st.st_mode & 0o077) == 0
        and os.path.isdir(path)
        and not os.path.islink(path)
    )


def _in_process() -> None:
    from cli.sonmcli import run

    run()


def _spawn_agent(path: str) -> None:
    """Start the agent in the background, detached from this process's stdio and session."""
    import subprocess

    try:
        subprocess.Popen(
            [sys.executable, "-m", "cli._agent", path],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            start_new_session=True,
            cwd="/",
        )
    except OSError:
        pass  # no agent: every command runs in-process, as before


def frame(msg: dict) -> bytes:
    """One message on the agent's socket: a 4-byte length, then ``marshal`` of a dict (both ends
    are this user's processes, checked by ``SO_PEERCRED``, and the same Python)."""
    data = marshal.dumps(msg)
    return len(data).to_bytes(4, "big") + data


def unframe(buf: bytes) -> tuple[dict | None, bytes]:
    """The first whole message in ``buf`` and the rest; None while it is incomplete.

    Raises ValueError on a message that is not a dict."""
    if len(buf) < 4:
        return None, buf
    size = int.from_bytes(buf[:4], "big")
    if len(buf) < 4 + size:
        return None, buf
    try:
        msg = marshal.loads(buf[4 : 4 + size])
    except (EOFError, TypeError) as exc:
        raise ValueError("not a message") from exc
    if not isinstance(msg, dict):
        raise ValueError("not a message")
    return msg, buf[4 + size :]


def _request() -> bytes:
    return frame(
        {
            "v": PROTOCOL,
            "root": install_root(),
            "ns": namespaces(),
            "argv": sys.argv,
            "env": dict(os.environ),
            "cwd": os.getcwd(),
        }
    )


class _Replies:
    """Messages from the agent."""

    def __init__(self, sock: _socket.socket) -> None:
        self.sock = sock
        self.buf = b""

    def next(self) -> dict | None:
        while True:
            try:
                msg, self.buf = unframe(self.buf)
            except ValueError:
                return None
            if msg is not None:
                return msg
            try:
                chunk = self.sock.recv(4096)
            except OSError:
                return None
            if not chunk:
                return None
            self.buf += chunk


def ask_agent(op: str, path: str | None = None) -> dict | None:
    """``status`` or ``stop`` of the agent at ``path`` (this process's by default): what it
    answers (its pid, start time, commands served and running), or None when none listens."""
    sock = _socket.socket(_socket.AF_UNIX, _socket.SOCK_STREAM)
    try:
        sock.settimeout(5)
        sock.connect(path or agent_socket())
        sock.sendall(frame({"v": PROTOCOL, "op": op}))
        return _Replies(sock).next()
    except OSError:
        return None
    finally:
        sock.close()


def _exit_as(code: int) -> None:
    """Leave with the child's status: its exit code, or the signal that ended it."""
    if code < 0:
        sig = -code
        try:
            _signal.signal(sig, _signal.SIG_DFL)
            os.kill(os.getpid(), sig)
        except (OSError, ValueError):
            pass
        os._exit(128 + sig)
    os._exit(code)


def _via_agent(path: str) -> bool:
    """Run the command through the agent at ``path``; False when it did not start there."""
    try:
        for fd in (0, 1, 2):
            os.fstat(fd)
    except OSError:
        return False  # a closed standard descriptor cannot be passed on
    sock = _socket.socket(_socket.AF_UNIX, _socket.SOCK_STREAM)
    try:
        sock.connect(path)
        request = _request()
        fds = b"".join(fd.to_bytes(4, sys.byteorder) for fd in (0, 1, 2))  # C ints
        rights = [(_socket.SOL_SOCKET, _socket.SCM_RIGHTS, fds)]
        sent = sock.sendmsg([request[:4096]], rights)
        sock.sendall(request[sent:])
    except OSError:
        sock.close()
        return False
    lines = _Replies(sock)
    first = lines.next()
    if first is None or "pid" not in first:
        sock.close()
        return False  # refused (stale code, another installation) or gone: nothing ran
    child = int(first["pid"])

    def forward(sig: int, _frame: object) -> None:
        try:
            os.kill(child, sig)
        except OSError:
            pass

    for sig in _FORWARDED:
        _signal.signal(sig, forward)
    done = lines.next()
    if done is None or "exit" not in done:
        # The agent went away while the command ran: wait for the command itself.
        _wait_gone(child)
        print("sonmcli: lost the command's exit status (the CLI agent stopped)", file=sys.stderr)
        os._exit(1)
    _exit_as(int(done["exit"]))
    return True  # not reached


def _wait_gone(pid: int) -> None:
    import select

    try:
        fd = os.pidfd_open(pid)
    except OSError:
        return
    try:
        select.select([fd], [], [])
    finally:
        os.close(fd)


def main() -> None:
    """Console entry point of ``sonmcli``."""
    mode = os.environ.get("SONM_CLI_AGENT", "").strip().lower()
    if mode in ("off", "0", "no", "false") or not hasattr(os, "pidfd_open"):
        _in_process()
        return
    directory = agent_dir()
    if not _private_dir(directory):
        _in_process()
        return
    path = agent_socket()
    if _via_agent(path):
        return
    if not _asks_about_agent(sys.argv[1:]):
        _spawn_agent(path)
    _in_process()


def _asks_about_agent(args: list[str]) -> bool:
    """``sonmcli [...] agent status|stop``: asking must not start one."""
    pairs = zip(args, args[1:], strict=False)
    return any(a == "agent" and b in ("status", "stop") for a, b in pairs)
