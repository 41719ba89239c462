"""Calls with the caller's credentials, and gRPC errors translated on the way out."""

from __future__ import annotations

import threading
from typing import Any, Callable, Generic, Iterator, List, Optional, Sequence, Tuple, TypeVar

import grpc

from .errors import SandpitError, from_rpc_error

T = TypeVar("T")
Metadata = Sequence[Tuple[str, str]]


class Rpc:
    """The channel, the stubs and the metadata every call carries."""

    def __init__(self, channel: grpc.Channel, metadata: Metadata, timeout: Optional[float]) -> None:
        from ._proto.sandpit.v1 import audit_pb2_grpc, profile_pb2_grpc, register_pb2_grpc, sandbox_pb2_grpc

        self.channel = channel
        self.metadata = tuple(metadata)
        self.timeout = timeout
        self.sandboxes = sandbox_pb2_grpc.SandboxServiceStub(channel)
        self.register = register_pb2_grpc.RegisterServiceStub(channel)
        self.audit = audit_pb2_grpc.AuditServiceStub(channel)
        self.profiles = profile_pb2_grpc.ProfileServiceStub(channel)

    def unary(self, method: Callable[..., Any], request: Any, timeout: Optional[float] = None) -> Any:
        """One request, one answer; a failure is raised as a :class:`SandpitError`."""
        try:
            return method(request, metadata=self.metadata, timeout=timeout if timeout is not None else self.timeout)
        except grpc.RpcError as e:
            raise from_rpc_error(e) from None

    def stream(self, method: Callable[..., Any], request: Any, convert: Callable[[Any], T]) -> "Stream[T]":
        """A server stream, e.g. WatchSandboxes (no deadline: it runs until cancelled)."""
        try:
            call = method(request, metadata=self.metadata)
        except grpc.RpcError as e:
            raise from_rpc_error(e) from None
        return Stream(call, convert)


class Stream(Generic[T]):
    """A stream of results from the daemon (events, audit records).

    Iterate it; :meth:`cancel` (or leaving a ``with`` block) ends it, after
    which iteration stops quietly. A failure is raised as a
    :class:`~sandpit.SandpitError`.
    """

    def __init__(self, call: Any, convert: Callable[[Any], T]) -> None:
        self._call = call
        self._convert = convert
        self._cancelled = threading.Event()

    def __iter__(self) -> Iterator[T]:
        try:
            for msg in self._call:
                yield self._convert(msg)
        except grpc.RpcError as e:
            if self._cancelled.is_set() and e.code() == grpc.StatusCode.CANCELLED:
                return
            raise from_rpc_error(e) from None

    def wait_ready(self, timeout: Optional[float] = None) -> "Stream[T]":
        """Blocks until the daemon has accepted the stream (sent its headers):
        what happens from then on is seen. Raises the daemon's refusal, if any."""
        done = threading.Event()
        box: List[grpc.RpcError] = []

        def wait() -> None:
            try:
                self._call.initial_metadata()
            except grpc.RpcError as e:  # pragma: no cover - refusals come with the headers
                box.append(e)
            finally:
                done.set()

        threading.Thread(target=wait, daemon=True).start()
        if not done.wait(timeout):
            from .errors import DeadlineExceeded

            raise DeadlineExceeded(f"the stream was not accepted within {timeout}s")
        if self._call.done() and self._call.code() != grpc.StatusCode.OK and not self._cancelled.is_set():
            raise from_rpc_error(self._call)
        return self

    def cancel(self) -> None:
        """Ends the stream (from any thread)."""
        self._cancelled.set()
        self._call.cancel()

    close = cancel

    def __enter__(self) -> "Stream[T]":
        return self

    def __exit__(self, *exc: object) -> None:
        self.cancel()


def translate(err: BaseException) -> BaseException:
    """A grpc.RpcError as a SandpitError; anything else as it is."""
    if isinstance(err, grpc.RpcError) and not isinstance(err, SandpitError):
        return from_rpc_error(err)
    return err
