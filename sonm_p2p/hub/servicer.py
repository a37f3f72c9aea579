"""``sonm.v1.Hub``: thin translation between gRPC and :class:`~sonm_p2p.hub.hub.Hub`.

Served by a ``grpc.aio`` server on the hub's loop: the calls that wait on a miner or stay open
(starts, stops, watches, log follows, miner status) are coroutines there and hold no thread;
the short ones are plain methods that grpc runs on a bounded pool. So no number of open streams
takes the capacity ``Ping`` and ``ListMiners`` need. Streams are bounded per caller and in total
(:class:`~sonm_p2p.hub.limits.StreamBudget`).
"""

from __future__ import annotations

import time
from collections.abc import AsyncIterator, Callable
from dataclasses import replace

import grpc
from google.protobuf.message import Message

from sonm_p2p import __version__
from sonm_p2p._convert import (
    event_to_pb,
    log_query_from_pb,
    resources_dict_to_pb,
    spec_from_pb,
    status_to_pb,
    task_to_pb,
)
from sonm_p2p._pb.sonm.v1 import common_pb2, hub_pb2, hub_pb2_grpc
from sonm_p2p._status import translate_errors
from sonm_p2p.auth import HEADER_SIG, RequestVerifier, check_owner
from sonm_p2p.discovery import HubGossip
from sonm_p2p.errors import Busy
from sonm_p2p.hub.hub import Hub
from sonm_p2p.hub.limits import RateLimit, StreamBudget, StreamLimits, client_of
from sonm_p2p.hub.visibility import sees_all, visible, visible_status

__all__ = ["HubServicer"]


