"""`manage.py lint_config PATH`: check a pipeline config before pushing it.

Parses the file as a push to the default branch "main" would (or as --ref/--event/--tag
say), then prints the stages, the jobs and what each one waits for, or every problem.
`include: local` paths are read relative to the file's directory and may not leave it.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

from django.core.management.base import BaseCommand, CommandError, CommandParser

from pipelines.config.lint import lint_errors, lint_report
from pipelines.config.parser import effective_edges, parse_pipeline
from pipelines.config.spec import ConfigError, JobSpec, PipelineSpec, TriggerContext

EVENTS = ("push", "merge_request_event", "schedule", "web", "api")


def directory_reader(directory: Path) -> Callable[[str], str]:
    """read_file for the parser: files under `directory` only (symlinks resolved first)."""
    root = directory.resolve()

    def read(relative: str) -> str:
        target = (root / relative).resolve()
        if not target.is_relative_to(root):
            raise ConfigError.single(f"include {relative!r} is outside {root}", key="include")
        try:
            return target.read_text(encoding="utf-8")
        except FileNotFoundError:
            raise ConfigError.single(f"include {relative!r}: no such file in {root}", key="include") from None
        except (OSError, UnicodeDecodeError) as exc:
            raise ConfigError.single(f"include {relative!r}: cannot read it ({exc})", key="include") from None

    return read


class Command(BaseCommand):
    help = "Check a pipeline config file: print its stages, jobs and edges, or its errors (exit code 1)."

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("path", help="The config file, e.g. .cicd.yml")
        parser.add_argument("--json", action="store_true", dest="as_json", help="Print JSON instead of a table.")
        parser.add_argument("--ref", default="main", help="Branch or tag the pipeline runs for (default: main).")
        parser.add_argument("--event", choices=EVENTS, default="push", help="CI_PIPELINE_SOURCE (default: push).")
        parser.add_argument("--tag", action="store_true", help="The ref is a tag.")
        parser.add_argument(
            "--var", action="append", default=[], metavar="NAME=VALUE", help="A trigger variable (repeatable)."
        )

    def handle(self, *args: Any, **options: Any) -> None:
        path = Path(options["path"])
        context = TriggerContext(
            source=options["event"],
            ref=options["ref"],
            is_tag=options["tag"],
            default_branch="main",
            variables=self.trigger_variables(options["var"]),
        )
        try:
            raw = path.read_bytes()
        except OSError as exc:
            raise CommandError(f"cannot read {path}: {exc.strerror or exc}") from None
        try:
            text = raw.decode("utf-8")
            spec = parse_pipeline(text, context=context, read_file=directory_reader(path.parent))
        except UnicodeDecodeError as exc:
            self.report_errors(path, [f"{path} is not UTF-8 text (byte {exc.start})"], options["as_json"])
        except ConfigError as exc:
            self.report_errors(path, [str(problem) for problem in exc.problems], options["as_json"])
        else:
            if options["as_json"]:
                self.stdout.write(json.dumps(self.as_json(spec), indent=2))
            else:
                self.print_table(path, spec)

    def trigger_variables(self, pairs: list[str]) -> dict[str, str]:
        variables = {}
        for pair in pairs:
            name, sep, value = pair.partition("=")
            if not sep or not name:
                raise CommandError(f"--var takes NAME=VALUE, got {pair!r}")
            variables[name] = value
        return variables

    def report_errors(self, path: Path, errors: list[str], as_json: bool) -> None:
        if as_json:
            self.stdout.write(json.dumps(lint_errors(errors), indent=2))
        else:
            for error in errors:
                self.stderr.write(f"error: {error}")
        noun = "problem" if len(errors) == 1 else "problems"
        raise CommandError(f"{path}: {len(errors)} {noun}")

    def as_json(self, spec: PipelineSpec) -> dict[str, Any]:
        return lint_report(spec)

    def print_table(self, path: Path, spec: PipelineSpec) -> None:
        write = self.stdout.write
        write(f"Stages: {', '.join(spec.stages)}")
        for warning in spec.warnings:
            write(self.style.WARNING(f"warning: {warning}"))
        if spec.workflow_skipped:
            write(f"No run would be created: {spec.workflow_skipped}")
            return
        rows = [("JOB", "STAGE", "WHEN", "ALLOW FAILURE", "NEEDS")]
        rows += [(job.name, job.stage, job.when, self.allow_failure(job), self.needs(job)) for job in spec.jobs]
        widths = [max(len(row[column]) for row in rows) for column in range(len(rows[0]) - 1)]
        write("")
        for row in rows:
            write("  ".join(cell.ljust(width) for cell, width in zip(row, widths, strict=False)) + "  " + row[-1])
        write("")
        write("Waits for:")
        for name, waits_for in effective_edges(spec).items():
            write(f"  {name}: {', '.join(waits_for) if waits_for else '(starts at once)'}")
        stages_used = len({job.stage for job in spec.jobs})
        write(self.style.SUCCESS(f"OK: {path}: {len(spec.jobs)} jobs in {stages_used} stages"))

    @staticmethod
    def allow_failure(job: JobSpec) -> str:
        if job.allow_failure:
            codes = f" (exit codes {', '.join(map(str, job.allow_failure_exit_codes))})"
            return "yes" + (codes if job.allow_failure_exit_codes else "")
        return "no (blocking)" if job.blocking else "no"

    @staticmethod
    def needs(job: JobSpec) -> str:
        if job.needs is None:
            return "(earlier stages)"
        if not job.needs:
            return "(none)"
        return ", ".join(need.job + (" (optional)" if need.optional else "") for need in job.needs)
