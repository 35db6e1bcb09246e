"""What a lint of a pipeline config reports: stages, jobs and what each waits for, or the
errors. Shared by `manage.py lint_config --json` and `POST /api/v1/lint/`."""

from __future__ import annotations

from typing import Any

from pipelines.config.parser import effective_edges
from pipelines.config.spec import ConfigError, PipelineSpec


def lint_report(spec: PipelineSpec) -> dict[str, Any]:
    """A valid config: its stages, jobs (with `needs`, the jobs each one waits for), and
    warnings; `errors` is empty."""
    edges = effective_edges(spec)
    warnings = [str(problem) for problem in spec.warnings]
    if spec.workflow_skipped:
        warnings.append(f"no run would be created: {spec.workflow_skipped}")
    return {
        "stages": spec.stages,
        "jobs": [
            {
                "name": job.name,
                "stage": job.stage,
                "needs": edges[job.name],
                "when": job.when,
                "allow_failure": job.allow_failure,
            }
            for job in spec.jobs
        ],
        "errors": [],
        "warnings": warnings,
    }


def lint_errors(errors: list[str]) -> dict[str, Any]:
    return {"stages": [], "jobs": [], "errors": errors, "warnings": []}


def lint_error_report(exc: ConfigError) -> dict[str, Any]:
    return lint_errors([str(problem) for problem in exc.problems])
