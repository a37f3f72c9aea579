"""An emulated internet in Linux network namespaces, built from Python with ``ip`` and ``iptables``.

Layout (every name carries the topology's tag, so concurrent runs never collide)::

    <tag>-inet   the "internet": bridge pub4 (203.0.113.0/24 + 198.51.100.0/24, on-link, no
                 gateway, no default route) and bridge pub6 (fd00:6e74::/64, IPv6 only)
    <tag>-NAME   a public host (eth0 on pub4; eth1 on pub6 when dual-stack), an IPv6-only host
                 (eth0 on pub6), a NAT router (wan on pub4, bridge lan = 10.K.0.1/24, forwarding
                 and MASQUERADE in its own namespace), or a private host behind one (10.K.0.N,
                 default route via the router)

Nothing is routed to the machine's real interfaces: no veth end lives in the root namespace and no
namespace has a route off its own segments. :class:`Topology` is a context manager; ``close()``
stops every process it spawned (by PID), every Docker engine it started, then deletes its
namespaces, and raises if something could not be cleaned.

Product processes a host starts (``spawn``, ``run``, ``start_hub``, ``start_miner``, ``sonmcli``)
get :attr:`Host.env`: libp2p listens on the namespace's own interfaces and mDNS runs on the host's
addresses, overriding ``tests/harness.py``'s loopback-only defaults for processes on the machine.

Example::

    with Topology(tmp_path) as topo:
        hub_host = topo.public_host("hub")
        nat = topo.nat("home", NatKind.SYMMETRIC)
        hub = hub_host.start_hub()
        miner = nat.hosts[0].start_miner(hub.p2p_target)
        nat.wan.down()  # cut the home's uplink; .up() restores it
"""

from __future__ import annotations

import contextlib
import ctypes
import enum
import itertools
import json
import os
import secrets
import shlex
import shutil
import signal
import socket
import subprocess
import threading
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

from sonm_p2p.devnet.procs import BIN_DIR as BIN
from sonm_p2p.devnet.procs import Proc

__all__ = [
    "ALT_V4",
    "PUBLIC_V4",
    "PUBLIC_V6",
    "DockerEngine",
    "Greeter",
    "Host",
    "Inbound",
    "Link",
    "NatKind",
    "NatRouter",
    "NsHub",
    "NsMiner",
    "Topology",
    "UdpEcho",
    "delete_namespace",
    "in_netns",
    "remove_engine_state",
    "runsc_processes",
]

PUBLIC_V4 = "203.0.113"  #: first public IPv4 range (TEST-NET-3), hosts .10 and up
ALT_V4 = "198.51.100"  #: second public IPv4 range (TEST-NET-2), on the same segment
PUBLIC_V6 = "fd00:6e74:"  #: the IPv6-only segment, fd00:6e74::/64
NETNS_DIR = Path("/var/run/netns")
_CLONE_NEWNET = 0x40000000
_libc = ctypes.CDLL(None, use_errno=True)
T = TypeVar("T")


def _capture(
    argv: Sequence[str], timeout: float, env: Mapping[str, str] | None = None
) -> subprocess.CompletedProcess:
    return subprocess.run(
        list(argv),
        capture_output=True,
        text=True,
        timeout=timeout,
        stdin=subprocess.DEVNULL,
        env=None if env is None else {**os.environ, **env},
    )


def _run(argv: Sequence[str], *, timeout: float = 30) -> str:
    res = _capture(argv, timeout)
    if res.returncode != 0:
        raise RuntimeError(f"{' '.join(argv)} failed ({res.returncode}): {res.stderr.strip()}")
    return res.stdout


def _ip(command: str) -> str:
    """``ip COMMAND``; the command is split on spaces (names here never contain any)."""
    return _run(["ip", *command.split()])


def _setns(fd: int) -> None:
    if _libc.setns(fd, _CLONE_NEWNET) != 0:
        err = ctypes.get_errno()
        raise OSError(err, f"setns: {os.strerror(err)}")


@contextlib.contextmanager
def in_netns(ns: str) -> Iterator[None]:
    """Run the block with the calling thread inside namespace ``ns``.

    Sockets created in the block belong to ``ns`` and keep working after it. Start no thread in
    the block (it would inherit the namespace).
    """
    with open("/proc/thread-self/ns/net") as own, open(NETNS_DIR / ns) as target:
        _setns(target.fileno())
        try:
            yield
        finally:
            _setns(own.fileno())


