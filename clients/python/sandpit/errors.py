"""Errors raised by the SDK.

Every error the daemon answers with is raised as a :class:`SandpitError`
subclass named after its gRPC status (``NotFound``, ``PermissionDenied``,
...), carrying ``.code`` (the status name, e.g. ``"FAILED_PRECONDITION"``) and
``.message`` (the daemon's message, which names the rule or field that made
it, e.g. ``"experiment-approval: ..."``). No public method lets a raw
``grpc.RpcError`` through.

Problems on this side (an unreadable local file, a bad address or TLS
setting, an archive that does not unpack) are :class:`LocalError`, code
``"LOCAL"``; a bad argument caught before anything is sent (a ttl that is
not a duration) is :class:`InvalidArgument`, as the daemon would say it.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Dict, Optional, Type

import grpc

if TYPE_CHECKING:
    from .models import ExecResult

__all__ = [
    "SandpitError",
    "Cancelled",
    "Unknown",
    "InvalidArgument",
    "DeadlineExceeded",
    "NotFound",
    "AlreadyExists",
    "PermissionDenied",
    "ResourceExhausted",
    "FailedPrecondition",
    "Aborted",
    "OutOfRange",
    "Unimplemented",
    "Internal",
    "Unavailable",
    "DataLoss",
    "Unauthenticated",
    "LocalError",
    "ConfigurationError",
    "CommandFailed",
    "from_rpc_error",
]


class SandpitError(Exception):
    """Base class of every error the SDK raises.

    Attributes:
        code: the gRPC status name (``"NOT_FOUND"``, ``"PERMISSION_DENIED"``...)
            for errors from the daemon; ``"LOCAL"`` for problems on this side;
            ``"COMMAND_FAILED"`` for :class:`CommandFailed`.
        message: the daemon's message as it sent it (or the local reason).
        exec_result: set when the error ended an exec: what the command had
            written until then (e.g. past a profile's output cap).
    """

    code: str = "UNKNOWN"

    def __init__(self, message: str, *, code: Optional[str] = None) -> None:
        super().__init__(message)
        self.message = message
        if code is not None:
            self.code = code
        self.exec_result: Optional["ExecResult"] = None

    def __str__(self) -> str:
        # As the CLI prints it: `NOT_FOUND: sandbox 'sb-…' not found`.
        return f"{self.code}: {self.message}"

    def __repr__(self) -> str:
        return f"{type(self).__name__}(code={self.code!r}, message={self.message!r})"


class Cancelled(SandpitError):
    code = "CANCELLED"


class Unknown(SandpitError):
    code = "UNKNOWN"


class InvalidArgument(SandpitError):
    """A malformed field; the message names it (e.g. ``ttl``)."""

    code = "INVALID_ARGUMENT"


class DeadlineExceeded(SandpitError):
    code = "DEADLINE_EXCEEDED"


class NotFound(SandpitError):
    """No such sandbox or experiment, or one of another team."""

    code = "NOT_FOUND"


class AlreadyExists(SandpitError):
    code = "ALREADY_EXISTS"


class PermissionDenied(SandpitError):
    """A policy denial (the message names the rule) or a role not allowed the call."""

    code = "PERMISSION_DENIED"


class ResourceExhausted(SandpitError):
    """A quota, a per-identity limit, an output cap or scratch space ran out."""

    code = "RESOURCE_EXHAUSTED"


class FailedPrecondition(SandpitError):
    """A rule that depends on state, e.g. ``experiment-approval`` or an ended sandbox."""

    code = "FAILED_PRECONDITION"


class Aborted(SandpitError):
    code = "ABORTED"


class OutOfRange(SandpitError):
    code = "OUT_OF_RANGE"


class Unimplemented(SandpitError):
    code = "UNIMPLEMENTED"


class Internal(SandpitError):
    code = "INTERNAL"


class Unavailable(SandpitError):
    """The daemon (or its Docker engine) cannot be reached."""

    code = "UNAVAILABLE"


class DataLoss(SandpitError):
    code = "DATA_LOSS"


class Unauthenticated(SandpitError):
    """No credential, or one the daemon does not know."""

    code = "UNAUTHENTICATED"


class LocalError(SandpitError):
    """Something failed on this side: a local file, the address, TLS files, an archive."""

    code = "LOCAL"


class ConfigurationError(LocalError):
    """The address, token or TLS settings cannot be used as given."""


class CommandFailed(SandpitError):
    """Raised by ``Sandbox.exec(..., check=True)`` when the command exits non-zero."""

    code = "COMMAND_FAILED"

    def __init__(self, message: str, result: "ExecResult") -> None:
        super().__init__(message)
        self.exec_result = result

    @property
    def result(self) -> "ExecResult":
        assert self.exec_result is not None
        return self.exec_result


_BY_CODE: Dict[str, Type[SandpitError]] = {
    cls.code: cls
    for cls in (
        Cancelled,
        Unknown,
        InvalidArgument,
        DeadlineExceeded,
        NotFound,
        AlreadyExists,
        PermissionDenied,
        ResourceExhausted,
        FailedPrecondition,
        Aborted,
        OutOfRange,
        Unimplemented,
        Internal,
        Unavailable,
        DataLoss,
        Unauthenticated,
    )
}


def error_for(code: str, message: str) -> SandpitError:
    """The :class:`SandpitError` subclass for a status name, e.g. ``"NOT_FOUND"``."""
    cls = _BY_CODE.get(code, SandpitError)
    return cls(message, code=code)


def from_rpc_error(err: grpc.RpcError) -> SandpitError:
    """Translates a ``grpc.RpcError`` (which is also a ``grpc.Call``) into a :class:`SandpitError`."""
    code_fn = getattr(err, "code", None)
    details_fn = getattr(err, "details", None)
    status = code_fn() if callable(code_fn) else None
    message = details_fn() if callable(details_fn) else None
    name = status.name if isinstance(status, grpc.StatusCode) else "UNKNOWN"
    return error_for(name, message or str(err) or name)