@translate_errors
class HubServicer(hub_pb2_grpc.HubServicer):
    def __init__(
        self,
        hub: Hub,
        grpc_endpoint: str,
        gossip: HubGossip | None = None,
        *,
        reachability: Callable[[], str] = lambda: "unknown",
        stun_endpoint: str = "",
        stun_endpoints: Callable[[], list[str]] | None = None,
        streams: StreamLimits | None = None,
    ) -> None:
        self.hub = hub
        self.streams = StreamBudget(streams or StreamLimits())
        # A miner's status is its costliest read (the engine's stats): rate-limited per caller.
        self._status_reads = RateLimit(rate=10.0, burst=50)
        self.reachability = reachability
        self.grpc_endpoint = grpc_endpoint
        self.gossip = gossip
        self.stun_endpoint = stun_endpoint
        self.stun_endpoints = stun_endpoints or (lambda: [stun_endpoint] if stun_endpoint else [])
        #: Told how each call ended, (method, code name): the hub's metrics (see _status).
        self.observe_call: Callable[[str, str], None] | None = None
        self.verifier = RequestVerifier(hub_id=hub.node_id)

    def _caller(self, method: str, request: Message, context: grpc.ServicerContext) -> str:
        """The node ID that signed this call (Unauthenticated if none did, properly)."""
        headers = {k: v for k, v in context.invocation_metadata() if isinstance(v, str)}
        payload = request.SerializeToString(deterministic=True)
        return self.verifier.verify(method, payload, headers, time.time())

    def _reader(self, method: str, request: Message, context: grpc.ServicerContext) -> str | None:
        """Who signed this read (None: unsigned; a bad signature is still Unauthenticated)."""
        if not any(k == HEADER_SIG for k, _ in context.invocation_metadata()):
            return None
        return self._caller(method, request, context)

    def _owned_task(
        self, method: str, request: Message, task_id: str, context: grpc.ServicerContext, what: str
    ) -> str:
        caller = self._caller(method, request, context)
        task = self.hub.resolve_task(task_id, caller=caller)
        check_owner(caller, task.owner, self.hub.node_id, what)
        return task.task_id

    def Ping(
        self, request: common_pb2.Empty, context: grpc.ServicerContext
    ) -> common_pb2.PingReply:
        return common_pb2.PingReply(status="OK")

    def Info(self, request: common_pb2.Empty, context: grpc.ServicerContext) -> hub_pb2.HubInfo:
        return hub_pb2.HubInfo(
            node_id=self.hub.node_id,
            peer_id=self.hub.node.peer_id,
            multiaddrs=self.hub.node.advertised_addrs,
            grpc_endpoint=self.grpc_endpoint,
            version=__version__,
            miners_online=len(self.hub.online_miners()),
            uptime_seconds=int(time.time() - self.hub.started_at),
            stun_endpoint=self.stun_endpoint,
            reachability=self.reachability(),
            stun_endpoints=self.stun_endpoints(),
        )

    def ListMiners(
        self, request: common_pb2.Empty, context: grpc.ServicerContext
    ) -> hub_pb2.ListMinersReply:
        reply = hub_pb2.ListMinersReply()
        hub_addrs = self.hub.node.advertised_addrs
        for view in self.hub.list_miners():
            rec = view.record
            if rec.online:
                reply.miners[rec.node_id].values.extend(view.task_ids)
            addrs, behind_nat = self.hub.overlay_addrs(rec.node_id, hub_addrs)
            reply.details.append(
                hub_pb2.MinerInfo(
                    node_id=rec.node_id,
                    peer_id=rec.peer_id,
                    online=rec.online,
                    task_ids=view.task_ids,
                    resources=resources_dict_to_pb(rec.resources),
                    last_seen_ms=int(rec.last_seen * 1000),
                    remote_addr=rec.remote_addr,
                    multiaddrs=addrs,
                    behind_nat=behind_nat,
                    nat_type=self.hub.miner_nat(rec.node_id),
                )
            )
        return reply

    async def StartTask(
        self, request: hub_pb2.StartTaskRequest, context: grpc.aio.ServicerContext
    ) -> hub_pb2.StartTaskReply:
        owner = await self.hub.blocking(self._caller, "StartTask", request, context)
        task = await self.hub.start_task(
            request.miner_id,
            spec_from_pb(request.spec),
            owner=owner,
            timeout=context.time_remaining(),
            task_id=request.task_id,
            detach=request.detach,
        )
        info = task_to_pb(task)
        return hub_pb2.StartTaskReply(
            task_id=task.task_id, miner_id=task.miner_id, endpoints=info.endpoints
        )

    async def StopTask(
        self, request: common_pb2.TaskRef, context: grpc.aio.ServicerContext
    ) -> common_pb2.TaskInfo:
        task_id = await self.hub.blocking(
            self._owned_task, "StopTask", request, request.task_id, context, "stop it"
        )
        return task_to_pb(await self.hub.stop_task(task_id, timeout=context.time_remaining()))

    def TaskStatus(
        self, request: common_pb2.TaskRef, context: grpc.ServicerContext
    ) -> common_pb2.TaskInfo:
        reader = self._reader("TaskStatus", request, context)
        return task_to_pb(visible(self.hub.task_status(request.task_id), reader, self.hub.node_id))

    def ListTasks(
        self, request: hub_pb2.ListTasksRequest, context: grpc.ServicerContext
    ) -> hub_pb2.ListTasksReply:
        reader = self._reader("ListTasks", request, context)
        tasks, token = self.hub.page_tasks(
            request.miner_id, page_size=request.page_size, page_token=request.page_token
        )
        shown = [task_to_pb(visible(t, reader, self.hub.node_id)) for t in tasks]
        return hub_pb2.ListTasksReply(tasks=shown, next_page_token=token)

    async def WatchTask(
        self, request: common_pb2.TaskRef, context: grpc.aio.ServicerContext
    ) -> AsyncIterator[common_pb2.TaskEvent]:
        with self.streams.hold(client_of(context.peer())):
            reader = await self.hub.blocking(self._reader, "WatchTask", request, context)
            owner_reads = False
            async for event in self.hub.watch_task(request.task_id):
                if event.task is not None:
                    owner_reads = sees_all(event.task, reader, self.hub.node_id)
                    event = replace(event, task=visible(event.task, reader, self.hub.node_id))
                elif not owner_reads:
                    continue  # pull progress names the image: the owner's business
                yield event_to_pb(event)

    async def TaskLogs(
        self, request: common_pb2.LogsRequest, context: grpc.aio.ServicerContext
    ) -> AsyncIterator[common_pb2.LogChunk]:
        with self.streams.hold(client_of(context.peer())):
            query = log_query_from_pb(request)
            task_id = await self.hub.blocking(
                self._owned_task, "TaskLogs", request, request.task_id, context, "read its output"
            )
            async for data in self.hub.task_logs(replace(query, task_id=task_id)):
                yield common_pb2.LogChunk(data=data)

    async def MinerStatus(
        self, request: common_pb2.MinerRef, context: grpc.aio.ServicerContext
    ) -> common_pb2.MinerStatusReply:
        wait = self._status_reads.take(client_of(context.peer()), time.monotonic())
        if wait:
            raise Busy(f"too many status reads from this address: the next in {wait:.1f}s")
        reader = await self.hub.blocking(self._reader, "MinerStatus", request, context)
        record, live = await self.hub.miner_status(request.miner_id)
        if live is not None:
            reply = status_to_pb(visible_status(live, reader, self.hub.node_id))
        else:
            tasks = await self.hub.blocking(self.hub.list_tasks, record.node_id)
            reply = common_pb2.MinerStatusReply(
                node_id=record.node_id,
                resources=resources_dict_to_pb(record.resources),
                tasks=[task_to_pb(visible(t, reader, self.hub.node_id)) for t in tasks],
            )
        reply.online = record.online
        reply.remote_addr = record.remote_addr
        reply.last_seen_ms = int(record.last_seen * 1000)
        return reply

    def ListHubs(
        self, request: common_pb2.Empty, context: grpc.ServicerContext
    ) -> hub_pb2.ListHubsReply:
        entries = self.gossip.hubs() if self.gossip is not None else []
        return hub_pb2.ListHubsReply(
            hubs=[
                hub_pb2.HubSummary(
                    node_id=e.node_id,
                    peer_id=e.peer_id,
                    multiaddrs=list(e.multiaddrs),
                    grpc_endpoint=e.grpc_endpoint,
                    version=e.announcement.version,
                    miners_online=e.miners_online,
                    last_seen_ms=int(e.last_seen * 1000),
                    expires_at_ms=int(e.expires_at * 1000),
                    latency_ms=(e.latency or 0.0) * 1000,
                )
                for e in entries
            ]
        )
