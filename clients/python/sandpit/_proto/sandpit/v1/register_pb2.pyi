import datetime

from google.protobuf import timestamp_pb2 as _timestamp_pb2
from google.protobuf.internal import containers as _containers
from google.protobuf.internal import enum_type_wrapper as _enum_type_wrapper
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class ExperimentStatus(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    EXPERIMENT_STATUS_UNSPECIFIED: _ClassVar[ExperimentStatus]
    EXPERIMENT_STATUS_PROPOSED: _ClassVar[ExperimentStatus]
    EXPERIMENT_STATUS_APPROVED: _ClassVar[ExperimentStatus]
    EXPERIMENT_STATUS_REJECTED: _ClassVar[ExperimentStatus]
    EXPERIMENT_STATUS_CLOSED: _ClassVar[ExperimentStatus]

class ExperimentOutcome(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    EXPERIMENT_OUTCOME_UNSPECIFIED: _ClassVar[ExperimentOutcome]
    EXPERIMENT_OUTCOME_SUCCEEDED: _ClassVar[ExperimentOutcome]
    EXPERIMENT_OUTCOME_FAILED: _ClassVar[ExperimentOutcome]
    EXPERIMENT_OUTCOME_ABANDONED: _ClassVar[ExperimentOutcome]
EXPERIMENT_STATUS_UNSPECIFIED: ExperimentStatus
EXPERIMENT_STATUS_PROPOSED: ExperimentStatus
EXPERIMENT_STATUS_APPROVED: ExperimentStatus
EXPERIMENT_STATUS_REJECTED: ExperimentStatus
EXPERIMENT_STATUS_CLOSED: ExperimentStatus
EXPERIMENT_OUTCOME_UNSPECIFIED: ExperimentOutcome
EXPERIMENT_OUTCOME_SUCCEEDED: ExperimentOutcome
EXPERIMENT_OUTCOME_FAILED: ExperimentOutcome
EXPERIMENT_OUTCOME_ABANDONED: ExperimentOutcome

class Risk(_message.Message):
    __slots__ = ("description", "likelihood", "impact", "mitigation", "owner")
    DESCRIPTION_FIELD_NUMBER: _ClassVar[int]
    LIKELIHOOD_FIELD_NUMBER: _ClassVar[int]
    IMPACT_FIELD_NUMBER: _ClassVar[int]
    MITIGATION_FIELD_NUMBER: _ClassVar[int]
    OWNER_FIELD_NUMBER: _ClassVar[int]
    description: str
    likelihood: str
    impact: str
    mitigation: str
    owner: str
    def __init__(self, description: _Optional[str] = ..., likelihood: _Optional[str] = ..., impact: _Optional[str] = ..., mitigation: _Optional[str] = ..., owner: _Optional[str] = ...) -> None: ...

class Approval(_message.Message):
    __slots__ = ("approver", "time", "decision", "conditions", "approver_team")
    APPROVER_FIELD_NUMBER: _ClassVar[int]
    TIME_FIELD_NUMBER: _ClassVar[int]
    DECISION_FIELD_NUMBER: _ClassVar[int]
    CONDITIONS_FIELD_NUMBER: _ClassVar[int]
    APPROVER_TEAM_FIELD_NUMBER: _ClassVar[int]
    approver: str
    time: _timestamp_pb2.Timestamp
    decision: str
    conditions: str
    approver_team: str
    def __init__(self, approver: _Optional[str] = ..., time: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., decision: _Optional[str] = ..., conditions: _Optional[str] = ..., approver_team: _Optional[str] = ...) -> None: ...

class Experiment(_message.Message):
    __slots__ = ("id", "title", "team", "owner", "purpose", "ai_tools", "models", "classification", "datasets", "risks", "status", "approvals", "outcome", "lessons_learnt", "created_at", "planned_end", "closed_at", "closed_by", "closed_by_team")
    ID_FIELD_NUMBER: _ClassVar[int]
    TITLE_FIELD_NUMBER: _ClassVar[int]
    TEAM_FIELD_NUMBER: _ClassVar[int]
    OWNER_FIELD_NUMBER: _ClassVar[int]
    PURPOSE_FIELD_NUMBER: _ClassVar[int]
    AI_TOOLS_FIELD_NUMBER: _ClassVar[int]
    MODELS_FIELD_NUMBER: _ClassVar[int]
    CLASSIFICATION_FIELD_NUMBER: _ClassVar[int]
    DATASETS_FIELD_NUMBER: _ClassVar[int]
    RISKS_FIELD_NUMBER: _ClassVar[int]
    STATUS_FIELD_NUMBER: _ClassVar[int]
    APPROVALS_FIELD_NUMBER: _ClassVar[int]
    OUTCOME_FIELD_NUMBER: _ClassVar[int]
    LESSONS_LEARNT_FIELD_NUMBER: _ClassVar[int]
    CREATED_AT_FIELD_NUMBER: _ClassVar[int]
    PLANNED_END_FIELD_NUMBER: _ClassVar[int]
    CLOSED_AT_FIELD_NUMBER: _ClassVar[int]
    CLOSED_BY_FIELD_NUMBER: _ClassVar[int]
    CLOSED_BY_TEAM_FIELD_NUMBER: _ClassVar[int]
    id: str
    title: str
    team: str
    owner: str
    purpose: str
    ai_tools: _containers.RepeatedScalarFieldContainer[str]
    models: _containers.RepeatedScalarFieldContainer[str]
    classification: str
    datasets: _containers.RepeatedScalarFieldContainer[str]
    risks: _containers.RepeatedCompositeFieldContainer[Risk]
    status: ExperimentStatus
    approvals: _containers.RepeatedCompositeFieldContainer[Approval]
    outcome: ExperimentOutcome
    lessons_learnt: str
    created_at: _timestamp_pb2.Timestamp
    planned_end: _timestamp_pb2.Timestamp
    closed_at: _timestamp_pb2.Timestamp
    closed_by: str
    closed_by_team: str
    def __init__(self, id: _Optional[str] = ..., title: _Optional[str] = ..., team: _Optional[str] = ..., owner: _Optional[str] = ..., purpose: _Optional[str] = ..., ai_tools: _Optional[_Iterable[str]] = ..., models: _Optional[_Iterable[str]] = ..., classification: _Optional[str] = ..., datasets: _Optional[_Iterable[str]] = ..., risks: _Optional[_Iterable[_Union[Risk, _Mapping]]] = ..., status: _Optional[_Union[ExperimentStatus, str]] = ..., approvals: _Optional[_Iterable[_Union[Approval, _Mapping]]] = ..., outcome: _Optional[_Union[ExperimentOutcome, str]] = ..., lessons_learnt: _Optional[str] = ..., created_at: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., planned_end: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., closed_at: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., closed_by: _Optional[str] = ..., closed_by_team: _Optional[str] = ...) -> None: ...

class RegisterExperimentRequest(_message.Message):
    __slots__ = ("title", "purpose", "ai_tools", "models", "classification", "datasets", "risks", "planned_end")
    TITLE_FIELD_NUMBER: _ClassVar[int]
    PURPOSE_FIELD_NUMBER: _ClassVar[int]
    AI_TOOLS_FIELD_NUMBER: _ClassVar[int]
    MODELS_FIELD_NUMBER: _ClassVar[int]
    CLASSIFICATION_FIELD_NUMBER: _ClassVar[int]
    DATASETS_FIELD_NUMBER: _ClassVar[int]
    RISKS_FIELD_NUMBER: _ClassVar[int]
    PLANNED_END_FIELD_NUMBER: _ClassVar[int]
    title: str
    purpose: str
    ai_tools: _containers.RepeatedScalarFieldContainer[str]
    models: _containers.RepeatedScalarFieldContainer[str]
    classification: str
    datasets: _containers.RepeatedScalarFieldContainer[str]
    risks: _containers.RepeatedCompositeFieldContainer[Risk]
    planned_end: _timestamp_pb2.Timestamp
    def __init__(self, title: _Optional[str] = ..., purpose: _Optional[str] = ..., ai_tools: _Optional[_Iterable[str]] = ..., models: _Optional[_Iterable[str]] = ..., classification: _Optional[str] = ..., datasets: _Optional[_Iterable[str]] = ..., risks: _Optional[_Iterable[_Union[Risk, _Mapping]]] = ..., planned_end: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ...) -> None: ...

class GetExperimentRequest(_message.Message):
    __slots__ = ("id",)
    ID_FIELD_NUMBER: _ClassVar[int]
    id: str
    def __init__(self, id: _Optional[str] = ...) -> None: ...

class ListExperimentsRequest(_message.Message):
    __slots__ = ("team", "status")
    TEAM_FIELD_NUMBER: _ClassVar[int]
    STATUS_FIELD_NUMBER: _ClassVar[int]
    team: str
    status: ExperimentStatus
    def __init__(self, team: _Optional[str] = ..., status: _Optional[_Union[ExperimentStatus, str]] = ...) -> None: ...

class ListExperimentsResponse(_message.Message):
    __slots__ = ("experiments",)
    EXPERIMENTS_FIELD_NUMBER: _ClassVar[int]
    experiments: _containers.RepeatedCompositeFieldContainer[Experiment]
    def __init__(self, experiments: _Optional[_Iterable[_Union[Experiment, _Mapping]]] = ...) -> None: ...

class DecideExperimentRequest(_message.Message):
    __slots__ = ("id", "conditions")
    ID_FIELD_NUMBER: _ClassVar[int]
    CONDITIONS_FIELD_NUMBER: _ClassVar[int]
    id: str
    conditions: str
    def __init__(self, id: _Optional[str] = ..., conditions: _Optional[str] = ...) -> None: ...

class CloseExperimentRequest(_message.Message):
    __slots__ = ("id", "outcome", "lessons_learnt")
    ID_FIELD_NUMBER: _ClassVar[int]
    OUTCOME_FIELD_NUMBER: _ClassVar[int]
    LESSONS_LEARNT_FIELD_NUMBER: _ClassVar[int]
    id: str
    outcome: ExperimentOutcome
    lessons_learnt: str
    def __init__(self, id: _Optional[str] = ..., outcome: _Optional[_Union[ExperimentOutcome, str]] = ..., lessons_learnt: _Optional[str] = ...) -> None: ...
