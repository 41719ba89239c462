"""Sandbox.exec: output streamed as it comes, exit codes, timeouts, stdin, notices."""

from __future__ import annotations

import threading
import time
from typing import List, Tuple

import pytest

import harness
import sandpit


def test_output_and_exit_code(sandbox: sandpit.Sandbox) -> None:
    r = sandbox.exec(["sh", "-c", "printf 'a\\nb\\n'; printf 'warn' >&2; exit 7"])
    assert (r.exit_code, r.stdout, r.stderr, r.timed_out, r.ok) == (7, b"a\nb\n", b"warn", False, False)
    assert r.stdout_text == "a\nb\n" and r.stderr_text == "warn"
    ok = sandbox.exec(["true"])
    assert (ok.exit_code, ok.stdout, ok.stderr, ok.ok) == (0, b"", b"", True)


def test_a_string_runs_through_sh_and_a_list_is_the_argv(sandbox: sandpit.Sandbox) -> None:
    assert sandbox.exec("echo $((6 * 7)) | tr 4 X").stdout == b"X2\n"
    # No shell: the argument is passed as it is.
    assert sandbox.exec(["echo", "$((6 * 7)) | tr"]).stdout == b"$((6 * 7)) | tr\n"
    missing = sandbox.exec(["/no/such/program"])
    assert missing.exit_code == 127 and b"cannot run" in missing.stderr


def _no_command_left(sandbox: sandpit.Sandbox, marker: bytes) -> None:
    """Waits until no process in the sandbox runs ``marker`` (the daemon kills an exec's whole tree)."""
    deadline = time.monotonic() + 15
    while marker in sandbox.exec(["ps", "-o", "args"]).stdout:
        assert time.monotonic() < deadline, f"{marker!r} was left running"
        time.sleep(0.2)


def test_callbacks_get_chunks_as_they_stream(sandbox: sandpit.Sandbox) -> None:
    seen: List[Tuple[str, bytes, float]] = []
    start = time.monotonic()
    r = sandbox.exec(
        "echo first; sleep 1; echo second >&2; sleep 1; echo third",
        on_stdout=lambda b: seen.append(("out", b, time.monotonic() - start)),
        on_stderr=lambda b: seen.append(("err", b, time.monotonic() - start)),
    )
    end = time.monotonic() - start
    assert r.exit_code == 0
    assert [(k, b) for k, b, _ in seen] == [("out", b"first\n"), ("err", b"second\n"), ("out", b"third\n")]
    assert seen[0][2] < end - 1.5, f"the first chunk came as it was written, not at the end: {seen}, end {end}"
    assert r.stdout == b"first\nthird\n" and r.stderr == b"second\n"


def test_a_command_past_its_timeout_is_killed_and_gives_124(sandbox: sandpit.Sandbox) -> None:
    start = time.monotonic()
    r = sandbox.exec("echo started; sleep 30; echo never", timeout="1s")
    assert time.monotonic() - start < 15
    assert (r.exit_code, r.timed_out, r.stdout) == (124, True, b"started\n")
    assert any("DEADLINE_EXCEEDED" in n for n in r.notices), r.notices
    _no_command_left(sandbox, b"sleep 30")  # and everything it started
    assert sandbox.exec(["sleep", "0"], timeout=5).exit_code == 0


def test_env_workdir_and_stdin(sandbox: sandpit.Sandbox) -> None:
    r = sandbox.exec("echo $GREETING from $(pwd)", env={"GREETING": "hello"}, workdir="/tmp")
    assert r.stdout == b"hello from /tmp\n"
    assert sandbox.exec(["env"], env=["A=1", "B=2"]).stdout.count(b"=") >= 2
    assert sandbox.exec(["cat"], stdin=b"piped \x00 bytes").stdout == b"piped \x00 bytes"
    big = bytes(range(256)) * 1024  # 256 KiB, several stdin messages
    r = sandbox.exec(["sha256sum"], stdin=big)
    import hashlib

    assert r.stdout.split()[0].decode() == hashlib.sha256(big).hexdigest()
    assert sandbox.exec(["wc", "-l"], stdin="one\ntwo\n").stdout.strip() == b"2"


def test_check_raises_command_failed(sandbox: sandpit.Sandbox) -> None:
    with pytest.raises(sandpit.CommandFailed) as e:
        sandbox.exec("echo nope >&2; exit 4", check=True)
    assert e.value.result.exit_code == 4 and "nope" in e.value.message
    assert sandbox.exec("true", check=True).ok


def test_a_failing_callback_stops_the_command(sandbox: sandpit.Sandbox) -> None:
    class Stop(Exception):
        pass

    def boom(_: bytes) -> None:
        raise Stop()

    with pytest.raises(Stop):
        sandbox.exec("echo go; sleep 31", on_stdout=boom)
    # The daemon killed what the command started (its client went away).
    _no_command_left(sandbox, b"sleep 31")


def test_output_past_the_profiles_cap_is_resource_exhausted_with_what_fitted(
    alice: sandpit.Client, experiment: sandpit.Experiment
) -> None:
    with alice.create(experiment=experiment, profile=harness.CAPPED_PROFILE, classification="OFFICIAL") as sb:
        with pytest.raises(sandpit.ResourceExhausted) as e:
            sb.exec("yes | head -c 100000")
        assert e.value.code == "RESOURCE_EXHAUSTED"
        assert "max_exec_output" in e.value.message
        assert e.value.exec_result is not None
        assert 0 < len(e.value.exec_result.stdout) <= 1024


def test_the_expiry_warning_reaches_an_open_exec_as_a_notice(
    alice: sandpit.Client, experiment: sandpit.Experiment
) -> None:
    # The test daemon warns 3s before expiry: 3s after the create, 2s before the command ends.
    with alice.create(experiment=experiment, profile=harness.CAPPED_PROFILE, classification="OFFICIAL", ttl="6s") as sb:
        heard: List[str] = []
        r = sb.exec("sleep 4; echo done", on_notice=heard.append)
        assert r.exit_code == 0, r
        assert r.stdout == b"done\n"
        assert heard and heard == r.notices, (heard, r.notices)
        assert sb.id in heard[0] and "expires" in heard[0]


def test_execs_run_concurrently_from_threads(sandbox: sandpit.Sandbox) -> None:
    results: List[sandpit.ExecResult] = []
    threads = [threading.Thread(target=lambda i=i: results.append(sandbox.exec(["echo", str(i)]))) for i in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    assert sorted(r.stdout for r in results) == sorted(f"{i}\n".encode() for i in range(8))
