"""The AI Leadership Group's process through the SDK, against a real daemon
with a governance policy (as tests/it/oversight.rs): sign-offs by function,
risks that live and whose overdue reviews refuse new sandboxes, the DPIA
rule, transparency fields, and the ATRS and lessons exports."""

from __future__ import annotations

import csv
import io
import json
import shutil
import time
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Iterator

import pytest

import harness
import sandpit

# Approvers with functions: two for data protection (one team), one for
# security, one for both. High-impact risks fall due for review within a test.
DORA = "token-dora"
DAN = "token-dan"
SAM = "token-sam"
PAT = "token-pat"
HIGH_REVIEW_SECS = 6

GOVERNANCE = f"""
[governance]
functions = ["ethics", "data-protection", "legal", "security"]
refuse_overdue_risk = "high"
dpia_required = "OFFICIAL-SENSITIVE"

[governance.sign_offs]
"OFFICIAL-SENSITIVE" = ["data-protection", "security"]

[governance.review]
low = "30d"
medium = "30d"
high = "{HIGH_REVIEW_SECS}s"

[governance.transparency]
organisation_name = "Statistics Body"

[[identities]]
name = "dora"
team = "dp-office"
roles = ["approver"]
functions = ["data-protection"]
token_sha256 = "{harness.sha256(DORA)}"

[[identities]]
name = "dan"
team = "dp-office"
roles = ["approver"]
functions = ["data-protection"]
token_sha256 = "{harness.sha256(DAN)}"

[[identities]]
name = "sam"
team = "security"
roles = ["approver"]
functions = ["security"]
token_sha256 = "{harness.sha256(SAM)}"

[[identities]]
name = "pat"
team = "alg"
roles = ["approver"]
functions = ["data-protection", "security"]
token_sha256 = "{harness.sha256(PAT)}"
"""


@pytest.fixture(scope="module")
def gov(daemon: harness.Daemon, run_id: str, sandpitd_bin: Path) -> Iterator[harness.Daemon]:
    """A second daemon, with the governance policy, using the session's image
    and run label (so that the session's cleanup removes what it made)."""
    d = harness.start_daemon(sandpitd_bin, run_id, daemon.image, extra_config=GOVERNANCE)
    try:
        yield d
    finally:
        d.stop()
        shutil.rmtree(d.dir, ignore_errors=True)



@pytest.fixture(scope="module")
def alice(gov: harness.Daemon) -> Iterator[sandpit.Client]:
    yield from harness.client(gov, harness.TEAM_A)


@pytest.fixture(scope="module")
def bob(gov: harness.Daemon) -> Iterator[sandpit.Client]:
    yield from harness.client(gov, harness.TEAM_B)


@pytest.fixture(scope="module")
def auditor(gov: harness.Daemon) -> Iterator[sandpit.Client]:
    yield from harness.client(gov, harness.AUDITOR)


@pytest.fixture(scope="module")
def amir(gov: harness.Daemon) -> Iterator[sandpit.Client]:
    """An approver of no function."""
    yield from harness.client(gov, harness.APPROVER)


@pytest.fixture(scope="module")
def dora(gov: harness.Daemon) -> Iterator[sandpit.Client]:
    yield from harness.client(gov, DORA)


@pytest.fixture(scope="module")
def dan(gov: harness.Daemon) -> Iterator[sandpit.Client]:
    yield from harness.client(gov, DAN)


@pytest.fixture(scope="module")
def sam(gov: harness.Daemon) -> Iterator[sandpit.Client]:
    yield from harness.client(gov, SAM)


@pytest.fixture(scope="module")
def pat(gov: harness.Daemon) -> Iterator[sandpit.Client]:
    yield from harness.client(gov, PAT)


def _register(client: sandpit.Client, classification: str = "OFFICIAL-SENSITIVE", **kwargs: object) -> sandpit.Experiment:
    return client.register(title=harness.unique("Oversight"), purpose="Governance through the SDK",
                           classification=classification, ai_tools=["none"], **kwargs)  # type: ignore[arg-type]  # fmt: skip


