"""`manage.py up`: what it starts, and that it starts and stops the whole system cleanly."""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from pathlib import Path

import psutil
import pytest
from django.conf import settings

from pipelines.management.commands import up

ANY_ADDRESS = "0.0.0.0"  # noqa: S104 (only formatted into arguments here)
MANAGE = str(Path(settings.BASE_DIR) / "manage.py")


def test_web_worker_and_beat_are_started_with_the_database_scheduler(monkeypatch) -> None:
    monkeypatch.setattr(up, "get_commands", lambda: {"migrate": "django.core"})
    processes = up.build_processes(host=ANY_ADDRESS, port=9000, concurrency=2, celery_loglevel="info", web_workers=3)
    specs = {spec.name: spec.argv for spec in processes}
    assert list(specs) == ["web", "worker", "beat"]
    assert specs["web"][1:] == ["-m", "cicd.web", "--host", ANY_ADDRESS, "--port", "9000", "--workers", "3"]
    worker = specs["worker"]
    assert worker[worker.index("--concurrency") + 1] == "2"
    assert "default" in worker[worker.index("-Q") + 1].split(",")
    beat = specs["beat"]
    assert beat[beat.index("--scheduler") + 1] == "django_celery_beat.schedulers:DatabaseScheduler"


def test_the_runner_is_started_only_when_its_command_exists(monkeypatch) -> None:
    monkeypatch.setattr(up, "get_commands", lambda: {"runner": "runners"})
    processes = up.build_processes(host="h", port=1, concurrency=1, celery_loglevel="info", stop_timeout=10)
    specs = {spec.name: spec.argv for spec in processes}
    # It stops within the supervisor's timeout: its grace period for running jobs is shorter.
    assert specs["runner"] == [sys.executable, MANAGE, "runner", "--grace-period", "8"]


def test_children_get_the_same_state_directory_and_the_base_url(monkeypatch) -> None:
    monkeypatch.delenv("CONVEYOR_BASE_URL", raising=False)
    env = up.child_environment(base_url="http://127.0.0.1:9000")
    assert env["CONVEYOR_VAR_DIR"] == str(up.embedded.var_dir())
    assert env["CONVEYOR_BASE_URL"] == "http://127.0.0.1:9000"


def test_a_unix_socket_redis_becomes_a_kombu_broker_url() -> None:
    # kombu does not understand redis-py's unix:// spelling; settings translate it.
    code = "from django.conf import settings; print(settings.CELERY_BROKER_URL)"
    env = {**os.environ, "REDIS_URL": "unix:///srv/conveyor/run/redis.sock", "DJANGO_SETTINGS_MODULE": "cicd.settings"}
    env.pop("CELERY_BROKER_URL", None)
    out = subprocess.run(
        [sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True, cwd=settings.BASE_DIR
    )
    assert out.stdout.strip() == "redis+socket:///srv/conveyor/run/redis.sock"


def test_an_explicit_base_url_is_kept(monkeypatch) -> None:
    monkeypatch.setenv("CONVEYOR_BASE_URL", "https://ci.example.test")
    assert up.child_environment(base_url="http://127.0.0.1:9000")["CONVEYOR_BASE_URL"] == "https://ci.example.test"


@pytest.mark.parametrize(
    ("host", "expected"), [(ANY_ADDRESS, "127.0.0.1"), ("::", "127.0.0.1"), ("::1", "[::1]"), ("ci.local", "ci.local")]
)
def test_url_host(host: str, expected: str) -> None:
    assert up.url_host(host) == expected


def test_up_refuses_fewer_than_one_web_worker() -> None:
    from django.core.management import CommandError, call_command

    with pytest.raises(CommandError, match="--web-workers must be at least 1"):
        call_command("up", "--port", str(_free_port()), "--web-workers", "0")


def test_up_refuses_a_port_that_is_taken() -> None:
    from django.core.management import CommandError, call_command

    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        with pytest.raises(CommandError, match="already in use"):
            call_command("up", "--port", str(port))


# -- end to end ------------------------------------------------------------------------------


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def _healthz(port: int) -> tuple[int, dict] | None:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/healthz", timeout=3) as response:  # noqa: S310
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read() or b"{}")
    except OSError:
        return None


