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
    __slots__ = ("description", "likelihood", "impact", "mitigation", "owner", "id", "status", "review_by", "overdue", "history")
    DESCRIPTION_FIELD_NUMBER: _ClassVar[int]
    LIKELIHOOD_FIELD_NUMBER: _ClassVar[int]
    IMPACT_FIELD_NUMBER: _ClassVar[int]
    MITIGATION_FIELD_NUMBER: _ClassVar[int]
    OWNER_FIELD_NUMBER: _ClassVar[int]
    ID_FIELD_NUMBER: _ClassVar[int]
    STATUS_FIELD_NUMBER: _ClassVar[int]
    REVIEW_BY_FIELD_NUMBER: _ClassVar[int]
    OVERDUE_FIELD_NUMBER: _ClassVar[int]
    HISTORY_FIELD_NUMBER: _ClassVar[int]
    description: str
    likelihood: str
    impact: str
    mitigation: str
    owner: str
    id: str
    status: str
    review_by: _timestamp_pb2.Timestamp
    overdue: bool
    history: _containers.RepeatedCompositeFieldContainer[RiskUpdate]
    def __init__(self, description: _Optional[str] = ..., likelihood: _Optional[str] = ..., impact: _Optional[str] = ..., mitigation: _Optional[str] = ..., owner: _Optional[str] = ..., id: _Optional[str] = ..., status: _Optional[str] = ..., review_by: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., overdue: bool = ..., history: _Optional[_Iterable[_Union[RiskUpdate, _Mapping]]] = ...) -> None: ...

class RiskUpdate(_message.Message):
    __slots__ = ("by", "team", "time", "changes", "reason")
    BY_FIELD_NUMBER: _ClassVar[int]
    TEAM_FIELD_NUMBER: _ClassVar[int]
    TIME_FIELD_NUMBER: _ClassVar[int]
    CHANGES_FIELD_NUMBER: _ClassVar[int]
    REASON_FIELD_NUMBER: _ClassVar[int]
    by: str
    team: str
    time: _timestamp_pb2.Timestamp
    changes: str
    reason: str
    def __init__(self, by: _Optional[str] = ..., team: _Optional[str] = ..., time: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., changes: _Optional[str] = ..., reason: _Optional[str] = ...) -> None: ...

class Approval(_message.Message):
    __slots__ = ("approver", "time", "decision", "conditions", "approver_team", "function")
    APPROVER_FIELD_NUMBER: _ClassVar[int]
    TIME_FIELD_NUMBER: _ClassVar[int]
    DECISION_FIELD_NUMBER: _ClassVar[int]
    CONDITIONS_FIELD_NUMBER: _ClassVar[int]
    APPROVER_TEAM_FIELD_NUMBER: _ClassVar[int]
    FUNCTION_FIELD_NUMBER: _ClassVar[int]
    approver: str
    time: _timestamp_pb2.Timestamp
    decision: str
    conditions: str
    approver_team: str
    function: str
    def __init__(self, approver: _Optional[str] = ..., time: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., decision: _Optional[str] = ..., conditions: _Optional[str] = ..., approver_team: _Optional[str] = ..., function: _Optional[str] = ...) -> None: ...

class Assessment(_message.Message):
    __slots__ = ("kind", "status", "reference", "date", "recorded_by", "recorded_at")
    KIND_FIELD_NUMBER: _ClassVar[int]
    STATUS_FIELD_NUMBER: _ClassVar[int]
    REFERENCE_FIELD_NUMBER: _ClassVar[int]
    DATE_FIELD_NUMBER: _ClassVar[int]
    RECORDED_BY_FIELD_NUMBER: _ClassVar[int]
    RECORDED_AT_FIELD_NUMBER: _ClassVar[int]
    kind: str
    status: str
    reference: str
    date: _timestamp_pb2.Timestamp
    recorded_by: str
    recorded_at: _timestamp_pb2.Timestamp
    def __init__(self, kind: _Optional[str] = ..., status: _Optional[str] = ..., reference: _Optional[str] = ..., date: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., recorded_by: _Optional[str] = ..., recorded_at: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ...) -> None: ...

