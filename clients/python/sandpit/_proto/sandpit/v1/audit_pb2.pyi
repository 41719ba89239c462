import datetime

from google.protobuf import duration_pb2 as _duration_pb2
from google.protobuf import timestamp_pb2 as _timestamp_pb2
from sandpit._proto.sandpit.v1 import register_pb2 as _register_pb2
from sandpit._proto.sandpit.v1 import sandbox_pb2 as _sandbox_pb2
from google.protobuf.internal import containers as _containers
from google.protobuf.internal import enum_type_wrapper as _enum_type_wrapper
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class ExportKind(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    EXPORT_KIND_UNSPECIFIED: _ClassVar[ExportKind]
    EXPORT_KIND_REGISTER: _ClassVar[ExportKind]
    EXPORT_KIND_ACTIVE_SANDBOXES: _ClassVar[ExportKind]
    EXPORT_KIND_ATRS: _ClassVar[ExportKind]
    EXPORT_KIND_LESSONS: _ClassVar[ExportKind]

class ExportFormat(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    EXPORT_FORMAT_UNSPECIFIED: _ClassVar[ExportFormat]
    EXPORT_FORMAT_JSON: _ClassVar[ExportFormat]
    EXPORT_FORMAT_CSV: _ClassVar[ExportFormat]
    EXPORT_FORMAT_MARKDOWN: _ClassVar[ExportFormat]
    EXPORT_FORMAT_HTML: _ClassVar[ExportFormat]
EXPORT_KIND_UNSPECIFIED: ExportKind
EXPORT_KIND_REGISTER: ExportKind
EXPORT_KIND_ACTIVE_SANDBOXES: ExportKind
EXPORT_KIND_ATRS: ExportKind
EXPORT_KIND_LESSONS: ExportKind
EXPORT_FORMAT_UNSPECIFIED: ExportFormat
EXPORT_FORMAT_JSON: ExportFormat
EXPORT_FORMAT_CSV: ExportFormat
EXPORT_FORMAT_MARKDOWN: ExportFormat
EXPORT_FORMAT_HTML: ExportFormat

class AuditEvent(_message.Message):
    __slots__ = ("seq", "time", "actor", "role", "action", "target", "experiment", "sandbox", "outcome", "code", "reason", "source", "prev_hash", "hash")
    SEQ_FIELD_NUMBER: _ClassVar[int]
    TIME_FIELD_NUMBER: _ClassVar[int]
    ACTOR_FIELD_NUMBER: _ClassVar[int]
    ROLE_FIELD_NUMBER: _ClassVar[int]
    ACTION_FIELD_NUMBER: _ClassVar[int]
    TARGET_FIELD_NUMBER: _ClassVar[int]
    EXPERIMENT_FIELD_NUMBER: _ClassVar[int]
    SANDBOX_FIELD_NUMBER: _ClassVar[int]
    OUTCOME_FIELD_NUMBER: _ClassVar[int]
    CODE_FIELD_NUMBER: _ClassVar[int]
    REASON_FIELD_NUMBER: _ClassVar[int]
    SOURCE_FIELD_NUMBER: _ClassVar[int]
    PREV_HASH_FIELD_NUMBER: _ClassVar[int]
    HASH_FIELD_NUMBER: _ClassVar[int]
    seq: int
    time: _timestamp_pb2.Timestamp
    actor: str
    role: str
    action: str
    target: str
    experiment: str
    sandbox: str
    outcome: str
    code: str
    reason: str
    source: str
    prev_hash: str
    hash: str
    def __init__(self, seq: _Optional[int] = ..., time: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., actor: _Optional[str] = ..., role: _Optional[str] = ..., action: _Optional[str] = ..., target: _Optional[str] = ..., experiment: _Optional[str] = ..., sandbox: _Optional[str] = ..., outcome: _Optional[str] = ..., code: _Optional[str] = ..., reason: _Optional[str] = ..., source: _Optional[str] = ..., prev_hash: _Optional[str] = ..., hash: _Optional[str] = ...) -> None: ...

class QueryAuditLogRequest(_message.Message):
    __slots__ = ("since", "until", "actor", "experiment", "sandbox", "action", "page_size", "page_token")
    SINCE_FIELD_NUMBER: _ClassVar[int]
    UNTIL_FIELD_NUMBER: _ClassVar[int]
    ACTOR_FIELD_NUMBER: _ClassVar[int]
    EXPERIMENT_FIELD_NUMBER: _ClassVar[int]
    SANDBOX_FIELD_NUMBER: _ClassVar[int]
    ACTION_FIELD_NUMBER: _ClassVar[int]
    PAGE_SIZE_FIELD_NUMBER: _ClassVar[int]
    PAGE_TOKEN_FIELD_NUMBER: _ClassVar[int]
    since: _timestamp_pb2.Timestamp
    until: _timestamp_pb2.Timestamp
    actor: str
    experiment: str
    sandbox: str
    action: str
    page_size: int
    page_token: str
    def __init__(self, since: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., until: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., actor: _Optional[str] = ..., experiment: _Optional[str] = ..., sandbox: _Optional[str] = ..., action: _Optional[str] = ..., page_size: _Optional[int] = ..., page_token: _Optional[str] = ...) -> None: ...

class QueryAuditLogResponse(_message.Message):
    __slots__ = ("events", "next_page_token")
    EVENTS_FIELD_NUMBER: _ClassVar[int]
    NEXT_PAGE_TOKEN_FIELD_NUMBER: _ClassVar[int]
    events: _containers.RepeatedCompositeFieldContainer[AuditEvent]
    next_page_token: str
    def __init__(self, events: _Optional[_Iterable[_Union[AuditEvent, _Mapping]]] = ..., next_page_token: _Optional[str] = ...) -> None: ...

class WatchAuditLogRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class VerifyAuditLogRequest(_message.Message):
    __slots__ = ("checkpoint", "verifier_key")
    CHECKPOINT_FIELD_NUMBER: _ClassVar[int]
    VERIFIER_KEY_FIELD_NUMBER: _ClassVar[int]
    checkpoint: str
    verifier_key: str
    def __init__(self, checkpoint: _Optional[str] = ..., verifier_key: _Optional[str] = ...) -> None: ...

class VerifyAuditLogResponse(_message.Message):
    __slots__ = ("ok", "records", "first_bad_seq", "reason", "head_hash", "checkpoint_size", "checkpoint_origin", "verifier_key")
    OK_FIELD_NUMBER: _ClassVar[int]
    RECORDS_FIELD_NUMBER: _ClassVar[int]
    FIRST_BAD_SEQ_FIELD_NUMBER: _ClassVar[int]
    REASON_FIELD_NUMBER: _ClassVar[int]
    HEAD_HASH_FIELD_NUMBER: _ClassVar[int]
    CHECKPOINT_SIZE_FIELD_NUMBER: _ClassVar[int]
    CHECKPOINT_ORIGIN_FIELD_NUMBER: _ClassVar[int]
    VERIFIER_KEY_FIELD_NUMBER: _ClassVar[int]
    ok: bool
    records: int
    first_bad_seq: int
    reason: str
    head_hash: str
    checkpoint_size: int
    checkpoint_origin: str
    verifier_key: str
    def __init__(self, ok: bool = ..., records: _Optional[int] = ..., first_bad_seq: _Optional[int] = ..., reason: _Optional[str] = ..., head_hash: _Optional[str] = ..., checkpoint_size: _Optional[int] = ..., checkpoint_origin: _Optional[str] = ..., verifier_key: _Optional[str] = ...) -> None: ...

class GetCheckpointRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class Checkpoint(_message.Message):
    __slots__ = ("note", "origin", "size", "head_hash", "verifier_key")
    NOTE_FIELD_NUMBER: _ClassVar[int]
    ORIGIN_FIELD_NUMBER: _ClassVar[int]
    SIZE_FIELD_NUMBER: _ClassVar[int]
    HEAD_HASH_FIELD_NUMBER: _ClassVar[int]
    VERIFIER_KEY_FIELD_NUMBER: _ClassVar[int]
    note: str
    origin: str
    size: int
    head_hash: str
    verifier_key: str
    def __init__(self, note: _Optional[str] = ..., origin: _Optional[str] = ..., size: _Optional[int] = ..., head_hash: _Optional[str] = ..., verifier_key: _Optional[str] = ...) -> None: ...

class ExportRequest(_message.Message):
    __slots__ = ("kind", "format", "experiment", "since", "until", "include_above_official")
    KIND_FIELD_NUMBER: _ClassVar[int]
    FORMAT_FIELD_NUMBER: _ClassVar[int]
    EXPERIMENT_FIELD_NUMBER: _ClassVar[int]
    SINCE_FIELD_NUMBER: _ClassVar[int]
    UNTIL_FIELD_NUMBER: _ClassVar[int]
    INCLUDE_ABOVE_OFFICIAL_FIELD_NUMBER: _ClassVar[int]
    kind: ExportKind
    format: ExportFormat
    experiment: str
    since: _timestamp_pb2.Timestamp
    until: _timestamp_pb2.Timestamp
    include_above_official: bool
    def __init__(self, kind: _Optional[_Union[ExportKind, str]] = ..., format: _Optional[_Union[ExportFormat, str]] = ..., experiment: _Optional[str] = ..., since: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., until: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., include_above_official: bool = ...) -> None: ...

class ExportChunk(_message.Message):
    __slots__ = ("data",)
    DATA_FIELD_NUMBER: _ClassVar[int]
    data: bytes
    def __init__(self, data: _Optional[bytes] = ...) -> None: ...

class ListActiveExperimentsRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class ActiveSandbox(_message.Message):
    __slots__ = ("sandbox", "time_left")
    SANDBOX_FIELD_NUMBER: _ClassVar[int]
    TIME_LEFT_FIELD_NUMBER: _ClassVar[int]
    sandbox: _sandbox_pb2.Sandbox
    time_left: _duration_pb2.Duration
    def __init__(self, sandbox: _Optional[_Union[_sandbox_pb2.Sandbox, _Mapping]] = ..., time_left: _Optional[_Union[datetime.timedelta, _duration_pb2.Duration, _Mapping]] = ...) -> None: ...

class ActiveExperiment(_message.Message):
    __slots__ = ("experiment", "sandboxes")
    EXPERIMENT_FIELD_NUMBER: _ClassVar[int]
    SANDBOXES_FIELD_NUMBER: _ClassVar[int]
    experiment: _register_pb2.Experiment
    sandboxes: _containers.RepeatedCompositeFieldContainer[ActiveSandbox]
    def __init__(self, experiment: _Optional[_Union[_register_pb2.Experiment, _Mapping]] = ..., sandboxes: _Optional[_Iterable[_Union[ActiveSandbox, _Mapping]]] = ...) -> None: ...

class ListActiveExperimentsResponse(_message.Message):
    __slots__ = ("experiments",)
    EXPERIMENTS_FIELD_NUMBER: _ClassVar[int]
    experiments: _containers.RepeatedCompositeFieldContainer[ActiveExperiment]
    def __init__(self, experiments: _Optional[_Iterable[_Union[ActiveExperiment, _Mapping]]] = ...) -> None: ...
