"""File trees into and out of a sandbox: tar over CopyIn and CopyOut, as ``sandpit cp`` does.

The archive is what the sandbox's helper writes and reads
(``crates/sandpit-helper/src/tar.rs``): regular files, directories and
symbolic links only, entries named from the source's last component (as
``tar -C DIR NAME`` names them), children in name order, GNU long names.
Other kinds of file (FIFOs, devices, sockets) are left out, each logged.

Unpacking here follows the helper's ``unpack`` (and ``docker cp``): a
destination that is a directory receives the copy; one that does not exist
(and does not end in ``/``) is the name of the archive's one top entry, in
its parent directory. It is all or nothing: the archive is extracted into a
staging directory beside the destination and moved into place only once
all of it arrived and the daemon's summary matched what was received.
"""

from __future__ import annotations

import hashlib
import io
import logging
import os
import secrets
import shutil
import stat
import tarfile
import threading
from pathlib import Path
from typing import Any, Iterator, List, Optional, Tuple, Union

import grpc

from ._proto.sandpit.v1 import sandbox_pb2
from ._rpc import Rpc
from .errors import LocalError, from_rpc_error
from .models import FileTransfer

log = logging.getLogger("sandpit")

#: Bytes per CopyIn message, as the CLI sends them.
CHUNK = 256 << 10
_BLOCK = 512

LocalPath = Union[str, "os.PathLike[str]"]


# ------------------------------------------------------------------ pack


def entry_name(path: str) -> str:
    """The archive name of ``path``: its last component, or ``.`` (as Rust's ``Path::file_name``)."""
    parts = [p for p in path.split("/") if p not in ("", ".")]
    if not parts or parts[-1] == "..":
        return "."
    return parts[-1]


def _header(kind: bytes, name: str, mode: int, mtime: int, size: int = 0, link: str = "") -> bytes:
    info = tarfile.TarInfo(name)
    info.type = kind
    info.mode = mode & 0o7777
    info.mtime = mtime
    info.size = size
    info.linkname = link
    info.uid = info.gid = 0
    info.uname = info.gname = ""
    return info.tobuf(tarfile.GNU_FORMAT, "utf-8", "surrogateescape")


def pack(path: LocalPath) -> Iterator[bytes]:
    """``path`` (a file, a symbolic link or a directory tree) as tar archive bytes."""
    p = os.fspath(path)
    yield from _pack_entry(p, entry_name(p))
    yield b"\0" * (2 * _BLOCK)


def _pack_entry(path: str, name: str) -> Iterator[bytes]:
    st = os.lstat(path)
    mtime = max(int(st.st_mtime), 0)
    mode = stat.S_IMODE(st.st_mode)
    if stat.S_ISDIR(st.st_mode):
        yield _header(tarfile.DIRTYPE, name + "/", mode, mtime)
        children = sorted(os.listdir(path), key=os.fsencode)
        for child in children:
            yield from _pack_entry(os.path.join(path, child), f"{name}/{child}")
    elif stat.S_ISREG(st.st_mode):
        size = st.st_size
        yield _header(tarfile.REGTYPE, name, mode, mtime, size=size)
        left = size
        with open(path, "rb") as f:
            # Exactly `size` bytes, whatever the file does meanwhile: a file
            # that grew is cut at its size when listed, one that shrank is padded.
            while left > 0:
                chunk = f.read(min(CHUNK, left))
                if not chunk:
                    log.warning("sandpit: %s shrank while it was read; padded with zeros", path)
                    chunk = b"\0" * min(CHUNK, left)
                left -= len(chunk)
                yield chunk
        pad = (_BLOCK - size % _BLOCK) % _BLOCK
        if pad:
            yield b"\0" * pad
    elif stat.S_ISLNK(st.st_mode):
        yield _header(tarfile.SYMTYPE, name, mode, mtime, link=os.readlink(path))
    else:
        log.warning("sandpit: left out %s: not a file, directory or symbolic link", path)


def _chunks(data: Iterator[bytes]) -> Iterator[bytes]:
    """Re-cut into CHUNK-sized pieces."""
    buf = bytearray()
    for piece in data:
        buf += piece
        while len(buf) >= CHUNK:
            yield bytes(buf[:CHUNK])
            del buf[:CHUNK]
    if buf:
        yield bytes(buf)


