from google.protobuf.internal import containers as _containers
from google.protobuf.internal import enum_type_wrapper as _enum_type_wrapper
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class TaskState(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    TASK_STATE_UNSPECIFIED: _ClassVar[TaskState]
    PULLING: _ClassVar[TaskState]
    STARTING: _ClassVar[TaskState]
    RUNNING: _ClassVar[TaskState]
    EXITED: _ClassVar[TaskState]
    FAILED: _ClassVar[TaskState]
    STOPPED: _ClassVar[TaskState]
    LOST: _ClassVar[TaskState]
TASK_STATE_UNSPECIFIED: TaskState
PULLING: TaskState
STARTING: TaskState
RUNNING: TaskState
EXITED: TaskState
FAILED: TaskState
STOPPED: TaskState
LOST: TaskState

class Empty(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class PingReply(_message.Message):
    __slots__ = ("status",)
    STATUS_FIELD_NUMBER: _ClassVar[int]
    status: str
    def __init__(self, status: _Optional[str] = ...) -> None: ...

class Endpoint(_message.Message):
    __slots__ = ("container_port", "protocol", "host_ip", "host_port", "reach")
    CONTAINER_PORT_FIELD_NUMBER: _ClassVar[int]
    PROTOCOL_FIELD_NUMBER: _ClassVar[int]
    HOST_IP_FIELD_NUMBER: _ClassVar[int]
    HOST_PORT_FIELD_NUMBER: _ClassVar[int]
    REACH_FIELD_NUMBER: _ClassVar[int]
    container_port: int
    protocol: str
    host_ip: str
    host_port: int
    reach: str
    def __init__(self, container_port: _Optional[int] = ..., protocol: _Optional[str] = ..., host_ip: _Optional[str] = ..., host_port: _Optional[int] = ..., reach: _Optional[str] = ...) -> None: ...

class TaskSpec(_message.Message):
    __slots__ = ("image", "env", "command", "cpus", "memory_bytes", "restart")
    class EnvEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: str
        def __init__(self, key: _Optional[str] = ..., value: _Optional[str] = ...) -> None: ...
    IMAGE_FIELD_NUMBER: _ClassVar[int]
    ENV_FIELD_NUMBER: _ClassVar[int]
    COMMAND_FIELD_NUMBER: _ClassVar[int]
    CPUS_FIELD_NUMBER: _ClassVar[int]
    MEMORY_BYTES_FIELD_NUMBER: _ClassVar[int]
    RESTART_FIELD_NUMBER: _ClassVar[int]
    image: str
    env: _containers.ScalarMap[str, str]
    command: _containers.RepeatedScalarFieldContainer[str]
    cpus: float
    memory_bytes: int
    restart: str
    def __init__(self, image: _Optional[str] = ..., env: _Optional[_Mapping[str, str]] = ..., command: _Optional[_Iterable[str]] = ..., cpus: _Optional[float] = ..., memory_bytes: _Optional[int] = ..., restart: _Optional[str] = ...) -> None: ...

class TaskRef(_message.Message):
    __slots__ = ("task_id",)
    TASK_ID_FIELD_NUMBER: _ClassVar[int]
    task_id: str
    def __init__(self, task_id: _Optional[str] = ...) -> None: ...

class TaskInfo(_message.Message):
    __slots__ = ("task_id", "miner_id", "image", "state", "endpoints", "exit_code", "error", "owner", "created_at_ms", "updated_at_ms", "container_id", "has_exit_code", "record")
    TASK_ID_FIELD_NUMBER: _ClassVar[int]
    MINER_ID_FIELD_NUMBER: _ClassVar[int]
    IMAGE_FIELD_NUMBER: _ClassVar[int]
    STATE_FIELD_NUMBER: _ClassVar[int]
    ENDPOINTS_FIELD_NUMBER: _ClassVar[int]
    EXIT_CODE_FIELD_NUMBER: _ClassVar[int]
    ERROR_FIELD_NUMBER: _ClassVar[int]
    OWNER_FIELD_NUMBER: _ClassVar[int]
    CREATED_AT_MS_FIELD_NUMBER: _ClassVar[int]
    UPDATED_AT_MS_FIELD_NUMBER: _ClassVar[int]
    CONTAINER_ID_FIELD_NUMBER: _ClassVar[int]
    HAS_EXIT_CODE_FIELD_NUMBER: _ClassVar[int]
    RECORD_FIELD_NUMBER: _ClassVar[int]
    task_id: str
    miner_id: str
    image: str
    state: TaskState
    endpoints: _containers.RepeatedCompositeFieldContainer[Endpoint]
    exit_code: int
    error: str
    owner: str
    created_at_ms: int
    updated_at_ms: int
    container_id: str
    has_exit_code: bool
    record: str
    def __init__(self, task_id: _Optional[str] = ..., miner_id: _Optional[str] = ..., image: _Optional[str] = ..., state: _Optional[_Union[TaskState, str]] = ..., endpoints: _Optional[_Iterable[_Union[Endpoint, _Mapping]]] = ..., exit_code: _Optional[int] = ..., error: _Optional[str] = ..., owner: _Optional[str] = ..., created_at_ms: _Optional[int] = ..., updated_at_ms: _Optional[int] = ..., container_id: _Optional[str] = ..., has_exit_code: _Optional[bool] = ..., record: _Optional[str] = ...) -> None: ...

class Resources(_message.Message):
    __slots__ = ("cpu_cores", "memory_bytes", "os", "arch", "docker_version", "gpus")
    CPU_CORES_FIELD_NUMBER: _ClassVar[int]
    MEMORY_BYTES_FIELD_NUMBER: _ClassVar[int]
    OS_FIELD_NUMBER: _ClassVar[int]
    ARCH_FIELD_NUMBER: _ClassVar[int]
    DOCKER_VERSION_FIELD_NUMBER: _ClassVar[int]
    GPUS_FIELD_NUMBER: _ClassVar[int]
    cpu_cores: int
    memory_bytes: int
    os: str
    arch: str
    docker_version: str
    gpus: _containers.RepeatedScalarFieldContainer[str]
    def __init__(self, cpu_cores: _Optional[int] = ..., memory_bytes: _Optional[int] = ..., os: _Optional[str] = ..., arch: _Optional[str] = ..., docker_version: _Optional[str] = ..., gpus: _Optional[_Iterable[str]] = ...) -> None: ...

class PullProgress(_message.Message):
    __slots__ = ("image", "current_bytes", "total_bytes", "layers_done", "layers_total", "status")
    IMAGE_FIELD_NUMBER: _ClassVar[int]
    CURRENT_BYTES_FIELD_NUMBER: _ClassVar[int]
    TOTAL_BYTES_FIELD_NUMBER: _ClassVar[int]
    LAYERS_DONE_FIELD_NUMBER: _ClassVar[int]
    LAYERS_TOTAL_FIELD_NUMBER: _ClassVar[int]
    STATUS_FIELD_NUMBER: _ClassVar[int]
    image: str
    current_bytes: int
    total_bytes: int
    layers_done: int
    layers_total: int
    status: str
    def __init__(self, image: _Optional[str] = ..., current_bytes: _Optional[int] = ..., total_bytes: _Optional[int] = ..., layers_done: _Optional[int] = ..., layers_total: _Optional[int] = ..., status: _Optional[str] = ...) -> None: ...

class TaskEvent(_message.Message):
    __slots__ = ("task_id", "task", "progress", "at_ms")
    TASK_ID_FIELD_NUMBER: _ClassVar[int]
    TASK_FIELD_NUMBER: _ClassVar[int]
    PROGRESS_FIELD_NUMBER: _ClassVar[int]
    AT_MS_FIELD_NUMBER: _ClassVar[int]
    task_id: str
    task: TaskInfo
    progress: PullProgress
    at_ms: int
    def __init__(self, task_id: _Optional[str] = ..., task: _Optional[_Union[TaskInfo, _Mapping]] = ..., progress: _Optional[_Union[PullProgress, _Mapping]] = ..., at_ms: _Optional[int] = ...) -> None: ...

class LogsRequest(_message.Message):
    __slots__ = ("task_id", "follow", "tail", "has_tail", "since_ms", "stdout", "stderr")
    TASK_ID_FIELD_NUMBER: _ClassVar[int]
    FOLLOW_FIELD_NUMBER: _ClassVar[int]
    TAIL_FIELD_NUMBER: _ClassVar[int]
    HAS_TAIL_FIELD_NUMBER: _ClassVar[int]
    SINCE_MS_FIELD_NUMBER: _ClassVar[int]
    STDOUT_FIELD_NUMBER: _ClassVar[int]
    STDERR_FIELD_NUMBER: _ClassVar[int]
    task_id: str
    follow: bool
    tail: int
    has_tail: bool
    since_ms: int
    stdout: bool
    stderr: bool
    def __init__(self, task_id: _Optional[str] = ..., follow: _Optional[bool] = ..., tail: _Optional[int] = ..., has_tail: _Optional[bool] = ..., since_ms: _Optional[int] = ..., stdout: _Optional[bool] = ..., stderr: _Optional[bool] = ...) -> None: ...

class LogChunk(_message.Message):
    __slots__ = ("data",)
    DATA_FIELD_NUMBER: _ClassVar[int]
    data: bytes
    def __init__(self, data: _Optional[bytes] = ...) -> None: ...

class MinerRef(_message.Message):
    __slots__ = ("miner_id",)
    MINER_ID_FIELD_NUMBER: _ClassVar[int]
    miner_id: str
    def __init__(self, miner_id: _Optional[str] = ...) -> None: ...

class TaskUsage(_message.Message):
    __slots__ = ("task_id", "cpu_percent", "memory_bytes", "memory_limit", "cpus_limit")
    TASK_ID_FIELD_NUMBER: _ClassVar[int]
    CPU_PERCENT_FIELD_NUMBER: _ClassVar[int]
    MEMORY_BYTES_FIELD_NUMBER: _ClassVar[int]
    MEMORY_LIMIT_FIELD_NUMBER: _ClassVar[int]
    CPUS_LIMIT_FIELD_NUMBER: _ClassVar[int]
    task_id: str
    cpu_percent: float
    memory_bytes: int
    memory_limit: int
    cpus_limit: float
    def __init__(self, task_id: _Optional[str] = ..., cpu_percent: _Optional[float] = ..., memory_bytes: _Optional[int] = ..., memory_limit: _Optional[int] = ..., cpus_limit: _Optional[float] = ...) -> None: ...

class MinerStatusReply(_message.Message):
    __slots__ = ("node_id", "online", "resources", "cpus_allocated", "memory_allocated", "usage", "tasks", "remote_addr", "last_seen_ms", "cpus_offered", "memory_offered")
    NODE_ID_FIELD_NUMBER: _ClassVar[int]
    ONLINE_FIELD_NUMBER: _ClassVar[int]
    RESOURCES_FIELD_NUMBER: _ClassVar[int]
    CPUS_ALLOCATED_FIELD_NUMBER: _ClassVar[int]
    MEMORY_ALLOCATED_FIELD_NUMBER: _ClassVar[int]
    USAGE_FIELD_NUMBER: _ClassVar[int]
    TASKS_FIELD_NUMBER: _ClassVar[int]
    REMOTE_ADDR_FIELD_NUMBER: _ClassVar[int]
    LAST_SEEN_MS_FIELD_NUMBER: _ClassVar[int]
    CPUS_OFFERED_FIELD_NUMBER: _ClassVar[int]
    MEMORY_OFFERED_FIELD_NUMBER: _ClassVar[int]
    node_id: str
    online: bool
    resources: Resources
    cpus_allocated: float
    memory_allocated: int
    usage: _containers.RepeatedCompositeFieldContainer[TaskUsage]
    tasks: _containers.RepeatedCompositeFieldContainer[TaskInfo]
    remote_addr: str
    last_seen_ms: int
    cpus_offered: float
    memory_offered: int
    def __init__(self, node_id: _Optional[str] = ..., online: _Optional[bool] = ..., resources: _Optional[_Union[Resources, _Mapping]] = ..., cpus_allocated: _Optional[float] = ..., memory_allocated: _Optional[int] = ..., usage: _Optional[_Iterable[_Union[TaskUsage, _Mapping]]] = ..., tasks: _Optional[_Iterable[_Union[TaskInfo, _Mapping]]] = ..., remote_addr: _Optional[str] = ..., last_seen_ms: _Optional[int] = ..., cpus_offered: _Optional[float] = ..., memory_offered: _Optional[int] = ...) -> None: ...
