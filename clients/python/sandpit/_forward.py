"""``Sandbox.port_forward``: a local TCP port whose connections reach a port
on the sandbox's own loopback, each over one PortForward stream, as
``sandpit port-forward`` does (``crates/sandpit-cli/src/forward.rs``)."""

from __future__ import annotations

import logging
import selectors
import socket
import threading
from typing import Any, Iterator, List, Optional, Set

import grpc

from ._proto.sandpit.v1 import sandbox_pb2
from ._rpc import Rpc
from .errors import InvalidArgument, LocalError, SandpitError, from_rpc_error

log = logging.getLogger("sandpit")

_RECV = 64 << 10


class PortForward:
    """Listens on ``address:local_port`` and carries each connection to
    ``127.0.0.1:remote`` inside the sandbox (the profile must list the port).

    Use it as a context manager (or call :meth:`start` and :meth:`close`)::

        with sb.port_forward(8888) as pf:
            print(pf.url)          # http://127.0.0.1:54321

    A connection the daemon refuses (a port the profile does not list, nothing
    listening inside, the sandbox gone) is closed; its error is logged and kept
    in :attr:`errors`. Daemon notices (e.g. the sandbox expires soon) are
    logged once each and kept in :attr:`notices`.
    """

    def __init__(self, rpc: Rpc, sandbox_id: str, remote: int, local: Optional[int] = None,
                 address: str = "127.0.0.1") -> None:  # fmt: skip
        if not isinstance(remote, int) or not 1 <= remote <= 65535:
            raise InvalidArgument(f"remote port {remote!r} is not a number from 1 to 65535")
        if local is not None and (not isinstance(local, int) or not 0 <= local <= 65535):
            raise InvalidArgument(f"local port {local!r} is not a number from 0 to 65535")
        self._rpc = rpc
        self.sandbox_id = sandbox_id
        self.remote_port = remote
        self._want_local = local or 0
        self.host = address
        self.local_port = 0
        self.errors: List[SandpitError] = []
        self.notices: List[str] = []
        self.connections = 0
        self._listener: Optional[socket.socket] = None
        self._wake_r: Optional[socket.socket] = None
        self._wake_w: Optional[socket.socket] = None
        self._closing = threading.Event()
        self._lock = threading.Lock()
        self._calls: Set[Any] = set()
        self._socks: Set[socket.socket] = set()
        self._threads: List[threading.Thread] = []

    @property
    def address(self) -> str:
        """``host:port`` the forward listens on (``[::1]:port`` for IPv6)."""
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"{host}:{self.local_port}"

    @property
    def url(self) -> str:
        """``http://host:port/``, for a web server (a notebook) behind the forward."""
        return f"http://{self.address}/"

    def start(self) -> "PortForward":
        """Binds the local port and starts accepting connections."""
        if self._listener is not None:
            return self
        try:
            family = socket.AF_INET6 if ":" in self.host else socket.AF_INET
            listener = socket.socket(family, socket.SOCK_STREAM)
            listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            listener.bind((self.host, self._want_local))
            listener.listen(64)
        except OSError as e:
            raise LocalError(f"port-forward: listening on {self.host}:{self._want_local}: {e.strerror or e}") from None
        self._listener = listener
        self.local_port = listener.getsockname()[1]
        self._wake_r, self._wake_w = socket.socketpair()
        t = threading.Thread(target=self._accept_loop, name=f"sandpit-forward-{self.local_port}", daemon=True)
        t.start()
        self._threads.append(t)
        log.info("Forwarding from %s -> %s:%d", self.address, self.sandbox_id, self.remote_port)
        return self

    def close(self) -> None:
        """Stops listening and ends every connection still open."""
        if self._closing.is_set():
            return
        self._closing.set()
        if self._wake_w is not None:
            try:
                self._wake_w.send(b"x")
            except OSError:
                pass
        with self._lock:
            calls, socks = list(self._calls), list(self._socks)
        for call in calls:
            call.cancel()
        for s in socks:
            _shutdown(s)
        for t in list(self._threads):
            t.join(timeout=5)
        for sock in (self._listener, self._wake_r, self._wake_w):
            if sock is not None:
                sock.close()

    def __enter__(self) -> "PortForward":
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"PortForward({self.address} -> {self.sandbox_id}:{self.remote_port})"

    # ---------------------------------------------------------------- internals

    def _accept_loop(self) -> None:
        assert self._listener is not None and self._wake_r is not None
        sel = selectors.DefaultSelector()
        sel.register(self._listener, selectors.EVENT_READ, "accept")
        sel.register(self._wake_r, selectors.EVENT_READ, "wake")
        try:
            while not self._closing.is_set():
                for key, _ in sel.select():
                    if key.data == "wake":
                        return
                    try:
                        conn, peer = self._listener.accept()
                    except OSError as e:
                        if not self._closing.is_set():
                            log.warning("sandpit: port-forward: accept: %s", e)
                        continue
                    self.connections += 1
                    t = threading.Thread(target=self._carry, args=(conn, peer), daemon=True,
                                         name=f"sandpit-forward-conn-{peer[1]}")  # fmt: skip
                    with self._lock:
                        self._threads = [x for x in self._threads if x.is_alive()]
                        self._threads.append(t)
                    t.start()
        finally:
            sel.close()

    def _notice(self, text: str) -> None:
        with self._lock:
            if text in self.notices:
                return
            self.notices.append(text)
        log.warning("sandpit: %s", text)

    def _carry(self, sock: socket.socket, peer: Any) -> None:
        """One connection, both ways, until the sandbox's side closes."""
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        header = sandbox_pb2.PortForwardHeader(id=self.sandbox_id, port=self.remote_port)

        def requests() -> Iterator[sandbox_pb2.PortForwardRequest]:
            yield sandbox_pb2.PortForwardRequest(header=header)
            while True:
                try:
                    data = sock.recv(_RECV)
                except OSError:
                    break
                if not data:
                    break  # the local side is done sending: half-close the sandbox's
                yield sandbox_pb2.PortForwardRequest(data=data)

        with self._lock:
            if self._closing.is_set():
                sock.close()
                return
            self._socks.add(sock)
        call = self._rpc.sandboxes.PortForward(requests(), metadata=self._rpc.metadata)
        with self._lock:
            self._calls.add(call)
        try:
            for msg in call:
                if msg.notice:
                    self._notice(msg.notice)
                if msg.data:
                    sock.sendall(msg.data)
        except grpc.RpcError as e:
            if not (self._closing.is_set() and e.code() == grpc.StatusCode.CANCELLED):
                err = from_rpc_error(e)
                self.errors.append(err)
                log.warning("sandpit: port-forward: connection from %s:%s: %s", peer[0], peer[1], err)
        except OSError as e:  # the local peer went away
            call.cancel()
            log.debug("sandpit: port-forward: connection from %s:%s: %s", peer[0], peer[1], e)
        finally:
            with self._lock:
                self._calls.discard(call)
                self._socks.discard(sock)
            _shutdown(sock)
            sock.close()


def _shutdown(sock: socket.socket) -> None:
    try:
        sock.shutdown(socket.SHUT_RDWR)
    except OSError:
        pass
