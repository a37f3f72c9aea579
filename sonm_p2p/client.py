"""``HubClient``: the typed client of a hub's ``sonm.v1.Hub`` API (plain gRPC, no libp2p).

Every method returns domain objects and raises domain errors (``sonm_p2p.errors``); a hub that is
not there is :class:`~sonm_p2p.errors.HubUnavailable` at once, not after the deadline.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import grpc

from sonm_p2p._convert import (
    endpoint_from_pb,
    event_from_pb,
    log_query_to_pb,
    resources_from_pb,
    spec_to_pb,
    status_from_pb,
    task_from_pb,
)
from sonm_p2p._grpc_options import CLIENT_OPTIONS
from sonm_p2p._pb.sonm.v1 import common_pb2, hub_pb2, hub_pb2_grpc
from sonm_p2p._status import ServerStream, from_rpc_error
from sonm_p2p.auth import sign_request
from sonm_p2p.errors import HubUnavailable
from sonm_p2p.identity import Identity
from sonm_p2p.model import LogQuery, MinerStatus, RunSpec
from sonm_p2p.tasks import Endpoint, Task

#: The calls a client signs when it has a key: the hub requires it on the first three, and on
#: the reads it shows a task's details (image, endpoints, errors, usage) only to its owner.
SIGNED_METHODS = frozenset(
    {"StartTask", "StopTask", "TaskLogs", "TaskStatus", "ListTasks", "WatchTask", "MinerStatus"}
)

__all__ = [
    "SIGNED_METHODS",
    "HubClient",
    "HubInfo",
    "HubSummary",
    "MinerReport",
    "MinerSummary",
    "StartedTask",
]


@dataclass(frozen=True)
class HubInfo:
    node_id: str
    peer_id: str
    multiaddrs: tuple[str, ...]
    grpc_endpoint: str
    version: str
    miners_online: int
    uptime_seconds: int
    stun_endpoint: str = ""
    reachability: str = ""  # public / private (reached through relays) / unknown
    #: every STUN responder to probe, stun_endpoint first (its own ports, then other hubs')
    stun_endpoints: tuple[str, ...] = ()


@dataclass(frozen=True)
class HubSummary:
    """A hub as the overlay announces it (``sonmcli hubs``)."""

    node_id: str
    peer_id: str
    multiaddrs: tuple[str, ...]
    grpc_endpoint: str
    version: str
    miners_online: int
    last_seen: float
    expires_at: float
    latency: float | None = None  # seconds

    @classmethod
    def from_entry(cls, e: object) -> HubSummary:
        """From a discovery ``HubEntry``."""
        a = e.announcement  # type: ignore[attr-defined]
        return cls(
            e.node_id,
            e.peer_id,
            tuple(e.multiaddrs),
            e.grpc_endpoint,
            a.version,  # type: ignore[attr-defined]
            e.miners_online,
            e.last_seen,
            e.expires_at,
            e.latency,
        )  # type: ignore[attr-defined]

    def with_latency(self, seconds: float | None) -> HubSummary:
        from dataclasses import replace

        return replace(self, latency=seconds if seconds is not None else self.latency)

    def as_dict(self) -> dict:
        d = dict(self.__dict__)
        d["multiaddrs"] = list(self.multiaddrs)
        d["latency_ms"] = None if self.latency is None else round(self.latency * 1000, 3)
        del d["latency"]
        return d


@dataclass(frozen=True)
class MinerSummary:
    node_id: str
    peer_id: str
    online: bool
    task_ids: tuple[str, ...]
    resources: dict = field(hash=False)
    last_seen: float = 0.0
    remote_addr: str = ""
    multiaddrs: tuple[str, ...] = ()
    behind_nat: bool = False
    nat_type: str = ""  # as the miner classified it by STUN ("" unknown)


@dataclass(frozen=True)
class StartedTask:
    task_id: str
    miner_id: str
    endpoints: tuple[Endpoint, ...]


@dataclass(frozen=True)
class MinerReport:
    """``miner-status``: the miner's record and, when online, what it offers and runs."""

    online: bool
    remote_addr: str
    last_seen: float
    status: MinerStatus


