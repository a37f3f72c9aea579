"""Protobuf ⇄ domain conversions, used only by servicers and typed clients."""

from __future__ import annotations

from sonm_p2p._pb.sonm.v1 import common_pb2
from sonm_p2p.miner.runtime import RunSpec
from sonm_p2p.tasks import Endpoint, Task, TaskState

__all__ = [
    "endpoint_from_pb",
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
    )


def endpoint_from_pb(msg: common_pb2.Endpoint) -> Endpoint:
    return Endpoint(msg.container_port, msg.protocol, msg.host_ip, msg.host_port)


def spec_to_pb(spec: RunSpec) -> common_pb2.TaskSpec:
    return common_pb2.TaskSpec(
        image=spec.image,
        env=dict(spec.env),
        command=list(spec.command),
        cpus=spec.cpus,
        memory_bytes=spec.memory_bytes,
    )


def spec_from_pb(msg: common_pb2.TaskSpec) -> RunSpec:
    return RunSpec(
        image=msg.image,
        command=tuple(msg.command),
        env=dict(msg.env),
        cpus=msg.cpus,
        memory_bytes=msg.memory_bytes,
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
    )