def file_sha256(path: LocalPath) -> Optional[str]:
    """The SHA-256 of a regular file; None for anything else."""
    try:
        if not stat.S_ISREG(os.lstat(path).st_mode):
            return None
        h = hashlib.sha256()
        with open(path, "rb") as f:
            for chunk in iter(lambda: f.read(1 << 20), b""):
                h.update(chunk)
        return h.hexdigest()
    except OSError:
        return None


# ------------------------------------------------------------------ copy in


def upload(rpc: Rpc, sandbox_id: str, local: LocalPath, remote: str) -> FileTransfer:
    """Copies ``local`` into the sandbox at ``remote`` (see the module doc)."""
    src = os.fspath(local)
    try:
        os.lstat(src)
    except OSError as e:
        raise LocalError(f"upload: reading {src}: {e.strerror or e}") from None
    return _copy_in(rpc, sandbox_id, remote, pack(src), describe=src, single_file=src)


def upload_bytes(rpc: Rpc, sandbox_id: str, data: bytes, remote: str, mode: int = 0o644) -> FileTransfer:
    """Writes ``data`` as the file ``remote`` (its directory must exist)."""
    directory, _, name = remote.rstrip("/").rpartition("/")
    if not name or name in (".", ".."):
        raise LocalError(f"write_file: {remote!r} does not name a file")

    def archive() -> Iterator[bytes]:
        import time

        yield _header(tarfile.REGTYPE, name, mode, int(time.time()), size=len(data))
        yield data
        yield b"\0" * ((_BLOCK - len(data) % _BLOCK) % _BLOCK)
        yield b"\0" * (2 * _BLOCK)

    t = _copy_in(rpc, sandbox_id, directory or "/", archive(), describe=remote, single_file=None)
    t.file_sha256 = hashlib.sha256(data).hexdigest()
    return t


class _Upload:
    """The request stream of a CopyIn: header, then the archive; a local
    failure is kept and the call cancelled, so that the daemon keeps nothing."""

    def __init__(self, header: sandbox_pb2.CopyInHeader, archive: Iterator[bytes]) -> None:
        self.header = header
        self.archive = archive
        self.hash = hashlib.sha256()
        self.size = 0
        self.error: Optional[BaseException] = None
        self.future: Any = None
        self.started = threading.Event()

    def __iter__(self) -> Iterator[sandbox_pb2.CopyInRequest]:
        yield sandbox_pb2.CopyInRequest(header=self.header)
        try:
            for chunk in _chunks(self.archive):
                self.hash.update(chunk)
                self.size += len(chunk)
                yield sandbox_pb2.CopyInRequest(chunk=chunk)
        except Exception as e:  # a file unreadable half-way: cancel, keep nothing
            self.error = e
            self.started.wait()
            self.future.cancel()


def _copy_in(
    rpc: Rpc, sandbox_id: str, remote: str, archive: Iterator[bytes], describe: str, single_file: Optional[str]
) -> FileTransfer:
    up = _Upload(sandbox_pb2.CopyInHeader(id=sandbox_id, path=remote), archive)
    future = rpc.sandboxes.CopyIn.future(iter(up), metadata=rpc.metadata)
    up.future = future
    up.started.set()
    try:
        answer = future.result()
    except grpc.FutureCancelledError:
        answer = None
    except grpc.RpcError as e:
        if up.error is None:
            raise from_rpc_error(e) from None
        answer = None
    except BaseException:
        future.cancel()
        raise
    # A local failure is the one to report: the daemon saw a broken archive because of it.
    if up.error is not None:
        err = up.error
        why = err.strerror if isinstance(err, OSError) and err.strerror else str(err)
        where = f" {err.filename}" if isinstance(err, OSError) and err.filename else ""
        raise LocalError(f"upload: {describe}:{where} {why}".rstrip()) from None
    if answer is None:
        raise LocalError("upload: the call was cancelled")
    transfer = FileTransfer.from_proto(answer)
    _check_summary("upload", transfer, up.size, up.hash.hexdigest())
    if single_file is not None:
        transfer.file_sha256 = file_sha256(single_file)
    return transfer


def _check_summary(what: str, t: FileTransfer, size: int, sha256: str) -> None:
    if t.sha256 and (t.sha256 != sha256 or t.size_bytes != size):
        raise LocalError(
            f"{what}: the daemon audited {t.size_bytes} bytes with sha256 {t.sha256}, "
            f"but {size} bytes with sha256 {sha256} crossed"
        )


# ------------------------------------------------------------------ copy out


