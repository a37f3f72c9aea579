"""A P2PNode in its own process, driven over stdin/stdout (JSON lines), for namespace tests.

Hole punching is a race between two SYNs; nodes sharing one Python process share one GIL and
take turns instead of racing, so the traversal tests and the benchmark run each node as a
process inside its namespace: ``python -m tests.netns.node_agent '<options json>'``.

:class:`Agent` is the controlling side (spawns it in a :class:`~sonm_p2p.devnet.topology.Host`,
tracked by PID for the topology's teardown); :func:`main` is the process. Besides the node's
API, the process runs the test's traffic (echo servers, a user's TCP/UDP client) so every socket
lives in the node's namespace.
"""

from __future__ import annotations

import itertools
import json
import os
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

__all__ = ["Agent", "AgentError", "main"]


class AgentError(Exception):
    """An operation failed in the agent; ``kind`` is the exception class name there."""

    def __init__(self, kind: str, message: str) -> None:
        super().__init__(f"{kind}: {message}")
        self.kind = kind
        self.message = message


class Agent:
    """A node process; every call is one request/response, with a deadline.

    host: the namespace host to run in (tracked by its topology for teardown); None runs it
        here, on this machine's loopback (then ``workdir`` and ``procs``, a list the caller
        stops, are required).
    """

    def __init__(
        self,
        host: Any,
        name: str,
        options: dict[str, Any],
        *,
        wait: bool = True,
        workdir: Path | None = None,
        procs: list[Any] | None = None,
    ) -> None:
        from tests.harness import Proc

        argv = [sys.executable, "-m", "tests.netns.node_agent", json.dumps(options)]
        if host is not None:
            argv, workdir, procs = host.exec_argv(argv), host.topo.workdir, host.topo.procs
        assert workdir is not None and procs is not None
        log = workdir / f"{name}.log"
        env = {**os.environ, "PYTHONUNBUFFERED": "1"}
        root = str(Path(__file__).resolve().parents[2])
        env["PYTHONPATH"] = root + os.pathsep + env.get("PYTHONPATH", "")
        with open(log, "ab") as err:
            popen = subprocess.Popen(
                argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=err, env=env, cwd=root
            )
        self.proc = Proc(name, popen, log)
        procs.append(self.proc)
        self.name = name
        self.host = host
        self._ids = itertools.count()
        self._lock = threading.Lock()
        self.peer_id = ""
        self.listen: list[str] = []
        if wait:
            self.ready()

    def ready(self, op: str = "hello") -> Agent:
        """Wait for the node to listen (agents started with ``wait=False`` start in parallel);
        ``op="restart"`` replaces the node by a fresh one (new key, new port) first."""
        hello = self.call(op, timeout=60)
        self.peer_id = hello["peer_id"]
        self.listen = hello["addrs"]
        return self

    def call(self, op: str, timeout: float = 30, **args: Any) -> Any:
        """Run ``op`` in the agent; its result, or AgentError."""
        import select

        with self._lock:
            rid = next(self._ids)
            line = json.dumps({"id": rid, "op": op, "args": args}) + "\n"
            assert self.proc.popen.stdin is not None and self.proc.popen.stdout is not None
            self.proc.popen.stdin.write(line.encode())
            self.proc.popen.stdin.flush()
            out = self.proc.popen.stdout
            deadline = time.monotonic() + timeout
            while True:
                left = deadline - time.monotonic()
                if left <= 0:
                    raise TimeoutError(f"{self.name}: {op} took more than {timeout}s")
                ready, _, _ = select.select([out], [], [], left)
                if not ready:
                    continue
                raw = out.readline()
                if not raw:
                    raise AgentError("Exited", f"{self.name} exited:\n{self.proc.output()[-3000:]}")
                reply = json.loads(raw)
                if reply.get("id") == rid:
                    break
        if not reply["ok"]:
            raise AgentError(reply["kind"], reply["error"])
        return reply["result"]

    def __repr__(self) -> str:
        return f"<Agent {self.name} pid={self.proc.pid} {self.peer_id[:12]}…>"


# --- the agent process ----------------------------------------------------------------------


def _echo_tcp() -> int:
    srv = socket.socket()
    srv.bind(("127.0.0.1", 0))
    srv.listen(64)

    def serve(conn: socket.socket) -> None:
        with conn:
            while data := conn.recv(1 << 16):
                conn.sendall(data)
            conn.shutdown(socket.SHUT_WR)

    def accept() -> None:
        while True:
            conn, _ = srv.accept()
            threading.Thread(target=serve, args=(conn,), daemon=True).start()

    threading.Thread(target=accept, daemon=True).start()
    return srv.getsockname()[1]


def _echo_udp() -> int:
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.bind(("127.0.0.1", 0))

    def serve() -> None:
        while True:
            data, addr = sock.recvfrom(65535)
            sock.sendto(data, addr)

    threading.Thread(target=serve, daemon=True).start()
    return sock.getsockname()[1]


