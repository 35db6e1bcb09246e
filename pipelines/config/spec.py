"""The parsed, validated form of a pipeline config: what the DAG engine consumes.

The parser (pipelines.config.parser) turns YAML text plus the trigger context into a
PipelineSpec, or raises ConfigError with every problem it found. Rules, only/except,
extends, anchors, !reference, include and parallel are all resolved by then: a
JobSpec is one concrete job of one run.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

DEFAULT_STAGES = [".pre", "build", "test", "deploy", ".post"]
DEFAULT_STAGE = "test"


@dataclass(frozen=True)
class ConfigProblem:
    message: str
    job: str | None = None
    key: str | None = None
    line: int | None = None
    # The included file the line is in; None for the main config file.
    file: str | None = None

    def __str__(self) -> str:
        where = []
        if self.job:
            where.append(f"job {self.job!r}")
        if self.key:
            where.append(f"key {self.key!r}")
        if self.file:
            where.append(f"file {self.file!r}")
        if self.line:
            where.append(f"line {self.line}")
        prefix = ", ".join(where)
        return f"{prefix}: {self.message}" if prefix else self.message


class ConfigError(Exception):
    """The config is invalid. `problems` lists every problem found, each naming job/key/line."""

    def __init__(self, problems: list[ConfigProblem]):
        self.problems = problems
        super().__init__("; ".join(str(p) for p in problems))

    @classmethod
    def single(
        cls, message: str, *, job: str | None = None, key: str | None = None, line: int | None = None
    ) -> ConfigError:
        return cls([ConfigProblem(message, job=job, key=key, line=line)])


@dataclass(frozen=True)
class Need:
    job: str
    optional: bool = False
    artifacts: bool = True


@dataclass
class JobSpec:
    name: str
    stage: str
    script: list[str]
    before_script: list[str] = field(default_factory=list)
    after_script: list[str] = field(default_factory=list)
    # None: no `needs` key (wait for all earlier stages). []: start at once. Otherwise those jobs
    # (names of concrete jobs: a `parallel` job named in needs is expanded to all its instances).
    needs: list[Need] | None = None
    # `dependencies:` (whose artifacts to download); None = all jobs of earlier stages / needs.
    dependencies: list[str] | None = None
    when: str = "on_success"  # on_success | on_failure | always | manual | delayed
    start_in_s: int | None = None
    allow_failure: bool = False
    # allow_failure: {exit_codes: [..]}: only these exit codes count as allowed failures.
    allow_failure_exit_codes: list[int] = field(default_factory=list)
    # A manual job that gates the run (set by `rules: when: manual`).
    blocking: bool = False
    tags: list[str] = field(default_factory=list)
    timeout_s: int | None = None
    retry_max: int = 0
    retry_when: list[str] = field(default_factory=list)
    interruptible: bool = False
    resource_group: str | None = None
    environment: dict[str, Any] | None = None  # {"name", "url", "action", ...}
    artifacts: dict[str, Any] | None = None  # {"paths", "exclude", "name", "expire_in", "when", "reports"}
    cache: list[dict[str, Any]] = field(default_factory=list)
    image: dict[str, Any] | None = None  # {"name", "entrypoint", ...}
    services: list[dict[str, Any]] = field(default_factory=list)
    # Job variables, already merged over the global ones and the parallel:matrix values.
    variables: dict[str, str] = field(default_factory=dict)
    # For parallel jobs: the base name and this instance's index/total or matrix values.
    parallel: dict[str, Any] | None = None
    # `deploy:` section (Kubernetes rollout), kept for the runner.
    deploy: dict[str, Any] | None = None
    # retry: {exit_codes: [..]}: retry only when the script exits with one of these.
    retry_exit_codes: list[int] = field(default_factory=list)
    # `coverage: /regex/` as a Python pattern (flags inlined, e.g. "(?i)total: (\d+)%").
    coverage: str | None = None


@dataclass
class PipelineSpec:
    stages: list[str]
    jobs: list[JobSpec]
    variables: dict[str, str] = field(default_factory=dict)
    # Keys the parser saw but does not support: reported as warnings, never silently dropped.
    warnings: list[ConfigProblem] = field(default_factory=list)
    # workflow:rules said no: no run should be created (the reason is kept). Also set when
    # rules/only/except left no job (or only .pre/.post jobs) for this trigger, as GitLab does.
    workflow_skipped: str | None = None
    # `workflow: name:` (the run's display name; variables are not expanded here).
    name: str | None = None
    # `variables: {X: {value, description}}`: what to show in a "run pipeline" form.
    variable_descriptions: dict[str, str] = field(default_factory=dict)

    def job(self, name: str) -> JobSpec:
        for job in self.jobs:
            if job.name == name:
                return job
        raise KeyError(name)


@dataclass(frozen=True)
class TriggerContext:
    """What rules and only/except see: the CI_* variables of the event."""

    source: str = "push"  # CI_PIPELINE_SOURCE: push | merge_request_event | schedule | web | api | trigger
    ref: str = "main"  # branch or tag name
    is_tag: bool = False
    default_branch: str = "main"
    commit_sha: str = ""
    variables: dict[str, str] = field(default_factory=dict)

    def ci_variables(self) -> dict[str, str]:
        values = {
            "CI": "true",
            "CI_PIPELINE_SOURCE": self.source,
            "CI_COMMIT_REF_NAME": self.ref,
            "CI_DEFAULT_BRANCH": self.default_branch,
            "CI_COMMIT_SHA": self.commit_sha,
        }
        if self.is_tag:
            values["CI_COMMIT_TAG"] = self.ref
        elif self.source != "merge_request_event":
            # As in GitLab: merge request pipelines have no CI_COMMIT_BRANCH (the usual
            # `if: $CI_COMMIT_BRANCH` rules keep branch jobs out of them).
            values["CI_COMMIT_BRANCH"] = self.ref
        values.update(self.variables)
        return values