def test_an_experiment_is_approved_once_every_required_function_signs(
    alice: sandpit.Client, dora: sandpit.Client, dan: sandpit.Client, sam: sandpit.Client, amir: sandpit.Client
) -> None:
    exp = _register(alice)
    assert exp.required_functions == ["data-protection", "security"]
    assert exp.pending_functions == ["data-protection", "security"]

    # One function signs (the daemon picks dora's only one): still proposed.
    e = dora.approve(exp.id, "Synthetic data first")
    assert e.status == sandpit.ExperimentStatus.PROPOSED and e.pending_functions == ["security"]
    assert (e.approvals[0].function, e.approvals[0].approver, e.approvals[0].conditions) == (
        "data-protection", "dora", "Synthetic data first")  # fmt: skip
    with pytest.raises(sandpit.FailedPrecondition) as err:
        alice.create(exp, harness.SENSITIVE_PROFILE, "OFFICIAL-SENSITIVE")
    assert "experiment-approval" in err.value.message

    # The same function again, by another of its approvers: refused, nothing changed.
    with pytest.raises(sandpit.FailedPrecondition) as err:
        dan.approve(exp, function="data-protection")
    assert "already signed off" in err.value.message
    now = alice.experiment(exp.id)
    assert (now.status, len(now.approvals), now.pending_functions) == ("proposed", 1, ["security"])

    # A function the approver does not hold; an approver of no function.
    with pytest.raises(sandpit.PermissionDenied) as denied:
        dora.approve(exp, function="security")
    assert "sign-off-function" in denied.value.message
    with pytest.raises(sandpit.PermissionDenied):
        amir.approve(exp)

    # The second function signs, through the bound object: approved.
    bound = sam.experiment(exp.id)
    assert bound.approve(function="security") is bound
    assert bound.status == sandpit.ExperimentStatus.APPROVED and bound.pending_functions == []
    assert [(a.function, a.approver) for a in bound.approvals] == [("data-protection", "dora"), ("security", "sam")]


def test_a_rejection_by_one_function_wins(
    alice: sandpit.Client, dora: sandpit.Client, dan: sandpit.Client, sam: sandpit.Client
) -> None:
    exp = _register(alice)
    assert dora.approve(exp).status == "proposed"
    r = sam.reject(exp, "No security review yet", "security")
    assert r.status == sandpit.ExperimentStatus.REJECTED
    assert (r.approvals[-1].decision, r.approvals[-1].function, r.approvals[-1].conditions) == (
        "rejected", "security", "No security review yet")  # fmt: skip
    with pytest.raises(sandpit.FailedPrecondition):
        dan.approve(exp.id)
    assert alice.experiment(exp.id).status == "rejected"


def test_risks_are_added_changed_and_reviewed_with_their_history(
    alice: sandpit.Client, bob: sandpit.Client, dora: sandpit.Client
) -> None:
    exp = _register(alice, "OFFICIAL", risks=["bias;medium;medium;sample review;alice"])
    r1 = exp.risk("r1")
    assert (r1.status, r1.overdue, [h.changes for h in r1.history]) == ("open", False, ["recorded"])
    assert r1.review_by is not None and r1.review_by > datetime.now(timezone.utc) + timedelta(days=29)

    e = alice.add_risk(exp, "re-identification", "low", "low", mitigation="aggregate only", reason="from the DPIA")
    r2 = e.risk("r2")
    assert (r2.description, r2.likelihood, r2.impact, r2.mitigation, r2.status) == (
        "re-identification", "low", "low", "aggregate only", "open")  # fmt: skip
    assert [(h.by, h.team, h.changes, h.reason) for h in r2.history] == [
        ("alice", "team-a", "recorded", "from the DPIA")]  # fmt: skip
    assert r2.history[0].time is not None

    # A change (by an approver) is recorded with what changed and why.
    e = dora.update_risk(exp.id, "r2", "aggregation checked", status="mitigated", likelihood="medium")
    r2 = e.risk("r2")
    assert (r2.status, r2.likelihood, r2.impact) == ("mitigated", "medium", "low")
    last = r2.history[-1]
    assert (last.by, last.team, last.reason) == ("dora", "dp-office", "aggregation checked")
    assert "status open -> mitigated" in last.changes and "likelihood low -> medium" in last.changes

    # A review changes nothing but the next review date (through the bound object).
    before = exp.refresh().risk("r1").review_by
    time.sleep(0.01)
    exp.review_risk(r1, "still relevant")
    r1 = exp.risk("r1")
    assert [h.changes for h in r1.history] == ["recorded", "reviewed"] and r1.history[-1].reason == "still relevant"
    assert r1.review_by is not None and before is not None and r1.review_by > before
    assert (r1.status, r1.likelihood, r1.impact, r1.mitigation) == ("open", "medium", "medium", "sample review")

    # Closing a risk leaves no review due.
    exp.update_risk("r1", "no longer applies", status="closed")
    assert (exp.risk("r1").status, exp.risk("r1").review_by) == ("closed", None)

    # Bad input: caught here (an empty change), or by the daemon.
    with pytest.raises(sandpit.InvalidArgument):
        alice.update_risk(exp, "r2", "x", status="")
    with pytest.raises(sandpit.InvalidArgument):
        alice.update_risk(exp, "r2", "x", status="fixed")
    with pytest.raises(sandpit.InvalidArgument):
        alice.review_risk(exp, "r2", "")
    with pytest.raises(sandpit.NotFound):
        exp.risk("r9")
    # Another team's requester may not touch its risks.
    with pytest.raises((sandpit.PermissionDenied, sandpit.NotFound)):
        bob.review_risk(exp.id, "r2", "not mine")
    with pytest.raises((sandpit.PermissionDenied, sandpit.NotFound)):
        bob.add_risk(exp.id, "x", "low", "low")


