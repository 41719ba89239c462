"""Plain results: what the daemon answers, as typed dataclasses.

Each is built from its protobuf message, which stays reachable as ``.raw``
(not shown in ``repr`` and not compared), so that fields the daemon gains
before this SDK knows them are still there. Timestamps are aware UTC
``datetime``s and durations ``timedelta``s; an unset one is ``None``.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime, timedelta
from enum import Enum
from typing import Any, List, Optional, Type, TypeVar

from ._proto.sandpit.v1 import audit_pb2, profile_pb2, register_pb2, sandbox_pb2
from ._units import to_datetime, to_timedelta
from .errors import CommandFailed

__all__ = [
    "SandboxState",
    "SandboxEventKind",
    "ExperimentStatus",
    "ExperimentOutcome",
    "Resources",
    "Risk",
    "RiskUpdate",
    "Approval",
    "Assessment",
    "ExecResult",
    "FileTransfer",
    "PullProgress",
    "AuditEvent",
    "AuditVerification",
    "Checkpoint",
    "Profile",
    "ProfileLifetime",
    "ProfileNetwork",
    "Destination",
    "ProfileFileTransfer",
    "ProfileError",
    "ProfileValidation",
    "ProfileReload",
    "PoolStatus",
]

E = TypeVar("E", bound="_ProtoEnum")


class _ProtoEnum(str, Enum):
    """A proto enum as lower-case text (``"running"``), comparable with plain strings."""

    @classmethod
    def _prefix(cls) -> str:
        raise NotImplementedError

    @classmethod
    def from_proto(cls: Type[E], number: int, enum_type: Any) -> E:
        try:
            name = enum_type.Name(number)
        except ValueError:
            return cls("unspecified")
        short = name[len(cls._prefix()) :].lower()
        try:
            return cls(short)
        except ValueError:
            return cls("unspecified")

    @classmethod
    def parse(cls: Type[E], value: "str | E") -> E:
        """From a member or its text, any case (``"approved"``, ``"APPROVED"``)."""
        if isinstance(value, cls):
            return value
        try:
            return cls(str(value).strip().lower().replace("-", "_"))
        except ValueError:
            choices = ", ".join(m.value for m in cls if m.value != "unspecified")
            from .errors import InvalidArgument

            raise InvalidArgument(f"{value!r}: use one of {choices}") from None

    def to_proto(self) -> int:
        """The enum's number."""
        return int(self._enum_type().Value(self.proto_name()))

    def proto_name(self) -> str:
        """The enum value's full name in the proto, e.g. ``EXPERIMENT_STATUS_APPROVED``."""
        return self._prefix() + self.value.upper()

    @classmethod
    def _enum_type(cls) -> Any:
        raise NotImplementedError

    def __str__(self) -> str:
        return self.value


class SandboxState(_ProtoEnum):
    UNSPECIFIED = "unspecified"
    PROVISIONING = "provisioning"
    RUNNING = "running"
    EXITED = "exited"
    EXPIRED = "expired"
    DELETED = "deleted"
    FAILED = "failed"
    LOST = "lost"
    WARM = "warm"

    @classmethod
    def _prefix(cls) -> str:
        return "SANDBOX_STATE_"

    @classmethod
    def _enum_type(cls) -> Any:
        return sandbox_pb2.SandboxState

    @property
    def ended(self) -> bool:
        """Expired, deleted, failed or lost: nothing more will happen to it."""
        return self in (SandboxState.EXPIRED, SandboxState.DELETED, SandboxState.FAILED, SandboxState.LOST)


class SandboxEventKind(_ProtoEnum):
    UNSPECIFIED = "unspecified"
    CREATED = "created"
    EXTENDED = "extended"
    EXPIRING_SOON = "expiring_soon"
    EXPIRED = "expired"
    DELETED = "deleted"
    EXITED = "exited"
    FAILED = "failed"
    LOST = "lost"
    ADOPTED = "adopted"

    @classmethod
    def _prefix(cls) -> str:
        return "SANDBOX_EVENT_KIND_"

    @classmethod
    def _enum_type(cls) -> Any:
        return sandbox_pb2.SandboxEventKind


