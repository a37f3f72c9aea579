"""``sonm.v1.Hub``: thin translation between gRPC and :class:`~sonm_p2p.hub.hub.Hub`."""

from __future__ import annotations

import time

import grpc

from sonm_p2p import __version__
from sonm_p2p._convert import spec_from_pb, task_to_pb
from sonm_p2p._pb.sonm.v1 import common_pb2, hub_pb2, hub_pb2_grpc
from sonm_p2p._status import translate_errors
from sonm_p2p.hub.hub import Hub

__all__ = ["CLIENT_ID_HEADER", "HubServicer"]

#: Metadata key carrying the calling client's node ID (recorded as a task's owner).
CLIENT_ID_HEADER = "sonm-client-id"


def _client_id(context: grpc.ServicerContext) -> str:
    return dict(context.invocation_metadata()).get(CLIENT_ID_HEADER, "")


@translate_errors
class HubServicer(hub_pb2_grpc.HubServicer):
    def __init__(self, hub: Hub, grpc_endpoint: str) -> None:
        self.hub = hub
        self.grpc_endpoint = grpc_endpoint

    def Ping(
        self, request: common_pb2.Empty, context: grpc.ServicerContext
    ) -> common_pb2.PingReply:
        return common_pb2.PingReply(status="OK")

    def Info(self, request: common_pb2.Empty, context: grpc.ServicerContext) -> hub_pb2.HubInfo:
        return hub_pb2.HubInfo(
            node_id=self.hub.node_id,
            peer_id=self.hub.node.peer_id,
            multiaddrs=self.hub.node.addrs,
            grpc_endpoint=self.grpc_endpoint,
            version=__version__,
            miners_online=len(self.hub.online_miners()),
            uptime_seconds=int(time.time() - self.hub.started_at),
        )

    def ListMiners(
        self, request: common_pb2.Empty, context: grpc.ServicerContext
    ) -> hub_pb2.ListMinersReply:
        reply = hub_pb2.ListMinersReply()
        for view in self.hub.list_miners():
            rec = view.record
            if rec.online:
                reply.miners[rec.node_id].values.extend(view.task_ids)
            res = rec.resources
            reply.details.append(
                hub_pb2.MinerInfo(
                    node_id=rec.node_id,
                    peer_id=rec.peer_id,
                    online=rec.online,
                    task_ids=view.task_ids,
                    resources=common_pb2.Resources(
                        cpu_cores=res.get("cpu_cores", 0),
                        memory_bytes=res.get("memory_bytes", 0),
                        os=res.get("os", ""),
                        arch=res.get("arch", ""),
                        docker_version=res.get("docker_version", ""),
                        gpus=res.get("gpus", []),
                    ),
                    last_seen_ms=int(rec.last_seen * 1000),
                    remote_addr=rec.remote_addr,
                )
            )
        return reply

    def StartTask(
        self, request: hub_pb2.StartTaskRequest, context: grpc.ServicerContext
    ) -> hub_pb2.StartTaskReply:
        task = self.hub.start_task(
            request.miner_id,
            spec_from_pb(request.spec),
            owner=_client_id(context),
            timeout=context.time_remaining(),
        )
        info = task_to_pb(task)
        return hub_pb2.StartTaskReply(
            task_id=task.task_id, miner_id=task.miner_id, endpoints=info.endpoints
        )

    def StopTask(
        self, request: common_pb2.TaskRef, context: grpc.ServicerContext
    ) -> common_pb2.TaskInfo:
        return task_to_pb(self.hub.stop_task(request.task_id, timeout=context.time_remaining()))

    def TaskStatus(
        self, request: common_pb2.TaskRef, context: grpc.ServicerContext
    ) -> common_pb2.TaskInfo:
        return task_to_pb(self.hub.task_status(request.task_id))

    def ListTasks(
        self, request: hub_pb2.ListTasksRequest, context: grpc.ServicerContext
    ) -> hub_pb2.ListTasksReply:
        return hub_pb2.ListTasksReply(
            tasks=[task_to_pb(t) for t in self.hub.list_tasks(request.miner_id)]
        )
