"""The hub's typed client for one miner's ``sonm.v1.Miner`` service over the overlay."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import grpc

from sonm_p2p._convert import (
    event_from_pb,
    log_query_to_pb,
    resources_from_pb,
    spec_to_pb,
    status_from_pb,
    task_from_pb,
)
from sonm_p2p._pb.sonm.v1 import common_pb2, miner_pb2, miner_pb2_grpc
from sonm_p2p._status import ServerStream, from_rpc_error
from sonm_p2p.errors import MinerUnavailable
from sonm_p2p.model import LogQuery, MinerStatus, RunSpec
from sonm_p2p.tasks import Task
from sonm_p2p.transport.bridge import GRPC_MINER, PeerChannel
from sonm_p2p.transport.node import P2PNode

__all__ = ["Handshake", "MinerClient"]


class Handshake:
    """What a miner says about itself when its hub first calls it."""

    def __init__(self, reply: miner_pb2.HandshakeReply) -> None:
        self.node_id = reply.node_id
        self.version = reply.version
        self.resources = resources_from_pb(reply.resources)
        self.tasks = [task_from_pb(t) for t in reply.tasks]
        self.multiaddrs = list(reply.multiaddrs)
        self.nat_type = reply.nat_type


class MinerClient:
    """Calls one miner. Every method raises domain errors; a broken path is MinerUnavailable."""

    def __init__(self, node: P2PNode, peer_id: str, miner_id: str) -> None:
        self.miner_id = miner_id
        self._chan = PeerChannel(node, peer_id, GRPC_MINER)
        self._stub = miner_pb2_grpc.MinerStub(self._chan.channel)

    def __repr__(self) -> str:
        return f"<MinerClient {self.miner_id} {self._chan!r}>"

    def close(self) -> None:
        self._chan.close()

    def _call(self, method: str, request: object, timeout: float | None) -> object:
        try:
            return getattr(self._stub, method)(request, timeout=timeout)
        except grpc.RpcError as exc:
            raise from_rpc_error(
                exc, unavailable=MinerUnavailable, peer=f"miner {self.miner_id}"
            ) from None

    def handshake(self, hub_id: str, timeout: float, *, stun_endpoint: str = "") -> Handshake:
        request = miner_pb2.HandshakeRequest(hub_id=hub_id, stun_endpoint=stun_endpoint)
        reply = self._call("Handshake", request, timeout)
        return Handshake(reply)  # type: ignore[arg-type]

    def ping(self, timeout: float) -> None:
        self._call("Ping", common_pb2.Empty(), timeout)

    def start(
        self, task_id: str, spec: RunSpec, *, owner: str, hub_id: str, timeout: float | None
    ) -> Task:
        req = miner_pb2.MinerStartRequest(
            task_id=task_id, spec=spec_to_pb(spec), owner=owner, hub_id=hub_id
        )
        return task_from_pb(self._call("Start", req, timeout))  # type: ignore[arg-type]

    def stop(self, task_id: str, timeout: float | None) -> Task:
        reply = self._call("Stop", common_pb2.TaskRef(task_id=task_id), timeout)
        return task_from_pb(reply)  # type: ignore[arg-type]

    def task_status(self, task_id: str, timeout: float | None) -> Task:
        reply = self._call("TaskStatus", common_pb2.TaskRef(task_id=task_id), timeout)
        return task_from_pb(reply)  # type: ignore[arg-type]

    def miner_status(self, timeout: float | None) -> MinerStatus:
        return status_from_pb(self._call("Status", common_pb2.Empty(), timeout))  # type: ignore[arg-type]

    def _stream(self, method: str, request: object, convert: Callable[[Any], Any]) -> ServerStream:
        call = getattr(self._stub, method)(request)
        return ServerStream(
            call, convert, unavailable=MinerUnavailable, peer=f"miner {self.miner_id}"
        )

    def watch_tasks(self) -> ServerStream:
        """Every task event of this miner until the session ends (or ``cancel()``)."""
        return self._stream("WatchTasks", common_pb2.Empty(), event_from_pb)

    def logs(self, query: LogQuery) -> ServerStream:
        return self._stream("Logs", log_query_to_pb(query), lambda m: m.data)
