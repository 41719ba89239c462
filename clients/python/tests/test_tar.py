"""The archive format and unpacking rules, locally (no daemon): what the
sandbox's helper writes and reads, as ``crates/sandpit-helper`` tests it."""

from __future__ import annotations

import io
import os
import tarfile
from pathlib import Path

import pytest

import sandpit
from sandpit import _transfer


def _archive(path: Path) -> bytes:
    return b"".join(_transfer.pack(path))


def _unpack(dest: Path, data: bytes) -> None:
    """As download() does, from archive bytes."""
    directory, rename = _transfer._destination(str(dest))
    stage = Path(directory) / ".stage"
    stage.mkdir()
    try:
        modes = _transfer._extract(stage, io.BytesIO(data))  # type: ignore[arg-type]
        if rename is not None:
            _transfer._rename_top(stage, rename, str(dest), modes)
        _transfer._merge(stage, Path(directory))
        for rel, mode in reversed(modes):
            os.chmod(Path(directory) / rel, mode)
    finally:
        _transfer._remove_tree(stage)


@pytest.mark.parametrize(
    "path, name",
    [("data.csv", "data.csv"), ("/tmp/work/", "work"), ("a/b/.", "b"), (".", "."), ("/", "."), ("a/..", ".")],
)
def test_entries_are_named_from_the_last_component(path: str, name: str) -> None:
    assert _transfer.entry_name(path) == name


def test_a_tree_packed_and_unpacked_is_the_same_tree(tmp_path: Path) -> None:
    tree = tmp_path / "src" / "work"
    (tree / "sub" / "deeper").mkdir(parents=True)
    (tree / "a.csv").write_bytes(b"x,y\n")
    (tree / "sub" / "deeper" / "big.bin").write_bytes(b"\5" * 100_000)
    long = "l" * 120
    (tree / "sub" / long).write_bytes(b"long name")
    os.symlink("a.csv", tree / "link")
    os.chmod(tree / "a.csv", 0o750)
    os.mkfifo(tree / "fifo")  # left out, as the helper leaves it out

    data = _archive(tree)
    assert len(data) % 512 == 0
    names = [m.name for m in tarfile.open(fileobj=io.BytesIO(data))]
    assert names == ["work", "work/a.csv", "work/link", "work/sub", "work/sub/deeper", "work/sub/deeper/big.bin",
                     f"work/sub/{long}"]  # fmt: skip

    dst = tmp_path / "dst"
    (dst / "work" / "sub").mkdir(parents=True)
    (dst / "work" / "sub" / "kept").write_bytes(b"kept")
    _unpack(dst, data)
    assert (dst / "work" / "a.csv").read_bytes() == b"x,y\n"
    assert (dst / "work" / "a.csv").stat().st_mode & 0o777 == 0o750
    assert (dst / "work" / "sub" / "deeper" / "big.bin").read_bytes() == b"\5" * 100_000
    assert (dst / "work" / "sub" / long).read_bytes() == b"long name"
    assert os.readlink(dst / "work" / "link") == "a.csv"
    assert (dst / "work" / "sub" / "kept").read_bytes() == b"kept", "existing directories are merged"
    assert sorted(os.listdir(dst)) == ["work"], "no staging directory is left"


def test_a_destination_that_does_not_exist_names_the_copy(tmp_path: Path) -> None:
    (tmp_path / "out" / "sub").mkdir(parents=True)
    (tmp_path / "out" / "sub" / "r.txt").write_bytes(b"result")
    data = _archive(tmp_path / "out")
    dst = tmp_path / "dst"
    dst.mkdir()
    _unpack(dst / "results", data)
    assert (dst / "results" / "sub" / "r.txt").read_bytes() == b"result"
    for bad in (dst / "nowhere", dst / "missing" / "x"):
        with pytest.raises(sandpit.LocalError, match="no such directory"):
            _transfer._destination(str(bad) + ("/" if bad.name == "nowhere" else ""))


@pytest.mark.parametrize("bad", ["../escape", "/etc/passwd", "a/../../b"])
def test_entries_that_climb_out_are_refused(tmp_path: Path, bad: str) -> None:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.GNU_FORMAT) as tf:
        info = tarfile.TarInfo(bad)
        info.size = 1
        tf.addfile(info, io.BytesIO(b"x"))
    dst = tmp_path / "dst"
    dst.mkdir()
    with pytest.raises(ValueError, match="refused archive entry"):
        _unpack(dst, buf.getvalue())
    assert os.listdir(dst) == []


def test_a_file_never_replaces_a_directory(tmp_path: Path) -> None:
    (tmp_path / "d").write_bytes(b"file")
    data = _archive(tmp_path / "d")
    dst = tmp_path / "dst"
    (dst / "d").mkdir(parents=True)
    with pytest.raises(sandpit.LocalError, match="cannot replace directory"):
        _unpack(dst, data)
    assert (dst / "d").is_dir()


def test_a_broken_archive_leaves_nothing_behind(tmp_path: Path) -> None:
    (tmp_path / "f").write_bytes(b"\1" * 5000)
    data = _archive(tmp_path / "f")
    dst = tmp_path / "dst"
    dst.mkdir()
    with pytest.raises(tarfile.TarError):
        _unpack(dst, data[:3000])
    assert os.listdir(dst) == []
