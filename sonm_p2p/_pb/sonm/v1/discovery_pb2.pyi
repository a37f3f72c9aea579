from google.protobuf.internal import containers as _containers
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable
from typing import ClassVar as _ClassVar, Optional as _Optional

DESCRIPTOR: _descriptor.FileDescriptor

class HubAnnouncement(_message.Message):
    __slots__ = ("node_id", "peer_id", "multiaddrs", "grpc_endpoint", "version", "miners_online", "max_miners", "issued_at_ms", "ttl_ms", "signature")
    NODE_ID_FIELD_NUMBER: _ClassVar[int]
    PEER_ID_FIELD_NUMBER: _ClassVar[int]
    MULTIADDRS_FIELD_NUMBER: _ClassVar[int]
    GRPC_ENDPOINT_FIELD_NUMBER: _ClassVar[int]
    VERSION_FIELD_NUMBER: _ClassVar[int]
    MINERS_ONLINE_FIELD_NUMBER: _ClassVar[int]
    MAX_MINERS_FIELD_NUMBER: _ClassVar[int]
    ISSUED_AT_MS_FIELD_NUMBER: _ClassVar[int]
    TTL_MS_FIELD_NUMBER: _ClassVar[int]
    SIGNATURE_FIELD_NUMBER: _ClassVar[int]
    node_id: str
    peer_id: str
    multiaddrs: _containers.RepeatedScalarFieldContainer[str]
    grpc_endpoint: str
    version: str
    miners_online: int
    max_miners: int
    issued_at_ms: int
    ttl_ms: int
    signature: bytes
    def __init__(self, node_id: _Optional[str] = ..., peer_id: _Optional[str] = ..., multiaddrs: _Optional[_Iterable[str]] = ..., grpc_endpoint: _Optional[str] = ..., version: _Optional[str] = ..., miners_online: _Optional[int] = ..., max_miners: _Optional[int] = ..., issued_at_ms: _Optional[int] = ..., ttl_ms: _Optional[int] = ..., signature: _Optional[bytes] = ...) -> None: ...