class _Received(io.RawIOBase):
    """The archive bytes of a CopyOut stream, as a file to read; keeps the summary and the hash."""

    def __init__(self, call: Any) -> None:
        self.call = call
        self.messages = iter(call)
        self.buf = b""
        self.hash = hashlib.sha256()
        self.size = 0
        self.summary: Optional[sandbox_pb2.FileTransfer] = None
        self.ended = False

    def readable(self) -> bool:
        return True

    def _next(self) -> bool:
        if self.ended:
            return False
        try:
            msg = next(self.messages)
        except StopIteration:
            self.ended = True
            return False
        if msg.HasField("summary"):
            self.summary = msg.summary
        if msg.chunk:
            self.hash.update(msg.chunk)
            self.size += len(msg.chunk)
            self.buf += msg.chunk
        return True

    def readinto(self, b: Any) -> int:
        while not self.buf:
            if not self._next():
                return 0
        n = min(len(b), len(self.buf))
        b[:n] = self.buf[:n]
        self.buf = self.buf[n:]
        return n

    def drain(self) -> None:
        self.buf = b""
        while self._next():
            self.buf = b""


def download(rpc: Rpc, sandbox_id: str, remote: str, local: LocalPath) -> FileTransfer:
    """Copies ``remote`` out of the sandbox to ``local`` (see the module doc)."""
    dest = os.fspath(local)
    directory, rename = _destination(dest)  # before anything is asked of the daemon
    call = rpc.sandboxes.CopyOut(sandbox_pb2.CopyOutRequest(id=sandbox_id, path=remote), metadata=rpc.metadata)
    received = _Received(call)
    stage = Path(directory) / f".sandpit-download-{secrets.token_hex(8)}"
    try:
        try:
            stage.mkdir(mode=0o700)
        except OSError as e:
            raise LocalError(f"download: creating a staging directory in {directory}: {e.strerror or e}") from None
        try:
            modes = _extract(stage, received)
            received.drain()
        except grpc.RpcError as e:
            raise from_rpc_error(e) from None
        except (OSError, tarfile.TarError, ValueError) as e:
            call.cancel()
            raise LocalError(f"download: into {dest}: {e}") from None
        if received.summary is None:
            raise LocalError("download: the copy ended without its summary")
        transfer = FileTransfer.from_proto(received.summary)
        _check_summary("download", transfer, received.size, received.hash.hexdigest())
        try:
            tops = sorted(os.listdir(stage))
            if rename is not None:
                _rename_top(stage, rename, dest, modes)
                tops = [rename]
            _merge(stage, Path(directory))
            # Directory modes last, deepest first, so that a read-only directory could be filled.
            for rel, mode in reversed(modes):
                os.chmod(Path(directory) / rel, mode)
        except OSError as e:
            raise LocalError(f"download: into {dest}: {e.strerror or e}") from None
    except BaseException:
        call.cancel()
        raise
    finally:
        _remove_tree(stage)
    landed = Path(directory) / tops[0] if len(tops) == 1 else Path(dest)
    transfer.local_path = str(landed)
    transfer.file_sha256 = file_sha256(landed)
    return transfer


def download_bytes(rpc: Rpc, sandbox_id: str, remote: str) -> Tuple[bytes, FileTransfer]:
    """The contents of the one regular file ``remote``."""
    call = rpc.sandboxes.CopyOut(sandbox_pb2.CopyOutRequest(id=sandbox_id, path=remote), metadata=rpc.metadata)
    received = _Received(call)
    data: Optional[bytes] = None
    try:
        try:
            with tarfile.open(fileobj=received, mode="r|", errorlevel=2) as tf:
                for member in tf:
                    if data is not None or not member.isreg():
                        raise LocalError(f"read_file: {remote} is not a regular file")
                    f = tf.extractfile(member)
                    assert f is not None
                    data = f.read()
            received.drain()
        except grpc.RpcError as e:
            raise from_rpc_error(e) from None
        except (OSError, tarfile.TarError) as e:
            raise LocalError(f"read_file: {remote}: {e}") from None
    except BaseException:
        call.cancel()
        raise
    if received.summary is None:
        raise LocalError("read_file: the copy ended without its summary")
    if data is None:
        raise LocalError(f"read_file: {remote} is not a regular file")
    transfer = FileTransfer.from_proto(received.summary)
    _check_summary("read_file", transfer, received.size, received.hash.hexdigest())
    transfer.file_sha256 = hashlib.sha256(data).hexdigest()
    return data, transfer