class NatKind(enum.Enum):
    """How a router maps private (address, port) pairs to its WAN address."""

    #: ``MASQUERADE``: keeps the source port when it can; one mapping for every destination.
    ENDPOINT_INDEPENDENT = "eim"
    #: ``MASQUERADE --random-fully``: a fresh random port for every new destination.
    SYMMETRIC = "symmetric"


class Inbound(enum.Enum):
    """What a router does with a TCP SYN from the internet that matches no mapping."""

    #: The kernel's own answer, a RST (a Linux router with no rule).
    KERNEL = "kernel"
    #: An explicit ``REJECT --reject-with tcp-reset`` (OpenWrt's default WAN zone): a RST too.
    REJECT = "reject"
    #: Dropped in silence (most home routers).
    DROP = "drop"


@dataclass
class Link:
    """A veth pair from a node (near end) to its upstream segment (far end).

    ``down()`` / ``up()`` act on the far end: the near end only loses carrier, so its addresses
    and routes stay and traffic flows again as soon as the link is back.
    """

    near_ns: str
    near_if: str
    far_ns: str
    far_if: str

    def down(self) -> None:
        _ip(f"-n {self.far_ns} link set {self.far_if} down")

    def up(self) -> None:
        _ip(f"-n {self.far_ns} link set {self.far_if} up")


def _hostport(ip: str, port: int) -> str:
    return f"[{ip}]:{port}" if ":" in ip else f"{ip}:{port}"


