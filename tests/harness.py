"""Real processes for integration and e2e tests: hubs, miners and sonmcli, on 127.0.0.1.

Everything a test starts is tracked by PID and stopped at teardown; homes live in the test's
tmp_path; containers carry a per-test ``sonm.test`` label and are removed at teardown.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import socket
import subprocess
import tempfile
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

from sonm_p2p.devnet.procs import BIN_DIR as BIN
from sonm_p2p.devnet.procs import Proc  # noqa: F401 - the tests take it from here

T = TypeVar("T")

# Tests talk to 127.0.0.1 only: libp2p listens (and so advertises and is dialled) on loopback,
# and mDNS multicasts on loopback, never on the machine's real interfaces. Every process a test
# starts inherits these.
os.environ.setdefault("SONM_P2P_LISTEN", "/ip4/127.0.0.1/tcp/0")
os.environ.setdefault("SONM_MDNS_INTERFACES", "127.0.0.1")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_for(cond: Callable[[], T], what: str, timeout: float = 20.0, every: float = 0.05) -> T:
    """Poll ``cond`` until it returns something truthy; fail with ``what`` at the deadline."""
    deadline = time.monotonic() + timeout
    last_exc: BaseException | None = None
    while time.monotonic() < deadline:
        try:
            value = cond()
            if value:
                return value
        except Exception as exc:  # the condition may fail until the thing is up
            last_exc = exc
        time.sleep(every)
    raise AssertionError(
        f"timed out after {timeout}s waiting for {what} (last error: {last_exc!r})"
    )


@dataclass
class Network:
    """Hubs and miners as real processes; ``close()`` stops them all (by PID)."""

    root: Path
    test_label: str = field(default_factory=lambda: f"t-{uuid.uuid4().hex[:12]}")
    procs: list[Proc] = field(default_factory=list)
    env: dict[str, str] = field(default_factory=dict)

    def spawn(self, name: str, argv: list[str], **env: str) -> Proc:
        log = self.root / f"{name}.log"
        full_env = {**os.environ, "PYTHONUNBUFFERED": "1", **self.env, **env}
        with open(log, "ab") as f:
            popen = subprocess.Popen(
                argv, stdout=f, stderr=subprocess.STDOUT, env=full_env, stdin=subprocess.DEVNULL
            )
        proc = Proc(name, popen, log)
        self.procs.append(proc)
        return proc

    def hub(
        self,
        name: str = "hub",
        *,
        grpc_port: int | None = None,
        p2p_port: int | None = None,
        extra: list[str] | None = None,
        cli_args: list[str] | None = None,
    ) -> Hub:
        grpc_port = grpc_port or free_port()
        p2p_port = p2p_port or free_port()
        home = self.root / name
        argv = [
            str(BIN / "sonmhub"),
            "--home",
            str(home),
            "--grpc-listen",
            f"127.0.0.1:{grpc_port}",
            "--p2p-listen",
            f"/ip4/127.0.0.1/tcp/{p2p_port}",
            "--stun-listen",
            "127.0.0.1:0",
            *(extra or []),
        ]
        hub = Hub(
            self,
            name,
            self.spawn(name, argv),
            home,
            grpc_port,
            p2p_port,
            argv,
            tuple(cli_args or ()),
        )
        wait_for(lambda: hub.cli("ping").returncode == 0, f"{name} to answer ping")
        return hub

    def miner(
        self,
        hub: Hub | str,
        name: str = "miner",
        *,
        runtime: str = "docker",
        extra: list[str] | None = None,
        allow_local_registry: bool = True,
    ) -> Miner:
        home = self.root / name
        target = hub.p2p_target if isinstance(hub, Hub) else hub
        argv = [
            str(BIN / "sonmminer"),
            *(["-h", target] if target else []),  # no target: the miner discovers a hub
            "--home",
            str(home),
            "--publish-ip",
            "127.0.0.1",
            "--label",
            f"sonm.test={self.test_label}",
            "--runtime",
            runtime,
            *(["--allow-registry", "127.0.0.1"] if allow_local_registry else []),
            *(extra or []),
        ]
        return Miner(self, name, self.spawn(name, argv), home, argv)

    def close(self) -> None:
        for p in reversed(self.procs):
            p.stop()

    def remove_containers(self) -> None:
        try:
            import docker

            remove_labelled(docker.from_env(), self.test_label)
        except Exception:
            pass

    def logs(self) -> str:
        return "\n".join(f"===== {p.name} (pid {p.pid}) =====\n{p.output()}" for p in self.procs)


@dataclass
class Hub:
    net: Network
    name: str
    proc: Proc
    home: Path
    grpc_port: int
    p2p_port: int
    argv: list[str]
    cli_args: tuple[str, ...] = ()  # given to every sonmcli call (e.g. --tls-ca)

    @property
    def grpc_target(self) -> str:
        return f"127.0.0.1:{self.grpc_port}"

    @property
    def p2p_target(self) -> str:
        return f"127.0.0.1:{self.p2p_port}"

    def cli_argv(self, *args: str) -> list[str]:
        """The argv of ``sonmcli`` talking to this hub with the test client's key (for Popen)."""
        home = str(self.net.root / "client")
        return [
            str(BIN / "sonmcli"), "--home", home, "--hub", self.grpc_target, *self.cli_args, *args
        ]  # fmt: skip

    def cli(self, *args: str, timeout: float = 60) -> subprocess.CompletedProcess:
        return sonmcli(
            "--hub",
            self.grpc_target,
            *self.cli_args,
            *args,
            home=self.net.root / "client",
            timeout=timeout,
        )

    def cli_json(self, *args: str) -> Any:
        res = self.cli("--json", *args)
        assert res.returncode == 0, res.stderr
        return json.loads(res.stdout)

    def online(self) -> set[str]:
        return {m["node_id"] for m in self.cli_json("list")["miners"] if m["online"]}

    def restart(self) -> None:
        self.proc = self.net.spawn(self.name, self.argv)
        wait_for(lambda: self.cli("ping").returncode == 0, f"{self.name} to answer ping again")