def _destination(dest: str) -> Tuple[str, Optional[str]]:
    """Where to extract, and the name the one top entry takes (None: keep its own)."""
    if os.path.isdir(dest):
        return dest, None
    name = entry_name(dest)
    if dest.endswith("/") or name == ".":
        raise LocalError(f"download: no such directory: {dest}")
    parent = os.path.dirname(dest.rstrip("/")) or "."
    if not os.path.isdir(parent):
        raise LocalError(f"download: no such directory: {parent}")
    return parent, name


def _safe_relative(name: str) -> Path:
    parts: List[str] = []
    if name.startswith("/"):
        raise ValueError(f"refused archive entry {name!r}: absolute, or climbs out with '..'")
    for part in name.split("/"):
        if part in ("", "."):
            continue
        if part == "..":
            raise ValueError(f"refused archive entry {name!r}: absolute, or climbs out with '..'")
        parts.append(part)
    return Path(*parts) if parts else Path("")


def _extract(stage: Path, source: io.RawIOBase) -> List[Tuple[Path, int]]:
    """Extracts into ``stage``; returns directories' modes to apply once in place."""
    modes: List[Tuple[Path, int]] = []
    links: List[Tuple[Path, str]] = []  # made last: nothing is written through a link the archive made
    with tarfile.open(fileobj=source, mode="r|", errorlevel=2) as tf:
        for member in tf:
            rel = _safe_relative(member.name)
            if str(rel) in ("", "."):
                continue
            target = stage / rel
            target.parent.mkdir(parents=True, exist_ok=True)
            if member.isdir():
                if not target.is_dir():
                    target.mkdir()
                modes.append((rel, member.mode & 0o777))
            elif member.type in (tarfile.REGTYPE, tarfile.AREGTYPE, tarfile.CONTTYPE):
                if os.path.lexists(target):
                    _remove_tree(target)
                fd = os.open(target, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
                with os.fdopen(fd, "wb") as out:
                    data = tf.extractfile(member)
                    assert data is not None
                    shutil.copyfileobj(data, out, CHUNK)
                    os.fchmod(out.fileno(), member.mode & 0o777)
                st = os.lstat(target)
                os.utime(target, ns=(st.st_atime_ns, int(member.mtime) * 1_000_000_000))
            elif member.issym():
                links.append((target, member.linkname))
            else:
                log.warning("sandpit: left out %s: entry type %r is not a file, directory or symbolic link",
                            rel, member.type)  # fmt: skip
    for target, link in links:
        if os.path.lexists(target):
            _remove_tree(target)
        os.symlink(link, target)
    return modes


def _rename_top(stage: Path, name: str, dest: str, modes: List[Tuple[Path, int]]) -> None:
    tops = os.listdir(stage)
    if len(tops) != 1:
        raise LocalError(
            f"download: {dest} does not exist and the archive holds {len(tops)} entries, not one: "
            "copy into a directory"
        )
    top = tops[0]
    os.rename(stage / top, stage / name)
    for i, (rel, mode) in enumerate(modes):
        if rel.parts and rel.parts[0] == top:
            modes[i] = (Path(name, *rel.parts[1:]), mode)


def _merge(src_dir: Path, dst_dir: Path) -> None:
    """Moves everything in ``src_dir`` into ``dst_dir``: directories in both are
    merged, anything else replaces what is there, but never a directory by a file."""
    for name in sorted(os.listdir(src_dir), key=os.fsencode):
        src, dst = src_dir / name, dst_dir / name
        src_is_dir = stat.S_ISDIR(os.lstat(src).st_mode)
        dst_is_dir = os.path.lexists(dst) and stat.S_ISDIR(os.lstat(dst).st_mode)
        if src_is_dir and dst_is_dir:
            _merge(src, dst)
        elif dst_is_dir:
            raise LocalError(f"download: cannot replace directory {dst} with a file")
        else:
            os.replace(src, dst)


def _remove_tree(path: Path) -> None:
    """Removes a file or a tree, making directories writable on the way."""
    try:
        st = os.lstat(path)
    except FileNotFoundError:
        return
    if not stat.S_ISDIR(st.st_mode):
        os.remove(path)
        return
    try:
        os.chmod(path, 0o700)
    except OSError:
        pass
    for name in os.listdir(path):
        _remove_tree(Path(path) / name)
    os.rmdir(path)
