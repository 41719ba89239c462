"""A sandbox: its record, and what can be done with it."""

from __future__ import annotations

import logging
from dataclasses import dataclass, field, fields
from datetime import datetime, timedelta, timezone
from types import TracebackType
from typing import TYPE_CHECKING, Any, Callable, List, Mapping, Optional, Sequence, Type, Union

from . import _exec, _transfer
from ._forward import PortForward
from ._proto.sandpit.v1 import sandbox_pb2
from ._units import TTL, to_datetime
from .errors import SandpitError
from .models import ExecResult, FileTransfer, Resources, SandboxEventKind, SandboxState

if TYPE_CHECKING:
    from ._rpc import Stream
    from .client import Client

log = logging.getLogger("sandpit")

__all__ = ["Sandbox", "SandboxEvent"]


@dataclass(eq=False)
class Sandbox:
    """A sandbox as the daemon last described it, bound to the client that fetched it.

    Its methods act on the sandbox; :meth:`refresh`, :meth:`extend` and
    :meth:`delete` also bring the fields up to date. As a context manager
    it deletes the sandbox on the way out::

        with client.create(experiment=exp, profile="official-none", classification="OFFICIAL") as sb:
            print(sb.exec("uname -a").stdout_text)
    """

    id: str
    experiment: str
    owner: str
    team: str
    profile: str
    classification: str
    image: str
    state: SandboxState
    created_at: Optional[datetime]
    expires_at: Optional[datetime]
    max_expires_at: Optional[datetime]
    ended_at: Optional[datetime]
    state_reason: str
    exit_code: Optional[int]
    oom_killed: bool
    container_id: str
    node: str
    command: List[str]
    resources: Resources
    network_mode: str
    datasets: List[str]
    address: str
    raw: Any = field(default=None, repr=False)
    _client: Optional["Client"] = field(default=None, repr=False)

    @classmethod
    def from_proto(cls, m: sandbox_pb2.Sandbox, client: Optional["Client"] = None) -> "Sandbox":
        return cls(
            id=m.id,
            experiment=m.experiment,
            owner=m.owner,
            team=m.team,
            profile=m.profile,
            classification=m.classification,
            image=m.image,
            state=SandboxState.from_proto(m.state, sandbox_pb2.SandboxState),
            created_at=to_datetime(m, "created_at"),
            expires_at=to_datetime(m, "expires_at"),
            max_expires_at=to_datetime(m, "max_expires_at"),
            ended_at=to_datetime(m, "ended_at"),
            state_reason=m.state_reason,
            exit_code=m.exit_code if m.HasField("exit_code") else None,
            oom_killed=m.oom_killed,
            container_id=m.container_id,
            node=m.node,
            command=list(m.command),
            resources=Resources.from_proto(m.resources),
            network_mode=m.network_mode,
            datasets=list(m.datasets),
            address=m.address,
            raw=m,
            _client=client,
        )

    def __eq__(self, other: object) -> bool:
        """Equal when the daemon described both the same way (same id, same state, ...)."""
        return isinstance(other, Sandbox) and other.raw == self.raw

    def __hash__(self) -> int:
        return hash(("sandbox", self.id))

    # ------------------------------------------------------------------ state

    @property
    def client(self) -> "Client":
        if self._client is None:
            raise SandpitError("this Sandbox is not bound to a Client", code="LOCAL")
        return self._client

    @property
    def time_left(self) -> Optional[timedelta]:
        """Until expiry, from now (never negative); None when it has no expiry."""
        if self.expires_at is None:
            return None
        return max(self.expires_at - datetime.now(timezone.utc), timedelta(0))

    def _update(self, m: sandbox_pb2.Sandbox) -> "Sandbox":
        fresh = Sandbox.from_proto(m, self._client)
        for f in fields(self):
            setattr(self, f.name, getattr(fresh, f.name))
        return self

    def refresh(self) -> "Sandbox":
        """Fetches the record again (GetSandbox)."""
        rpc = self.client._rpc
        return self._update(rpc.unary(rpc.sandboxes.GetSandbox, sandbox_pb2.GetSandboxRequest(id=self.id)))

    def extend(self, ttl: TTL) -> "Sandbox":
        """Sets a new ttl counted from now, within the profile's max ttl and max lifetime."""
        return self._update(self.client._extend(self.id, ttl))

    def delete(self) -> "Sandbox":
        """Kills and removes the sandbox (idempotent: deleting an ended one returns its record)."""
        return self._update(self.client._delete(self.id))

    def watch(self) -> "Stream[SandboxEvent]":
        """This sandbox's lifecycle events as they happen (iterate; ``cancel()`` to stop)."""
        return self.client.watch(id=self.id)

    def __enter__(self) -> "Sandbox":
        return self

    def __exit__(self, exc_type: Optional[Type[BaseException]], exc: Optional[BaseException],
                 tb: Optional[TracebackType]) -> None:  # fmt: skip
        try:
            self.delete()
        except SandpitError as e:
            if exc is None:
                raise
            # The error that ended the block matters more; this one is logged.
            log.warning("sandpit: deleting %s after an error: %s", self.id, e)

    # ------------------------------------------------------------------ work

    def exec(
        self,
        cmd: Union[str, Sequence[str]],
        *,
        on_stdout: Optional[Callable[[bytes], None]] = None,
        on_stderr: Optional[Callable[[bytes], None]] = None,
        timeout: Optional[TTL] = None,
        env: Union[Mapping[str, str], Sequence[str], None] = None,
        workdir: Optional[str] = None,
        stdin: Union[bytes, str, Any, None] = None,
        on_notice: Optional[Callable[[str], None]] = None,
        check: bool = False,
    ) -> ExecResult:
        """Runs a command in the sandbox and waits for it.

        Args:
            cmd: a list of str is the argv as given (no shell); a str is run by
                ``sh -c`` (so it needs a shell in the image).
            on_stdout, on_stderr: called with each chunk of output as it arrives
                (all of it is in the result too).
            timeout: kill the command (and everything it started) after this
                long: ``"30s"``, ``"10m"``, seconds or a timedelta. Unset: the
                daemon's exec timeout. A command that runs past it gives
                ``exit_code`` 124 and ``timed_out`` true.
            env: ``{"KEY": "value"}`` or ``["KEY=value"]``.
            workdir: the directory it runs in.
            stdin: bytes, str or a binary file to feed its standard input
                (ExecInteractive); unset, it has none.
            on_notice: called with each daemon notice (e.g. the sandbox expires
                soon); they are logged on the ``sandpit`` logger and kept in
                ``ExecResult.notices`` too.
            check: raise :class:`~sandpit.CommandFailed` when the exit code is not 0.

        Raises:
            SandpitError: the daemon refused or cut the exec (e.g.
                ``FailedPrecondition`` when the sandbox ended,
                ``ResourceExhausted`` past the profile's output cap); its
                ``exec_result`` holds the output until then.
        """
        result = _exec.run(
            self.client._rpc,
            self.id,
            cmd,
            env=env,
            workdir=workdir,
            timeout=timeout,
            stdin=stdin,
            on_stdout=on_stdout,
            on_stderr=on_stderr,
            on_notice=on_notice,
        )
        return result.check() if check else result

    def upload(self, local: "_transfer.LocalPath", remote: str) -> FileTransfer:
        """Copies a local file or directory tree into the sandbox, as ``docker cp`` / ``sandpit cp`` do.

        ``remote`` is an absolute path under a writable place (``/tmp``,
        ``/workspace``): an existing directory receives the copy; a path that
        does not exist is the copy's new name. Returns the transfer as audited
        (archive size and SHA-256, and the file's own SHA-256 for a single file).
        """
        return _transfer.upload(self.client._rpc, self.id, local, remote)

    def download(self, remote: str, local: "_transfer.LocalPath") -> FileTransfer:
        """Copies a file or directory tree out of the sandbox, as ``docker cp`` / ``sandpit cp`` do.

        An existing local directory receives the copy; a path that does not
        exist (its parent must) is the copy's new name. All or nothing: a
        transfer that fails leaves nothing behind. ``local_path`` in the result
        is where it landed.
        """
        return _transfer.download(self.client._rpc, self.id, remote, local)

    def write_file(self, remote: str, data: Union[bytes, str], mode: int = 0o644) -> FileTransfer:
        """Writes ``data`` (str as UTF-8) to the file ``remote``; its directory must exist."""
        raw = data.encode() if isinstance(data, str) else bytes(data)
        return _transfer.upload_bytes(self.client._rpc, self.id, raw, remote, mode)

    def read_file(self, remote: str) -> bytes:
        """The contents of the regular file ``remote``."""
        data, _ = _transfer.download_bytes(self.client._rpc, self.id, remote)
        return data

    def port_forward(self, remote: int, local: Optional[int] = None, *, address: str = "127.0.0.1") -> PortForward:
        """Forwards ``address:local`` to port ``remote`` on the sandbox's loopback.

        ``local`` None or 0 picks a free port (see ``.local_port``); give
        ``local=remote`` for the CLI's ``sandpit port-forward ID PORT``. Use the
        result as a context manager; it listens from ``__enter__`` (or
        :meth:`PortForward.start`) until ``__exit__`` (or ``close()``).
        """
        return PortForward(self.client._rpc, self.id, remote, local, address)


@dataclass
class SandboxEvent:
    """A lifecycle event from ``watch()``."""

    kind: SandboxEventKind
    time: Optional[datetime]
    sandbox: Sandbox
    message: str

    @classmethod
    def from_proto(cls, m: sandbox_pb2.SandboxEvent, client: Optional["Client"] = None) -> "SandboxEvent":
        return cls(
            kind=SandboxEventKind.from_proto(m.kind, sandbox_pb2.SandboxEventKind),
            time=to_datetime(m, "time"),
            sandbox=Sandbox.from_proto(m.sandbox, client),
            message=m.message,
        )
