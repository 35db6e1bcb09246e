"""`manage.py up` (what `make run` runs): the whole system in one terminal.

Starts the embedded PostgreSQL/Redis when their URLs are unset, migrates, collects static
files, bootstraps (admin account, demo repository, first run), then supervises the web
server, a Celery worker, Celery beat and, once that command exists, a runner. Ctrl-C or
SIGTERM stops them all, and the embedded servers too if this command started them.
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import sys
from collections.abc import Iterator
from pathlib import Path

from django.conf import settings
from django.core.management import call_command, get_commands
from django.core.management.base import BaseCommand, CommandError
from django.db import connections

from cicd import embedded
from cicd.env import env_int, env_str, raw
from cicd.supervisor import ProcessSpec, Supervisor
from pipelines.bootstrap import BootstrapReport, bootstrap
from pipelines.demo import DemoRepositoryError

BASE_DIR = Path(settings.BASE_DIR)
_STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM)


class Interrupted(Exception):
    """SIGINT or SIGTERM arrived before the supervisor took over."""


@contextlib.contextmanager
def _signals_deferred() -> Iterator[list[int]]:
    """Hold SIGINT/SIGTERM while the embedded servers start, so we always know what we started."""
    received: list[int] = []
    previous = {sig: signal.signal(sig, lambda signum, frame: received.append(signum)) for sig in _STOP_SIGNALS}
    try:
        yield received
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)


@contextlib.contextmanager
def _signals_interrupt() -> Iterator[None]:
    def interrupt(signum, frame):
        raise Interrupted(signal.Signals(signum).name)

    previous = {sig: signal.signal(sig, interrupt) for sig in _STOP_SIGNALS}
    try:
        yield
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)


def url_host(host: str) -> str:
    """The host to put in a URL for a listen address (a wildcard address is reached via loopback)."""
    if host in {"", "0.0.0.0", "::"}:  # noqa: S104 (we only format the address here)
        return "127.0.0.1"
    return f"[{host}]" if ":" in host else host


def port_is_free(host: str, port: int) -> bool:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            probe.bind((host, port))
        except OSError:
            return False
    return True


def port_accepts(host: str, port: int) -> bool:
    try:
        with socket.create_connection((host.strip("[]"), port), timeout=0.3):
            return True
    except OSError:
        return False


def build_processes(
    *,
    host: str,
    port: int,
    concurrency: int,
    celery_loglevel: str,
    stop_timeout: float = 10.0,
    web_workers: int = 1,
) -> list[ProcessSpec]:
    python = sys.executable
    specs = [
        ProcessSpec(
            "web",
            # uvicorn in several processes (one Python process runs on one core at a time),
            # each with a listening socket of its own: cicd.web says why.
            [python, "-m", "cicd.web", "--host", host, "--port", str(port), "--workers", str(web_workers)],
        ),
        ProcessSpec(
            "worker",
            [
                python,
                "-m",
                "celery",
                "-A",
                "cicd",
                "worker",
                "--concurrency",
                str(concurrency),
                "-Q",
                settings.CELERY_TASK_DEFAULT_QUEUE,
                "--loglevel",
                celery_loglevel,
                "--without-gossip",
                "--without-mingle",
            ],
        ),
        ProcessSpec(
            "beat",
            [
                python,
                "-m",
                "celery",
                "-A",
                "cicd",
                "beat",
                "--loglevel",
                celery_loglevel,
                "--scheduler",
                settings.CELERY_BEAT_SCHEDULER,
            ],
        ),
    ]
    if "runner" in get_commands():
        # The runner finishes (or gives back) its jobs within the supervisor's stop timeout.
        grace = f"{max(1.0, stop_timeout - 2):g}"
        specs.append(ProcessSpec("runner", [python, str(BASE_DIR / "manage.py"), "runner", "--grace-period", grace]))
    return specs


def child_environment(*, base_url: str) -> dict[str, str]:
    env = dict(os.environ)
    # Children derive the same embedded URLs and secret key from the same state directory.
    env["CONVEYOR_VAR_DIR"] = str(embedded.var_dir())
    env["DJANGO_SETTINGS_MODULE"] = os.environ.get("DJANGO_SETTINGS_MODULE", "cicd.settings")
    env["PYTHONUNBUFFERED"] = "1"
    if raw("CONVEYOR_BASE_URL") is None:
        env["CONVEYOR_BASE_URL"] = base_url
    return env


def banner(*, base_url: str, report: BootstrapReport | None, processes: list[str]) -> str:
    lines = [
        "",
        "=" * 72,
        "  Conveyor is running",
        "",
        f"  Dashboard   {base_url}/",
        f"  Admin       {base_url}/admin/",
        f"  Health      {base_url}/healthz",
    ]
    if report is not None:
        admin = report.admin
        secret = admin.password if admin.password is not None else admin.password_note
        lines.append(f"  Login       {admin.username} / {secret}")
        if report.run_url:
            lines.append(f"  Demo run    {report.run_url}")
        lines.append(f"  Demo repo   {report.demo_path}")
    lines += [
        "",
        f"  Processes   {', '.join(processes)}",
        f"  Stop        Ctrl-C (or kill -TERM {os.getpid()})",
        "=" * 72,
        "",
    ]
    return "\n".join(lines)


class Command(BaseCommand):
    help = (
        "Start everything: embedded PostgreSQL/Redis (when DATABASE_URL/REDIS_URL are unset), migrations, "
        "static files, bootstrap, then web + worker + beat (+ runner) under one supervisor. Ctrl-C stops all."
    )

    def add_arguments(self, parser):
        parser.add_argument(
            "--host", default=None, help="Address the web server listens on (env CONVEYOR_HOST; 127.0.0.1)."
        )
        parser.add_argument("--port", type=int, default=None, help="Web server port (env CONVEYOR_PORT; 8000).")
        parser.add_argument("--concurrency", type=int, default=2, help="Celery worker processes (default 2).")
        parser.add_argument(
            "--web-workers",
            type=int,
            default=None,
            help="Web server (uvicorn) processes (env CONVEYOR_WEB_WORKERS; 2).",
        )
        parser.add_argument(
            "--celery-loglevel",
            default="warning",
            choices=["debug", "info", "warning", "error"],
            help="Log level of the worker and beat (default warning: the 5 s sweep is noisy at info).",
        )
        parser.add_argument("--no-demo-run", action="store_true", help="Do not trigger the demo's first run.")
        parser.add_argument(
            "--stop-timeout", type=float, default=10.0, help="Seconds a process gets to stop before SIGKILL."
        )

    def handle(self, *args, **options):
        host = options["host"] or env_str("CONVEYOR_HOST", "127.0.0.1")
        port = options["port"] if options["port"] is not None else env_int("CONVEYOR_PORT", 8000, minimum=1)
        if not 0 < port < 65536:
            raise CommandError(f"--port must be 1-65535, got {port}")
        if options["web_workers"] is not None and options["web_workers"] < 1:
            raise CommandError(f"--web-workers must be at least 1, got {options['web_workers']}")
        if not port_is_free(host, port):
            raise CommandError(f"{host}:{port} is already in use; choose another with --port or CONVEYOR_PORT")
        base_url = f"http://{url_host(host)}:{port}"

        wanted = {"postgres": settings.USING_EMBEDDED_POSTGRES, "redis": settings.USING_EMBEDDED_REDIS}
        started: list[str] = []
        exit_code = 0
        try:
            if any(wanted.values()):
                self.stdout.write(f"state directory {embedded.var_dir()}")
                with _signals_deferred() as received:
                    started = embedded.up(**wanted)
                for name, use in wanted.items():
                    if use:
                        state = "started" if name in started else "already running"
                        self.stdout.write(f"embedded {name}: {state}")
                if received:
                    raise Interrupted(signal.Signals(received[0]).name)
            with _signals_interrupt():
                report = self._prepare(base_url=base_url, options=options)
                # The supervisor installs its own handlers for as long as it runs.
                exit_code = self._supervise(host=host, port=port, base_url=base_url, report=report, options=options)
        except Interrupted as exc:
            self.stdout.write(f"{exc} received, stopping")
        finally:
            self._stop_embedded(started)
        if exit_code:
            raise SystemExit(exit_code)

    def _prepare(self, *, base_url: str, options) -> BootstrapReport | None:
        quiet = max(0, options["verbosity"] - 1)
        self.stdout.write("applying migrations")
        call_command("migrate", interactive=False, verbosity=quiet)
        call_command("collectstatic", interactive=False, verbosity=quiet)
        try:
            report = bootstrap(
                var_dir=embedded.var_dir(),
                demo_dir=embedded.var_dir() / "demo-repo",
                base_url=base_url,
                trigger_run=not options["no_demo_run"],
            )
        except DemoRepositoryError as exc:
            self.stderr.write(f"bootstrap: {exc}")
            return None
        for line in report.lines():
            self.stdout.write(line)
        return report

    def _supervise(self, *, host: str, port: int, base_url: str, report: BootstrapReport | None, options) -> int:
        specs = build_processes(
            host=host,
            port=port,
            concurrency=options["concurrency"],
            celery_loglevel=options["celery_loglevel"],
            stop_timeout=options["stop_timeout"],
            web_workers=options["web_workers"] or settings.CONVEYOR_WEB_WORKERS,
        )
        # The children open their own connections; ours would only sit idle until we exit.
        connections.close_all()
        self.stdout.flush()
        supervisor = Supervisor(
            specs,
            env=child_environment(base_url=base_url),
            cwd=str(BASE_DIR),
            output=self.stdout,
            stop_timeout=options["stop_timeout"],
        )
        text = banner(base_url=base_url, report=report, processes=[spec.name for spec in specs])
        return supervisor.run(
            ready=lambda: port_accepts(url_host(host), port),
            on_ready=lambda: supervisor.say(text),
        )

    def _stop_embedded(self, started: list[str]) -> None:
        if not started:
            return
        # Stopping must finish even if Ctrl-C is pressed again meanwhile.
        previous = {sig: signal.signal(sig, signal.SIG_IGN) for sig in _STOP_SIGNALS}
        try:
            embedded.down(postgres="postgres" in started, redis="redis" in started)
            self.stdout.write(f"embedded {' and '.join(started)} stopped")
        finally:
            for sig, handler in previous.items():
                signal.signal(sig, handler)