class Experiment(_message.Message):
    __slots__ = ("id", "title", "team", "owner", "purpose", "ai_tools", "models", "classification", "datasets", "risks", "status", "approvals", "outcome", "lessons_learnt", "created_at", "planned_end", "closed_at", "closed_by", "closed_by_team", "required_functions", "pending_functions", "assessments", "senior_responsible_owner", "phase", "function", "region", "transparency", "what_worked", "what_did_not", "artefacts")
    class TransparencyEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: str
        def __init__(self, key: _Optional[str] = ..., value: _Optional[str] = ...) -> None: ...
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
    REQUIRED_FUNCTIONS_FIELD_NUMBER: _ClassVar[int]
    PENDING_FUNCTIONS_FIELD_NUMBER: _ClassVar[int]
    ASSESSMENTS_FIELD_NUMBER: _ClassVar[int]
    SENIOR_RESPONSIBLE_OWNER_FIELD_NUMBER: _ClassVar[int]
    PHASE_FIELD_NUMBER: _ClassVar[int]
    FUNCTION_FIELD_NUMBER: _ClassVar[int]
    REGION_FIELD_NUMBER: _ClassVar[int]
    TRANSPARENCY_FIELD_NUMBER: _ClassVar[int]
    WHAT_WORKED_FIELD_NUMBER: _ClassVar[int]
    WHAT_DID_NOT_FIELD_NUMBER: _ClassVar[int]
    ARTEFACTS_FIELD_NUMBER: _ClassVar[int]
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
    required_functions: _containers.RepeatedScalarFieldContainer[str]
    pending_functions: _containers.RepeatedScalarFieldContainer[str]
    assessments: _containers.RepeatedCompositeFieldContainer[Assessment]
    senior_responsible_owner: str
    phase: str
    function: str
    region: str
    transparency: _containers.ScalarMap[str, str]
    what_worked: str
    what_did_not: str
    artefacts: _containers.RepeatedScalarFieldContainer[str]
    def __init__(self, id: _Optional[str] = ..., title: _Optional[str] = ..., team: _Optional[str] = ..., owner: _Optional[str] = ..., purpose: _Optional[str] = ..., ai_tools: _Optional[_Iterable[str]] = ..., models: _Optional[_Iterable[str]] = ..., classification: _Optional[str] = ..., datasets: _Optional[_Iterable[str]] = ..., risks: _Optional[_Iterable[_Union[Risk, _Mapping]]] = ..., status: _Optional[_Union[ExperimentStatus, str]] = ..., approvals: _Optional[_Iterable[_Union[Approval, _Mapping]]] = ..., outcome: _Optional[_Union[ExperimentOutcome, str]] = ..., lessons_learnt: _Optional[str] = ..., created_at: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., planned_end: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., closed_at: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., closed_by: _Optional[str] = ..., closed_by_team: _Optional[str] = ..., required_functions: _Optional[_Iterable[str]] = ..., pending_functions: _Optional[_Iterable[str]] = ..., assessments: _Optional[_Iterable[_Union[Assessment, _Mapping]]] = ..., senior_responsible_owner: _Optional[str] = ..., phase: _Optional[str] = ..., function: _Optional[str] = ..., region: _Optional[str] = ..., transparency: _Optional[_Mapping[str, str]] = ..., what_worked: _Optional[str] = ..., what_did_not: _Optional[str] = ..., artefacts: _Optional[_Iterable[str]] = ...) -> None: ...

class RegisterExperimentRequest(_message.Message):
    __slots__ = ("title", "purpose", "ai_tools", "models", "classification", "datasets", "risks", "planned_end", "senior_responsible_owner", "phase", "function", "region")
    TITLE_FIELD_NUMBER: _ClassVar[int]
    PURPOSE_FIELD_NUMBER: _ClassVar[int]
    AI_TOOLS_FIELD_NUMBER: _ClassVar[int]
    MODELS_FIELD_NUMBER: _ClassVar[int]
    CLASSIFICATION_FIELD_NUMBER: _ClassVar[int]
    DATASETS_FIELD_NUMBER: _ClassVar[int]
    RISKS_FIELD_NUMBER: _ClassVar[int]
    PLANNED_END_FIELD_NUMBER: _ClassVar[int]
    SENIOR_RESPONSIBLE_OWNER_FIELD_NUMBER: _ClassVar[int]
    PHASE_FIELD_NUMBER: _ClassVar[int]
    FUNCTION_FIELD_NUMBER: _ClassVar[int]
    REGION_FIELD_NUMBER: _ClassVar[int]
    title: str
    purpose: str
    ai_tools: _containers.RepeatedScalarFieldContainer[str]
    models: _containers.RepeatedScalarFieldContainer[str]
    classification: str
    datasets: _containers.RepeatedScalarFieldContainer[str]
    risks: _containers.RepeatedCompositeFieldContainer[Risk]
    planned_end: _timestamp_pb2.Timestamp
    senior_responsible_owner: str
    phase: str
    function: str
    region: str
    def __init__(self, title: _Optional[str] = ..., purpose: _Optional[str] = ..., ai_tools: _Optional[_Iterable[str]] = ..., models: _Optional[_Iterable[str]] = ..., classification: _Optional[str] = ..., datasets: _Optional[_Iterable[str]] = ..., risks: _Optional[_Iterable[_Union[Risk, _Mapping]]] = ..., planned_end: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., senior_responsible_owner: _Optional[str] = ..., phase: _Optional[str] = ..., function: _Optional[str] = ..., region: _Optional[str] = ...) -> None: ...

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
    __slots__ = ("id", "conditions", "function")
    ID_FIELD_NUMBER: _ClassVar[int]
    CONDITIONS_FIELD_NUMBER: _ClassVar[int]
    FUNCTION_FIELD_NUMBER: _ClassVar[int]
    id: str
    conditions: str
    function: str
    def __init__(self, id: _Optional[str] = ..., conditions: _Optional[str] = ..., function: _Optional[str] = ...) -> None: ...