@dataclass
class Host:
    """A namespace with addresses; runs commands and processes, opens sockets there."""

    topo: Topology
    name: str
    ns: str
    addrs: list[str]
    uplink: Link

    def __repr__(self) -> str:
        return f"<Host {self.name} ns={self.ns} {' '.join(self.addrs)}>"

    @property
    def ip(self) -> str:
        """The host's first address (IPv4 when it has one)."""
        return self.addrs[0]

    def netns(self) -> contextlib.AbstractContextManager[None]:
        """``with host.netns():`` runs the block inside this host (see :func:`in_netns`)."""
        return in_netns(self.ns)

    def socket(self, family: int = socket.AF_INET, kind: int = socket.SOCK_STREAM) -> socket.socket:
        """A new socket inside this host's namespace."""
        with self.netns():
            return socket.socket(family, kind)

    def connect(
        self, addr: tuple[str, int], *, source_port: int = 0, timeout: float = 5
    ) -> socket.socket:
        """A TCP connection from this host to ``addr`` (optionally from a fixed source port)."""
        family = socket.AF_INET6 if ":" in addr[0] else socket.AF_INET
        sock = self.socket(family)
        try:
            sock.settimeout(timeout)
            sock.bind(("::" if family == socket.AF_INET6 else "0.0.0.0", source_port))
            sock.connect(addr)
        except BaseException:
            sock.close()
            raise
        return sock

    def exec_argv(self, argv: Sequence[str]) -> list[str]:
        """``argv`` prefixed so that it runs inside this host's namespace."""
        return ["ip", "netns", "exec", self.ns, *argv]

    @property
    def env(self) -> dict[str, str]:
        """Environment of the product's processes run here.

        ``tests/harness.py`` keeps processes on the machine's loopback (``SONM_P2P_LISTEN`` on
        127.0.0.1, mDNS on 127.0.0.1); in a namespace that would hide a node behind NAT from
        hole punches. Here nodes listen on every address of the namespace (a wildcard means
        this namespace's own interfaces), mDNS runs on the host's own addresses, and the
        topology's tag keeps its mDNS apart from any other run's. (``sonmhub`` reads its own
        ``SONM_HUB_P2P_LISTEN``; :meth:`start_hub` passes ``--p2p-listen`` anyway.)
        """
        families = {":" in a for a in self.addrs}
        listen = [w for v6, w in ((False, "/ip4/0.0.0.0/tcp/0"), (True, "/ip6/::/tcp/0"))
                  if v6 in families]  # fmt: skip
        return {
            "SONM_P2P_LISTEN": " ".join(listen),
            "SONM_MDNS_INTERFACES": ",".join(self.addrs),
            "SONM_MDNS_NAMESPACE": self.topo.tag,
        }

    def run(
        self, *argv: str, timeout: float = 60, env: Mapping[str, str] | None = None
    ) -> subprocess.CompletedProcess:
        """Run a command to completion inside the namespace (text output captured), with
        :attr:`env` (then ``env``) over this process's environment."""
        return _capture(self.exec_argv(argv), timeout, {**self.env, **(env or {})})

    def spawn(
        self, name: str, argv: Sequence[str], *, env: Mapping[str, str] | None = None
    ) -> Proc:
        """Start a long-running process inside the namespace, tracked by PID for teardown,
        with :attr:`env` (then ``env``) over this process's environment.

        ``ip netns exec`` execs the command in place, so the PID is the command's own.
        """
        return self.topo.spawn(name, self.exec_argv(argv), env={**self.env, **(env or {})})

    def reachable(self, addr: tuple[str, int], timeout: float = 1.0) -> bool:
        """Whether a TCP connection from here to ``addr`` succeeds within ``timeout``."""
        try:
            self.connect(addr, timeout=timeout).close()
            return True
        except OSError:
            return False

    # --- product processes -----------------------------------------------------------------

    def start_hub(
        self,
        name: str = "hub",
        *,
        grpc_port: int = 10001,
        p2p_port: int = 10002,
        stun_port: int = 3478,
        wildcard: bool = False,
        default_stun: bool = False,
        extra: Sequence[str] = (),
        timeout: float = 30,
    ) -> NsHub:
        """Start ``sonmhub`` listening on this host's address; returns once gRPC accepts.

        Its STUN responder answers on ``ip:stun_port``; when the host has a second address of
        the same family (``public_host(addresses=2)``) that is the alternate (RFC 5780:
        ``--stun-alternate``, other IP and port ``stun_port + 1``), so NAT types can be told.
        wildcard: gRPC and libp2p listen on every address (0.0.0.0 or ::), as sonmhub does by
        default, instead of on the host's address.
        default_stun: no STUN flags at all, as a user runs sonmhub (0.0.0.0:3478 and 3479).
        """
        home = self.topo.workdir / name
        proto = "ip6" if ":" in self.ip else "ip4"
        bind = ("::" if proto == "ip6" else "0.0.0.0") if wildcard else self.ip
        argv = [
            str(BIN / "sonmhub"), "--home", str(home),
            "--grpc-listen", _hostport(bind, grpc_port),
            "--p2p-listen", f"/{proto}/{bind}/tcp/{p2p_port}",
        ]  # fmt: skip
        if not default_stun:
            argv += ["--stun-listen", _hostport(self.ip, stun_port)]
        other = [a for a in self.addrs[1:] if (":" in a) == (":" in self.ip)]
        if other and not default_stun:
            argv += ["--stun-alternate", _hostport(other[0], stun_port + 1)]
        argv += extra
        hub = NsHub(self, self.spawn(name, argv), home, grpc_port, p2p_port, stun_port)
        self.topo.wait(
            lambda: self.reachable((self.ip, grpc_port)), f"{name}'s gRPC port", timeout=timeout
        )
        return hub

    def start_miner(
        self,
        hub: str,
        name: str = "miner",
        *,
        runtime: str = "memory",
        engine: DockerEngine | None = None,
        publish_ip: str | None = None,
        extra: Sequence[str] = (),
    ) -> NsMiner:
        """Start ``sonmminer -h HUB`` here; with ``engine`` it runs tasks on that Docker engine.

        Containers are labelled ``sonm.test=<topology tag>``; ports are published on
        ``publish_ip`` (default: this host's address).
        """
        home = self.topo.workdir / name
        options = f"--publish-ip {publish_ip or self.ip} --label sonm.test={self.topo.tag}"
        options += f" --runtime {'docker' if engine else runtime}"
        argv = [str(BIN / "sonmminer"), "-h", hub, "--home", str(home), *options.split(), *extra]
        env = engine.env if engine else None
        return NsMiner(self, self.spawn(name, argv, env=env), home)

    def sonmcli(
        self, *args: str, home: Path | None = None, timeout: float = 60
    ) -> subprocess.CompletedProcess:
        """Run ``sonmcli ARGS`` inside this host (client home under the topology's workdir)."""
        home = home or self.topo.workdir / f"cli-{self.name}"
        return self.run(str(BIN / "sonmcli"), "--home", str(home), *args, timeout=timeout)

    def spawn_sonmcli(self, name: str, *args: str, home: Path | None = None) -> Proc:
        """Start a long-running ``sonmcli ARGS`` (e.g. ``forward``) here, tracked for teardown;
        its stdout and stderr go to ``<workdir>/<name>.log``."""
        home = home or self.topo.workdir / f"cli-{self.name}"
        return self.spawn(name, [str(BIN / "sonmcli"), "--home", str(home), *args])

    def docker_engine(
        self, images: Sequence[str] = ("sonm-test/web",), *, config: Mapping[str, Any] | None = None
    ) -> DockerEngine:
        """Start a private ``dockerd`` in this namespace with ``images`` copied in; ``config`` is
        its daemon.json (e.g. ``{"runtimes": {...}}``), empty by default."""
        engine = DockerEngine(self, self.topo.workdir / f"dockerd-{self.name}", config)
        self.topo.engines.append(engine)
        engine.start()
        for image in images:
            engine.load_image(image)
        return engine


