"""``Sandbox.exec``: a command's output streamed as it comes, and its exit code."""

from __future__ import annotations

import io
import logging
import threading
from typing import IO, Callable, Iterator, List, Mapping, Optional, Sequence, Union

import grpc

from ._proto.sandpit.v1 import sandbox_pb2
from ._rpc import Rpc
from ._units import TTL, duration_proto
from .errors import InvalidArgument, from_rpc_error
from .models import ExecResult

log = logging.getLogger("sandpit")

Command = Union[str, Sequence[str]]
Stdin = Union[bytes, str, IO[bytes], None]
Chunk = Callable[[bytes], None]

#: Bytes per stdin message.
_STDIN_CHUNK = 32 << 10


def argv(cmd: Command) -> List[str]:
    """A list is the argv as it is; a string is run by ``sh -c``."""
    if isinstance(cmd, str):
        return ["sh", "-c", cmd]
    if isinstance(cmd, (bytes, bytearray)):
        raise InvalidArgument("command: give a str (run by sh -c) or a list of str")
    args = list(cmd)
    if not args or not all(isinstance(a, str) for a in args):
        raise InvalidArgument("command: give a str (run by sh -c) or a non-empty list of str")
    return args


def env_list(env: Union[Mapping[str, str], Sequence[str], None]) -> List[str]:
    if env is None:
        return []
    if isinstance(env, Mapping):
        return [f"{k}={v}" for k, v in env.items()]
    return list(env)


def run(
    rpc: Rpc,
    sandbox_id: str,
    cmd: Command,
    *,
    env: Union[Mapping[str, str], Sequence[str], None] = None,
    workdir: Optional[str] = None,
    timeout: Optional[TTL] = None,
    stdin: Stdin = None,
    on_stdout: Optional[Chunk] = None,
    on_stderr: Optional[Chunk] = None,
    on_notice: Optional[Callable[[str], None]] = None,
) -> ExecResult:
    req = sandbox_pb2.ExecRequest(id=sandbox_id, command=argv(cmd), env=env_list(env), workdir=workdir or "")
    if timeout is not None:
        req.timeout.CopyFrom(duration_proto(timeout, "timeout"))

    done = threading.Event()
    if stdin is None:
        call = rpc.sandboxes.Exec(req, metadata=rpc.metadata)
    else:
        call = rpc.sandboxes.ExecInteractive(_interactive(req, stdin, done), metadata=rpc.metadata)

    out: List[bytes] = []
    err: List[bytes] = []
    notices: List[str] = []
    code: Optional[int] = None
    try:
        for msg in call:
            kind = msg.WhichOneof("output")
            if kind == "stdout":
                out.append(msg.stdout)
                if on_stdout is not None:
                    on_stdout(msg.stdout)
            elif kind == "stderr":
                err.append(msg.stderr)
                if on_stderr is not None:
                    on_stderr(msg.stderr)
            elif kind == "exit_code":
                code = msg.exit_code
            elif kind == "notice":
                notices.append(msg.notice)
                log.warning("sandpit: %s", msg.notice)
                if on_notice is not None:
                    on_notice(msg.notice)
    except grpc.RpcError as e:
        partial = ExecResult(exit_code=-1, stdout=b"".join(out), stderr=b"".join(err), notices=notices)
        if e.code() == grpc.StatusCode.DEADLINE_EXCEEDED:
            # As timeout(1) and `sandpit exec` say it: 124.
            partial.exit_code, partial.timed_out = 124, True
            partial.notices.append(f"DEADLINE_EXCEEDED: {e.details()}")
            return partial
        error = from_rpc_error(e)
        error.exec_result = partial
        raise error from None
    except BaseException:
        call.cancel()  # a callback failed, or Ctrl-C: the daemon kills the command
        raise
    finally:
        done.set()
    if code is None:
        from .errors import LocalError

        error = LocalError("the exec stream ended without an exit code")
        error.exec_result = ExecResult(exit_code=-1, stdout=b"".join(out), stderr=b"".join(err), notices=notices)
        raise error
    return ExecResult(exit_code=int(code), stdout=b"".join(out), stderr=b"".join(err), notices=notices)


def _interactive(
    req: sandbox_pb2.ExecRequest, stdin: Stdin, done: threading.Event
) -> Iterator[sandbox_pb2.ExecInteractiveRequest]:
    """The request, standard input, its end; then held open until the command ends
    (an ended request stream would read as the client leaving)."""
    yield sandbox_pb2.ExecInteractiveRequest(start=req)
    source: IO[bytes]
    if isinstance(stdin, str):
        source = io.BytesIO(stdin.encode())
    elif isinstance(stdin, (bytes, bytearray, memoryview)):
        source = io.BytesIO(bytes(stdin))
    else:
        source = stdin  # type: ignore[assignment]
    while not done.is_set():
        chunk = source.read(_STDIN_CHUNK)
        if not chunk:
            break
        yield sandbox_pb2.ExecInteractiveRequest(stdin=chunk)
    yield sandbox_pb2.ExecInteractiveRequest(close_stdin=True)
    done.wait()
