"""The hub's typed client for one miner's ``sonm.v1.Miner`` service over the overlay."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import AsyncIterator, Callable, Sequence
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
from sonm_p2p._grpc_options import MINER_LINK_CLIENT_OPTIONS
from sonm_p2p._pb.sonm.v1 import common_pb2, miner_pb2, miner_pb2_grpc
from sonm_p2p._status import from_rpc_error
from sonm_p2p.errors import MinerUnavailable
from sonm_p2p.events import TaskEvent
from sonm_p2p.model import LogQuery, MinerStatus, RunSpec
from sonm_p2p.tasks import Task
from sonm_p2p.transport.bridge import GRPC_MINER, PeerChannel
from sonm_p2p.transport.node import P2PNode

__all__ = ["AioStream", "Handshake", "MinerClient", "handshake_request"]


class Handshake:
    """What a miner says about itself when its hub first calls it."""

    def __init__(self, reply: miner_pb2.HandshakeReply) -> None:
        self.node_id = reply.node_id
        self.version = reply.version
        self.resources = resources_from_pb(reply.resources)
        self.tasks = [task_from_pb(t) for t in reply.tasks]
        self.multiaddrs = list(reply.multiaddrs)
        self.nat_type = reply.nat_type


def handshake_request(hub_id: str, stun_endpoints: Sequence[str]) -> miner_pb2.HandshakeRequest:
    """What a hub asks a miner at its handshake (over gRPC, or on a message session):
    ``stun_endpoints``, the STUN responders the miner classifies its NAT against."""
    return miner_pb2.HandshakeRequest(
        hub_id=hub_id,
        stun_endpoint=stun_endpoints[0] if stun_endpoints else "",
        stun_endpoints=stun_endpoints,
    )


def _we_are_cancelled() -> bool:
    """Whether a CancelledError out of a ``grpc.aio`` call is our own task being cancelled
    (re-raise it), not the call cut under us by its channel closing."""
    task = asyncio.current_task()
    return task is not None and task.cancelling() > 0


class AioStream:
    """A server-streaming ``grpc.aio`` call: ``async for`` yields ``convert(message)`` and
    raises domain errors; ``cancel()`` ends it quietly."""

    def __init__(
        self,
        call: Any,
        convert: Callable[[Any], Any],
        error: Callable[[grpc.RpcError], Exception],
    ) -> None:
        self._call = call
        self._convert = convert
        self._error = error
        self.cancelled = False

    def cancel(self) -> None:
        self.cancelled = True
        self._call.cancel()

    async def __aiter__(self) -> AsyncIterator[Any]:
        try:
            async for message in self._call:
                yield self._convert(message)
        except asyncio.CancelledError:
            if _we_are_cancelled():
                raise
            if not self.cancelled:  # cut under us: the channel closed as the session ended
                raise MinerUnavailable("the miner went away during the stream") from None
        except grpc.RpcError as exc:
            if exc.code() != grpc.StatusCode.CANCELLED or not self.cancelled:
                raise self._error(exc) from None


class MinerClient:
    """Calls one miner. Every method raises domain errors; a broken path is MinerUnavailable.

    With ``loop`` (an asyncio loop running in another thread) the ``a*`` methods run there on
    ``grpc.aio``, so a hub pings and follows every miner without a thread per miner, and
    :meth:`handshake` too: the miner is then called over one HTTP/2 connection (one bridge
    socket, one libp2p stream), not two. The channel is opened at the first call (a miner on a
    message session may never be called), and has no HTTP/2 keepalive: the hub's pings are its
    liveness check (see ``_grpc_options``).
    """

    def __init__(
        self,
        node: P2PNode,
        peer_id: str,
        miner_id: str,
        *,
        loop: asyncio.AbstractEventLoop | None = None,
    ) -> None:
        self.miner_id = miner_id
        self._node, self._peer_id = node, peer_id
        self._chan: PeerChannel | None = None  # opened at the first call
        self._closed = False
        self._lock = threading.Lock()
        self._stub: miner_pb2_grpc.MinerStub | None = None  # sync, without a loop only
        self._loop = loop
        self._aio: grpc.aio.Channel | None = None
        self._astub: miner_pb2_grpc.MinerStub | None = None
        self._opening: asyncio.Lock | None = None

    @property
    def loop(self) -> asyncio.AbstractEventLoop | None:
        """The loop the ``a*`` methods run on (None: sync calls only)."""
        return self._loop

    def _channel(self) -> PeerChannel:
        """The tunnel to the miner's gRPC, opened now if it is not yet (blocking: not on the
        loop). Raises MinerUnavailable once closed."""
        with self._lock:
            if self._closed:
                raise MinerUnavailable(f"miner {self.miner_id}: its session ended")
            if self._chan is None:
                self._chan = PeerChannel(
                    self._node, self._peer_id, GRPC_MINER, options=MINER_LINK_CLIENT_OPTIONS
                )
            return self._chan

    async def _astub_ready(self) -> miner_pb2_grpc.MinerStub:
        """(on the loop) The aio stub, its channel opened at the first call: a miner whose
        handshake and events come on its message session may never be called at all."""
        if self._astub is None:
            if self._opening is None:
                self._opening = asyncio.Lock()
            async with self._opening:
                if self._astub is None:
                    chan = await asyncio.get_running_loop().run_in_executor(None, self._channel)
                    if self._closed:  # closed while it opened
                        raise MinerUnavailable(f"miner {self.miner_id}: its session ended")
                    self._aio = chan.aio_channel()
                    self._astub = miner_pb2_grpc.MinerStub(self._aio)
        return self._astub

    def __repr__(self) -> str:
        return f"<MinerClient {self.miner_id} {self._chan!r}>"

    def close(self) -> None:
        """Close both channels; calls in flight end with MinerUnavailable. Idempotent."""
        with self._lock:
            self._closed = True
            chan, self._chan = self._chan, None
        if self._aio is not None and self._loop is not None and not self._loop.is_closed():
            aio, self._aio = self._aio, None
            try:
                asyncio.run_coroutine_threadsafe(aio.close(), self._loop).result(timeout=5)
            except (RuntimeError, TimeoutError):
                pass  # the loop is stopping: it takes the channel with it
        if chan is not None:
            chan.close()

    def _error(self, exc: grpc.RpcError) -> Exception:
        return from_rpc_error(exc, unavailable=MinerUnavailable, peer=f"miner {self.miner_id}")

    async def _aunary(self, method: str, request: object, timeout: float | None) -> Any:
        assert self._loop is not None, "MinerClient made without a loop"
        try:
            stub = await self._astub_ready()
            return await getattr(stub, method)(request, timeout=timeout)
        except asyncio.CancelledError:
            if _we_are_cancelled():
                raise
            # The call was cancelled under us: the channel closed as the session ended.
            raise MinerUnavailable(f"miner {self.miner_id} went away during the call") from None
        except grpc.RpcError as exc:
            raise self._error(exc) from None

    async def aping(self, timeout: float) -> None:
        """Ping on the loop. Raises MinerUnavailable, Timeout."""
        await self._aunary("Ping", common_pb2.Empty(), timeout)

    async def astart(
        self, task: Task, spec: RunSpec, *, hub_id: str, timeout: float | None, record: str = ""
    ) -> Task:
        """Pull (if needed) and run ``spec`` as ``task`` (its ID and owner) on the miner; the
        task RUNNING. ``record``: the hub's signed record of the task (see
        :func:`sonm_p2p.auth.task_record`)."""
        req = miner_pb2.MinerStartRequest(
            task_id=task.task_id,
            spec=spec_to_pb(spec),
            owner=task.owner,
            hub_id=hub_id,
            record=record,
        )
        return task_from_pb(await self._aunary("Start", req, timeout))

    async def astop(self, task_id: str, timeout: float | None) -> Task:
        """Stop the task on the miner (SIGTERM, then kill); the task STOPPED."""
        return task_from_pb(
            await self._aunary("Stop", common_pb2.TaskRef(task_id=task_id), timeout)
        )

    async def aminer_status(self, timeout: float | None) -> MinerStatus:
        """Offer, allocation, usage and tasks of the miner."""
        return status_from_pb(await self._aunary("Status", common_pb2.Empty(), timeout))

    async def alogs(self, query: LogQuery) -> AioStream:
        """The task's output as a stream on the loop (``cancel()`` from the loop ends it)."""
        assert self._loop is not None, "MinerClient made without a loop"
        call = (await self._astub_ready()).Logs(log_query_to_pb(query))
        return AioStream(call, lambda m: m.data, self._error)

    async def awatch_tasks(self) -> AsyncIterator[TaskEvent]:
        """Every task event of this miner until the session ends (on the loop)."""
        assert self._loop is not None, "MinerClient made without a loop"
        call = (await self._astub_ready()).WatchTasks(common_pb2.Empty())
        try:
            async for message in call:
                yield event_from_pb(message)
        except grpc.RpcError as exc:
            raise self._error(exc) from None
        finally:
            call.cancel()

    def _call(self, method: str, request: object, timeout: float | None) -> object:
        """A unary call from a thread that is not the loop's: on the loop when there is one."""
        if self._loop is not None:
            call = self._aunary(method, request, timeout)
            try:
                return asyncio.run_coroutine_threadsafe(call, self._loop).result()
            except RuntimeError as exc:  # the loop is closing
                call.close()
                raise MinerUnavailable(f"miner {self.miner_id}: {exc}") from None
        if self._stub is None:
            self._stub = miner_pb2_grpc.MinerStub(self._channel().channel)
        try:
            return getattr(self._stub, method)(request, timeout=timeout)
        except grpc.RpcError as exc:
            raise self._error(exc) from None

    def handshake(
        self, hub_id: str, timeout: float, *, stun_endpoints: Sequence[str] = ()
    ) -> Handshake:
        """``stun_endpoints``: the STUN responders the miner classifies its NAT against."""
        reply = self._call("Handshake", handshake_request(hub_id, stun_endpoints), timeout)
        return Handshake(reply)  # type: ignore[arg-type]
