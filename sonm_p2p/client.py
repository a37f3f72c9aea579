"""``HubClient``: the typed client of a hub's ``sonm.v1.Hub`` API (plain gRPC, no libp2p).

Every method returns domain objects and raises domain errors (``sonm_p2p.errors``); a hub that is
not there is :class:`~sonm_p2p.errors.HubUnavailable` at once, not after the deadline.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field

import grpc

from sonm_p2p._convert import endpoint_from_pb, spec_to_pb, task_from_pb
from sonm_p2p._pb.sonm.v1 import common_pb2, hub_pb2, hub_pb2_grpc
from sonm_p2p._status import from_rpc_error
from sonm_p2p.errors import HubUnavailable
from sonm_p2p.miner.runtime import RunSpec
from sonm_p2p.tasks import Endpoint, Task

__all__ = ["HubClient", "HubInfo", "MinerSummary", "StartedTask"]

CLIENT_ID_HEADER = "sonm-client-id"


@dataclass(frozen=True)
class HubInfo:
    node_id: str
    peer_id: str
    multiaddrs: tuple[str, ...]
    grpc_endpoint: str
    version: str
    miners_online: int
    uptime_seconds: int


@dataclass(frozen=True)
class MinerSummary:
    node_id: str
    peer_id: str
    online: bool
    task_ids: tuple[str, ...]
    resources: dict = field(hash=False)
    last_seen: float = 0.0
    remote_addr: str = ""


@dataclass(frozen=True)
class StartedTask:
    task_id: str
    miner_id: str
    endpoints: tuple[Endpoint, ...]


class HubClient:
    """A connection to one hub at ``target`` (``host:port``). Close it, or use it as a context.

    ``timeout`` is the deadline of each call in seconds (None: no deadline). ``client_id`` is
    sent with every call and recorded as the owner of the tasks this client starts.
    """

    def __init__(self, target: str, *, timeout: float | None = 30.0, client_id: str = "") -> None:
        self.target = target
        self.timeout = timeout
        self._metadata = ((CLIENT_ID_HEADER, client_id),) if client_id else ()
        self._channel = grpc.insecure_channel(target)
        self._stub = hub_pb2_grpc.HubStub(self._channel)

    def __repr__(self) -> str:
        return f"<HubClient {self.target}>"

    def __enter__(self) -> HubClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        self._channel.close()

    def _call(self, method: str, request: object) -> object:
        try:
            return getattr(self._stub, method)(
                request, timeout=self.timeout, metadata=self._metadata
            )
        except grpc.RpcError as exc:
            raise from_rpc_error(
                exc, unavailable=HubUnavailable, peer=f"hub {self.target}"
            ) from None

    def ping(self) -> float:
        """Round-trip time of one Ping, in seconds."""
        t0 = time.perf_counter()
        self._call("Ping", common_pb2.Empty())
        return time.perf_counter() - t0

    def info(self) -> HubInfo:
        r = self._call("Info", common_pb2.Empty())
        return HubInfo(
            r.node_id, r.peer_id, tuple(r.multiaddrs), r.grpc_endpoint, r.version,
            r.miners_online, r.uptime_seconds,
        )  # fmt: skip

    def list_miners(self) -> list[MinerSummary]:
        r = self._call("ListMiners", common_pb2.Empty())
        out = []
        for m in r.details:
            res = m.resources
            out.append(
                MinerSummary(
                    node_id=m.node_id,
                    peer_id=m.peer_id,
                    online=m.online,
                    task_ids=tuple(m.task_ids),
                    resources={
                        "cpu_cores": res.cpu_cores,
                        "memory_bytes": res.memory_bytes,
                        "os": res.os,
                        "arch": res.arch,
                        "docker_version": res.docker_version,
                        "gpus": list(res.gpus),
                    },
                    last_seen=m.last_seen_ms / 1000,
                    remote_addr=m.remote_addr,
                )
            )
        return out

    def start_task(self, miner: str, spec: RunSpec) -> StartedTask:
        req = hub_pb2.StartTaskRequest(miner_id=miner, spec=spec_to_pb(spec))
        r = self._call("StartTask", req)
        return StartedTask(r.task_id, r.miner_id, tuple(endpoint_from_pb(e) for e in r.endpoints))

    def stop_task(self, task_id: str) -> Task:
        return task_from_pb(self._call("StopTask", common_pb2.TaskRef(task_id=task_id)))

    def task_status(self, task_id: str) -> Task:
        return task_from_pb(self._call("TaskStatus", common_pb2.TaskRef(task_id=task_id)))

    def list_tasks(self, miner: str = "") -> list[Task]:
        r = self._call("ListTasks", hub_pb2.ListTasksRequest(miner_id=miner))
        return [task_from_pb(t) for t in r.tasks]