def test_an_overdue_high_impact_risk_refuses_creates_until_reviewed(alice: sandpit.Client) -> None:
    exp = _register(alice, "OFFICIAL", risks=[sandpit.Risk("re-identification", "low", "high", owner="alice")])
    risk = exp.risk("r1")
    assert risk.review_by is not None and exp.created_at is not None and not risk.overdue
    assert risk.review_by - exp.created_at == timedelta(seconds=HIGH_REVIEW_SECS)

    time.sleep(max(0.0, (risk.review_by - datetime.now(timezone.utc)).total_seconds()) + 0.3)
    assert exp.refresh().risk("r1").overdue
    with pytest.raises(sandpit.FailedPrecondition) as err:
        alice.create(exp, harness.WEB_PROFILE, "OFFICIAL", ttl="1m")
    assert "risk-review-overdue" in err.value.message and "r1" in err.value.message, err.value.message

    exp.review_risk("r1", "controls checked; unchanged")
    assert not exp.risk("r1").overdue and exp.risk("r1").history[-1].changes == "reviewed"
    with exp.create(harness.WEB_PROFILE, ttl="1m") as sb:
        assert sb.state == sandpit.SandboxState.RUNNING


def test_a_completed_dpia_is_needed_for_official_sensitive_sandboxes(alice: sandpit.Client, pat: sandpit.Client) -> None:
    exp = _register(alice)
    pat.approve(exp, function="data-protection")
    e = pat.approve(exp)
    assert e.status == "approved", "one approver may sign for two functions"
    assert {a.function for a in e.approvals} == {"data-protection", "security"}

    with pytest.raises(sandpit.FailedPrecondition) as err:
        alice.create(exp, harness.SENSITIVE_PROFILE, "OFFICIAL-SENSITIVE")
    assert "dpia-required" in err.value.message
    with pytest.raises(sandpit.InvalidArgument) as bad:
        alice.record_assessment(exp, "dpia", "completed")
    assert "reference" in bad.value.message
    with pytest.raises(sandpit.InvalidArgument):
        alice.record_assessment(exp, "dpib", "completed", "x")
    e = alice.record_assessment(exp, "dpia", "in-progress")
    assert [(a.kind, a.status, a.recorded_by) for a in e.assessments] == [("dpia", "in-progress", "alice")]
    with pytest.raises(sandpit.FailedPrecondition) as err:
        alice.create(exp, harness.SENSITIVE_PROFILE, "OFFICIAL-SENSITIVE")
    assert "dpia-required" in err.value.message

    done = datetime(2026, 1, 15, 9, 30, tzinfo=timezone.utc)
    exp.record_assessment("dpia", "completed", "DPIA-2026-041", date=done)
    assert len(exp.assessments) == 1, "one record per kind"
    a = exp.assessments[0]
    assert (a.kind, a.status, a.reference, a.date) == ("dpia", "completed", "DPIA-2026-041", done)
    assert a.recorded_at is not None
    with exp.create(harness.SENSITIVE_PROFILE) as sb:
        assert sb.classification == "OFFICIAL-SENSITIVE"