class ExperimentStatus(_ProtoEnum):
    UNSPECIFIED = "unspecified"
    PROPOSED = "proposed"
    APPROVED = "approved"
    REJECTED = "rejected"
    CLOSED = "closed"

    @classmethod
    def _prefix(cls) -> str:
        return "EXPERIMENT_STATUS_"

    @classmethod
    def _enum_type(cls) -> Any:
        return register_pb2.ExperimentStatus


class ExperimentOutcome(_ProtoEnum):
    UNSPECIFIED = "unspecified"
    SUCCEEDED = "succeeded"
    FAILED = "failed"
    ABANDONED = "abandoned"

    @classmethod
    def _prefix(cls) -> str:
        return "EXPERIMENT_OUTCOME_"

    @classmethod
    def _enum_type(cls) -> Any:
        return register_pb2.ExperimentOutcome


@dataclass
class Resources:
    """A sandbox's (or a profile's) cpus, memory, pids and scratch ``/tmp`` size."""

    cpus: float
    memory_bytes: int
    pids: int
    tmpfs_bytes: int

    @classmethod
    def from_proto(cls, m: Any) -> "Resources":
        return cls(cpus=m.cpus, memory_bytes=m.memory_bytes, pids=m.pids, tmpfs_bytes=m.tmpfs_bytes)


@dataclass
class RiskUpdate:
    """One change or review of a risk: who, their team, when, what changed
    (``"status open -> mitigated"``; ``"recorded"`` when it was added,
    ``"reviewed"`` when nothing changed) and why."""

    by: str
    team: str
    time: Optional[datetime]
    changes: str
    reason: str

    @classmethod
    def from_proto(cls, m: register_pb2.RiskUpdate) -> "RiskUpdate":
        return cls(m.by, m.team, to_datetime(m, "time"), m.changes, m.reason)


@dataclass
class Risk:
    """One risk of an experiment. ``likelihood`` and ``impact``: low, medium or high.

    The daemon sets the rest: ``id`` (r1, r2, ... in the order recorded),
    ``status`` (open, mitigated, accepted or closed), ``review_by`` (when its
    next review falls due; None once closed), ``overdue`` (that date has
    passed) and ``history`` (every change and review, oldest first). When a
    Risk is given to :meth:`Client.register` only the first five are sent,
    and only they are compared: a Risk as registered equals the one the
    daemon answers with.
    """

    description: str
    likelihood: str = ""
    impact: str = ""
    mitigation: str = ""
    owner: str = ""
    id: str = field(default="", compare=False)
    status: str = field(default="", compare=False)
    review_by: Optional[datetime] = field(default=None, compare=False)
    overdue: bool = field(default=False, compare=False)
    history: List[RiskUpdate] = field(default_factory=list, compare=False)

    @classmethod
    def parse(cls, value: "Risk | str") -> "Risk":
        """A Risk, or the CLI's ``"description;likelihood;impact;mitigation;owner"``."""
        if isinstance(value, Risk):
            return value
        parts = [p.strip() for p in str(value).split(";")]
        if len(parts) != 5:
            from .errors import InvalidArgument

            raise InvalidArgument(f"risk {value!r}: expected description;likelihood;impact;mitigation;owner")
        description, likelihood, impact, mitigation, owner = parts
        return cls(description, likelihood, impact, mitigation, owner)

    @classmethod
    def from_proto(cls, m: register_pb2.Risk) -> "Risk":
        return cls(
            description=m.description,
            likelihood=m.likelihood,
            impact=m.impact,
            mitigation=m.mitigation,
            owner=m.owner,
            id=m.id,
            status=m.status,
            review_by=to_datetime(m, "review_by"),
            overdue=m.overdue,
            history=[RiskUpdate.from_proto(h) for h in m.history],
        )

    def to_proto(self) -> register_pb2.Risk:
        """What a request carries: description, likelihood, impact, mitigation and owner."""
        return register_pb2.Risk(
            description=self.description,
            likelihood=self.likelihood,
            impact=self.impact,
            mitigation=self.mitigation,
            owner=self.owner,
        )


@dataclass
class Approval:
    """An approver's decision on an experiment: ``function`` is the one signed
    for (e.g. data-protection), empty where the classification needs none."""

    approver: str
    approver_team: str
    decision: str  # approved or rejected
    conditions: str
    time: Optional[datetime]
    function: str = ""

    @classmethod
    def from_proto(cls, m: register_pb2.Approval) -> "Approval":
        return cls(m.approver, m.approver_team, m.decision, m.conditions, to_datetime(m, "time"), m.function)