class UpProcess:
    """`manage.py up` in its own session, its output collected in a file."""

    def __init__(self, var_dir: Path, port: int) -> None:
        self.port = port
        self.log_path = var_dir.parent / f"up-{port}-{time.monotonic_ns()}.log"
        env = {k: v for k, v in os.environ.items() if k not in {"DATABASE_URL", "REDIS_URL", "CELERY_BROKER_URL"}}
        env["CONVEYOR_VAR_DIR"] = str(var_dir)
        env.pop("CONVEYOR_BASE_URL", None)
        with open(self.log_path, "wb") as log:
            self.process = subprocess.Popen(
                [sys.executable, MANAGE, "up", "--port", str(port), "--stop-timeout", "8"],
                cwd=settings.BASE_DIR,
                env=env,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )

    @property
    def output(self) -> str:
        return self.log_path.read_text(errors="replace")

    def wait_healthy(self, timeout: float = 90) -> dict:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            assert self.process.poll() is None, f"manage.py up exited early:\n{self.output}"
            result = _healthz(self.port)
            # The banner follows as soon as the supervisor sees the port open.
            if result and result[0] == 200 and "Conveyor is running" in self.output:
                return result[1]
            time.sleep(0.5)
        raise AssertionError(f"no banner and /healthz 200 within {timeout}s:\n{self.output}")

    def descendants(self) -> list[psutil.Process]:
        return psutil.Process(self.process.pid).children(recursive=True)

    def stop(self, sig: int, timeout: float = 20) -> float:
        started = time.monotonic()
        self.process.send_signal(sig)
        self.process.wait(timeout=timeout)
        return time.monotonic() - started

    def kill(self) -> None:
        if self.process.poll() is None:
            os.killpg(self.process.pid, signal.SIGKILL)
            self.process.wait()


def _alive(processes: list[psutil.Process]) -> list[psutil.Process]:
    alive = []
    for process in processes:
        try:
            if process.is_running() and process.status() != psutil.STATUS_ZOMBIE:
                alive.append(process)
        except psutil.NoSuchProcess:
            continue
    return alive


@pytest.fixture
def var_dir():
    # Not pytest's tmp_path: that is 0700 under /tmp/pytest-of-root, and PostgreSQL runs as an
    # unprivileged user who must reach its data directory.
    path = Path(tempfile.mkdtemp(prefix="conveyor-up-"))
    path.chmod(0o755)
    state = path / "var"
    yield state
    # Whatever happened, leave no server of this directory running.
    subprocess.run(
        [sys.executable, "-m", "cicd.embedded", "down"],
        cwd=settings.BASE_DIR,
        env={**os.environ, "CONVEYOR_VAR_DIR": str(state)},
        capture_output=True,
        check=False,
    )
    shutil.rmtree(path, ignore_errors=True)


def _command_line(process: psutil.Process) -> str:
    # Short-lived grandchildren (a job's step, a git fetch) may exit while we look.
    try:
        return " ".join(process.cmdline())
    except (psutil.ZombieProcess, psutil.NoSuchProcess):
        return ""


@pytest.mark.slow
def test_up_starts_everything_and_stops_cleanly_twice_on_the_same_state(var_dir: Path) -> None:
    first = UpProcess(var_dir, _free_port())
    try:
        assert first.wait_healthy() == {"database": "ok", "redis": "ok"}
        children = first.descendants()
        names = " ".join(_command_line(child) for child in children)
        assert "cicd.web" in names
        assert "worker" in names
        assert "beat" in names
        assert first.stop(signal.SIGINT) < 20
    finally:
        first.kill()
    output = first.output
    assert first.process.returncode == 0, output
    assert _alive(children) == [], output
    assert "Conveyor is running" in output
    assert f"Dashboard   http://127.0.0.1:{first.port}/" in output
    password = (var_dir / "admin_password").read_text().strip()
    assert f"Login       admin / {password}" in output
    assert "embedded postgres and redis stopped" in output
    assert not (var_dir / "postgres" / "postmaster.pid").exists()

    # A second start reuses the state: same admin, same demo, no crash; SIGTERM stops it too.
    second = UpProcess(var_dir, _free_port())
    try:
        second.wait_healthy()
        children = second.descendants()
        assert second.stop(signal.SIGTERM) < 20
    finally:
        second.kill()
    output = second.output
    assert second.process.returncode == 0, output
    assert _alive(children) == [], output
    assert f"admin user 'admin' exists; password: {password}" in output
    assert "demo repository" in output and "exists" in output
    assert not (var_dir / "postgres" / "postmaster.pid").exists()


@pytest.mark.slow
def test_up_leaves_embedded_servers_it_did_not_start_running(var_dir: Path) -> None:
    env = {**os.environ, "CONVEYOR_VAR_DIR": str(var_dir)}
    for name in ("DATABASE_URL", "REDIS_URL"):
        env.pop(name, None)
    subprocess.run([sys.executable, "-m", "cicd.embedded", "up"], cwd=settings.BASE_DIR, env=env, check=True)
    instance = UpProcess(var_dir, _free_port())
    try:
        instance.wait_healthy()
        assert instance.stop(signal.SIGINT) < 20
    finally:
        instance.kill()
    output = instance.output
    assert "embedded postgres: already running" in output
    assert not [line for line in output.splitlines() if line.startswith("embedded") and line.endswith("stopped")]
    assert (var_dir / "postgres" / "postmaster.pid").exists(), output