class HubClient:
    """A connection to one hub at ``target`` (``host:port``). Close it, or use it as a context.

    ``timeout`` is the deadline of each call in seconds (None: no deadline). ``identity`` signs
    the calls that need it (start, stop, logs): its node ID owns the tasks this client starts.
    """

    def __init__(
        self,
        target: str,
        *,
        timeout: float | None = 30.0,
        identity: Identity | None = None,
        tls_ca: bytes | None = None,
    ) -> None:
        """``tls_ca``: PEM certificates to check a hub serving TLS against (``sonmhub
        --tls-cert``); None: plain gRPC (or a local tunnel of the Noise-encrypted overlay)."""
        self.target = target
        self.timeout = timeout
        self.identity = identity
        self._metadata: tuple[tuple[str, str], ...] = ()
        self._hub_id = ""  # learned from Info before the first signed call
        if tls_ca is not None and not target.startswith("unix:"):
            creds = grpc.ssl_channel_credentials(root_certificates=tls_ca)
            self._channel = grpc.secure_channel(target, creds, options=CLIENT_OPTIONS)
        else:
            self._channel = grpc.insecure_channel(target, options=CLIENT_OPTIONS)
        self._stub = hub_pb2_grpc.HubStub(self._channel)

    def __repr__(self) -> str:
        return f"<HubClient {self.target}>"

    def __enter__(self) -> HubClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        self._channel.close()

    def _signed(self, method: str, request: object) -> tuple[tuple[str, str], ...]:
        if self.identity is None or method not in SIGNED_METHODS:
            return self._metadata
        if not self._hub_id:  # what the signature binds to: this hub, not any other
            self._hub_id = self.info().node_id
        payload = request.SerializeToString(deterministic=True)  # type: ignore[attr-defined]
        return sign_request(self.identity, method, payload, time.time(), hub_id=self._hub_id)

    def _call(self, method: str, request: object) -> object:
        try:
            return getattr(self._stub, method)(
                request, timeout=self.timeout, metadata=self._signed(method, request)
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
            r.miners_online, r.uptime_seconds, r.stun_endpoint, r.reachability,
            tuple(r.stun_endpoints) or ((r.stun_endpoint,) if r.stun_endpoint else ()),
        )  # fmt: skip

    def list_miners(self) -> list[MinerSummary]:
        r = self._call("ListMiners", common_pb2.Empty())
        out = []
        for m in r.details:
            out.append(
                MinerSummary(
                    node_id=m.node_id,
                    peer_id=m.peer_id,
                    online=m.online,
                    task_ids=tuple(m.task_ids),
                    resources=resources_from_pb(m.resources),
                    last_seen=m.last_seen_ms / 1000,
                    remote_addr=m.remote_addr,
                    multiaddrs=tuple(m.multiaddrs),
                    behind_nat=m.behind_nat,
                    nat_type=m.nat_type,
                )
            )
        return out

    def start_task(
        self, miner: str, spec: RunSpec, *, task_id: str = "", detach: bool = False
    ) -> StartedTask:
        """Start ``spec`` on ``miner``. Without ``detach`` the reply comes once it runs."""
        req = hub_pb2.StartTaskRequest(
            miner_id=miner, spec=spec_to_pb(spec), task_id=task_id, detach=detach
        )
        r = self._call("StartTask", req)
        return StartedTask(r.task_id, r.miner_id, tuple(endpoint_from_pb(e) for e in r.endpoints))

    def stop_task(self, task_id: str) -> Task:
        return task_from_pb(self._call("StopTask", common_pb2.TaskRef(task_id=task_id)))

    def task_status(self, task_id: str) -> Task:
        return task_from_pb(self._call("TaskStatus", common_pb2.TaskRef(task_id=task_id)))

    def list_tasks(self, miner: str = "", *, page_size: int = 0) -> list[Task]:
        """Every task (of ``miner``, if given), oldest first, fetched page by page."""
        tasks: list[Task] = []
        token = ""
        while True:
            request = hub_pb2.ListTasksRequest(
                miner_id=miner, page_size=page_size, page_token=token
            )  # noqa: E501
            r = self._call("ListTasks", request)
            tasks += [task_from_pb(t) for t in r.tasks]
            token = r.next_page_token
            if not token:
                return tasks

    def _stream(
        self, method: str, request: object, convert: Callable[[Any], Any], timeout: float | None
    ) -> ServerStream:
        call = getattr(self._stub, method)(
            request, timeout=timeout, metadata=self._signed(method, request)
        )
        return ServerStream(call, convert, unavailable=HubUnavailable, peer=f"hub {self.target}")

    def watch_task(self, task_id: str, *, timeout: float | None = None) -> ServerStream:
        """The task now, then its changes and pull progress (``TaskEvent``), until it ends."""
        return self._stream(
            "WatchTask", common_pb2.TaskRef(task_id=task_id), event_from_pb, timeout
        )

    def task_logs(self, query: LogQuery, *, timeout: float | None = None) -> ServerStream:
        """Chunks (bytes) of the task's output; with ``follow`` until it stops or ``cancel()``."""
        return self._stream("TaskLogs", log_query_to_pb(query), lambda m: m.data, timeout)

    def miner_status(self, miner: str) -> MinerReport:
        r = self._call("MinerStatus", common_pb2.MinerRef(miner_id=miner))
        return MinerReport(r.online, r.remote_addr, r.last_seen_ms / 1000, status_from_pb(r))

    def list_hubs(self) -> list[HubSummary]:
        """The hubs this hub knows from the overlay (itself included)."""
        r = self._call("ListHubs", common_pb2.Empty())
        return [
            HubSummary(
                h.node_id,
                h.peer_id,
                tuple(h.multiaddrs),
                h.grpc_endpoint,
                h.version,
                h.miners_online,
                h.last_seen_ms / 1000,
                h.expires_at_ms / 1000,
                h.latency_ms / 1000 if h.latency_ms else None,
            )
            for h in r.hubs
        ]
