"""``sonm.v1.Miner``: thin translation between gRPC and :class:`~sonm_p2p.miner.miner.Miner`."""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator

import grpc

from sonm_p2p import __version__
from sonm_p2p._convert import (
    event_to_pb,
    log_query_from_pb,
    resources_to_pb,
    spec_from_pb,
    status_to_pb,
    task_to_pb,
)
from sonm_p2p._pb.sonm.v1 import common_pb2, miner_pb2, miner_pb2_grpc
from sonm_p2p._status import translate_errors
from sonm_p2p.errors import InvalidRequest
from sonm_p2p.miner.miner import Miner

__all__ = ["MinerServicer"]


def _is_active(context: grpc.ServicerContext) -> Callable[[], bool]:
    """``context.is_active``; served by ``grpc.aio`` (light miners share one loop), a sync
    handler's context has none, so a flag the call's end sets stands in for it."""
    if hasattr(context, "is_active"):
        return context.is_active
    ended = threading.Event()
    context.add_callback(ended.set)
    return lambda: not ended.is_set()


@translate_errors
class MinerServicer(miner_pb2_grpc.MinerServicer):
    def __init__(self, miner: Miner) -> None:
        self.miner = miner

    def Handshake(
        self, request: miner_pb2.HandshakeRequest, context: grpc.ServicerContext
    ) -> miner_pb2.HandshakeReply:
        self.miner.saw_hub()
        return miner_pb2.HandshakeReply(
            node_id=self.miner.node_id,
            resources=resources_to_pb(self.miner.info()),
            tasks=[task_to_pb(t) for t in self.miner.tasks()],
            version=__version__,
            multiaddrs=self.miner.addresses(),
            nat_type=self.miner.nat_type(request.stun_endpoint),
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
            record=request.record,
            timeout=context.time_remaining(),
            still_wanted=_is_active(context),
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

    def WatchTasks(
        self, request: common_pb2.Empty, context: grpc.ServicerContext
    ) -> Iterator[common_pb2.TaskEvent]:
        sub = self.miner.events.subscribe()
        context.add_callback(sub.close)
        active = _is_active(context)
        try:
            while active():
                event = sub.get(timeout=1.0)
                if event is not None:
                    yield event_to_pb(event)
                elif sub.closed:
                    return
        finally:
            sub.close()

    def Logs(
        self, request: common_pb2.LogsRequest, context: grpc.ServicerContext
    ) -> Iterator[common_pb2.LogChunk]:
        chunks = self.miner.logs(log_query_from_pb(request))
        context.add_callback(chunks.close)  # the hub went away: end a follow at once
        active = _is_active(context)
        try:
            for data in chunks:
                if not active():
                    return
                yield common_pb2.LogChunk(data=data)
        finally:
            chunks.close()

    def Status(
        self, request: common_pb2.Empty, context: grpc.ServicerContext
    ) -> common_pb2.MinerStatusReply:
        self.miner.saw_hub()
        return status_to_pb(self.miner.status_report())
