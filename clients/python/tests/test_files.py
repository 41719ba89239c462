"""Sandbox.upload / download: tar over CopyIn and CopyOut, with docker cp's rules."""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

import pytest

import sandpit


def _tree(root: Path) -> dict:
    return {
        str(p.relative_to(root)): (p.read_bytes() if p.is_file() and not p.is_symlink() else os.readlink(p) if p.is_symlink() else None)
        for p in sorted(root.rglob("*"))
    }


def test_a_file_into_a_directory_and_back_under_a_new_name(sandbox: sandpit.Sandbox, tmp_path: Path) -> None:
    data = os.urandom(300_000) + b"end"
    src = tmp_path / "data.bin"
    src.write_bytes(data)
    up = sandbox.upload(src, "/tmp")
    assert up.sandbox_id == sandbox.id and up.path == "/tmp"
    assert up.file_sha256 == hashlib.sha256(data).hexdigest()
    assert sandbox.exec(["sha256sum", "/tmp/data.bin"]).stdout.split()[0].decode() == up.file_sha256

    down = sandbox.download("/tmp/data.bin", tmp_path / "copy.bin")  # does not exist: the new name
    assert (tmp_path / "copy.bin").read_bytes() == data
    assert down.local_path == str(tmp_path / "copy.bin") and down.file_sha256 == up.file_sha256
    assert len(down.sha256) == 64 and down.size_bytes >= len(data)

    (tmp_path / "into").mkdir()
    down = sandbox.download("/tmp/data.bin", tmp_path / "into")  # a directory: receives it
    assert (tmp_path / "into" / "data.bin").read_bytes() == data
    assert down.local_path == str(tmp_path / "into" / "data.bin")


def test_a_directory_tree_both_ways(sandbox: sandpit.Sandbox, tmp_path: Path) -> None:
    src = tmp_path / "work"
    (src / "sub" / "deeper").mkdir(parents=True)
    (src / "a.csv").write_text("x,y\n1,2\n")
    (src / "sub" / "deeper" / "big.bin").write_bytes(b"\7" * 1_000_000)
    (src / "sub" / ("n" * 150)).write_text("long name")
    (src / "empty").mkdir()
    os.symlink("a.csv", src / "link")
    os.chmod(src / "a.csv", 0o640)

    sandbox.upload(src, "/tmp/")  # an existing directory: work/ lands inside
    listing = sandbox.exec("cd /tmp/work && find . | sort").stdout.decode().split()
    assert listing == [".", "./a.csv", "./empty", "./link", "./sub", "./sub/deeper", "./sub/deeper/big.bin",
                       "./sub/" + "n" * 150]  # fmt: skip
    assert sandbox.exec(["readlink", "/tmp/work/link"]).stdout == b"a.csv\n"

    sandbox.download("/tmp/work", tmp_path / "back")
    assert _tree(tmp_path / "back") == _tree(src)
    assert (tmp_path / "back" / "a.csv").stat().st_mode & 0o777 == 0o640

    # Into an existing directory, merged with what is there.
    dest = tmp_path / "merge"
    (dest / "work").mkdir(parents=True)
    (dest / "work" / "mine.txt").write_text("kept")
    sandbox.download("/tmp/work/", dest)
    assert (dest / "work" / "mine.txt").read_text() == "kept"
    assert (dest / "work" / "a.csv").read_text() == "x,y\n1,2\n"
    assert sorted(os.listdir(dest)) == ["work"], "no staging directory is left"


def test_write_file_and_read_file(sandbox: sandpit.Sandbox) -> None:
    t = sandbox.write_file("/tmp/note.txt", "hello\n", mode=0o600)
    assert t.file_sha256 == hashlib.sha256(b"hello\n").hexdigest()
    assert sandbox.exec("stat -c %a /tmp/note.txt").stdout == b"600\n"
    assert sandbox.read_file("/tmp/note.txt") == b"hello\n"
    with pytest.raises(sandpit.LocalError, match="not a regular file"):
        sandbox.read_file("/tmp")


def test_copy_failures_are_errors_and_leave_nothing(sandbox: sandpit.Sandbox, tmp_path: Path) -> None:
    with pytest.raises(sandpit.LocalError, match="no such file|No such file"):
        sandbox.upload(tmp_path / "missing.csv", "/tmp/")
    with pytest.raises(sandpit.FailedPrecondition) as e:
        sandbox.download("/tmp/nothing-here", tmp_path / "x")
    assert "nothing-here" in e.value.message
    assert not (tmp_path / "x").exists()
    with pytest.raises(sandpit.LocalError, match="no such directory"):
        sandbox.download("/tmp", tmp_path / "no" / "such" / "dir")
    with pytest.raises(sandpit.FailedPrecondition) as e:
        sandbox.write_file("/etc/passwd", "root::0:0::/:/bin/sh\n")  # the root is read-only
    assert "Read-only" in e.value.message
    assert os.listdir(tmp_path) == []
