"""Protobuf ⇄ domain conversions, used only by servicers and typed clients."""

from __future__ import annotations

from sonm_p2p._pb.sonm.v1 import common_pb2
from sonm_p2p.events import TaskEvent
from sonm_p2p.model import LogQuery, MinerStatus, PullProgress, RunSpec, RuntimeInfo, TaskUsage
from sonm_p2p.tasks import Endpoint, Task, TaskState

__all__ = [
    "endpoint_from_pb",
    "event_from_pb",
    "event_to_pb",
    "log_query_from_pb",
    "log_query_to_pb",
    "resources_dict_to_pb",
    "resources_from_pb",
    "resources_to_pb",
    "status_from_pb",
    "status_to_pb",
    "endpoint_to_pb",
    "spec_from_pb",
    "spec_to_pb",
    "task_from_pb",
    "task_to_pb",
]


def endpoint_to_pb(ep: Endpoint) -> common_pb2.Endpoint:
    return common_pb2.Endpoint(
        container_port=ep.container_port,
        protocol=ep.protocol,
        host_ip=ep.host_ip,
        host_port=ep.host_port,
        reach=ep.reach,
    )


def endpoint_from_pb(msg: common_pb2.Endpoint) -> Endpoint:
    return Endpoint(msg.container_port, msg.protocol, msg.host_ip, msg.host_port, msg.reach)


def spec_to_pb(spec: RunSpec) -> common_pb2.TaskSpec:
    return common_pb2.TaskSpec(
        image=spec.image,
        env=dict(spec.env),
        command=list(spec.command),
        cpus=spec.cpus,
        memory_bytes=spec.memory_bytes,
        restart=spec.restart,
    )


def spec_from_pb(msg: common_pb2.TaskSpec) -> RunSpec:
    return RunSpec(
        image=msg.image,
        command=tuple(msg.command),
        env=dict(msg.env),
        cpus=msg.cpus,
        memory_bytes=msg.memory_bytes,
        restart=msg.restart,
    )


def task_to_pb(task: Task) -> common_pb2.TaskInfo:
    return common_pb2.TaskInfo(
        task_id=task.task_id,
        miner_id=task.miner_id,
        image=task.image,
        state=common_pb2.TaskState.Value(task.state.value),
        endpoints=[endpoint_to_pb(ep) for ep in task.endpoints],
        exit_code=task.exit_code if task.exit_code is not None else 0,
        has_exit_code=task.exit_code is not None,
        error=task.error,
        owner=task.owner,
        created_at_ms=int(task.created_at * 1000),
        updated_at_ms=int(task.updated_at * 1000),
        container_id=task.container_id,
        record=task.record,
    )


def task_from_pb(msg: common_pb2.TaskInfo) -> Task:
    state = TaskState(common_pb2.TaskState.Name(msg.state))
    return Task(
        task_id=msg.task_id,
        miner_id=msg.miner_id,
        image=msg.image,
        owner=msg.owner,
        state=state,
        endpoints=tuple(endpoint_from_pb(ep) for ep in msg.endpoints),
        exit_code=msg.exit_code if msg.has_exit_code else None,
        error=msg.error,
        created_at=msg.created_at_ms / 1000,
        updated_at=msg.updated_at_ms / 1000,
        container_id=msg.container_id,
        record=msg.record,
    )


def event_to_pb(event: TaskEvent) -> common_pb2.TaskEvent:
    msg = common_pb2.TaskEvent(task_id=event.task_id, at_ms=int(event.at * 1000))
    if event.task is not None:
        msg.task.CopyFrom(task_to_pb(event.task))
    if event.progress is not None:
        p = event.progress
        msg.progress.CopyFrom(
            common_pb2.PullProgress(
                image=p.image,
                current_bytes=p.current_bytes,
                total_bytes=p.total_bytes,
                layers_done=p.layers_done,
                layers_total=p.layers_total,
                status=p.status,
            )
        )
    return msg


