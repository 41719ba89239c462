import datetime

from google.protobuf import duration_pb2 as _duration_pb2
from google.protobuf.internal import containers as _containers
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class Profile(_message.Message):
    __slots__ = ("name", "description", "max_classification", "requires_approval", "images", "command", "resources", "lifetime", "network", "datasets", "file_transfer", "warm_pool_size", "source", "isolation", "unavailable", "port_forward_ports", "refuse_overdue_risk")
    NAME_FIELD_NUMBER: _ClassVar[int]
    DESCRIPTION_FIELD_NUMBER: _ClassVar[int]
    MAX_CLASSIFICATION_FIELD_NUMBER: _ClassVar[int]
    REQUIRES_APPROVAL_FIELD_NUMBER: _ClassVar[int]
    IMAGES_FIELD_NUMBER: _ClassVar[int]
    COMMAND_FIELD_NUMBER: _ClassVar[int]
    RESOURCES_FIELD_NUMBER: _ClassVar[int]
    LIFETIME_FIELD_NUMBER: _ClassVar[int]
    NETWORK_FIELD_NUMBER: _ClassVar[int]
    DATASETS_FIELD_NUMBER: _ClassVar[int]
    FILE_TRANSFER_FIELD_NUMBER: _ClassVar[int]
    WARM_POOL_SIZE_FIELD_NUMBER: _ClassVar[int]
    SOURCE_FIELD_NUMBER: _ClassVar[int]
    ISOLATION_FIELD_NUMBER: _ClassVar[int]
    UNAVAILABLE_FIELD_NUMBER: _ClassVar[int]
    PORT_FORWARD_PORTS_FIELD_NUMBER: _ClassVar[int]
    REFUSE_OVERDUE_RISK_FIELD_NUMBER: _ClassVar[int]
    name: str
    description: str
    max_classification: str
    requires_approval: bool
    images: _containers.RepeatedScalarFieldContainer[str]
    command: _containers.RepeatedScalarFieldContainer[str]
    resources: ProfileResources
    lifetime: ProfileLifetime
    network: ProfileNetwork
    datasets: _containers.RepeatedScalarFieldContainer[str]
    file_transfer: ProfileFileTransfer
    warm_pool_size: int
    source: str
    isolation: str
    unavailable: str
    port_forward_ports: _containers.RepeatedScalarFieldContainer[int]
    refuse_overdue_risk: str
    def __init__(self, name: _Optional[str] = ..., description: _Optional[str] = ..., max_classification: _Optional[str] = ..., requires_approval: bool = ..., images: _Optional[_Iterable[str]] = ..., command: _Optional[_Iterable[str]] = ..., resources: _Optional[_Union[ProfileResources, _Mapping]] = ..., lifetime: _Optional[_Union[ProfileLifetime, _Mapping]] = ..., network: _Optional[_Union[ProfileNetwork, _Mapping]] = ..., datasets: _Optional[_Iterable[str]] = ..., file_transfer: _Optional[_Union[ProfileFileTransfer, _Mapping]] = ..., warm_pool_size: _Optional[int] = ..., source: _Optional[str] = ..., isolation: _Optional[str] = ..., unavailable: _Optional[str] = ..., port_forward_ports: _Optional[_Iterable[int]] = ..., refuse_overdue_risk: _Optional[str] = ...) -> None: ...

class ProfileResources(_message.Message):
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

class ProfileLifetime(_message.Message):
    __slots__ = ("default_ttl", "max_ttl", "max_lifetime")
    DEFAULT_TTL_FIELD_NUMBER: _ClassVar[int]
    MAX_TTL_FIELD_NUMBER: _ClassVar[int]
    MAX_LIFETIME_FIELD_NUMBER: _ClassVar[int]
    default_ttl: _duration_pb2.Duration
    max_ttl: _duration_pb2.Duration
    max_lifetime: _duration_pb2.Duration
    def __init__(self, default_ttl: _Optional[_Union[datetime.timedelta, _duration_pb2.Duration, _Mapping]] = ..., max_ttl: _Optional[_Union[datetime.timedelta, _duration_pb2.Duration, _Mapping]] = ..., max_lifetime: _Optional[_Union[datetime.timedelta, _duration_pb2.Duration, _Mapping]] = ...) -> None: ...

class ProfileNetwork(_message.Message):
    __slots__ = ("mode", "allow")
    MODE_FIELD_NUMBER: _ClassVar[int]
    ALLOW_FIELD_NUMBER: _ClassVar[int]
    mode: str
    allow: _containers.RepeatedCompositeFieldContainer[Destination]
    def __init__(self, mode: _Optional[str] = ..., allow: _Optional[_Iterable[_Union[Destination, _Mapping]]] = ...) -> None: ...

