"""Durations, sizes, enums and errors: no daemon needed."""

from __future__ import annotations

from datetime import date, datetime, timedelta, timezone

import grpc
import pytest

import sandpit
from sandpit._units import duration_proto, parse_duration, parse_size, timestamp_proto
from sandpit.errors import from_rpc_error


@pytest.mark.parametrize(
    "value, seconds",
    [
        ("10m", 600),
        ("1h30m", 5400),
        ("1h 30m", 5400),
        ("90s", 90),
        ("2days", 172800),
        ("1h30m15s", 5415),
        ("500ms", 0.5),
        (45, 45),
        (1.5, 1.5),
        (timedelta(minutes=3), 180),
    ],
)
def test_ttls_are_read_as_the_cli_reads_them(value: object, seconds: float) -> None:
    assert parse_duration(value).total_seconds() == seconds  # type: ignore[arg-type]


@pytest.mark.parametrize("value", ["banana", "10", "", "1x", "-5m", -1, timedelta(seconds=-1), True, None, [1]])
def test_bad_ttls_are_invalid_arguments_naming_the_field(value: object) -> None:
    with pytest.raises(sandpit.InvalidArgument) as e:
        parse_duration(value)  # type: ignore[arg-type]
    assert e.value.code == "INVALID_ARGUMENT"
    assert e.value.message.startswith("ttl")


def test_durations_and_timestamps_convert_exactly() -> None:
    d = duration_proto("1h30m")
    assert (d.seconds, d.nanos) == (5400, 0)
    d = duration_proto(timedelta(seconds=1, microseconds=250))
    assert (d.seconds, d.nanos) == (1, 250_000)
    t = timestamp_proto("2026-12-01")
    assert datetime.fromtimestamp(t.seconds, timezone.utc) == datetime(2026, 12, 1, tzinfo=timezone.utc)
    assert timestamp_proto(date(2026, 12, 1)) == t
    assert timestamp_proto("2026-12-01T00:00:00Z") == t
    with pytest.raises(sandpit.InvalidArgument):
        timestamp_proto("next tuesday")


@pytest.mark.parametrize(
    "value, n", [("512MiB", 512 << 20), ("1GiB", 1 << 30), ("64M", 64 << 20), ("1048576", 1 << 20), (7, 7), ("2KB", 2000)]
)
def test_sizes_are_read_as_the_cli_reads_them(value: object, n: int) -> None:
    assert parse_size(value) == n  # type: ignore[arg-type]


def test_bad_sizes_are_refused() -> None:
    for bad in ("lots", "5 parsecs", -1):
        with pytest.raises(sandpit.InvalidArgument):
            parse_size(bad)  # type: ignore[arg-type]


class _FakeRpcError(grpc.RpcError):
    def __init__(self, code: grpc.StatusCode, details: str) -> None:
        self._code, self._details = code, details

    def code(self) -> grpc.StatusCode:
        return self._code

    def details(self) -> str:
        return self._details


@pytest.mark.parametrize(
    "code, cls",
    [
        (grpc.StatusCode.NOT_FOUND, sandpit.NotFound),
        (grpc.StatusCode.PERMISSION_DENIED, sandpit.PermissionDenied),
        (grpc.StatusCode.UNAUTHENTICATED, sandpit.Unauthenticated),
        (grpc.StatusCode.INVALID_ARGUMENT, sandpit.InvalidArgument),
        (grpc.StatusCode.FAILED_PRECONDITION, sandpit.FailedPrecondition),
        (grpc.StatusCode.RESOURCE_EXHAUSTED, sandpit.ResourceExhausted),
        (grpc.StatusCode.ALREADY_EXISTS, sandpit.AlreadyExists),
        (grpc.StatusCode.ABORTED, sandpit.Aborted),
        (grpc.StatusCode.UNAVAILABLE, sandpit.Unavailable),
        (grpc.StatusCode.DEADLINE_EXCEEDED, sandpit.DeadlineExceeded),
        (grpc.StatusCode.INTERNAL, sandpit.Internal),
        (grpc.StatusCode.CANCELLED, sandpit.Cancelled),
        (grpc.StatusCode.UNIMPLEMENTED, sandpit.Unimplemented),
        (grpc.StatusCode.DATA_LOSS, sandpit.DataLoss),
        (grpc.StatusCode.OUT_OF_RANGE, sandpit.OutOfRange),
        (grpc.StatusCode.UNKNOWN, sandpit.Unknown),
    ],
)
def test_every_status_maps_to_its_error_class(code: grpc.StatusCode, cls: type) -> None:
    err = from_rpc_error(_FakeRpcError(code, "the daemon's words"))
    assert type(err) is cls
    assert isinstance(err, sandpit.SandpitError)
    assert err.code == code.name
    assert err.message == "the daemon's words"
    assert str(err) == f"{code.name}: the daemon's words"


def test_enums_read_and_compare_as_text() -> None:
    assert sandpit.ExperimentStatus.parse("APPROVED") is sandpit.ExperimentStatus.APPROVED
    assert sandpit.SandboxState.RUNNING == "running"
    assert sandpit.ExperimentOutcome.parse("abandoned").to_proto() == 3
    with pytest.raises(sandpit.InvalidArgument):
        sandpit.ExperimentOutcome.parse("meh")


def test_risks_are_read_as_the_cli_reads_them() -> None:
    r = sandpit.Risk.parse("misclassification; medium; low; human review of a sample; alice")
    assert r == sandpit.Risk("misclassification", "medium", "low", "human review of a sample", "alice")
    with pytest.raises(sandpit.InvalidArgument):
        sandpit.Risk.parse("just one part")


def test_check_raises_command_failed_with_the_result() -> None:
    ok = sandpit.ExecResult(exit_code=0, stdout=b"fine")
    assert ok.check() is ok and ok.ok
    bad = sandpit.ExecResult(exit_code=2, stderr=b"line one\nno such file\n")
    with pytest.raises(sandpit.CommandFailed) as e:
        bad.check()
    assert e.value.code == "COMMAND_FAILED"
    assert e.value.result is bad
    assert "exited with 2: no such file" in e.value.message