def _source() -> int:
    """A TCP server on all interfaces: reads ``N\\n``, sends N bytes, closes."""
    srv = socket.create_server(("0.0.0.0", 0))
    block = os.urandom(1 << 20)

    def serve(conn: socket.socket) -> None:
        with conn:
            line = b""
            while not line.endswith(b"\n"):
                chunk = conn.recv(32)
                if not chunk:
                    return
                line += chunk
            left = int(line)
            while left > 0:
                sent = conn.send(block[: min(left, len(block))])
                left -= sent

    def accept() -> None:
        while True:
            conn, _ = srv.accept()
            threading.Thread(target=serve, args=(conn,), daemon=True).start()

    threading.Thread(target=accept, daemon=True).start()
    return srv.getsockname()[1]


class _State:
    def __init__(self, options: dict[str, Any]) -> None:
        self.options = options
        self.forwards: dict[str, Any] = {}
        self.held: dict[int, dict[str, Any]] = {}
        self.ports = {"tcp": _echo_tcp(), "udp": _echo_udp(), "source": _source()}
        self.serving = False
        self.node = self._new_node()

    def _new_node(self) -> Any:
        from sonm_p2p.identity import Identity
        from sonm_p2p.transport.node import NodeOptions, P2PNode
        from sonm_p2p.transport.relay import RelayOptions

        options = self.options
        kw: dict[str, Any] = {"listen": tuple(options.get("listen", ["/ip4/0.0.0.0/tcp/0"]))}
        if options.get("relay"):
            kw["relay_service"] = RelayOptions()
        keys = ("keepalive_interval", "keepalive_timeout", "hole_punch", "upgrade_wait")
        for key in (*keys, "birthday_punch"):
            if key in options:
                kw[key] = options[key]
        if "upgrade_attempts" in options:
            from sonm_p2p.transport.dial_ladder import UpgradePolicy

            kw["upgrade"] = UpgradePolicy(max_attempts=options["upgrade_attempts"])
        node = P2PNode(Identity.generate(), NodeOptions(**kw))
        node.start()
        if options.get("nat_type"):
            node.nat_type = options["nat_type"]  # what STUN would have told (no hub here)
        return node

    def restart(self) -> dict[str, Any]:
        """A fresh node (new key, new port) in place of the current one."""
        for fwd in self.forwards.values():
            fwd.close()
        self.forwards.clear()
        self.node.close()
        self.node = self._new_node()
        if self.serving:
            self.serve()
        return self.hello()

    def hello(self) -> dict[str, Any]:
        return {"peer_id": self.node.peer_id, "addrs": self.node.addrs}

    def advertised(self) -> list[str]:
        return self.node.advertised_addrs

    def reserve(self, relay: str) -> list[str]:
        return self.node.reserve(relay).circuit_addrs

    def connect(self, target: str) -> str:
        return self.node.connect(target)

    def connect_peer(
        self,
        peer: str,
        addrs: list[str],
        upgrade_wait: float | None = None,
        remote_nat: str | None = None,
    ) -> Any:
        began = time.perf_counter()
        path = self.node.connect_peer(peer, addrs, upgrade_wait=upgrade_wait, remote_nat=remote_nat)
        took = time.perf_counter() - began
        upgrade = self.node.core.paths.last_upgrade.get(peer) if self.node.core.paths else None
        return {"path": path.as_dict(), "seconds": took, "upgrade": upgrade}

    def path(self, peer: str) -> Any:
        path = self.node.path(peer)
        return None if path is None else path.as_dict()

    def upgrade(self, peer: str) -> Any:
        began = time.perf_counter()
        ok = self.node.upgrade(peer)
        return {"ok": ok, "seconds": time.perf_counter() - began}

    def birthday(self, peer: str) -> Any:
        """The last birthday punch with ``peer`` as this node saw it (None: none)."""
        punch = self.node.core.paths.birthday if self.node.core.paths else None
        outcome = punch.results.get(peer) if punch is not None else None
        return None if outcome is None else outcome.as_dict()

    def disconnect(self, peer: str) -> None:
        self.node.disconnect(peer)

    def serve(self) -> dict[str, int]:
        from sonm_p2p.errors import NotFound, PermissionDenied, TaskNotFound
        from sonm_p2p.transport.forward import serve_forward

        def resolve(peer: str, request: Any) -> tuple[str, int]:
            if request.task_id == "secret":
                raise PermissionDenied(f"task secret is not yours ({peer[:12]}…)")
            if request.task_id != "echo":
                raise TaskNotFound(f"no task {request.task_id}")
            if request.port != 7:
                raise NotFound(f"task echo publishes no port {request.port}/{request.proto}")
            return ("127.0.0.1", self.ports[str(request.proto)])

        def resolve_any(peer: str, request: Any) -> tuple[str, int]:
            if request.task_id == "source":
                return ("127.0.0.1", self.ports["source"])
            return resolve(peer, request)

        serve_forward(self.node, resolve_any)
        self.serving = True
        return self.ports

    def open_forward(self, peer: str, task: str, port: int, proto: str = "tcp") -> list[Any]:
        from sonm_p2p.transport.forward import open_forward

        fwd = open_forward(self.node, peer, task, port, proto)
        key = f"{fwd.local_addr[0]}:{fwd.local_addr[1]}/{proto}"
        self.forwards[key] = fwd
        return [*fwd.local_addr, key]

    def close_forward(self, key: str) -> None:
        self.forwards.pop(key).close()

    def tcp_transfer(self, addr: list[Any], size: int, within: float = 60) -> dict[str, Any]:
        """Connect, time the first echoed byte, then echo ``size`` bytes; intact or an error."""
        began = time.perf_counter()
        with socket.create_connection(tuple(addr), timeout=within) as conn:
            conn.sendall(b"!")
            first = conn.recv(1)
            ttfb = time.perf_counter() - began
            if first != b"!":
                return {"ok": False, "why": f"first byte {first!r}"}
            payload = os.urandom(1 << 16) * max(1, size >> 16)
            received = bytearray()
            t0 = time.perf_counter()

            def send() -> None:
                conn.sendall(payload)
                conn.shutdown(socket.SHUT_WR)

            sender = threading.Thread(target=send, daemon=True)
            sender.start()
            while data := conn.recv(1 << 20):
                received += data
            sender.join()
            seconds = time.perf_counter() - t0
        return {
            "ok": bytes(received) == payload,
            "ttfb": ttfb,
            "bytes": len(payload),
            "seconds": seconds,
            "mbps": len(payload) / seconds / 1e6,
        }

    def udp_echo(self, addr: list[Any], count: int = 5, within: float = 5) -> dict[str, Any]:
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
            sock.settimeout(within)
            got = []
            for i in range(count):
                msg = f"datagram {i} ".encode() * (i + 1)
                sock.sendto(msg, tuple(addr))
                data, _ = sock.recvfrom(65535)
                got.append(data == msg)
        return {"ok": all(got), "count": len(got)}

    def download(self, addr: list[Any], size: int, runs: int = 1, firsts: int = 0) -> Any:
        """Time to first byte (``firsts`` times, 1-byte downloads, connect included) and
        seconds to download ``size`` bytes (``runs`` times) from a source at ``addr``."""
        ttfb: list[float] = []
        for _ in range(firsts):
            began = time.perf_counter()
            with socket.create_connection(tuple(addr), timeout=30) as conn:
                conn.sendall(b"1\n")
                if not conn.recv(1):
                    raise OSError("the source closed without a byte")
                ttfb.append(time.perf_counter() - began)
        seconds: list[float] = []
        for _ in range(runs):
            with socket.create_connection(tuple(addr), timeout=60) as conn:
                began = time.perf_counter()
                conn.sendall(f"{size}\n".encode())
                got = 0
                while data := conn.recv(1 << 20):
                    got += len(data)
                seconds.append(time.perf_counter() - began)
                if got != size:
                    raise OSError(f"got {got} of {size} bytes")
        return {"ttfb": ttfb, "seconds": seconds}

    def hold(self, addr: list[Any]) -> int:
        """Open a connection through a forward, prove it echoes, keep it open; its handle."""
        conn = socket.create_connection(tuple(addr), timeout=10)
        conn.sendall(b"ping")
        assert conn.recv(4) == b"ping"
        handle = len(self.held)
        self.held[handle] = {"conn": conn}
        return handle

    def await_end(self, handle: int, within: float) -> dict[str, Any]:
        """Keep sending on a held connection until it fails or ends; how and when."""
        conn = self.held.pop(handle)["conn"]
        conn.settimeout(0.5)
        began = time.perf_counter()
        try:
            while time.perf_counter() - began < within:
                try:
                    conn.sendall(b"x")
                    data = conn.recv(1 << 16)
                except TimeoutError:
                    continue
                if not data:
                    return {"end": "eof", "after": time.perf_counter() - began}
            return {"end": "none", "after": time.perf_counter() - began}
        except OSError as exc:
            return {"end": type(exc).__name__, "after": time.perf_counter() - began}
        finally:
            conn.close()


def main() -> None:
    options = json.loads(sys.argv[1]) if len(sys.argv) > 1 else {}
    state = _State(options)
    for line in sys.stdin:
        request = json.loads(line)
        try:
            result = getattr(state, request["op"])(**request.get("args", {}))
            reply = {"id": request["id"], "ok": True, "result": result}
        except Exception as exc:
            reply = {
                "id": request["id"],
                "ok": False,
                "kind": type(exc).__name__,
                "error": str(exc),
            }
        sys.stdout.write(json.dumps(reply) + "\n")
        sys.stdout.flush()
    state.node.close()


if __name__ == "__main__":
    main()
