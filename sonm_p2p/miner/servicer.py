"""``sonm.v1.Miner``: thin translation between gRPC and :class:`~sonm_p2p.miner.miner.Miner`."""

from __future__ import annotations

import asyncio
import functools
from collections.abc import AsyncIterator, Iterator
from concurrent import futures

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

__all__ = ["AioMinerServicer", "MinerServicer", "handshake_reply"]


def handshake_reply(miner: Miner, request: miner_pb2.HandshakeRequest) -> miner_pb2.HandshakeReply:
    """What the miner tells its hub about itself (over gRPC or on a message session): the hub's
    contact too. Classifies the miner's NAT against the hub's STUN responders (blocking)."""
    miner.saw_hub()
    return miner_pb2.HandshakeReply(
        node_id=miner.node_id,
        resources=resources_to_pb(miner.info()),
        tasks=[task_to_pb(t) for t in miner.tasks()],
        version=__version__,
        multiaddrs=miner.addresses(),
        nat_type=miner.nat_type(list(request.stun_endpoints) or [request.stun_endpoint]),
    )


@translate_errors
class MinerServicer(miner_pb2_grpc.MinerServicer):
    def __init__(self, miner: Miner) -> None:
        self.miner = miner

    def Handshake(
        self, request: miner_pb2.HandshakeRequest, context: grpc.ServicerContext
    ) -> miner_pb2.HandshakeReply:
        return handshake_reply(self.miner, request)

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

    def WatchTasks(
        self, request: common_pb2.Empty, context: grpc.ServicerContext
    ) -> Iterator[common_pb2.TaskEvent]:
        sub = self.miner.events.subscribe()
        context.add_callback(sub.close)
        try:
            while context.is_active():
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
        try:
            for data in chunks:
                if not context.is_active():
                    return
                yield common_pb2.LogChunk(data=data)
        finally:
            chunks.close()

    def Status(
        self, request: common_pb2.Empty, context: grpc.ServicerContext
    ) -> common_pb2.MinerStatusReply:
        self.miner.saw_hub()
        return status_to_pb(self.miner.status_report())


@translate_errors
class AioMinerServicer(MinerServicer):
    """:class:`MinerServicer` served by ``grpc.aio`` (the load generator's light miners: one
    loop for all). Unary calls stay sync and run on the server's pool; the calls that must
    learn that the hub went away are async here, because a sync handler under ``grpc.aio`` is
    never told (its context has no ``is_active`` and its callbacks do not fire on
    cancellation): a watch of a vanished hub would hold a pool thread forever, and after a
    hub restart the pool ran dry and every handshake timed out. Blocking reads run on ``pool``.
    """

    def __init__(self, miner: Miner, pool: futures.Executor) -> None:
        super().__init__(miner)
        self._pool = pool

    async def Start(
        self, request: miner_pb2.MinerStartRequest, context: grpc.aio.ServicerContext
    ) -> common_pb2.TaskInfo:
        if not request.task_id or not request.spec.image:
            raise InvalidRequest("Start needs a task ID and an image")
        start = functools.partial(
            self.miner.start,
            request.task_id,
            spec_from_pb(request.spec),
            owner=request.owner,
            hub_id=request.hub_id,
            record=request.record,
            timeout=context.time_remaining(),
            still_wanted=lambda: not context.done(),
        )
        task = await asyncio.get_running_loop().run_in_executor(self._pool, start)
        return task_to_pb(task)

    async def WatchTasks(
        self, request: common_pb2.Empty, context: grpc.aio.ServicerContext
    ) -> AsyncIterator[common_pb2.TaskEvent]:
        # Woken by each event (no thread held, no poll: a load generator serves 1,000 of these).
        loop = asyncio.get_running_loop()
        wake = asyncio.Event()
        sub = self.miner.events.subscribe(wake=lambda: loop.call_soon_threadsafe(wake.set))
        context.add_done_callback(lambda _: sub.close())
        try:
            while not context.done():
                wake.clear()
                event = sub.get(timeout=0)
                if event is not None:
                    yield event_to_pb(event)
                elif sub.closed:
                    return
                else:
                    await wake.wait()
        finally:
            sub.close()

    async def Logs(
        self, request: common_pb2.LogsRequest, context: grpc.aio.ServicerContext
    ) -> AsyncIterator[common_pb2.LogChunk]:
        loop = asyncio.get_running_loop()
        chunks = await loop.run_in_executor(self._pool, self.miner.logs, log_query_from_pb(request))
        context.add_done_callback(lambda _: chunks.close())  # the hub went away: end a follow
        end = object()
        try:
            while not context.done():
                data = await loop.run_in_executor(self._pool, next, chunks, end)
                if data is end:
                    return
                yield common_pb2.LogChunk(data=data)
        finally:
            chunks.close()