@dataclass
class NatRouter:
    """A NAT router: ``wan`` on the public segment, private ``hosts`` behind it."""

    topo: Topology
    name: str
    ns: str
    kind: NatKind
    wan_ip: str
    wan: Link
    lan_prefix: str
    hosts: list[Host] = field(default_factory=list)

    def __repr__(self) -> str:
        lan = f"{self.lan_prefix}.0/24"
        return f"<NatRouter {self.name} {self.kind.value} wan={self.wan_ip} lan={lan}>"

    def add_host(self, name: str | None = None) -> Host:
        """Another private host on this router's LAN (10.K.0.2, .3, ...)."""
        index = len(self.hosts)
        name = name or f"{self.name}h{index}"
        ns = self.topo._namespace(name)
        port = f"l{index}"
        link = self.topo._veth(ns, "eth0", self.ns, port)
        _ip(f"-n {self.ns} link set {port} master lan up")
        addr = f"{self.lan_prefix}.{index + 2}"
        _ip(f"-n {ns} addr add {addr}/24 dev eth0")
        _ip(f"-n {ns} link set eth0 up")
        _ip(f"-n {ns} route add default via {self.lan_prefix}.1")
        host = Host(self.topo, name, ns, [addr], link)
        self.hosts.append(host)
        self.topo.hosts[name] = host
        return host


class Greeter:
    """A TCP listener in ``host``'s namespace that sends :attr:`GREETING` to every connection
    and closes it: it stands in for a task's published port where the miner runs the in-memory
    engine, so the bytes that come back through a forward prove the whole path. With ``hold``
    it then echoes what it receives until the client half-closes (a long-lived session)."""

    GREETING = b"hello from the task's port"

    def __init__(self, host: Host, addr: tuple[str, int], *, hold: bool = False) -> None:
        self.hold = hold
        self._sock = host.socket()
        self._sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self._sock.bind(addr)
        self._sock.listen(16)
        self._sock.settimeout(0.2)  # so that close() is noticed
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._serve, name="greeter", daemon=True)
        self._thread.start()

    def _serve(self) -> None:
        while not self._stop.is_set():
            try:
                conn, _ = self._sock.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            if not self.hold:
                with conn:
                    conn.sendall(self.GREETING)
                continue
            threading.Thread(target=self._echo, args=(conn,), daemon=True).start()

    def _echo(self, conn: socket.socket) -> None:
        with conn:
            try:
                conn.sendall(self.GREETING)
                while data := conn.recv(65536):
                    conn.sendall(data)
            except OSError:
                pass

    def close(self) -> None:
        self._stop.set()
        self._thread.join(10)
        self._sock.close()


class UdpEcho:
    """A UDP socket in ``host``'s namespace that sends every datagram back to its sender: a
    task's published UDP port where the miner runs the in-memory engine."""

    def __init__(self, host: Host, addr: tuple[str, int]) -> None:
        self._sock = host.socket(kind=socket.SOCK_DGRAM)
        self._sock.bind(addr)
        self._sock.settimeout(0.2)  # so that close() is noticed
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._serve, name="udp-echo", daemon=True)
        self._thread.start()

    def _serve(self) -> None:
        while not self._stop.is_set():
            try:
                data, peer = self._sock.recvfrom(65535)
                self._sock.sendto(data, peer)
            except TimeoutError:
                continue
            except OSError:
                if self._sock.fileno() < 0:
                    return

    def close(self) -> None:
        self._stop.set()
        self._thread.join(10)
        self._sock.close()