class CloseExperimentRequest(_message.Message):
    __slots__ = ("id", "outcome", "lessons_learnt", "what_worked", "what_did_not", "artefacts")
    ID_FIELD_NUMBER: _ClassVar[int]
    OUTCOME_FIELD_NUMBER: _ClassVar[int]
    LESSONS_LEARNT_FIELD_NUMBER: _ClassVar[int]
    WHAT_WORKED_FIELD_NUMBER: _ClassVar[int]
    WHAT_DID_NOT_FIELD_NUMBER: _ClassVar[int]
    ARTEFACTS_FIELD_NUMBER: _ClassVar[int]
    id: str
    outcome: ExperimentOutcome
    lessons_learnt: str
    what_worked: str
    what_did_not: str
    artefacts: _containers.RepeatedScalarFieldContainer[str]
    def __init__(self, id: _Optional[str] = ..., outcome: _Optional[_Union[ExperimentOutcome, str]] = ..., lessons_learnt: _Optional[str] = ..., what_worked: _Optional[str] = ..., what_did_not: _Optional[str] = ..., artefacts: _Optional[_Iterable[str]] = ...) -> None: ...

class AddRiskRequest(_message.Message):
    __slots__ = ("experiment", "risk", "reason")
    EXPERIMENT_FIELD_NUMBER: _ClassVar[int]
    RISK_FIELD_NUMBER: _ClassVar[int]
    REASON_FIELD_NUMBER: _ClassVar[int]
    experiment: str
    risk: Risk
    reason: str
    def __init__(self, experiment: _Optional[str] = ..., risk: _Optional[_Union[Risk, _Mapping]] = ..., reason: _Optional[str] = ...) -> None: ...

class UpdateRiskRequest(_message.Message):
    __slots__ = ("experiment", "risk_id", "reason", "status", "likelihood", "impact", "mitigation", "owner")
    EXPERIMENT_FIELD_NUMBER: _ClassVar[int]
    RISK_ID_FIELD_NUMBER: _ClassVar[int]
    REASON_FIELD_NUMBER: _ClassVar[int]
    STATUS_FIELD_NUMBER: _ClassVar[int]
    LIKELIHOOD_FIELD_NUMBER: _ClassVar[int]
    IMPACT_FIELD_NUMBER: _ClassVar[int]
    MITIGATION_FIELD_NUMBER: _ClassVar[int]
    OWNER_FIELD_NUMBER: _ClassVar[int]
    experiment: str
    risk_id: str
    reason: str
    status: str
    likelihood: str
    impact: str
    mitigation: str
    owner: str
    def __init__(self, experiment: _Optional[str] = ..., risk_id: _Optional[str] = ..., reason: _Optional[str] = ..., status: _Optional[str] = ..., likelihood: _Optional[str] = ..., impact: _Optional[str] = ..., mitigation: _Optional[str] = ..., owner: _Optional[str] = ...) -> None: ...

class RecordAssessmentRequest(_message.Message):
    __slots__ = ("experiment", "kind", "status", "reference", "date")
    EXPERIMENT_FIELD_NUMBER: _ClassVar[int]
    KIND_FIELD_NUMBER: _ClassVar[int]
    STATUS_FIELD_NUMBER: _ClassVar[int]
    REFERENCE_FIELD_NUMBER: _ClassVar[int]
    DATE_FIELD_NUMBER: _ClassVar[int]
    experiment: str
    kind: str
    status: str
    reference: str
    date: _timestamp_pb2.Timestamp
    def __init__(self, experiment: _Optional[str] = ..., kind: _Optional[str] = ..., status: _Optional[str] = ..., reference: _Optional[str] = ..., date: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ...) -> None: ...

class UpdateTransparencyRequest(_message.Message):
    __slots__ = ("experiment", "senior_responsible_owner", "phase", "function", "region", "transparency")
    class TransparencyEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: str
        def __init__(self, key: _Optional[str] = ..., value: _Optional[str] = ...) -> None: ...
    EXPERIMENT_FIELD_NUMBER: _ClassVar[int]
    SENIOR_RESPONSIBLE_OWNER_FIELD_NUMBER: _ClassVar[int]
    PHASE_FIELD_NUMBER: _ClassVar[int]
    FUNCTION_FIELD_NUMBER: _ClassVar[int]
    REGION_FIELD_NUMBER: _ClassVar[int]
    TRANSPARENCY_FIELD_NUMBER: _ClassVar[int]
    experiment: str
    senior_responsible_owner: str
    phase: str
    function: str
    region: str
    transparency: _containers.ScalarMap[str, str]
    def __init__(self, experiment: _Optional[str] = ..., senior_responsible_owner: _Optional[str] = ..., phase: _Optional[str] = ..., function: _Optional[str] = ..., region: _Optional[str] = ..., transparency: _Optional[_Mapping[str, str]] = ...) -> None: ...
