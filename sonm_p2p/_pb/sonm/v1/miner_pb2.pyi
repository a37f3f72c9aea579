from sonm_p2p._pb.sonm.v1 import common_pb2 as _common_pb2
from google.protobuf.internal import containers as _containers
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class HandshakeRequest(_message.Message):
    __slots__ = ("hub_id", "stun_endpoint", "stun_endpoints")
    HUB_ID_FIELD_NUMBER: _ClassVar[int]
    STUN_ENDPOINT_FIELD_NUMBER: _ClassVar[int]
    STUN_ENDPOINTS_FIELD_NUMBER: _ClassVar[int]
    hub_id: str
    stun_endpoint: str
    stun_endpoints: _containers.RepeatedScalarFieldContainer[str]
    def __init__(self, hub_id: _Optional[str] = ..., stun_endpoint: _Optional[str] = ..., stun_endpoints: _Optional[_Iterable[str]] = ...) -> None: ...

class HandshakeReply(_message.Message):
    __slots__ = ("node_id", "resources", "tasks", "version", "multiaddrs", "nat_type")
    NODE_ID_FIELD_NUMBER: _ClassVar[int]
    RESOURCES_FIELD_NUMBER: _ClassVar[int]
    TASKS_FIELD_NUMBER: _ClassVar[int]
    VERSION_FIELD_NUMBER: _ClassVar[int]
    MULTIADDRS_FIELD_NUMBER: _ClassVar[int]
    NAT_TYPE_FIELD_NUMBER: _ClassVar[int]
    node_id: str
    resources: _common_pb2.Resources
    tasks: _containers.RepeatedCompositeFieldContainer[_common_pb2.TaskInfo]
    version: str
    multiaddrs: _containers.RepeatedScalarFieldContainer[str]
    nat_type: str
    def __init__(self, node_id: _Optional[str] = ..., resources: _Optional[_Union[_common_pb2.Resources, _Mapping]] = ..., tasks: _Optional[_Iterable[_Union[_common_pb2.TaskInfo, _Mapping]]] = ..., version: _Optional[str] = ..., multiaddrs: _Optional[_Iterable[str]] = ..., nat_type: _Optional[str] = ...) -> None: ...

class MinerSessionMessage(_message.Message):
    __slots__ = ("handshake", "event")
    HANDSHAKE_FIELD_NUMBER: _ClassVar[int]
    EVENT_FIELD_NUMBER: _ClassVar[int]
    handshake: HandshakeReply
    event: _common_pb2.TaskEvent
    def __init__(self, handshake: _Optional[_Union[HandshakeReply, _Mapping]] = ..., event: _Optional[_Union[_common_pb2.TaskEvent, _Mapping]] = ...) -> None: ...

class MinerStartRequest(_message.Message):
    __slots__ = ("task_id", "spec", "owner", "hub_id", "record")
    TASK_ID_FIELD_NUMBER: _ClassVar[int]
    SPEC_FIELD_NUMBER: _ClassVar[int]
    OWNER_FIELD_NUMBER: _ClassVar[int]
    HUB_ID_FIELD_NUMBER: _ClassVar[int]
    RECORD_FIELD_NUMBER: _ClassVar[int]
    task_id: str
    spec: _common_pb2.TaskSpec
    owner: str
    hub_id: str
    record: str
    def __init__(self, task_id: _Optional[str] = ..., spec: _Optional[_Union[_common_pb2.TaskSpec, _Mapping]] = ..., owner: _Optional[str] = ..., hub_id: _Optional[str] = ..., record: _Optional[str] = ...) -> None: ...