def test_transparency_fields_and_the_atrs_export(alice: sandpit.Client, auditor: sandpit.Client) -> None:
    exp = _register(alice, "OFFICIAL", models=["tf-idf + logistic regression"], senior_responsible_owner="Director of Methods",
                    phase="Pre-deployment", function="Economic affairs", region="UK")  # fmt: skip
    assert (exp.senior_responsible_owner, exp.phase, exp.function, exp.region) == (
        "Director of Methods", "Pre-deployment", "Economic affairs", "UK")  # fmt: skip

    # None leaves a field as it is, "" clears it; fields by the standard's name.
    e = alice.update_transparency(exp, region="", fields={"contact_email": "ai@example.gov.uk", "scope": "Census"})
    assert (e.senior_responsible_owner, e.region) == ("Director of Methods", "")
    assert e.transparency == {"contact_email": "ai@example.gov.uk", "scope": "Census"}
    exp.update_transparency(phase="Beta", fields={"scope": None})
    assert (exp.phase, exp.transparency) == ("Beta", {"contact_email": "ai@example.gov.uk"})
    for name in ("title", "no_such_field"):
        with pytest.raises(sandpit.InvalidArgument):
            alice.update_transparency(exp, fields={name: "x"})

    records = json.loads(auditor.export("atrs", experiment=exp))
    assert len(records) == 1
    r = records[0]
    for section in ("metadata_and_title_information", "tier_1_overview", "tier_2_owner_and_responsibility",
                    "tier_2_technical_specification_and_data", "tier_2_risks_mitigations_and_impact_assessments"):  # fmt: skip
        assert isinstance(r[section], dict), section
    assert r["sandpit_experiment"] == exp.id
    assert r["tier_2_owner_and_responsibility"]["senior_responsible_owner"] == "Director of Methods"
    assert r["metadata_and_title_information"]["organisation_name"] == "Statistics Body"
    assert r["tier_1_overview"]["contact_email"] == "ai@example.gov.uk"
    assert r["tier_2_technical_specification_and_data"]["models"] == ["tf-idf + logistic regression"]
    missing = r["missing_required"]
    assert isinstance(missing, list) and "2.5.1 impact_assessment" in missing, missing
    assert not any(m.endswith((" contact_email", " senior_responsible_owner", " title")) for m in missing), missing

    rows = list(csv.DictReader(io.StringIO(auditor.export("atrs", "csv", experiment=exp.id).decode())))
    assert len(rows) == 1 and rows[0]["senior_responsible_owner"] == "Director of Methods"
    with pytest.raises(sandpit.InvalidArgument):
        auditor.export("atrs", "html", experiment=exp)
    with pytest.raises(sandpit.InvalidArgument):
        auditor.export("atrs", "yaml")
    with pytest.raises(sandpit.PermissionDenied):
        alice.export("atrs")


def test_lessons_export_leaves_out_official_sensitive_unless_asked(
    alice: sandpit.Client, amir: sandpit.Client, auditor: sandpit.Client
) -> None:
    tag = harness.unique("lesson")
    official = _register(alice, "OFFICIAL")
    sensitive = _register(alice, "OFFICIAL-SENSITIVE")
    started = datetime.now(timezone.utc) - timedelta(seconds=1)
    closed = amir.close_experiment(official, "succeeded", f"Char n-grams beat rules {tag}",
                                   what_worked="pairing with methodologists", what_did_not="<b>regexes</b>",
                                   artefacts=["https://git.example/coding-notebooks"])  # fmt: skip
    assert (closed.what_worked, closed.what_did_not, closed.artefacts) == (
        "pairing with methodologists", "<b>regexes</b>", ["https://git.example/coding-notebooks"])  # fmt: skip
    bound = amir.experiment(sensitive.id)
    bound.close("failed", f"Linkage keys leak {tag}", what_did_not="hashing names", artefacts=("DOC-7",))
    assert (bound.status, bound.what_did_not, bound.artefacts) == ("closed", "hashing names", ["DOC-7"])

    md = auditor.export("lessons").decode()  # markdown by default
    assert f"Char n-grams beat rules {tag}".replace("-", "\\-") in md or f"Char n-grams beat rules {tag}" in md
    assert f"Linkage keys leak {tag}" not in md, "nothing above OFFICIAL unless asked"
    assert "above OFFICIAL left out" in md
    only = auditor.export("lessons", "markdown", experiment=sensitive).decode()
    assert "Linkage keys leak" not in only and "1 above OFFICIAL left out" in only

    html = auditor.export("lessons", "html", include_above_official=True, since=started).decode()
    assert html.startswith("<!DOCTYPE html>")
    assert f"Linkage keys leak {tag}" in html and f"Char n-grams beat rules {tag}" in html
    assert "&lt;b&gt;regexes&lt;/b&gt;" in html and "<b>regexes" not in html
    before = auditor.export("lessons", "html", include_above_official=True, until=started).decode()
    assert tag not in before, "until: only experiments closed before it"
    # Lessons above OFFICIAL leaving the register are on record.
    events = auditor.audit_log(action="sandpit.v1.AuditService/Export", actor="ada")
    assert any(sensitive.id in e.reason for e in events)

    open_one = _register(alice, "OFFICIAL")
    with pytest.raises(sandpit.FailedPrecondition):
        auditor.export("lessons", experiment=open_one)
    with pytest.raises(sandpit.InvalidArgument):
        auditor.export("lessons", "json")
    with pytest.raises(sandpit.InvalidArgument):
        amir.close_experiment(open_one, "succeeded", "x", artefacts="one-string")  # type: ignore[arg-type]
