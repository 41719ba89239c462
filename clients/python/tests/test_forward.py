"""Sandbox.port_forward: a local port whose connections each ride one PortForward stream."""

from __future__ import annotations

import hashlib
import socket
import threading
import time
import urllib.request
from typing import List

import pytest

import sandpit


def _get(url: str) -> bytes:
    with urllib.request.urlopen(url, timeout=30) as resp:
        assert resp.status == 200
        return resp.read()


def test_many_connections_at_once_and_a_large_answer(sandbox: sandpit.Sandbox) -> None:
    blob = bytes(range(256)) * 8192  # 2 MiB
    sandbox.write_file("/tmp/blob.bin", blob)
    sandbox.write_file("/tmp/small.txt", "small\n")
    with sandbox.port_forward(8080, 0) as pf:
        got: List[bytes] = []
        threads = [threading.Thread(target=lambda: got.append(_get(pf.url + "small.txt"))) for _ in range(6)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(60)
        assert got == [b"small\n"] * 6
        assert hashlib.sha256(_get(pf.url + "blob.bin")).digest() == hashlib.sha256(blob).digest()
        assert pf.connections == 7 and pf.errors == []


def test_a_chosen_local_port_and_raw_bytes_both_ways(sandbox: sandpit.Sandbox) -> None:
    probe = socket.socket()
    probe.bind(("127.0.0.1", 0))
    port = probe.getsockname()[1]
    probe.close()
    sandbox.write_file("/tmp/x.txt", "xyz")
    with sandbox.port_forward(8080, port) as pf:
        assert pf.local_port == port
        with socket.create_connection(("127.0.0.1", port), timeout=20) as s:
            s.sendall(b"GET /x.txt HTTP/1.0\r\n\r\n")
            answer = b""
            while chunk := s.recv(4096):
                answer += chunk
        assert answer.startswith(b"HTTP/1.") and answer.endswith(b"\r\n\r\nxyz"), answer


def test_refused_connections_are_closed_and_their_errors_kept(sandbox: sandpit.Sandbox) -> None:
    # 9999: not a port the profile lists; 8081: listed, but nothing listens there.
    for port, cls, words in [(9999, sandpit.PermissionDenied, "port-forward"), (8081, sandpit.Unavailable, "8081")]:
        with sandbox.port_forward(port) as pf:
            with socket.create_connection(("127.0.0.1", pf.local_port), timeout=20) as s:
                s.settimeout(20)
                assert s.recv(100) == b"", "the connection is closed"
            deadline = time.monotonic() + 10
            while not pf.errors:
                assert time.monotonic() < deadline
                time.sleep(0.05)
            assert isinstance(pf.errors[0], cls) and words in pf.errors[0].message, pf.errors


def test_bad_ports_are_invalid_arguments(sandbox: sandpit.Sandbox) -> None:
    for remote, local in [(0, None), (70000, None), (8080, -1)]:
        with pytest.raises(sandpit.InvalidArgument):
            sandbox.port_forward(remote, local)


def test_closing_the_forward_ends_open_connections(sandbox: sandpit.Sandbox) -> None:
    pf = sandbox.port_forward(8080).start()
    s = socket.create_connection(("127.0.0.1", pf.local_port), timeout=20)
    s.sendall(b"GET /slow HTTP/1.1\r\nHost: x\r\n")  # an unfinished request keeps it open
    time.sleep(0.3)
    start = time.monotonic()
    pf.close()
    assert time.monotonic() - start < 6
    s.settimeout(10)
    try:
        assert s.recv(100) == b""
    except ConnectionResetError:
        pass
    s.close()
    with pytest.raises(OSError):
        socket.create_connection(("127.0.0.1", pf.local_port), timeout=2)
