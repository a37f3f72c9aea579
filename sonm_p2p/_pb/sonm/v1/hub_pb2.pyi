from sonm_p2p._pb.sonm.v1 import common_pb2 as _common_pb2
from google.protobuf.internal import containers as _containers
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class HubSummary(_message.Message):
    __slots__ = ("node_id", "peer_id", "multiaddrs", "grpc_endpoint", "version", "miners_online", "last_seen_ms", "expires_at_ms", "latency_ms")
    NODE_ID_FIELD_NUMBER: _ClassVar[int]
    PEER_ID_FIELD_NUMBER: _ClassVar[int]
    MULTIADDRS_FIELD_NUMBER: _ClassVar[int]
    GRPC_ENDPOINT_FIELD_NUMBER: _ClassVar[int]
    VERSION_FIELD_NUMBER: _ClassVar[int]
    MINERS_ONLINE_FIELD_NUMBER: _ClassVar[int]
    LAST_SEEN_MS_FIELD_NUMBER: _ClassVar[int]
    EXPIRES_AT_MS_FIELD_NUMBER: _ClassVar[int]
    LATENCY_MS_FIELD_NUMBER: _ClassVar[int]
    node_id: str
    peer_id: str
    multiaddrs: _containers.RepeatedScalarFieldContainer[str]
    grpc_endpoint: str
    version: str
    miners_online: int
    last_seen_ms: int
    expires_at_ms: int
    latency_ms: float
    def __init__(self, node_id: _Optional[str] = ..., peer_id: _Optional[str] = ..., multiaddrs: _Optional[_Iterable[str]] = ..., grpc_endpoint: _Optional[str] = ..., version: _Optional[str] = ..., miners_online: _Optional[int] = ..., last_seen_ms: _Optional[int] = ..., expires_at_ms: _Optional[int] = ..., latency_ms: _Optional[float] = ...) -> None: ...

class ListHubsReply(_message.Message):
    __slots__ = ("hubs",)
    HUBS_FIELD_NUMBER: _ClassVar[int]
    hubs: _containers.RepeatedCompositeFieldContainer[HubSummary]
    def __init__(self, hubs: _Optional[_Iterable[_Union[HubSummary, _Mapping]]] = ...) -> None: ...

class HubInfo(_message.Message):
    __slots__ = ("node_id", "peer_id", "multiaddrs", "grpc_endpoint", "version", "miners_online", "uptime_seconds", "stun_endpoint", "reachability", "stun_endpoints")
    NODE_ID_FIELD_NUMBER: _ClassVar[int]
    PEER_ID_FIELD_NUMBER: _ClassVar[int]
    MULTIADDRS_FIELD_NUMBER: _ClassVar[int]
    GRPC_ENDPOINT_FIELD_NUMBER: _ClassVar[int]
    VERSION_FIELD_NUMBER: _ClassVar[int]
    MINERS_ONLINE_FIELD_NUMBER: _ClassVar[int]
    UPTIME_SECONDS_FIELD_NUMBER: _ClassVar[int]
    STUN_ENDPOINT_FIELD_NUMBER: _ClassVar[int]
    REACHABILITY_FIELD_NUMBER: _ClassVar[int]
    STUN_ENDPOINTS_FIELD_NUMBER: _ClassVar[int]
    node_id: str
    peer_id: str
    multiaddrs: _containers.RepeatedScalarFieldContainer[str]
    grpc_endpoint: str
    version: str
    miners_online: int
    uptime_seconds: int
    stun_endpoint: str
    reachability: str
    stun_endpoints: _containers.RepeatedScalarFieldContainer[str]
    def __init__(self, node_id: _Optional[str] = ..., peer_id: _Optional[str] = ..., multiaddrs: _Optional[_Iterable[str]] = ..., grpc_endpoint: _Optional[str] = ..., version: _Optional[str] = ..., miners_online: _Optional[int] = ..., uptime_seconds: _Optional[int] = ..., stun_endpoint: _Optional[str] = ..., reachability: _Optional[str] = ..., stun_endpoints: _Optional[_Iterable[str]] = ...) -> None: ...

class TaskIds(_message.Message):
    __slots__ = ("values",)
    VALUES_FIELD_NUMBER: _ClassVar[int]
    values: _containers.RepeatedScalarFieldContainer[str]
    def __init__(self, values: _Optional[_Iterable[str]] = ...) -> None: ...

