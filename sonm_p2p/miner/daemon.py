"""Wiring of a miner process: identity, libp2p node, local gRPC server, hub link."""

from __future__ import annotations

import logging
from collections.abc import Mapping
from concurrent import futures
from dataclasses import dataclass, field
from pathlib import Path

import grpc

from sonm_p2p._pb.sonm.v1 import miner_pb2_grpc
from sonm_p2p.errors import ConfigError
from sonm_p2p.identity import load_or_create
from sonm_p2p.miner.hub_link import HubLink, LinkOptions
from sonm_p2p.miner.miner import Miner, Offer
from sonm_p2p.miner.runtime import ContainerRuntime, DockerRuntime, MemoryRuntime
from sonm_p2p.miner.servicer import MinerServicer
from sonm_p2p.transport.bridge import GRPC_MINER, serve_grpc
from sonm_p2p.transport.node import NodeOptions, P2PNode

__all__ = ["MinerDaemon", "MinerOptions"]

log = logging.getLogger(__name__)


@dataclass(frozen=True, kw_only=True)
class MinerOptions:
    """A miner process's settings (the CLI fills them from flags > env > defaults).

    home: where the key lives. hub: the hub to dial (``host:port`` or a multiaddr).
    listen: libp2p listen multiaddrs (an ephemeral port by default: no inbound port is needed).
    publish_ip: where container ports are published (all interfaces by default).
    labels: extra labels on every container (tests use them to clean up).
    offer: CPUs and memory offered to the hub (0: all the engine has).
    runtime: "docker" (the default), or "memory": an in-memory fake engine that knows the test
        images, for tests of everything but Docker itself.
    """

    home: Path
    hub: str
    listen: tuple[str, ...] = ("/ip4/0.0.0.0/tcp/0",)
    publish_ip: str = "0.0.0.0"
    labels: Mapping[str, str] = field(default_factory=dict)
    link: LinkOptions = field(default_factory=LinkOptions)
    runtime: str = "docker"
    offer: Offer = field(default_factory=Offer)


class MinerDaemon:
    """A running miner. ``start()`` returns once it listens; ``close()`` stops it (idempotent).

    Containers keep running when the daemon stops: a restarted miner adopts them.
    """

    def __init__(self, options: MinerOptions, runtime: ContainerRuntime | None = None) -> None:
        self.options = options
        self.identity = load_or_create(options.home)
        self.node_id = self.identity.node_id
        labels = {"sonm.miner": self.node_id, **options.labels}
        self.runtime = runtime or _make_runtime(options, labels)
        self.miner = Miner(
            self.node_id, self.runtime, logs_dir=options.home / "logs", offer=options.offer
        )
        self.node = P2PNode(self.identity, NodeOptions(listen=options.listen))
        self.link = HubLink(
            self.node, options.hub, lambda: self.miner.hub_clock.last_ping, options.link
        )
        self._server: grpc.Server | None = None

    def __repr__(self) -> str:
        return f"<MinerDaemon {self.node_id} hub={self.options.hub}>"

    def start(self) -> None:
        self.miner.info()  # fail early (and clearly) when the container engine is not there
        self.miner.watch_runtime()
        self._server = grpc.server(futures.ThreadPoolExecutor(max_workers=16))
        miner_pb2_grpc.add_MinerServicer_to_server(MinerServicer(self.miner), self._server)
        port = self._server.add_insecure_port("127.0.0.1:0")
        self._server.start()
        self.node.start()
        serve_grpc(self.node, GRPC_MINER, port, allow=self.link.allow)
        self.link.start()
        log.info(
            "miner %s (peer %s) started; hub %s", self.node_id, self.node.peer_id, self.options.hub
        )

    def close(self) -> None:
        self.link.close()
        self.miner.close()
        self.node.close()
        if self._server is not None:
            self._server.stop(grace=1).wait()
            self._server = None


def _make_runtime(options: MinerOptions, labels: Mapping[str, str]) -> ContainerRuntime:
    if options.runtime == "docker":
        return DockerRuntime(publish_ip=options.publish_ip, labels=labels)
    if options.runtime == "memory":
        images = {
            "sonm-test/web:latest": (("8080/tcp", "9090/udp"), True),
            "sonm-test/busybox:latest": ((), True),
            "sonm-test/noentry:latest": ((), False),
        }
        return MemoryRuntime(images=images, publish_ip=options.publish_ip, labels=labels)
    raise ConfigError(f"unknown container runtime {options.runtime!r} (docker or memory)")
