"""Fixtures: one real daemon per test session (per xdist worker), its image,
clients for each role, and cleanup of everything labelled with the run."""

from __future__ import annotations

import os
import shutil
import signal
import sys
from pathlib import Path
from typing import Iterator

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))

import harness  # noqa: E402
import sandpit  # noqa: E402


def pytest_configure(config: pytest.Config) -> None:
    """SIGTERM (run-tests.sh's timeout, a CI stop) ends the session as Ctrl-C does,
    so that the fixtures' finalizers still remove the run's containers."""

    def interrupt(signum: int, frame: object) -> None:
        raise KeyboardInterrupt(f"signal {signum}")

    signal.signal(signal.SIGTERM, interrupt)


def _run_id() -> str:
    run = os.environ.get("SANDPIT_PYTEST_RUN") or harness.unique("pytest")
    worker = os.environ.get("PYTEST_XDIST_WORKER")
    return f"{run}-{worker}" if worker else run


@pytest.fixture(scope="session")
def run_id() -> str:
    return _run_id()


@pytest.fixture(scope="session")
def sandpitd_bin() -> Path:
    return harness.sandpitd_binary()


@pytest.fixture(scope="session")
def daemon(request: pytest.FixtureRequest, run_id: str, sandpitd_bin: Path) -> Iterator[harness.Daemon]:
    """A sandpitd with identities for every role, the test profiles and this run's image."""
    d = None
    try:
        image = harness.build_image(run_id)
        d = harness.start_daemon(sandpitd_bin, run_id, image)
        yield d
    finally:
        if d is not None:
            d.stop()
            if request.session.testsfailed:
                print(f"\n---- sandpitd log ({run_id}, last 80 lines) ----\n{d.log(80)}", file=sys.stderr)
            shutil.rmtree(d.dir, ignore_errors=True)
        harness.remove_labelled(run_id)



@pytest.fixture(scope="session")
def alice(daemon: harness.Daemon) -> Iterator[sandpit.Client]:
    """A requester in team-a."""
    yield from harness.client(daemon, harness.TEAM_A)


@pytest.fixture(scope="session")
def bob(daemon: harness.Daemon) -> Iterator[sandpit.Client]:
    """A requester in team-b."""
    yield from harness.client(daemon, harness.TEAM_B)


@pytest.fixture(scope="session")
def approver(daemon: harness.Daemon) -> Iterator[sandpit.Client]:
    """An approver in the AI Leadership Group's team."""
    yield from harness.client(daemon, harness.APPROVER)


@pytest.fixture(scope="session")
def approver_a(daemon: harness.Daemon) -> Iterator[sandpit.Client]:
    """An approver in team-a (may not decide on team-a's experiments)."""
    yield from harness.client(daemon, harness.APPROVER_A)


@pytest.fixture(scope="session")
def auditor(daemon: harness.Daemon) -> Iterator[sandpit.Client]:
    yield from harness.client(daemon, harness.AUDITOR)


@pytest.fixture(scope="session")
def operator(daemon: harness.Daemon) -> Iterator[sandpit.Client]:
    yield from harness.client(daemon, harness.OPERATOR)


@pytest.fixture(scope="session")
def experiment(alice: sandpit.Client) -> sandpit.Experiment:
    """An OFFICIAL experiment of team-a (needs no approval)."""
    return alice.register(
        title="Python SDK tests",
        purpose="Exercise the SDK against a real daemon",
        classification="OFFICIAL",
        ai_tools=["none"],
    )


@pytest.fixture
def sandbox(alice: sandpit.Client, experiment: sandpit.Experiment) -> Iterator[sandpit.Sandbox]:
    """A running py-web sandbox of team-a, deleted afterwards."""
    with alice.create(experiment=experiment, profile=harness.WEB_PROFILE, classification="OFFICIAL", ttl="5m") as sb:
        yield sb