class MinerInfo(_message.Message):
    __slots__ = ("node_id", "peer_id", "online", "task_ids", "resources", "last_seen_ms", "remote_addr", "multiaddrs", "behind_nat", "nat_type")
    NODE_ID_FIELD_NUMBER: _ClassVar[int]
    PEER_ID_FIELD_NUMBER: _ClassVar[int]
    ONLINE_FIELD_NUMBER: _ClassVar[int]
    TASK_IDS_FIELD_NUMBER: _ClassVar[int]
    RESOURCES_FIELD_NUMBER: _ClassVar[int]
    LAST_SEEN_MS_FIELD_NUMBER: _ClassVar[int]
    REMOTE_ADDR_FIELD_NUMBER: _ClassVar[int]
    MULTIADDRS_FIELD_NUMBER: _ClassVar[int]
    BEHIND_NAT_FIELD_NUMBER: _ClassVar[int]
    NAT_TYPE_FIELD_NUMBER: _ClassVar[int]
    node_id: str
    peer_id: str
    online: bool
    task_ids: _containers.RepeatedScalarFieldContainer[str]
    resources: _common_pb2.Resources
    last_seen_ms: int
    remote_addr: str
    multiaddrs: _containers.RepeatedScalarFieldContainer[str]
    behind_nat: bool
    nat_type: str
    def __init__(self, node_id: _Optional[str] = ..., peer_id: _Optional[str] = ..., online: _Optional[bool] = ..., task_ids: _Optional[_Iterable[str]] = ..., resources: _Optional[_Union[_common_pb2.Resources, _Mapping]] = ..., last_seen_ms: _Optional[int] = ..., remote_addr: _Optional[str] = ..., multiaddrs: _Optional[_Iterable[str]] = ..., behind_nat: _Optional[bool] = ..., nat_type: _Optional[str] = ...) -> None: ...

class ListMinersReply(_message.Message):
    __slots__ = ("miners", "details")
    class MinersEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: TaskIds
        def __init__(self, key: _Optional[str] = ..., value: _Optional[_Union[TaskIds, _Mapping]] = ...) -> None: ...
    MINERS_FIELD_NUMBER: _ClassVar[int]
    DETAILS_FIELD_NUMBER: _ClassVar[int]
    miners: _containers.MessageMap[str, TaskIds]
    details: _containers.RepeatedCompositeFieldContainer[MinerInfo]
    def __init__(self, miners: _Optional[_Mapping[str, TaskIds]] = ..., details: _Optional[_Iterable[_Union[MinerInfo, _Mapping]]] = ...) -> None: ...

class StartTaskRequest(_message.Message):
    __slots__ = ("miner_id", "spec", "detach", "task_id")
    MINER_ID_FIELD_NUMBER: _ClassVar[int]
    SPEC_FIELD_NUMBER: _ClassVar[int]
    DETACH_FIELD_NUMBER: _ClassVar[int]
    TASK_ID_FIELD_NUMBER: _ClassVar[int]
    miner_id: str
    spec: _common_pb2.TaskSpec
    detach: bool
    task_id: str
    def __init__(self, miner_id: _Optional[str] = ..., spec: _Optional[_Union[_common_pb2.TaskSpec, _Mapping]] = ..., detach: _Optional[bool] = ..., task_id: _Optional[str] = ...) -> None: ...

class StartTaskReply(_message.Message):
    __slots__ = ("task_id", "miner_id", "endpoints")
    TASK_ID_FIELD_NUMBER: _ClassVar[int]
    MINER_ID_FIELD_NUMBER: _ClassVar[int]
    ENDPOINTS_FIELD_NUMBER: _ClassVar[int]
    task_id: str
    miner_id: str
    endpoints: _containers.RepeatedCompositeFieldContainer[_common_pb2.Endpoint]
    def __init__(self, task_id: _Optional[str] = ..., miner_id: _Optional[str] = ..., endpoints: _Optional[_Iterable[_Union[_common_pb2.Endpoint, _Mapping]]] = ...) -> None: ...

class ListTasksRequest(_message.Message):
    __slots__ = ("miner_id", "page_size", "page_token")
    MINER_ID_FIELD_NUMBER: _ClassVar[int]
    PAGE_SIZE_FIELD_NUMBER: _ClassVar[int]
    PAGE_TOKEN_FIELD_NUMBER: _ClassVar[int]
    miner_id: str
    page_size: int
    page_token: str
    def __init__(self, miner_id: _Optional[str] = ..., page_size: _Optional[int] = ..., page_token: _Optional[str] = ...) -> None: ...

class ListTasksReply(_message.Message):
    __slots__ = ("tasks", "next_page_token")
    TASKS_FIELD_NUMBER: _ClassVar[int]
    NEXT_PAGE_TOKEN_FIELD_NUMBER: _ClassVar[int]
    tasks: _containers.RepeatedCompositeFieldContainer[_common_pb2.TaskInfo]
    next_page_token: str
    def __init__(self, tasks: _Optional[_Iterable[_Union[_common_pb2.TaskInfo, _Mapping]]] = ..., next_page_token: _Optional[str] = ...) -> None: ...
