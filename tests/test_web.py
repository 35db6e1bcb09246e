"""cicd.web: uvicorn in several processes, each listening on a socket of its own on one port."""

from __future__ import annotations

import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator

import psutil
import pytest

from cicd.web import listening_sockets

HOST = "127.0.0.1"


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind((HOST, 0))
        return sock.getsockname()[1]


def wait_until(condition, *, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if condition():
            return
        time.sleep(0.1)
    raise AssertionError(f"timed out waiting for {what}")


def answers(port: int) -> bool:
    try:
        with socket.create_connection((HOST, port), timeout=2) as sock:
            sock.sendall(b"GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n")
            return sock.recv(64).startswith(b"HTTP/1.1 ")
    except OSError:
        return False


@pytest.fixture
def web() -> Iterator[tuple[subprocess.Popen, int]]:
    port = free_port()
    command = [sys.executable, "-m", "cicd.web", "--port", str(port), "--workers", "2", "--log-level", "warning"]
    server = subprocess.Popen(command)  # noqa: S603 (our own interpreter)
    try:
        wait_until(lambda: answers(port), timeout=60, what="the web server to answer")
        yield server, port
    finally:
        if server.poll() is None:
            server.kill()
        for child in psutil.Process().children(recursive=True):
            child.kill()
        server.wait(timeout=30)


def serving_processes(server: subprocess.Popen) -> list[psutil.Process]:
    """The uvicorn processes (the launcher's other child is multiprocessing's resource tracker)."""
    children = psutil.Process(server.pid).children()
    return [child for child in children if "spawn_main" in " ".join(child.cmdline())]


def test_a_port_in_use_is_refused_even_by_a_listener_that_would_share_it() -> None:
    port = free_port()
    with socket.socket() as other:
        other.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        other.bind((HOST, port))
        other.listen()
        with pytest.raises(OSError):
            listening_sockets(HOST, port, 2)


def test_the_sockets_share_one_port_and_a_second_server_cannot_join_them() -> None:
    sockets = listening_sockets(HOST, 0, 3)
    try:
        ports = {sock.getsockname()[1] for sock in sockets}
        assert len(ports) == 1
        with pytest.raises(OSError):
            listening_sockets(HOST, ports.pop(), 2)
    finally:
        for sock in sockets:
            sock.close()


def test_keep_alive_connections_opened_in_a_row_are_spread_over_both_processes(web) -> None:
    """uvicorn --workers put 43 of 50 such connections on one process here; with a socket per
    process the kernel spreads them by a hash of their addresses (of 60, fewer than 12 on one
    process has a chance of about 1 in 300,000)."""
    server, port = web
    clients = [socket.create_connection((HOST, port), timeout=10) for _ in range(60)]
    try:
        for client in clients:  # answered: accepted by a process
            client.sendall(b"GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n")
            assert client.recv(64).startswith(b"HTTP/1.1 ")
        counts = [
            sum(1 for c in process.net_connections("tcp") if c.laddr.port == port and c.status == "ESTABLISHED")
            for process in serving_processes(server)
        ]
        assert sum(counts) == 60
        assert len(counts) == 2 and min(counts) >= 12, counts
    finally:
        for client in clients:
            client.close()


def test_sigterm_stops_every_process_and_exits_0(web) -> None:
    server, _ = web
    processes = serving_processes(server)
    server.send_signal(signal.SIGTERM)
    assert server.wait(timeout=30) == 0
    assert not any(process.is_running() and process.status() != psutil.STATUS_ZOMBIE for process in processes)


def test_a_process_that_dies_stops_the_others_and_the_exit_code_says_how(web) -> None:
    server, _ = web
    first, second = serving_processes(server)
    first.kill()
    assert server.wait(timeout=30) == 128 + signal.SIGKILL
    second.wait(timeout=5)