@dataclass
class NsHub:
    """A ``sonmhub`` process in a namespace."""

    host: Host
    proc: Proc
    home: Path
    grpc_port: int
    p2p_port: int
    stun_port: int = 3478

    @property
    def grpc_target(self) -> str:
        return _hostport(self.host.ip, self.grpc_port)

    @property
    def p2p_target(self) -> str:
        return _hostport(self.host.ip, self.p2p_port)


@dataclass
class NsMiner:
    """A ``sonmminer`` process in a namespace."""

    host: Host
    proc: Proc
    home: Path

    @property
    def node_id(self) -> str:
        from sonm_p2p.identity import load_or_create

        key = self.home / "key"
        self.host.topo.wait(key.exists, f"{self.proc.name}'s key", watch=[self.proc])
        return load_or_create(self.home).node_id


class DockerEngine:
    """A second ``dockerd`` whose network namespace is ``host``'s, state under ``root``.

    Started with ``nsenter --net`` rather than ``ip netns exec``, which remounts /sys and so hides
    the cgroup mounts dockerd needs. It gets its own bridge (10.250.0.0/24, inside the namespace),
    no iptables rules and no forwarding: published ports work through docker-proxy. ``config``
    is its daemon.json (the machine's own engine and its /etc/docker/daemon.json are never
    touched). ``close()`` removes its containers, stops it by PID, kills gVisor sandboxes it
    left (they live in their containers' namespaces, not the host's), unmounts what it left and
    deletes its state.
    """

    def __init__(self, host: Host, root: Path, config: Mapping[str, Any] | None = None) -> None:
        self.host = host
        self.root = root
        self.config = dict(config or {})
        self.socket = Path(f"/run/sonm-dockerd-{host.ns}.sock")
        # Its runtime state goes to /run: containerd's sockets there must stay under 104 bytes.
        self.exec_root = Path(f"/run/sonm-dockerd-{host.ns}")
        self.url = f"unix://{self.socket}"
        self.proc: Proc | None = None
        self.start_seconds = 0.0
        self.load_seconds = 0.0

    def __repr__(self) -> str:
        pid = self.proc.pid if self.proc else None
        return f"<DockerEngine {self.url} pid={pid} root={self.root}>"

    @property
    def env(self) -> dict[str, str]:
        """Environment that points the docker CLI and SDK at this engine."""
        return {"DOCKER_HOST": self.url}

    def docker(self, *args: str, timeout: float = 60) -> subprocess.CompletedProcess:
        """Run the ``docker`` CLI against this engine."""
        return _capture(["docker", "-H", self.url, *args], timeout)

    def start(self, timeout: float = 60) -> None:
        """Start dockerd and wait until it answers on its socket."""
        self.root.mkdir(parents=True, exist_ok=True)
        config = self.root / "daemon.json"
        config.write_text(json.dumps(self.config) + "\n")
        r = self.root
        argv = (
            f"nsenter --net={NETNS_DIR / self.host.ns} dockerd -H {self.url} --data-root {r}/data"
            f" --exec-root {self.exec_root} --pidfile {r}/dockerd.pid --config-file {config}"
            " --bip 10.250.0.1/24 --iptables=false --ip-forward=false --ip-masq=false"
        ).split()
        began = time.monotonic()
        proc = self.proc = self.host.topo.spawn(f"dockerd-{self.host.name}", argv, track=False)
        self.host.topo.wait(
            lambda: self.docker("version").returncode == 0,
            f"dockerd in {self.host.ns}",
            timeout=timeout,
            watch=[proc],
        )
        self.start_seconds = time.monotonic() - began

    def load_image(self, image: str, timeout: float = 120) -> None:
        """Copy ``image`` from the machine's engine into this one (``docker save | load``)."""
        began = time.monotonic()
        pipe = f"docker save {shlex.quote(image)} | docker -H {self.url} load -q"
        _run(["bash", "-o", "pipefail", "-c", pipe], timeout=timeout)
        self.load_seconds += time.monotonic() - began

    def close(self) -> None:
        """Remove every container, stop dockerd (and its containerd) by PID, delete its state."""
        if self.proc is None:
            return
        proc, self.proc = self.proc, None
        if proc.alive():
            ids = self.docker("ps", "-aq", timeout=30).stdout.split()
            if ids:
                self.docker("rm", "-f", *ids, timeout=60)
        proc.stop()  # a containerd it leaves behind dies with the namespace (_kill_stragglers)
        _kill_runsc_sandboxes(self.exec_root)
        remove_engine_state(self.root, self.exec_root, self.socket)