class Destination(_message.Message):
    __slots__ = ("host", "port", "residency")
    HOST_FIELD_NUMBER: _ClassVar[int]
    PORT_FIELD_NUMBER: _ClassVar[int]
    RESIDENCY_FIELD_NUMBER: _ClassVar[int]
    host: str
    port: int
    residency: str
    def __init__(self, host: _Optional[str] = ..., port: _Optional[int] = ..., residency: _Optional[str] = ...) -> None: ...

class ProfileFileTransfer(_message.Message):
    __slots__ = ("copy_in", "copy_out", "max_exec_output_bytes")
    COPY_IN_FIELD_NUMBER: _ClassVar[int]
    COPY_OUT_FIELD_NUMBER: _ClassVar[int]
    MAX_EXEC_OUTPUT_BYTES_FIELD_NUMBER: _ClassVar[int]
    copy_in: bool
    copy_out: bool
    max_exec_output_bytes: int
    def __init__(self, copy_in: bool = ..., copy_out: bool = ..., max_exec_output_bytes: _Optional[int] = ...) -> None: ...

class ListProfilesRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class ListProfilesResponse(_message.Message):
    __slots__ = ("profiles",)
    PROFILES_FIELD_NUMBER: _ClassVar[int]
    profiles: _containers.RepeatedCompositeFieldContainer[Profile]
    def __init__(self, profiles: _Optional[_Iterable[_Union[Profile, _Mapping]]] = ...) -> None: ...

class GetProfileRequest(_message.Message):
    __slots__ = ("name",)
    NAME_FIELD_NUMBER: _ClassVar[int]
    name: str
    def __init__(self, name: _Optional[str] = ...) -> None: ...

class ValidateProfileRequest(_message.Message):
    __slots__ = ("file_name", "content")
    FILE_NAME_FIELD_NUMBER: _ClassVar[int]
    CONTENT_FIELD_NUMBER: _ClassVar[int]
    file_name: str
    content: str
    def __init__(self, file_name: _Optional[str] = ..., content: _Optional[str] = ...) -> None: ...

class ProfileError(_message.Message):
    __slots__ = ("file", "field", "reason")
    FILE_FIELD_NUMBER: _ClassVar[int]
    FIELD_FIELD_NUMBER: _ClassVar[int]
    REASON_FIELD_NUMBER: _ClassVar[int]
    file: str
    field: str
    reason: str
    def __init__(self, file: _Optional[str] = ..., field: _Optional[str] = ..., reason: _Optional[str] = ...) -> None: ...

class ValidateProfileResponse(_message.Message):
    __slots__ = ("valid", "errors", "profile")
    VALID_FIELD_NUMBER: _ClassVar[int]
    ERRORS_FIELD_NUMBER: _ClassVar[int]
    PROFILE_FIELD_NUMBER: _ClassVar[int]
    valid: bool
    errors: _containers.RepeatedCompositeFieldContainer[ProfileError]
    profile: Profile
    def __init__(self, valid: bool = ..., errors: _Optional[_Iterable[_Union[ProfileError, _Mapping]]] = ..., profile: _Optional[_Union[Profile, _Mapping]] = ...) -> None: ...

class ReloadProfilesRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class ReloadProfilesResponse(_message.Message):
    __slots__ = ("applied", "loaded", "errors")
    APPLIED_FIELD_NUMBER: _ClassVar[int]
    LOADED_FIELD_NUMBER: _ClassVar[int]
    ERRORS_FIELD_NUMBER: _ClassVar[int]
    applied: bool
    loaded: _containers.RepeatedScalarFieldContainer[str]
    errors: _containers.RepeatedCompositeFieldContainer[ProfileError]
    def __init__(self, applied: bool = ..., loaded: _Optional[_Iterable[str]] = ..., errors: _Optional[_Iterable[_Union[ProfileError, _Mapping]]] = ...) -> None: ...

class ListPoolsRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class PoolStatus(_message.Message):
    __slots__ = ("profile", "target", "warm", "claims", "misses")
    PROFILE_FIELD_NUMBER: _ClassVar[int]
    TARGET_FIELD_NUMBER: _ClassVar[int]
    WARM_FIELD_NUMBER: _ClassVar[int]
    CLAIMS_FIELD_NUMBER: _ClassVar[int]
    MISSES_FIELD_NUMBER: _ClassVar[int]
    profile: str
    target: int
    warm: int
    claims: int
    misses: int
    def __init__(self, profile: _Optional[str] = ..., target: _Optional[int] = ..., warm: _Optional[int] = ..., claims: _Optional[int] = ..., misses: _Optional[int] = ...) -> None: ...

class ListPoolsResponse(_message.Message):
    __slots__ = ("pools",)
    POOLS_FIELD_NUMBER: _ClassVar[int]
    pools: _containers.RepeatedCompositeFieldContainer[PoolStatus]
    def __init__(self, pools: _Optional[_Iterable[_Union[PoolStatus, _Mapping]]] = ...) -> None: ...
