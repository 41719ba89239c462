"""Approvers decide on experiments, auditors read the record; requesters may do neither."""

from __future__ import annotations

import csv
import io
import json
import threading
from typing import List

import pytest

import harness
import sandpit


def _register(client: sandpit.Client, classification: str = "OFFICIAL-SENSITIVE") -> sandpit.Experiment:
    return client.register(title="Governance", purpose="Decisions and records", classification=classification,
                           ai_tools=["none"], models=["m1"], datasets=["survey"])  # fmt: skip


def test_approvers_approve_reject_and_close(alice: sandpit.Client, approver: sandpit.Client) -> None:
    exp = _register(alice)
    assert approver.experiment(exp.id).title == "Governance", "approvers see every team's experiments"
    assert exp.id in [e.id for e in approver.experiments(status="proposed")]
    assert exp.id in [e.id for e in approver.experiments(team="team-a")]
    assert exp.id not in [e.id for e in approver.experiments(team="team-b")]

    exp = approver.approve(exp, conditions="Synthetic data only")
    assert exp.status == sandpit.ExperimentStatus.APPROVED
    # A second decision on the same experiment is refused naming the status found.
    with pytest.raises(sandpit.FailedPrecondition) as e:
        approver.approve(exp.id)
    assert "approved" in e.value.message

    with alice.create(experiment=exp, profile=harness.SENSITIVE_PROFILE, classification="OFFICIAL-SENSITIVE") as sb:
        closed = approver.close_experiment(exp.id, "succeeded", "Small models were enough")
        assert closed.status == sandpit.ExperimentStatus.CLOSED
        assert closed.outcome == sandpit.ExperimentOutcome.SUCCEEDED
        assert (closed.lessons_learnt, closed.closed_by, closed.closed_by_team) == (
            "Small models were enough", "amir", "alg")
        assert closed.closed_at is not None
        # Closing tore its sandboxes down.
        assert sb.refresh().state.ended, sb.state
    with pytest.raises(sandpit.FailedPrecondition):
        alice.create(experiment=exp, profile=harness.SENSITIVE_PROFILE, classification="OFFICIAL-SENSITIVE")

    rejected = _register(alice)
    r = approver.reject(rejected.id, conditions="Out of scope")
    assert r.status == "rejected" and r.approvals[-1].decision == "rejected"
    # The same through the bound object (as the approver).
    other = approver.experiment(_register(alice).id)
    assert other.approve().status == "approved"
    assert other.close(sandpit.ExperimentOutcome.ABANDONED, "Data never arrived").outcome == "abandoned"
    with pytest.raises(sandpit.InvalidArgument):
        approver.close_experiment(other.id, "unspecified", "x")


def test_requesters_and_own_team_approvers_may_not_decide(
    alice: sandpit.Client, bob: sandpit.Client, approver_a: sandpit.Client
) -> None:
    exp = _register(alice)
    for who in (alice, bob):
        with pytest.raises(sandpit.PermissionDenied) as e:
            who.approve(exp.id)
        assert "needs one of the roles [approver]" in e.value.message
    with pytest.raises(sandpit.PermissionDenied) as e:
        approver_a.approve(exp.id)
    assert "self-approval" in e.value.message
    with pytest.raises(sandpit.PermissionDenied):
        alice.close_experiment(exp.id, "failed", "no")
    with pytest.raises(sandpit.NotFound):
        bob.experiment(exp.id)
    assert alice.experiment(exp.id).status == "proposed"