def remove_engine_state(root: Path, exec_root: Path, sock: Path) -> None:
    """Unmount what a stopped engine left under ``root`` and ``exec_root``, delete both and its
    socket (``sonm-devnet down`` calls it for engines an earlier process started)."""
    roots = (root, exec_root)
    mounts = [m for m in _mountpoints() if any(m == r or r in m.parents for r in roots)]
    for mount in sorted(mounts, key=lambda m: len(m.parts), reverse=True):
        subprocess.run(["umount", "-l", str(mount)], capture_output=True)
    for path in roots:
        shutil.rmtree(path, ignore_errors=True)
    sock.unlink(missing_ok=True)


def delete_namespace(ns: str) -> None:
    """SIGKILL what still runs in ``ns``, then delete it (nothing if it is gone already)."""
    if not (NETNS_DIR / ns).exists():
        return
    _kill_stragglers(ns)
    _ip(f"netns del {ns}")


def runsc_processes(exec_root: Path) -> list[int]:
    """PIDs of gVisor processes (``runsc-sandbox``, ``runsc-gofer``, ...) of the engine whose
    exec root is ``exec_root``: their ``--root`` lies under it."""
    under = f"={exec_root}/"
    pids = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            argv = (entry / "cmdline").read_bytes().split(b"\0")
        except OSError:  # gone meanwhile
            continue
        if argv[0].startswith(b"runsc") and any(under.encode() in a for a in argv):
            pids.append(int(entry.name))
    return pids


def _kill_runsc_sandboxes(exec_root: Path) -> None:
    """SIGKILL, by PID, the gVisor sandboxes an engine left (a failed runsc start leaves them)."""
    for pid in runsc_processes(exec_root):
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)


def _mountpoints() -> list[Path]:
    with open("/proc/self/mountinfo") as f:
        return [Path(line.split()[4]) for line in f]