@dataclass
class Assessment:
    """An impact assessment on record: ``kind`` dpia, equality-impact or
    security-risk; ``status`` not-started, in-progress, completed or
    not-required; ``reference`` where it is kept; ``date`` when it was
    completed (or last changed)."""

    kind: str
    status: str
    reference: str
    date: Optional[datetime]
    recorded_by: str
    recorded_at: Optional[datetime]

    @classmethod
    def from_proto(cls, m: register_pb2.Assessment) -> "Assessment":
        return cls(m.kind, m.status, m.reference, to_datetime(m, "date"), m.recorded_by, to_datetime(m, "recorded_at"))


@dataclass
class ExecResult:
    """What a command run by :meth:`Sandbox.exec` did.

    ``exit_code`` is the command's, or 124 when it ran past its timeout (as
    ``timeout(1)`` and ``sandpit exec`` say it; ``timed_out`` is then true).
    ``notices`` are the daemon's own lines (e.g. the sandbox expires soon, and
    the timeout's reason), never the command's output.
    """

    exit_code: int
    stdout: bytes = b""
    stderr: bytes = b""
    notices: List[str] = field(default_factory=list)
    timed_out: bool = False

    @property
    def ok(self) -> bool:
        return self.exit_code == 0

    @property
    def stdout_text(self) -> str:
        return self.stdout.decode("utf-8", errors="replace")

    @property
    def stderr_text(self) -> str:
        return self.stderr.decode("utf-8", errors="replace")

    def check(self) -> "ExecResult":
        """Returns self when the exit code is 0; raises :class:`~sandpit.CommandFailed` otherwise."""
        if self.exit_code != 0:
            why = "timed out" if self.timed_out else f"exited with {self.exit_code}"
            tail = self.stderr_text.strip().splitlines()[-1:] or [""]
            raise CommandFailed(f"the command {why}" + (f": {tail[0]}" if tail[0] else ""), self)
        return self


@dataclass
class FileTransfer:
    """A copy into or out of a sandbox, as the daemon audited it.

    ``sha256`` and ``size_bytes`` are those of the tar archive that crossed
    (checked against the bytes this side sent or received); ``file_sha256`` is
    the SHA-256 of the one regular file copied, when it was one, as the CLI
    prints it. ``local_path`` is where a download landed (the file itself, or
    the directory it made).
    """

    sandbox_id: str
    path: str
    size_bytes: int
    sha256: str
    file_sha256: Optional[str] = None
    local_path: Optional[str] = None
    raw: Any = field(default=None, repr=False, compare=False)

    @classmethod
    def from_proto(cls, m: sandbox_pb2.FileTransfer) -> "FileTransfer":
        return cls(sandbox_id=m.sandbox_id, path=m.path, size_bytes=m.size_bytes, sha256=m.sha256, raw=m)


@dataclass
class PullProgress:
    """One step of an image pull (``done`` on the last)."""

    status: str
    layer: str
    current: int
    total: int
    done: bool

    @classmethod
    def from_proto(cls, m: sandbox_pb2.PullProgress) -> "PullProgress":
        return cls(m.status, m.layer, m.current, m.total, m.done)


@dataclass
class AuditEvent:
    """One record of the hash-chained audit log."""

    seq: int
    time: Optional[datetime]
    actor: str
    role: str
    action: str
    target: str
    experiment: str
    sandbox: str
    outcome: str  # allowed, denied, succeeded or failed
    code: str
    reason: str
    source: str
    prev_hash: str
    hash: str
    raw: Any = field(default=None, repr=False, compare=False)

    @classmethod
    def from_proto(cls, m: audit_pb2.AuditEvent) -> "AuditEvent":
        return cls(
            seq=m.seq,
            time=to_datetime(m, "time"),
            actor=m.actor,
            role=m.role,
            action=m.action,
            target=m.target,
            experiment=m.experiment,
            sandbox=m.sandbox,
            outcome=m.outcome,
            code=m.code,
            reason=m.reason,
            source=m.source,
            prev_hash=m.prev_hash,
            hash=m.hash,
            raw=m,
        )


