"""Sandboxes as context managers, extend, delete, listing and watching."""

from __future__ import annotations

import threading
import time
from datetime import timedelta
from typing import List

import pytest

import harness
import sandpit


def _create(client: sandpit.Client, exp: sandpit.Experiment, ttl: object = "5m") -> sandpit.Sandbox:
    return client.create(experiment=exp, profile=harness.WEB_PROFILE, classification="OFFICIAL", ttl=ttl)  # type: ignore[arg-type]


def test_with_deletes_the_sandbox_on_the_way_out(alice: sandpit.Client, experiment: sandpit.Experiment) -> None:
    with _create(alice, experiment) as sb:
        assert sb.state == "running"
        assert sb.id in [s.id for s in alice.sandboxes()]
        assert sb.id in [s.id for s in experiment.sandboxes()]
    assert sb.state == sandpit.SandboxState.DELETED
    assert alice.sandbox(sb.id).state == "deleted"
    assert sb.id not in [s.id for s in alice.sandboxes()]


def test_with_deletes_the_sandbox_when_the_block_fails(alice: sandpit.Client, experiment: sandpit.Experiment) -> None:
    class Boom(Exception):
        pass

    with pytest.raises(Boom):
        with _create(alice, experiment) as sb:
            raise Boom()
    assert alice.sandbox(sb.id).state == "deleted"


def test_create_options_and_the_record(alice: sandpit.Client, experiment: sandpit.Experiment) -> None:
    progress: List[sandpit.PullProgress] = []
    with alice.create(experiment=experiment.id, profile=harness.WEB_PROFILE, classification="OFFICIAL",
                      ttl=timedelta(minutes=2), cpus=0.25, memory="32MiB", on_pull=progress.append) as sb:  # fmt: skip
        assert progress and progress[-1].done
        assert sb.resources.cpus == 0.25 and sb.resources.memory_bytes == 32 << 20
        assert sb.profile == harness.WEB_PROFILE and sb.network_mode == "none"
        assert sb.image.startswith("sandpit-pytest/busybox:")
        assert sb.command[:1] == ["httpd"] and sb.owner == "alice" and sb.container_id
        assert sb.max_expires_at is not None and sb.created_at is not None
        assert sb.time_left is not None and timedelta(seconds=100) < sb.time_left <= timedelta(minutes=2)
        assert sb.exit_code is None and not sb.oom_killed and sb.ended_at is None
        with pytest.raises(sandpit.PermissionDenied) as e:
            sb.extend("1h")  # over the profile's max_ttl
        assert "ttl" in e.value.message
        assert alice.extend(sb.id, 300).expires_at is not None
        assert alice.delete(sb).state == "deleted"
    with pytest.raises(sandpit.PermissionDenied) as e:
        alice.create(experiment=experiment, profile=harness.WEB_PROFILE, classification="OFFICIAL", memory="1GiB")
    assert "resources" in e.value.message


def test_a_sandbox_expires_by_itself(alice: sandpit.Client, experiment: sandpit.Experiment) -> None:
    sb = _create(alice, experiment, ttl="2s")
    deadline = time.monotonic() + 20
    while sb.refresh().state == "running":
        assert time.monotonic() < deadline, "not expired"
        time.sleep(0.2)
    assert sb.state == sandpit.SandboxState.EXPIRED and sb.ended_at is not None
    assert sb.id in [s.id for s in alice.sandboxes(all=True)]


def test_watch_follows_a_sandboxs_events(alice: sandpit.Client, experiment: sandpit.Experiment) -> None:
    events: List[sandpit.SandboxEvent] = []
    with alice.watch(experiment=experiment) as stream:
        ended = threading.Event()

        def follow() -> None:
            for ev in stream:
                events.append(ev)
                if ev.kind == sandpit.SandboxEventKind.DELETED:
                    ended.set()

        stream.wait_ready(20)
        t = threading.Thread(target=follow, daemon=True)
        t.start()
        with _create(alice, experiment) as sb:
            sb.extend("6m")
        assert ended.wait(20), events
    t.join(10)
    kinds = [e.kind for e in events if e.sandbox.id == sb.id]
    assert kinds[:1] == ["created"] and "extended" in kinds and kinds[-1] == "deleted", kinds
