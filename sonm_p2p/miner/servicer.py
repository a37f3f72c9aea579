"""``sonm.v1.Miner``: thin translation between gRPC and :class:`~sonm_p2p.miner.miner.Miner`."""

from __future__ import annotations

import platform

import grpc

from sonm_p2p import __version__
from sonm_p2p._convert import spec_from_pb, task_to_pb
from sonm_p2p._pb.sonm.v1 import common_pb2, miner_pb2, miner_pb2_grpc
from sonm_p2p._status import translate_errors
from sonm_p2p.errors import InvalidRequest
from sonm_p2p.miner.miner import Miner

__all__ = ["MinerServicer"]


@translate_errors
class MinerServicer(miner_pb2_grpc.MinerServicer):
    def __init__(self, miner: Miner) -> None:
        self.miner = miner

    def Handshake(
        self, request: miner_pb2.HandshakeRequest, context: grpc.ServicerContext
    ) -> miner_pb2.HandshakeReply:
        self.miner.saw_hub()
        info = self.miner.info()
        return miner_pb2.HandshakeReply(
            node_id=self.miner.node_id,
            resources=common_pb2.Resources(
                cpu_cores=info.cpu_cores,
                memory_bytes=info.memory_bytes,
                os=info.os or platform.system().lower(),
                arch=info.arch or platform.machine(),
                docker_version=info.version,
            ),
            tasks=[task_to_pb(t) for t in self.miner.tasks()],
            version=__version__,
        )

    def Ping(
        self, request: common_pb2.Empty, context: grpc.ServicerContext
    ) -> common_pb2.PingReply:
        self.miner.saw_hub()
        return common_pb2.PingReply(status="OK")

    def Start(
        self, request: miner_pb2.MinerStartRequest, context: grpc.ServicerContext
    ) -> common_pb2.TaskInfo:
        if not request.task_id or not request.spec.image:
            raise InvalidRequest("Start needs a task ID and an image")
        task = self.miner.start(
            request.task_id,
            spec_from_pb(request.spec),
            owner=request.owner,
            hub_id=request.hub_id,
            timeout=context.time_remaining(),
            still_wanted=context.is_active,
        )
        return task_to_pb(task)

    def Stop(
        self, request: common_pb2.TaskRef, context: grpc.ServicerContext
    ) -> common_pb2.TaskInfo:
        return task_to_pb(self.miner.stop(request.task_id))

    def TaskStatus(
        self, request: common_pb2.TaskRef, context: grpc.ServicerContext
    ) -> common_pb2.TaskInfo:
        return task_to_pb(self.miner.status(request.task_id))