class Topology:
    """Named namespaces, links and processes of one test; a context manager that removes them.

    workdir: where process logs, homes and Docker engine state go (a test's tmp_path).
    prefix: start of every namespace name; a random suffix makes the tag unique per run.
    """

    def __init__(self, workdir: Path, *, prefix: str = "sn") -> None:
        self.workdir = workdir
        self.tag = f"{prefix}{secrets.token_hex(3)}"
        self.namespaces: list[str] = []
        self.procs: list[Proc] = []
        self.engines: list[DockerEngine] = []
        self.hosts: dict[str, Host] = {}
        self.routers: dict[str, NatRouter] = {}
        self._public = itertools.count(10)
        self._lans = itertools.count(1)
        self._ports = itertools.count()
        self._links: dict[str, Link] = {}  # namespace -> its uplink
        self._inet: str | None = None
        self._closed = False

    def __repr__(self) -> str:
        return f"<Topology {self.tag} namespaces={len(self.namespaces)} procs={len(self.procs)}>"

    def __enter__(self) -> Topology:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # --- building ----------------------------------------------------------------------------

    def _namespace(self, name: str) -> str:
        ns = f"{self.tag}-{name}"
        if ns in self.namespaces:
            raise ValueError(f"{name!r} is already in topology {self.tag}")
        _ip(f"netns add {ns}")
        self.namespaces.append(ns)
        _ip(f"-n {ns} link set lo up")
        return ns

    def _veth(self, near_ns: str, near_if: str, far_ns: str, far_if: str) -> Link:
        _ip(f"-n {near_ns} link add {near_if} type veth peer name {far_if} netns {far_ns}")
        return Link(near_ns, near_if, far_ns, far_if)

    @property
    def inet(self) -> str:
        """The "internet" namespace holding the public bridges (created on first use)."""
        if self._inet is None:
            ns = self._namespace("inet")
            for bridge in ("pub4", "pub6"):
                _ip(f"-n {ns} link add {bridge} type bridge mcast_snooping 0")
                _ip(f"-n {ns} link set {bridge} up")
            self._inet = ns
        return self._inet

    def _uplink(self, ns: str, near_if: str, bridge: str) -> Link:
        port = f"p{next(self._ports)}"
        link = self._veth(ns, near_if, self.inet, port)
        _ip(f"-n {self.inet} link set {port} master {bridge} up")
        return link

    def _attach_v4(self, ns: str, ifname: str, *, alt: bool) -> list[str]:
        n = next(self._public)
        addrs = [f"{PUBLIC_V4}.{n}"] + ([f"{ALT_V4}.{n}"] if alt else [])
        link = self._uplink(ns, ifname, "pub4")
        for a in addrs:
            _ip(f"-n {ns} addr add {a}/24 dev {ifname}")
        _ip(f"-n {ns} link set {ifname} up")
        if not alt:  # both public ranges are on-link on the one segment
            _ip(f"-n {ns} route add {ALT_V4}.0/24 dev {ifname}")
        self._links[ns] = link
        return addrs

    def _attach_v6(self, ns: str, ifname: str) -> str:
        addr = f"{PUBLIC_V6}:{next(self._public):x}"
        link = self._uplink(ns, ifname, "pub6")
        _ip(f"-n {ns} -6 addr add {addr}/64 dev {ifname} nodad")
        _ip(f"-n {ns} link set {ifname} up")
        self._links.setdefault(ns, link)
        return addr

    def public_host(self, name: str, *, addresses: int = 1, ipv6: bool = False) -> Host:
        """A host with a public IPv4 address (203.0.113.N).

        addresses: 2 adds 198.51.100.N on the same interface (a STUN responder's second address).
        ipv6: also attach it (as eth1) to the IPv6-only segment.
        """
        if addresses not in (1, 2):
            raise ValueError("addresses must be 1 or 2")
        ns = self._namespace(name)
        addrs = self._attach_v4(ns, "eth0", alt=addresses == 2)
        if ipv6:
            addrs.append(self._attach_v6(ns, "eth1"))
        host = Host(self, name, ns, addrs, self._links[ns])
        self.hosts[name] = host
        return host

    def ipv6_host(self, name: str) -> Host:
        """A host on the IPv6-only segment (fd00:6e74::N/64, no IPv4 but loopback)."""
        ns = self._namespace(name)
        addr = self._attach_v6(ns, "eth0")
        host = Host(self, name, ns, [addr], self._links[ns])
        self.hosts[name] = host
        return host

    def nat(
        self, name: str, kind: NatKind, *, hosts: int = 1, inbound: Inbound = Inbound.KERNEL
    ) -> NatRouter:
        """A NAT router of ``kind`` with ``hosts`` private hosts behind it (more: ``add_host``);
        ``inbound`` says what it does with an unsolicited TCP SYN from the internet."""
        ns = self._namespace(name)
        wan_ip = self._attach_v4(ns, "wan", alt=False)[0]
        lan_prefix = f"10.{next(self._lans)}.0"
        _ip(f"-n {ns} link add lan type bridge")
        _ip(f"-n {ns} addr add {lan_prefix}.1/24 dev lan")
        _ip(f"-n {ns} link set lan up")
        # Forwarding and NAT are switched on in the router's own namespace only.
        _ip(f"netns exec {ns} sysctl -qw net.ipv4.ip_forward=1")
        random = " --random-fully" if kind is NatKind.SYMMETRIC else ""
        _ip(f"netns exec {ns} iptables -t nat -A POSTROUTING -o wan -j MASQUERADE{random}")
        # A SYN no mapping claims is addressed to the router itself: INPUT, not FORWARD.
        unsolicited = "-A INPUT -i wan -p tcp --syn -m conntrack --ctstate NEW"
        if inbound is Inbound.DROP:
            _ip(f"netns exec {ns} iptables {unsolicited} -j DROP")
        elif inbound is Inbound.REJECT:
            _ip(f"netns exec {ns} iptables {unsolicited} -j REJECT --reject-with tcp-reset")
        router = NatRouter(self, name, ns, kind, wan_ip, self._links[ns], lan_prefix)
        for _ in range(hosts):
            router.add_host()
        self.routers[name] = router
        return router

    def attach_machine(self, ip: str = f"{PUBLIC_V4}.250") -> str:
        """Put this machine (the root namespace) on the public segment at ``ip``, so its own
        processes (``sonmcli``) reach the public hosts; only 203.0.113.0/24 is routed there.
        The link goes when the "internet" namespace is deleted. Returns the interface name."""
        port = f"p{next(self._ports)}"
        local = self.tag[:15]
        _ip(f"link add {local} type veth peer name {port} netns {self.inet}")
        _ip(f"-n {self.inet} link set {port} master pub4 up")
        _ip(f"addr add {ip}/24 dev {local}")
        _ip(f"link set {local} up")
        return local

    # --- processes ---------------------------------------------------------------------------

    def spawn(
        self,
        name: str,
        argv: Sequence[str],
        *,
        env: Mapping[str, str] | None = None,
        track: bool = True,
    ) -> Proc:
        """Start ``argv`` (already namespaced by the caller), logging to workdir.

        track: stop it (by PID) at teardown; False when the caller owns its shutdown.
        """
        log = self.workdir / f"{name}.log"
        env = {**os.environ, "PYTHONUNBUFFERED": "1", **(env or {})}
        with open(log, "ab") as out:
            popen = subprocess.Popen(
                argv, stdout=out, stderr=out, stdin=subprocess.DEVNULL, env=env
            )
        proc = Proc(name, popen, log)
        if track:
            self.procs.append(proc)
        return proc

    def wait(
        self,
        cond: Callable[[], T],
        what: str,
        timeout: float = 20.0,
        *,
        every: float = 0.05,
        watch: Sequence[Proc] | None = None,
    ) -> T:
        """Poll ``cond`` until it returns something truthy, failing at the deadline.

        Fails at once, with its output, when a process in ``watch`` exits (default: every process
        this topology spawned that is running when the wait begins).
        """
        deadline = time.monotonic() + timeout
        last_exc: BaseException | None = None
        watch = [p for p in self.procs if p.alive()] if watch is None else watch
        while True:
            for proc in watch:
                if not proc.alive():
                    raise AssertionError(
                        f"{proc.name} exited ({proc.popen.returncode}) while waiting for "
                        f"{what}:\n{proc.output()[-4000:]}"
                    )
            try:
                value = cond()
                if value:
                    return value
            except Exception as exc:  # the condition may fail until the thing is up
                last_exc = exc
            if time.monotonic() >= deadline:
                raise AssertionError(
                    f"timed out after {timeout}s waiting for {what} (last error: {last_exc!r})"
                )
            time.sleep(every)

    def logs(self) -> str:
        """Every spawned process's output, for a failed test's report."""
        procs = self.procs + [e.proc for e in self.engines if e.proc is not None]
        return "\n".join(f"===== {p.name} (pid {p.pid}) =====\n{p.output()}" for p in procs)

    # --- teardown ----------------------------------------------------------------------------

    def close(self) -> None:
        """Stop processes, Docker engines, then delete namespaces; idempotent.

        Every step is attempted even when an earlier one fails; the first failure is raised.
        """
        if self._closed:
            return
        self._closed = True
        errors: list[BaseException] = []

        def attempt(fn: Any, *args: Any) -> None:
            try:
                fn(*args)
            except BaseException as exc:  # keep cleaning; report at the end
                errors.append(exc)

        for proc in reversed(self.procs):  # miners first, so none restarts a task meanwhile
            attempt(proc.stop)
        for engine in reversed(self.engines):
            attempt(engine.close)
        for ns in reversed(self.namespaces):
            attempt(delete_namespace, ns)
        if errors:
            raise errors[0]


def _kill_stragglers(ns: str) -> None:
    """SIGKILL, by PID, anything still in ``ns`` (children of processes this topology started)."""
    pids = [int(p) for p in _ip(f"netns pids {ns}").split()]
    for pid in pids:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
    deadline = time.monotonic() + 10
    while pids and _ip(f"netns pids {ns}").split():
        if time.monotonic() > deadline:
            raise RuntimeError(f"processes in {ns} did not exit after SIGKILL")
        time.sleep(0.05)