@dataclass
class Miner:
    net: Network
    name: str
    proc: Proc
    home: Path
    argv: list[str]

    @property
    def node_id(self) -> str:
        from sonm_p2p.identity import load_or_create

        wait_for(lambda: (self.home / "key").exists(), f"{self.name}'s key")
        return load_or_create(self.home).node_id

    def restart(self) -> None:
        self.proc = self.net.spawn(self.name, self.argv)


def sonmcli(
    *args: str, home: Path, timeout: float = 60, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess:
    return subprocess.run(
        [str(BIN / "sonmcli"), "--home", str(home), *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        stdin=subprocess.DEVNULL,
        env={**os.environ, **(env or {})},
    )


def cli_agents(directory: Path) -> dict[Path, int]:
    """The `sonmcli` agents with a socket in ``directory``: socket -> PID (cli/_agent.py)."""
    found = {}
    for pidfile in directory.glob("*.sock.pid"):
        try:
            pid = int(pidfile.read_text())
            os.kill(pid, 0)
        except (OSError, ValueError):
            continue
        found[pidfile.with_suffix("")] = pid
    return found


def pid_alive(pid: int) -> bool:
    """``pid`` runs (a zombie counts as gone)."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


def _processes_naming(text: str) -> list[int]:
    """PIDs of this machine's processes whose command line contains ``text``."""
    found = []
    for entry in os.listdir("/proc"):
        if entry.isdigit() and int(entry) != os.getpid():
            try:
                with open(f"/proc/{entry}/cmdline", "rb") as f:
                    if text.encode() in f.read():
                        found.append(int(entry))
            except OSError:
                continue
    return found


def stop_cli_agents(directory: Path) -> None:
    """Stop every agent of ``directory``, by PID: those its pid files name, and any still
    starting up (its socket's path is on the command line): SIGTERM, then SIGKILL."""
    pids = set(cli_agents(directory).values()) | set(_processes_naming(str(directory) + "/"))
    for pid in pids:
        with contextlib.suppress(OSError):
            os.kill(pid, signal.SIGTERM)
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline and any(pid_alive(p) for p in pids):
        time.sleep(0.05)
    for pid in pids:
        with contextlib.suppress(OSError):
            os.kill(pid, signal.SIGKILL)


@contextlib.contextmanager
def private_cli_agents() -> Iterator[Path]:
    """Within: every `sonmcli` started keeps its agent in a temporary directory, and those
    agents are stopped (by PID) and the directory removed on the way out (benchmarks)."""
    directory = Path(tempfile.mkdtemp(prefix="sonm-cli-agents-"))
    before = os.environ.get("SONM_CLI_AGENT_DIR")
    os.environ["SONM_CLI_AGENT_DIR"] = str(directory)
    try:
        yield directory
    finally:
        stop_cli_agents(directory)
        shutil.rmtree(directory, ignore_errors=True)
        if before is None:
            os.environ.pop("SONM_CLI_AGENT_DIR", None)
        else:
            os.environ["SONM_CLI_AGENT_DIR"] = before


def remove_labelled(client: Any, label: str) -> None:
    """Remove every container, then every network (the miners' task networks), labelled
    ``sonm.test=<label>``: the engine has room for only about thirty networks."""
    selector = {"label": f"sonm.test={label}"}
    for container in client.containers.list(all=True, filters=selector):
        container.remove(force=True, v=True)
    for network in client.networks.list(filters=selector):
        network.remove()


def docker_ok() -> bool:
    try:
        import docker

        docker.from_env().ping()
        return True
    except Exception:
        return False
