import datetime

from google.protobuf import duration_pb2 as _duration_pb2
from google.protobuf import timestamp_pb2 as _timestamp_pb2
from google.protobuf.internal import containers as _containers
from google.protobuf.internal import enum_type_wrapper as _enum_type_wrapper
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class SandboxState(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    SANDBOX_STATE_UNSPECIFIED: _ClassVar[SandboxState]
    SANDBOX_STATE_PROVISIONING: _ClassVar[SandboxState]
    SANDBOX_STATE_RUNNING: _ClassVar[SandboxState]
    SANDBOX_STATE_EXITED: _ClassVar[SandboxState]
    SANDBOX_STATE_EXPIRED: _ClassVar[SandboxState]
    SANDBOX_STATE_DELETED: _ClassVar[SandboxState]
    SANDBOX_STATE_FAILED: _ClassVar[SandboxState]
    SANDBOX_STATE_LOST: _ClassVar[SandboxState]
    SANDBOX_STATE_WARM: _ClassVar[SandboxState]

class SandboxEventKind(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    SANDBOX_EVENT_KIND_UNSPECIFIED: _ClassVar[SandboxEventKind]
    SANDBOX_EVENT_KIND_CREATED: _ClassVar[SandboxEventKind]
    SANDBOX_EVENT_KIND_EXTENDED: _ClassVar[SandboxEventKind]
    SANDBOX_EVENT_KIND_EXPIRING_SOON: _ClassVar[SandboxEventKind]
    SANDBOX_EVENT_KIND_EXPIRED: _ClassVar[SandboxEventKind]
    SANDBOX_EVENT_KIND_DELETED: _ClassVar[SandboxEventKind]
    SANDBOX_EVENT_KIND_EXITED: _ClassVar[SandboxEventKind]
    SANDBOX_EVENT_KIND_FAILED: _ClassVar[SandboxEventKind]
    SANDBOX_EVENT_KIND_LOST: _ClassVar[SandboxEventKind]
    SANDBOX_EVENT_KIND_ADOPTED: _ClassVar[SandboxEventKind]
SANDBOX_STATE_UNSPECIFIED: SandboxState
SANDBOX_STATE_PROVISIONING: SandboxState
SANDBOX_STATE_RUNNING: SandboxState
SANDBOX_STATE_EXITED: SandboxState
SANDBOX_STATE_EXPIRED: SandboxState
SANDBOX_STATE_DELETED: SandboxState
SANDBOX_STATE_FAILED: SandboxState
SANDBOX_STATE_LOST: SandboxState
SANDBOX_STATE_WARM: SandboxState
SANDBOX_EVENT_KIND_UNSPECIFIED: SandboxEventKind
SANDBOX_EVENT_KIND_CREATED: SandboxEventKind
SANDBOX_EVENT_KIND_EXTENDED: SandboxEventKind
SANDBOX_EVENT_KIND_EXPIRING_SOON: SandboxEventKind
SANDBOX_EVENT_KIND_EXPIRED: SandboxEventKind
SANDBOX_EVENT_KIND_DELETED: SandboxEventKind
SANDBOX_EVENT_KIND_EXITED: SandboxEventKind
SANDBOX_EVENT_KIND_FAILED: SandboxEventKind
SANDBOX_EVENT_KIND_LOST: SandboxEventKind
SANDBOX_EVENT_KIND_ADOPTED: SandboxEventKind

class Sandbox(_message.Message):
    __slots__ = ("id", "experiment", "owner", "team", "profile", "classification", "image", "state", "created_at", "expires_at", "container_id", "node", "command", "max_expires_at", "state_reason", "ended_at", "exit_code", "oom_killed", "resources", "network_mode", "datasets", "address")
    ID_FIELD_NUMBER: _ClassVar[int]
    EXPERIMENT_FIELD_NUMBER: _ClassVar[int]
    OWNER_FIELD_NUMBER: _ClassVar[int]
    TEAM_FIELD_NUMBER: _ClassVar[int]
    PROFILE_FIELD_NUMBER: _ClassVar[int]
    CLASSIFICATION_FIELD_NUMBER: _ClassVar[int]
    IMAGE_FIELD_NUMBER: _ClassVar[int]
    STATE_FIELD_NUMBER: _ClassVar[int]
    CREATED_AT_FIELD_NUMBER: _ClassVar[int]
    EXPIRES_AT_FIELD_NUMBER: _ClassVar[int]
    CONTAINER_ID_FIELD_NUMBER: _ClassVar[int]
    NODE_FIELD_NUMBER: _ClassVar[int]
    COMMAND_FIELD_NUMBER: _ClassVar[int]
    MAX_EXPIRES_AT_FIELD_NUMBER: _ClassVar[int]
    STATE_REASON_FIELD_NUMBER: _ClassVar[int]
    ENDED_AT_FIELD_NUMBER: _ClassVar[int]
    EXIT_CODE_FIELD_NUMBER: _ClassVar[int]
    OOM_KILLED_FIELD_NUMBER: _ClassVar[int]
    RESOURCES_FIELD_NUMBER: _ClassVar[int]
    NETWORK_MODE_FIELD_NUMBER: _ClassVar[int]
    DATASETS_FIELD_NUMBER: _ClassVar[int]
    ADDRESS_FIELD_NUMBER: _ClassVar[int]
    id: str
    experiment: str
    owner: str
    team: str
    profile: str
    classification: str
    image: str
    state: SandboxState
    created_at: _timestamp_pb2.Timestamp
    expires_at: _timestamp_pb2.Timestamp
    container_id: str
    node: str
    command: _containers.RepeatedScalarFieldContainer[str]
    max_expires_at: _timestamp_pb2.Timestamp
    state_reason: str
    ended_at: _timestamp_pb2.Timestamp
    exit_code: int
    oom_killed: bool
    resources: SandboxResources
    network_mode: str
    datasets: _containers.RepeatedScalarFieldContainer[str]
    address: str
    def __init__(self, id: _Optional[str] = ..., experiment: _Optional[str] = ..., owner: _Optional[str] = ..., team: _Optional[str] = ..., profile: _Optional[str] = ..., classification: _Optional[str] = ..., image: _Optional[str] = ..., state: _Optional[_Union[SandboxState, str]] = ..., created_at: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., expires_at: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., container_id: _Optional[str] = ..., node: _Optional[str] = ..., command: _Optional[_Iterable[str]] = ..., max_expires_at: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., state_reason: _Optional[str] = ..., ended_at: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., exit_code: _Optional[int] = ..., oom_killed: bool = ..., resources: _Optional[_Union[SandboxResources, _Mapping]] = ..., network_mode: _Optional[str] = ..., datasets: _Optional[_Iterable[str]] = ..., address: _Optional[str] = ...) -> None: ...

class SandboxResources(_message.Message):
    __slots__ = ("cpus", "memory_bytes", "pids", "tmpfs_bytes")
    CPUS_FIELD_NUMBER: _ClassVar[int]
    MEMORY_BYTES_FIELD_NUMBER: _ClassVar[int]
    PIDS_FIELD_NUMBER: _ClassVar[int]
    TMPFS_BYTES_FIELD_NUMBER: _ClassVar[int]
    cpus: float
    memory_bytes: int
    pids: int
    tmpfs_bytes: int
    def __init__(self, cpus: _Optional[float] = ..., memory_bytes: _Optional[int] = ..., pids: _Optional[int] = ..., tmpfs_bytes: _Optional[int] = ...) -> None: ...

class CreateSandboxRequest(_message.Message):
    __slots__ = ("experiment", "profile", "classification", "ttl", "image", "datasets", "cpus", "memory_bytes")
    EXPERIMENT_FIELD_NUMBER: _ClassVar[int]
    PROFILE_FIELD_NUMBER: _ClassVar[int]
    CLASSIFICATION_FIELD_NUMBER: _ClassVar[int]
    TTL_FIELD_NUMBER: _ClassVar[int]
    IMAGE_FIELD_NUMBER: _ClassVar[int]
    DATASETS_FIELD_NUMBER: _ClassVar[int]
    CPUS_FIELD_NUMBER: _ClassVar[int]
    MEMORY_BYTES_FIELD_NUMBER: _ClassVar[int]
    experiment: str
    profile: str
    classification: str
    ttl: _duration_pb2.Duration
    image: str
    datasets: _containers.RepeatedScalarFieldContainer[str]
    cpus: float
    memory_bytes: int
    def __init__(self, experiment: _Optional[str] = ..., profile: _Optional[str] = ..., classification: _Optional[str] = ..., ttl: _Optional[_Union[datetime.timedelta, _duration_pb2.Duration, _Mapping]] = ..., image: _Optional[str] = ..., datasets: _Optional[_Iterable[str]] = ..., cpus: _Optional[float] = ..., memory_bytes: _Optional[int] = ...) -> None: ...

class GetSandboxRequest(_message.Message):
    __slots__ = ("id",)
    ID_FIELD_NUMBER: _ClassVar[int]
    id: str
    def __init__(self, id: _Optional[str] = ...) -> None: ...

class ListSandboxesRequest(_message.Message):
    __slots__ = ("include_ended", "experiment")
    INCLUDE_ENDED_FIELD_NUMBER: _ClassVar[int]
    EXPERIMENT_FIELD_NUMBER: _ClassVar[int]
    include_ended: bool
    experiment: str
    def __init__(self, include_ended: bool = ..., experiment: _Optional[str] = ...) -> None: ...

class ListSandboxesResponse(_message.Message):
    __slots__ = ("sandboxes",)
    SANDBOXES_FIELD_NUMBER: _ClassVar[int]
    sandboxes: _containers.RepeatedCompositeFieldContainer[Sandbox]
    def __init__(self, sandboxes: _Optional[_Iterable[_Union[Sandbox, _Mapping]]] = ...) -> None: ...

class ExtendSandboxRequest(_message.Message):
    __slots__ = ("id", "ttl")
    ID_FIELD_NUMBER: _ClassVar[int]
    TTL_FIELD_NUMBER: _ClassVar[int]
    id: str
    ttl: _duration_pb2.Duration
    def __init__(self, id: _Optional[str] = ..., ttl: _Optional[_Union[datetime.timedelta, _duration_pb2.Duration, _Mapping]] = ...) -> None: ...

class DeleteSandboxRequest(_message.Message):
    __slots__ = ("id",)
    ID_FIELD_NUMBER: _ClassVar[int]
    id: str
    def __init__(self, id: _Optional[str] = ...) -> None: ...

class WatchSandboxesRequest(_message.Message):
    __slots__ = ("id", "experiment")
    ID_FIELD_NUMBER: _ClassVar[int]
    EXPERIMENT_FIELD_NUMBER: _ClassVar[int]
    id: str
    experiment: str
    def __init__(self, id: _Optional[str] = ..., experiment: _Optional[str] = ...) -> None: ...

class SandboxEvent(_message.Message):
    __slots__ = ("kind", "time", "sandbox", "message")
    KIND_FIELD_NUMBER: _ClassVar[int]
    TIME_FIELD_NUMBER: _ClassVar[int]
    SANDBOX_FIELD_NUMBER: _ClassVar[int]
    MESSAGE_FIELD_NUMBER: _ClassVar[int]
    kind: SandboxEventKind
    time: _timestamp_pb2.Timestamp
    sandbox: Sandbox
    message: str
    def __init__(self, kind: _Optional[_Union[SandboxEventKind, str]] = ..., time: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., sandbox: _Optional[_Union[Sandbox, _Mapping]] = ..., message: _Optional[str] = ...) -> None: ...

class ExecRequest(_message.Message):
    __slots__ = ("id", "command", "env", "workdir", "timeout", "tty")
    ID_FIELD_NUMBER: _ClassVar[int]
    COMMAND_FIELD_NUMBER: _ClassVar[int]
    ENV_FIELD_NUMBER: _ClassVar[int]
    WORKDIR_FIELD_NUMBER: _ClassVar[int]
    TIMEOUT_FIELD_NUMBER: _ClassVar[int]
    TTY_FIELD_NUMBER: _ClassVar[int]
    id: str
    command: _containers.RepeatedScalarFieldContainer[str]
    env: _containers.RepeatedScalarFieldContainer[str]
    workdir: str
    timeout: _duration_pb2.Duration
    tty: TerminalSize
    def __init__(self, id: _Optional[str] = ..., command: _Optional[_Iterable[str]] = ..., env: _Optional[_Iterable[str]] = ..., workdir: _Optional[str] = ..., timeout: _Optional[_Union[datetime.timedelta, _duration_pb2.Duration, _Mapping]] = ..., tty: _Optional[_Union[TerminalSize, _Mapping]] = ...) -> None: ...

class TerminalSize(_message.Message):
    __slots__ = ("rows", "cols")
    ROWS_FIELD_NUMBER: _ClassVar[int]
    COLS_FIELD_NUMBER: _ClassVar[int]
    rows: int
    cols: int
    def __init__(self, rows: _Optional[int] = ..., cols: _Optional[int] = ...) -> None: ...

class ExecInteractiveRequest(_message.Message):
    __slots__ = ("start", "stdin", "close_stdin", "resize")
    START_FIELD_NUMBER: _ClassVar[int]
    STDIN_FIELD_NUMBER: _ClassVar[int]
    CLOSE_STDIN_FIELD_NUMBER: _ClassVar[int]
    RESIZE_FIELD_NUMBER: _ClassVar[int]
    start: ExecRequest
    stdin: bytes
    close_stdin: bool
    resize: TerminalSize
    def __init__(self, start: _Optional[_Union[ExecRequest, _Mapping]] = ..., stdin: _Optional[bytes] = ..., close_stdin: bool = ..., resize: _Optional[_Union[TerminalSize, _Mapping]] = ...) -> None: ...

class ExecOutput(_message.Message):
    __slots__ = ("stdout", "stderr", "exit_code", "notice")
    STDOUT_FIELD_NUMBER: _ClassVar[int]
    STDERR_FIELD_NUMBER: _ClassVar[int]
    EXIT_CODE_FIELD_NUMBER: _ClassVar[int]
    NOTICE_FIELD_NUMBER: _ClassVar[int]
    stdout: bytes
    stderr: bytes
    exit_code: int
    notice: str
    def __init__(self, stdout: _Optional[bytes] = ..., stderr: _Optional[bytes] = ..., exit_code: _Optional[int] = ..., notice: _Optional[str] = ...) -> None: ...

class PullImageRequest(_message.Message):
    __slots__ = ("profile", "image", "create")
    PROFILE_FIELD_NUMBER: _ClassVar[int]
    IMAGE_FIELD_NUMBER: _ClassVar[int]
    CREATE_FIELD_NUMBER: _ClassVar[int]
    profile: str
    image: str
    create: CreateSandboxRequest
    def __init__(self, profile: _Optional[str] = ..., image: _Optional[str] = ..., create: _Optional[_Union[CreateSandboxRequest, _Mapping]] = ...) -> None: ...

class PullProgress(_message.Message):
    __slots__ = ("status", "layer", "current", "total", "done")
    STATUS_FIELD_NUMBER: _ClassVar[int]
    LAYER_FIELD_NUMBER: _ClassVar[int]
    CURRENT_FIELD_NUMBER: _ClassVar[int]
    TOTAL_FIELD_NUMBER: _ClassVar[int]
    DONE_FIELD_NUMBER: _ClassVar[int]
    status: str
    layer: str
    current: int
    total: int
    done: bool
    def __init__(self, status: _Optional[str] = ..., layer: _Optional[str] = ..., current: _Optional[int] = ..., total: _Optional[int] = ..., done: bool = ...) -> None: ...

class CopyInRequest(_message.Message):
    __slots__ = ("header", "chunk")
    HEADER_FIELD_NUMBER: _ClassVar[int]
    CHUNK_FIELD_NUMBER: _ClassVar[int]
    header: CopyInHeader
    chunk: bytes
    def __init__(self, header: _Optional[_Union[CopyInHeader, _Mapping]] = ..., chunk: _Optional[bytes] = ...) -> None: ...

class CopyInHeader(_message.Message):
    __slots__ = ("id", "path")
    ID_FIELD_NUMBER: _ClassVar[int]
    PATH_FIELD_NUMBER: _ClassVar[int]
    id: str
    path: str
    def __init__(self, id: _Optional[str] = ..., path: _Optional[str] = ...) -> None: ...

class CopyOutRequest(_message.Message):
    __slots__ = ("id", "path")
    ID_FIELD_NUMBER: _ClassVar[int]
    PATH_FIELD_NUMBER: _ClassVar[int]
    id: str
    path: str
    def __init__(self, id: _Optional[str] = ..., path: _Optional[str] = ...) -> None: ...

class CopyOutChunk(_message.Message):
    __slots__ = ("chunk", "summary")
    CHUNK_FIELD_NUMBER: _ClassVar[int]
    SUMMARY_FIELD_NUMBER: _ClassVar[int]
    chunk: bytes
    summary: FileTransfer
    def __init__(self, chunk: _Optional[bytes] = ..., summary: _Optional[_Union[FileTransfer, _Mapping]] = ...) -> None: ...

class PortForwardRequest(_message.Message):
    __slots__ = ("header", "data")
    HEADER_FIELD_NUMBER: _ClassVar[int]
    DATA_FIELD_NUMBER: _ClassVar[int]
    header: PortForwardHeader
    data: bytes
    def __init__(self, header: _Optional[_Union[PortForwardHeader, _Mapping]] = ..., data: _Optional[bytes] = ...) -> None: ...

class PortForwardHeader(_message.Message):
    __slots__ = ("id", "port")
    ID_FIELD_NUMBER: _ClassVar[int]
    PORT_FIELD_NUMBER: _ClassVar[int]
    id: str
    port: int
    def __init__(self, id: _Optional[str] = ..., port: _Optional[int] = ...) -> None: ...

class PortForwardResponse(_message.Message):
    __slots__ = ("data", "notice")
    DATA_FIELD_NUMBER: _ClassVar[int]
    NOTICE_FIELD_NUMBER: _ClassVar[int]
    data: bytes
    notice: str
    def __init__(self, data: _Optional[bytes] = ..., notice: _Optional[str] = ...) -> None: ...

class FileTransfer(_message.Message):
    __slots__ = ("sandbox_id", "path", "size_bytes", "sha256")
    SANDBOX_ID_FIELD_NUMBER: _ClassVar[int]
    PATH_FIELD_NUMBER: _ClassVar[int]
    SIZE_BYTES_FIELD_NUMBER: _ClassVar[int]
    SHA256_FIELD_NUMBER: _ClassVar[int]
    sandbox_id: str
    path: str
    size_bytes: int
    sha256: str
    def __init__(self, sandbox_id: _Optional[str] = ..., path: _Optional[str] = ..., size_bytes: _Optional[int] = ..., sha256: _Optional[str] = ...) -> None: ...