def test_auditors_query_verify_checkpoint_and_export(
    alice: sandpit.Client, auditor: sandpit.Client, approver: sandpit.Client, sandbox: sandpit.Sandbox
) -> None:
    sandbox.exec(["echo", "on the record"])
    events = auditor.audit_log(sandbox=sandbox.id)
    assert events and all(e.sandbox == sandbox.id for e in events)
    assert [e.seq for e in events] == sorted(e.seq for e in events)
    create = next(e for e in events if e.action.endswith("CreateSandbox"))
    assert (create.actor, create.role, create.experiment) == ("alice", "requester", sandbox.experiment)
    assert create.time is not None and len(create.hash) == 64
    assert any(e.action.endswith("/Exec") for e in events)
    assert all(e.actor == "alice" for e in auditor.audit_log(actor="alice", limit=5))
    assert len(auditor.audit_log(limit=3)) == 3
    # Paging: a small page size gives the same records.
    assert [e.seq for e in auditor.iter_audit_log(sandbox=sandbox.id, page_size=2)] == [e.seq for e in events]

    report = auditor.verify_audit_log()
    assert report.ok and report.records >= len(events) and len(report.head_hash) == 64, report
    cp = auditor.checkpoint()
    assert cp.size >= 1 and cp.note.startswith(cp.origin + "\n") and cp.verifier_key
    held = auditor.verify_audit_log(checkpoint=cp.note)
    assert held.ok and held.checkpoint_size == cp.size and held.checkpoint_origin == cp.origin
    tampered = cp.note.replace(cp.note.splitlines()[1], str(cp.size + 1000), 1)
    assert not auditor.verify_audit_log(checkpoint=tampered).ok

    register = json.loads(auditor.export("register", "json"))
    assert sandbox.experiment in json.dumps(register)
    rows = list(csv.reader(io.StringIO(auditor.export("sandboxes", "csv").decode())))
    assert len(rows) >= 2 and any(sandbox.id in row for row in rows)
    with pytest.raises(sandpit.InvalidArgument):
        auditor.export("everything")

    for who in (auditor, approver):
        active = {a.experiment.id: a for a in who.active_experiments()}
        assert sandbox.experiment in active
        live = [s for s in active[sandbox.experiment].sandboxes if s.sandbox.id == sandbox.id]
        assert live and live[0].time_left is not None and live[0].time_left.total_seconds() > 0


def test_requesters_may_not_read_the_audit_log(alice: sandpit.Client, approver: sandpit.Client) -> None:
    for call in (alice.audit_log, alice.verify_audit_log, alice.checkpoint, lambda: alice.export("register"),
                 alice.active_experiments, approver.audit_log):  # fmt: skip
        with pytest.raises(sandpit.PermissionDenied) as e:
            call()
        assert e.value.code == "PERMISSION_DENIED"


def test_auditors_watch_the_log_as_it_is_written(alice: sandpit.Client, auditor: sandpit.Client) -> None:
    seen: List[sandpit.AuditEvent] = []
    stream = auditor.watch_audit_log()
    got = threading.Event()

    def follow() -> None:
        for e in stream:
            seen.append(e)
            if e.action.endswith("RegisterExperiment"):
                got.set()

    stream.wait_ready(20)
    t = threading.Thread(target=follow, daemon=True)
    t.start()
    exp = _register(alice, "OFFICIAL")
    assert got.wait(20), seen
    stream.cancel()
    t.join(10)
    assert not t.is_alive(), "cancel ends the iteration quietly"
    assert any(e.experiment == exp.id for e in seen)


def test_operators_see_profiles_validate_and_reload(operator: sandpit.Client, alice: sandpit.Client) -> None:
    names = {p.name for p in alice.profiles()}
    assert {harness.WEB_PROFILE, harness.SENSITIVE_PROFILE} <= names
    web = alice.profile(harness.WEB_PROFILE)
    assert web.port_forward_ports == [8080, 8081] and web.network.mode == "none"
    assert web.lifetime.max_ttl is not None and web.lifetime.max_ttl.total_seconds() == 600
    assert web.resources.memory_bytes == 64 << 20 and web.file_transfer.copy_out

    good = operator.validate_profile('max_classification = "OFFICIAL"\nimages = ["x"]\n', "ok.toml")
    assert good.valid and good.profile is not None and good.profile.name == "ok"
    bad = operator.validate_profile('max_classification = "OFFICIAL"\nimages = ["x"]\ncolour = "red"\n', "bad.toml")
    assert not bad.valid and bad.errors and "colour" in (bad.errors[0].field + bad.errors[0].reason)
    reload = operator.reload_profiles()
    assert reload.applied and harness.WEB_PROFILE in reload.loaded
    assert operator.pools() == []
    with pytest.raises(sandpit.PermissionDenied):
        alice.validate_profile("x", "x.toml")
    with pytest.raises(sandpit.PermissionDenied):
        alice.reload_profiles()


def test_a_refused_watch_says_so(alice: sandpit.Client) -> None:
    with pytest.raises(sandpit.PermissionDenied):
        alice.watch_audit_log().wait_ready(20)
    with pytest.raises(sandpit.PermissionDenied):
        list(alice.watch_audit_log())
