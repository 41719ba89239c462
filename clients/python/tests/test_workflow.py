"""The whole walk-through, as a team and an approver would do it from Python:
register -> approve -> create -> exec -> upload/download -> port_forward -> extend -> delete."""

from __future__ import annotations

import hashlib
import urllib.request
from datetime import datetime, timedelta, timezone
from pathlib import Path

import pytest

import harness
import sandpit


def test_register_approve_create_work_and_delete(
    alice: sandpit.Client, approver: sandpit.Client, auditor: sandpit.Client, tmp_path: Path
) -> None:
    exp = alice.register(
        title="Occupation coding",
        purpose="Classify free-text occupations",
        classification="OFFICIAL-SENSITIVE",
        ai_tools=["scikit-learn"],
        risks=["misclassification;medium;low;human review of a sample;alice"],
        planned_end="2027-03-31",
    )
    assert exp.id.startswith("exp-")
    assert (exp.status, exp.team, exp.owner) == (sandpit.ExperimentStatus.PROPOSED, "team-a", "alice")
    assert exp.risks == [sandpit.Risk("misclassification", "medium", "low", "human review of a sample", "alice")]
    assert exp.planned_end == datetime(2027, 3, 31, tzinfo=timezone.utc)

    # OFFICIAL-SENSITIVE needs the experiment approved by another team's approver.
    with pytest.raises(sandpit.FailedPrecondition) as refused:
        alice.create(experiment=exp, profile=harness.SENSITIVE_PROFILE, classification="OFFICIAL-SENSITIVE")
    assert refused.value.code == "FAILED_PRECONDITION"
    assert "experiment-approval" in refused.value.message

    approved = approver.approve(exp.id, conditions="Synthetic data only")
    assert approved.status == sandpit.ExperimentStatus.APPROVED
    assert [(a.approver, a.approver_team, a.decision, a.conditions) for a in approved.approvals] == [
        ("amir", "alg", "approved", "Synthetic data only")
    ]
    assert exp.refresh().status == "approved"

    sb = alice.create(experiment=exp, profile=harness.SENSITIVE_PROFILE, classification="OFFICIAL-SENSITIVE",
                      ttl="10m")  # fmt: skip
    try:
        assert sb.id.startswith("sb-")
        assert sb.state == sandpit.SandboxState.RUNNING
        assert (sb.experiment, sb.team, sb.classification) == (exp.id, "team-a", "OFFICIAL-SENSITIVE")
        assert isinstance(sb.expires_at, datetime) and sb.expires_at.tzinfo is not None
        left = sb.expires_at - datetime.now(timezone.utc)
        assert timedelta(minutes=9) < left <= timedelta(minutes=10, seconds=5), left

        # exec: output, exit code, streamed chunks
        chunks: list = []
        r = sb.exec("echo hello; echo oops >&2; exit 3", on_stdout=chunks.append)
        assert (r.exit_code, r.stdout, r.stderr) == (3, b"hello\n", b"oops\n")
        assert b"".join(chunks) == b"hello\n"

        # upload a file and a directory, check them inside, download them back
        csv = tmp_path / "population.csv"
        csv.write_text("area,people\nA,100\nB,250\n")
        t = sb.upload(csv, "/tmp/")
        assert t.file_sha256 == hashlib.sha256(csv.read_bytes()).hexdigest()
        assert len(t.sha256) == 64 and t.size_bytes > 0
        assert sb.exec(["sha256sum", "/tmp/population.csv"]).stdout.split()[0].decode() == t.file_sha256
        results = tmp_path / "results"
        (results / "plots").mkdir(parents=True)
        (results / "summary.txt").write_text("mean 175\n")
        (results / "plots" / "bar.txt").write_text("A ##\nB #####\n")
        sb.upload(results, "/tmp/out")  # /tmp/out does not exist: the copy's new name
        assert sb.exec("cat /tmp/out/plots/bar.txt").stdout == b"A ##\nB #####\n"
        sb.exec("mkdir /tmp/out/new && echo computed > /tmp/out/new/answer.txt", check=True)
        back = sb.download("/tmp/out", tmp_path / "back")
        assert back.local_path == str(tmp_path / "back")
        assert (tmp_path / "back" / "summary.txt").read_text() == "mean 175\n"
        assert (tmp_path / "back" / "plots" / "bar.txt").read_text() == "A ##\nB #####\n"
        assert (tmp_path / "back" / "new" / "answer.txt").read_text() == "computed\n"

        # a notebook-style server inside, reached through a forwarded port
        sb.write_file("/tmp/index.html", "<h1>results</h1>\n")
        with sb.port_forward(8080) as pf:
            with urllib.request.urlopen(pf.url + "index.html", timeout=20) as resp:
                assert resp.read() == b"<h1>results</h1>\n"

        # extend
        before = sb.expires_at
        assert sb.extend("9m") is sb
        assert sb.expires_at is not None and before is not None and sb.expires_at < before
        sb.extend(timedelta(minutes=10))
        assert sb.expires_at > before - timedelta(seconds=1)
    finally:
        sb.delete()
    assert sb.state == sandpit.SandboxState.DELETED
    assert alice.sandbox(sb.id).state == "deleted"
    assert sb.id not in [s.id for s in alice.sandboxes()]
    assert sb.id in [s.id for s in alice.sandboxes(all=True)]

    # Everything is on the record.
    actions = [e.action for e in auditor.audit_log(experiment=exp.id)]
    for want in ("RegisterExperiment", "ApproveExperiment", "CreateSandbox", "Exec", "CopyIn", "CopyOut",
                 "PortForward", "ExtendSandbox", "DeleteSandbox"):  # fmt: skip
        assert any(a.endswith(want) for a in actions), (want, actions)


def test_port_forward_reaches_a_web_server_in_a_sandbox_with_no_network(sandbox: sandpit.Sandbox) -> None:
    sandbox.write_file("/tmp/index.html", "hello from the sandbox\n")
    with sandbox.port_forward(8080) as pf:
        assert pf.local_port > 0 and pf.address == f"127.0.0.1:{pf.local_port}"
        for _ in range(2):
            with urllib.request.urlopen(pf.url + "index.html", timeout=20) as resp:
                assert resp.status == 200
                assert resp.read() == b"hello from the sandbox\n"
        assert pf.connections == 2 and pf.errors == []
    # Closed: nothing listens any more.
    with pytest.raises(OSError):
        urllib.request.urlopen(pf.url + "index.html", timeout=5)