@dataclass
class AuditVerification:
    """The daemon's recomputation of the audit chain (``ok`` false: broken, see ``reason``)."""

    ok: bool
    records: int
    first_bad_seq: int
    reason: str
    head_hash: str
    checkpoint_size: int
    checkpoint_origin: str
    verifier_key: str
    raw: Any = field(default=None, repr=False, compare=False)

    @classmethod
    def from_proto(cls, m: audit_pb2.VerifyAuditLogResponse) -> "AuditVerification":
        return cls(
            ok=m.ok,
            records=m.records,
            first_bad_seq=m.first_bad_seq,
            reason=m.reason,
            head_hash=m.head_hash,
            checkpoint_size=m.checkpoint_size,
            checkpoint_origin=m.checkpoint_origin,
            verifier_key=m.verifier_key,
            raw=m,
        )

    def __bool__(self) -> bool:
        return self.ok


@dataclass
class Checkpoint:
    """A signed checkpoint of the audit chain (C2SP signed note in ``note``)."""

    note: str
    origin: str
    size: int
    head_hash: str
    verifier_key: str

    @classmethod
    def from_proto(cls, m: audit_pb2.Checkpoint) -> "Checkpoint":
        return cls(m.note, m.origin, m.size, m.head_hash, m.verifier_key)


@dataclass
class ProfileLifetime:
    default_ttl: Optional[timedelta]
    max_ttl: Optional[timedelta]
    max_lifetime: Optional[timedelta]


@dataclass
class Destination:
    host: str
    port: int
    residency: str


@dataclass
class ProfileNetwork:
    mode: str  # none, isolated, allowlist or open
    allow: List[Destination]


@dataclass
class ProfileFileTransfer:
    copy_in: bool
    copy_out: bool
    max_exec_output_bytes: int  # 0: no cap


@dataclass
class Profile:
    """A sandbox profile in force on the daemon."""

    name: str
    description: str
    max_classification: str
    requires_approval: bool
    images: List[str]
    command: List[str]
    resources: Resources
    lifetime: ProfileLifetime
    network: ProfileNetwork
    datasets: List[str]
    file_transfer: ProfileFileTransfer
    warm_pool_size: int
    source: str
    isolation: str
    unavailable: str
    port_forward_ports: List[int]
    #: Creates wait while a risk of at least this impact is overdue for review ("": the host's threshold alone).
    refuse_overdue_risk: str = ""
    raw: Any = field(default=None, repr=False, compare=False)

    @classmethod
    def from_proto(cls, m: profile_pb2.Profile) -> "Profile":
        return cls(
            name=m.name,
            description=m.description,
            max_classification=m.max_classification,
            requires_approval=m.requires_approval,
            images=list(m.images),
            command=list(m.command),
            resources=Resources.from_proto(m.resources),
            lifetime=ProfileLifetime(
                to_timedelta(m.lifetime, "default_ttl"),
                to_timedelta(m.lifetime, "max_ttl"),
                to_timedelta(m.lifetime, "max_lifetime"),
            ),
            network=ProfileNetwork(
                m.network.mode, [Destination(d.host, d.port, d.residency) for d in m.network.allow]
            ),
            datasets=list(m.datasets),
            file_transfer=ProfileFileTransfer(
                m.file_transfer.copy_in, m.file_transfer.copy_out, m.file_transfer.max_exec_output_bytes
            ),
            warm_pool_size=m.warm_pool_size,
            source=m.source,
            isolation=m.isolation,
            unavailable=m.unavailable,
            port_forward_ports=list(m.port_forward_ports),
            refuse_overdue_risk=m.refuse_overdue_risk,
            raw=m,
        )


@dataclass
class ProfileError:
    file: str
    field: str
    reason: str

    @classmethod
    def from_proto(cls, m: profile_pb2.ProfileError) -> "ProfileError":
        return cls(m.file, m.field, m.reason)


@dataclass
class ProfileValidation:
    valid: bool
    errors: List[ProfileError]
    profile: Optional[Profile]

    def __bool__(self) -> bool:
        return self.valid


@dataclass
class ProfileReload:
    applied: bool
    loaded: List[str]
    errors: List[ProfileError]


@dataclass
class PoolStatus:
    profile: str
    target: int
    warm: int
    claims: int
    misses: int