def event_from_pb(msg: common_pb2.TaskEvent) -> TaskEvent:
    task = task_from_pb(msg.task) if msg.HasField("task") else None
    progress = None
    if msg.HasField("progress"):
        p = msg.progress
        progress = PullProgress(
            p.image, p.current_bytes, p.total_bytes, p.layers_done, p.layers_total, p.status
        )
    return TaskEvent(msg.task_id, msg.at_ms / 1000, task=task, progress=progress)


def resources_to_pb(info: RuntimeInfo, gpus: tuple[str, ...] = ()) -> common_pb2.Resources:
    return common_pb2.Resources(
        cpu_cores=info.cpu_cores,
        memory_bytes=info.memory_bytes,
        os=info.os,
        arch=info.arch,
        docker_version=info.version,
        gpus=list(gpus),
    )


def resources_from_pb(msg: common_pb2.Resources) -> dict:
    """Resources as the JSON-able dict the hub stores and clients print."""
    return {
        "cpu_cores": msg.cpu_cores,
        "memory_bytes": msg.memory_bytes,
        "os": msg.os,
        "arch": msg.arch,
        "docker_version": msg.docker_version,
        "gpus": list(msg.gpus),
    }


def resources_dict_to_pb(res: dict) -> common_pb2.Resources:
    """The inverse of :func:`resources_from_pb` (the hub stores resources as this dict)."""
    return common_pb2.Resources(
        cpu_cores=res.get("cpu_cores", 0),
        memory_bytes=res.get("memory_bytes", 0),
        os=res.get("os", ""),
        arch=res.get("arch", ""),
        docker_version=res.get("docker_version", ""),
        gpus=res.get("gpus", []),
    )


def log_query_to_pb(q: LogQuery) -> common_pb2.LogsRequest:
    return common_pb2.LogsRequest(
        task_id=q.task_id,
        follow=q.follow,
        tail=q.tail or 0,
        has_tail=q.tail is not None,
        since_ms=int((q.since or 0) * 1000),
        stdout=q.stdout and not q.stderr,
        stderr=q.stderr and not q.stdout,
    )


def log_query_from_pb(msg: common_pb2.LogsRequest) -> LogQuery:
    both = msg.stdout == msg.stderr  # neither named: both streams
    return LogQuery(
        task_id=msg.task_id,
        follow=msg.follow,
        tail=msg.tail if msg.has_tail else None,
        since=msg.since_ms / 1000 if msg.since_ms else None,
        stdout=both or msg.stdout,
        stderr=both or msg.stderr,
    )


def status_to_pb(s: MinerStatus) -> common_pb2.MinerStatusReply:
    return common_pb2.MinerStatusReply(
        node_id=s.node_id,
        online=True,
        resources=resources_to_pb(s.info),
        cpus_allocated=s.cpus_allocated,
        memory_allocated=s.memory_allocated,
        cpus_offered=s.cpus_offered,
        memory_offered=s.memory_offered,
        usage=[
            common_pb2.TaskUsage(
                task_id=u.task_id,
                cpu_percent=u.cpu_percent,
                memory_bytes=u.memory_bytes,
                memory_limit=u.memory_limit,
                cpus_limit=u.cpus_limit,
            )
            for u in s.load
        ],
        tasks=[task_to_pb(t) for t in s.tasks],
    )


def status_from_pb(msg: common_pb2.MinerStatusReply) -> MinerStatus:
    r = msg.resources
    return MinerStatus(
        node_id=msg.node_id,
        info=RuntimeInfo(r.cpu_cores, r.memory_bytes, r.os, r.arch, r.docker_version),
        cpus_offered=msg.cpus_offered,
        memory_offered=msg.memory_offered,
        cpus_allocated=msg.cpus_allocated,
        memory_allocated=msg.memory_allocated,
        load=tuple(
            TaskUsage(u.task_id, u.cpu_percent, u.memory_bytes, u.memory_limit, u.cpus_limit)
            for u in msg.usage
        ),
        tasks=tuple(task_from_pb(t) for t in msg.tasks),
    )
