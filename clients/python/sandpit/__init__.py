"""Sandpit's Python SDK: sandboxes, the AI register and the audit log over gRPC.

    import sandpit

    with sandpit.Client() as client:                       # finds a local daemon as the CLI does
        exp = client.register(title="Occupation coding", purpose="Classify occupations",
                              classification="OFFICIAL", ai_tools=["scikit-learn"])
        with client.create(experiment=exp, profile="official-none",
                           classification="OFFICIAL", ttl="10m") as sb:
            print(sb.exec(["echo", "hello"]).stdout_text)

See ``clients/python/README.md`` for more.
"""

from ._discovery import ADDR_FILE, DEFAULT_ADDR, LOCAL_TOKEN_FILE, Settings, default_data_dir, discover
from ._forward import PortForward
from ._rpc import Stream
from ._units import parse_duration, parse_size
from .client import ActiveExperiment, ActiveSandbox, Client
from .errors import (
    Aborted,
    AlreadyExists,
    Cancelled,
    CommandFailed,
    ConfigurationError,
    DataLoss,
    DeadlineExceeded,
    FailedPrecondition,
    Internal,
    InvalidArgument,
    LocalError,
    NotFound,
    OutOfRange,
    PermissionDenied,
    ResourceExhausted,
    SandpitError,
    Unauthenticated,
    Unavailable,
    Unimplemented,
    Unknown,
)
from .experiment import Experiment
from .models import (
    Approval,
    Assessment,
    AuditEvent,
    AuditVerification,
    Checkpoint,
    Destination,
    ExecResult,
    ExperimentOutcome,
    ExperimentStatus,
    FileTransfer,
    PoolStatus,
    Profile,
    ProfileError,
    ProfileFileTransfer,
    ProfileLifetime,
    ProfileNetwork,
    ProfileReload,
    ProfileValidation,
    PullProgress,
    Resources,
    Risk,
    RiskUpdate,
    SandboxEventKind,
    SandboxState,
)
from .sandbox import Sandbox, SandboxEvent

__version__ = "0.1.0"

__all__ = [
    "ADDR_FILE",
    "DEFAULT_ADDR",
    "LOCAL_TOKEN_FILE",
    "Aborted",
    "ActiveExperiment",
    "ActiveSandbox",
    "AlreadyExists",
    "Approval",
    "Assessment",
    "AuditEvent",
    "AuditVerification",
    "Cancelled",
    "Checkpoint",
    "Client",
    "CommandFailed",
    "ConfigurationError",
    "DataLoss",
    "DeadlineExceeded",
    "Destination",
    "ExecResult",
    "Experiment",
    "ExperimentOutcome",
    "ExperimentStatus",
    "FailedPrecondition",
    "FileTransfer",
    "Internal",
    "InvalidArgument",
    "LocalError",
    "NotFound",
    "OutOfRange",
    "PermissionDenied",
    "PoolStatus",
    "PortForward",
    "Profile",
    "ProfileError",
    "ProfileFileTransfer",
    "ProfileLifetime",
    "ProfileNetwork",
    "ProfileReload",
    "ProfileValidation",
    "PullProgress",
    "ResourceExhausted",
    "Resources",
    "Risk",
    "RiskUpdate",
    "Sandbox",
    "SandboxEvent",
    "SandboxEventKind",
    "SandboxState",
    "SandpitError",
    "Settings",
    "Stream",
    "Unauthenticated",
    "Unavailable",
    "Unimplemented",
    "Unknown",
    "default_data_dir",
    "discover",
    "parse_duration",
    "parse_size",
]
