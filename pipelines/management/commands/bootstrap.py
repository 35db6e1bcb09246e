"""`manage.py bootstrap`: admin account, demo repository + pipeline, first demo run. Idempotent."""

from __future__ import annotations

from pathlib import Path

from django.conf import settings
from django.core.management.base import BaseCommand, CommandError

from cicd import embedded
from pipelines.bootstrap import bootstrap
from pipelines.demo import DemoRepositoryError


class Command(BaseCommand):
    help = (
        "Create the admin account (password generated once into var/admin_password unless "
        "CONVEYOR_ADMIN_PASSWORD is set), the demo git repository at var/demo-repo with its "
        "pipeline, and trigger the demo's first run. Safe to run any number of times."
    )

    def add_arguments(self, parser):
        parser.add_argument(
            "--var-dir", type=Path, default=None, help="State directory (default: CONVEYOR_VAR_DIR or ./var)."
        )
        parser.add_argument(
            "--demo-dir", type=Path, default=None, help="Where the demo repository lives (default: <var>/demo-repo)."
        )
        parser.add_argument("--no-run", action="store_true", help="Do not trigger the demo's first run.")
        parser.add_argument(
            "--base-url", default=None, help="Base URL used in printed links (default: CONVEYOR_BASE_URL)."
        )

    def handle(self, *args, **options):
        var_dir = (options["var_dir"] or embedded.var_dir()).resolve()
        demo_dir = (options["demo_dir"] or var_dir / "demo-repo").resolve()
        try:
            report = bootstrap(
                var_dir=var_dir,
                demo_dir=demo_dir,
                base_url=options["base_url"] or settings.CONVEYOR_BASE_URL,
                trigger_run=not options["no_run"],
            )
        except DemoRepositoryError as exc:
            raise CommandError(str(exc)) from exc
        for line in report.lines():
            self.stdout.write(line)
