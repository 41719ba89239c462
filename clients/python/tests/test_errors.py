"""Errors come out as SandpitError subclasses with the daemon's code and message; never a raw grpc.RpcError."""

from __future__ import annotations

import grpc
import pytest

import harness
import sandpit


def test_a_missing_sandbox_is_not_found_with_the_daemons_message(alice: sandpit.Client) -> None:
    with pytest.raises(sandpit.NotFound) as e:
        alice.sandbox("sb-000000000000")
    assert e.value.code == "NOT_FOUND"
    assert e.value.message == "sandbox 'sb-000000000000' not found"
    assert str(e.value) == "NOT_FOUND: sandbox 'sb-000000000000' not found"
    assert isinstance(e.value, sandpit.SandpitError) and not isinstance(e.value, grpc.RpcError)
    with pytest.raises(sandpit.NotFound):
        alice.experiment("exp-0000000000")


def test_another_teams_sandbox_is_not_found(bob: sandpit.Client, sandbox: sandpit.Sandbox) -> None:
    with pytest.raises(sandpit.NotFound):
        bob.sandbox(sandbox.id)
    with pytest.raises(sandpit.NotFound):
        bob.delete(sandbox.id)
    assert sandbox.refresh().state == "running"


def test_bad_ttls_are_invalid_arguments(alice: sandpit.Client, experiment: sandpit.Experiment,
                                        sandbox: sandpit.Sandbox) -> None:  # fmt: skip
    # Caught here, before anything is sent.
    with pytest.raises(sandpit.InvalidArgument) as e:
        alice.create(experiment=experiment, profile=harness.WEB_PROFILE, classification="OFFICIAL", ttl="ten minutes")
    assert e.value.code == "INVALID_ARGUMENT" and e.value.message.startswith("ttl")
    # Caught by the daemon: below lifecycle.min_ttl, naming the field.
    with pytest.raises(sandpit.InvalidArgument) as e:
        sandbox.extend(0)
    assert e.value.code == "INVALID_ARGUMENT" and e.value.message.startswith("ttl: ")
    # Over the profile's max_ttl: a policy denial naming its rule.
    with pytest.raises(sandpit.PermissionDenied) as e:
        sandbox.extend("2h")
    assert "'ttl'" in e.value.message and "max_ttl" in e.value.message


def test_policy_denials_name_their_rule(alice: sandpit.Client, experiment: sandpit.Experiment) -> None:
    with pytest.raises(sandpit.PermissionDenied) as e:
        alice.create(experiment=experiment, profile=harness.WEB_PROFILE, classification="SECRET")
    assert "host-ceiling" in e.value.message
    with pytest.raises(sandpit.PermissionDenied) as e:
        alice.create(experiment=experiment, profile=harness.SENSITIVE_PROFILE, classification="OFFICIAL-SENSITIVE")
    assert "experiment-classification" in e.value.message
    with pytest.raises(sandpit.InvalidArgument) as e:
        alice.create(experiment=experiment, profile="no-such-profile", classification="OFFICIAL")
    assert "unknown profile 'no-such-profile'" in e.value.message
    with alice.create(experiment=experiment, profile=harness.SEALED_PROFILE, classification="OFFICIAL") as sb:
        with pytest.raises(sandpit.PermissionDenied) as e:
            sb.read_file("/etc/passwd")
        assert "file-transfer" in e.value.message
        with pytest.raises(sandpit.PermissionDenied) as e:
            sb.write_file("/tmp/x", "x")
        assert "file-transfer" in e.value.message


def test_credentials_and_roles(daemon: harness.Daemon, auditor: sandpit.Client,
                               experiment: sandpit.Experiment) -> None:  # fmt: skip
    with sandpit.Client(daemon.addr, "not-a-token") as c, pytest.raises(sandpit.Unauthenticated) as e:
        c.sandboxes()
    assert e.value.code == "UNAUTHENTICATED"
    with sandpit.Client(daemon.addr, data_dir=daemon.dir / "nowhere") as c, pytest.raises(sandpit.Unauthenticated):
        c.experiments()
    with pytest.raises(sandpit.PermissionDenied) as e:
        auditor.create(experiment=experiment, profile=harness.WEB_PROFILE, classification="OFFICIAL")
    assert "needs one of the roles [requester]" in e.value.message


def test_an_unreachable_daemon_is_unavailable() -> None:
    with sandpit.Client("http://127.0.0.1:1", "t", timeout=5) as c, pytest.raises(sandpit.Unavailable) as e:
        c.sandboxes()
    assert e.value.code == "UNAVAILABLE"


def test_an_ended_sandbox_refuses_work_as_failed_precondition(alice: sandpit.Client,
                                                              experiment: sandpit.Experiment) -> None:  # fmt: skip
    sb = alice.create(experiment=experiment, profile=harness.WEB_PROFILE, classification="OFFICIAL")
    sb.delete()
    with pytest.raises(sandpit.FailedPrecondition) as e:
        sb.exec("true")
    assert "deleted" in e.value.message
    assert sb.delete().state == "deleted", "delete is idempotent"
