"""`manage.py runner`: claim and execute jobs.

Trusted mode (no --url) claims through the ORM: for nodes that may reach the database.
`--url URL --token-file FILE` (or CONVEYOR_RUNNER_TOKEN, or --token) talks only HTTP to the
runner API. `manage.py runner register
--url URL --registration-token T` exchanges a registration token for a runner token.
"""

from __future__ import annotations

import logging
import os
import socket
from pathlib import Path

from django.conf import settings
from django.core.management.base import BaseCommand, CommandError

from runners.models import Executor, Runner

logger = logging.getLogger("runners")


class Command(BaseCommand):
    help = "Run a runner: claim jobs from the queue and execute them (or `register` one)."

    def add_arguments(self, parser):
        parser.add_argument("action", nargs="?", choices=["run", "register"], default="run")
        parser.add_argument("--name", default=socket.gethostname(), help="Runner name (default: host name).")
        parser.add_argument("--tags", default="", help="Comma-separated capabilities, e.g. 'docker,linux'.")
        parser.add_argument("--concurrency", type=int, default=1, help="Jobs run at once.")
        parser.add_argument("--executor", choices=Executor.values, default=Executor.SHELL)
        parser.add_argument("--url", help="Server URL: talk HTTP to the runner API instead of the database.")
        parser.add_argument(
            "--token",
            help="Runner token (HTTP mode). Prefer --token-file or CONVEYOR_RUNNER_TOKEN: a command line "
            "is visible to every process on the machine.",
        )
        parser.add_argument("--token-file", help="File holding the runner token (HTTP mode).")
        parser.add_argument("--registration-token", help="For `register`: the token an admin created.")
        parser.add_argument("--max-jobs", type=int, help="Exit after claiming this many jobs.")
        parser.add_argument("--grace-period", type=float, default=30.0, help="Seconds to finish jobs on SIGTERM.")
        parser.add_argument("--poll-interval", type=float, default=settings.CONVEYOR_RUNNER_POLL_S)
        parser.add_argument("--builds-dir", default=settings.CONVEYOR_BUILDS_DIR)

    def handle(self, *args, **options):
        tags = sorted({t.strip() for t in options["tags"].split(",") if t.strip()})
        if options["concurrency"] < 1:
            raise CommandError("--concurrency must be at least 1")
        if options["action"] == "register":
            return self._register(options, tags)
        backend = self._backend(options, tags)
        executor = self._executor(options, backend)

        from runners.worker import RunnerLoop

        loop = RunnerLoop(
            backend=backend,
            executor=executor,
            concurrency=options["concurrency"],
            poll_interval=options["poll_interval"],
            heartbeat_interval=settings.CONVEYOR_HEARTBEAT_S,
            grace_period=options["grace_period"],
            max_jobs=options["max_jobs"],
        )
        loop.install_signal_handlers()
        self.stdout.write(
            f"runner {options['name']!r} ({options['executor']}, concurrency {options['concurrency']}, "
            f"tags {tags or '-'}) waiting for jobs"
        )
        loop.serve()
        if loop.token_refused:
            raise CommandError("the server refused this runner's token (revoked?); register the runner again")
        self.stdout.write(f"runner {options['name']!r} stopped after {loop.claimed} job(s)")

    def _register(self, options, tags):
        if not options["url"] or not options["registration_token"]:
            raise CommandError("register needs --url and --registration-token")
        from runners.http_client import RunnerApiClient, RunnerApiError

        try:
            runner_id, token = RunnerApiClient(options["url"]).register(
                registration_token=options["registration_token"],
                name=options["name"],
                tags=tags,
                concurrency=options["concurrency"],
                executor=options["executor"],
            )
        except RunnerApiError as exc:
            raise CommandError(str(exc)) from exc
        self.stdout.write(f"registered runner {runner_id}")
        self.stdout.write(f"runner token (shown once, keep it secret): {token}")

    def _token(self, options) -> str:
        if options["token_file"]:
            try:
                token = Path(options["token_file"]).read_text().strip()
            except OSError as exc:
                raise CommandError(f"cannot read --token-file: {exc}") from exc
        else:
            token = options["token"] or os.environ.pop("CONVEYOR_RUNNER_TOKEN", "").strip()
        if not token:
            raise CommandError(
                "--url needs a runner token: --token-file, CONVEYOR_RUNNER_TOKEN or --token "
                "(see `manage.py runner register`)"
            )
        return token

    def _backend(self, options, tags):
        if options["url"]:
            from runners.http_client import HttpBackend

            return HttpBackend(url=options["url"], token=self._token(options))
        from runners.backends import OrmBackend

        # Trusted mode: the runner row is found (or made) by name; no token is needed
        # because this process already holds the database's credentials.
        runner, _ = Runner.objects.update_or_create(
            name=options["name"],
            token_hash=None,
            defaults={"tags": tags, "concurrency": options["concurrency"], "executor": options["executor"]},
        )
        return OrmBackend(runner=runner)

    def _executor(self, options, backend):
        from runners.worker import RetryingReporter

        # Step reports ride out a short outage of the server or the database.
        reporter = RetryingReporter(backend)
        if options["executor"] == Executor.KUBERNETES:
            from runners.executors.kubernetes import KubernetesExecutor

            return KubernetesExecutor(reporter=reporter)
        from runners.executors.shell import ShellExecutor

        return ShellExecutor(reporter=reporter, builds_dir=options["builds_dir"])
