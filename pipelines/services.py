"""Writes for repositories and pipelines; `run_trigger` turns an event into a run."""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING

from django.conf import settings

from pipelines import git
from pipelines.config.parser import parse_pipeline
from pipelines.config.spec import ConfigError, TriggerContext
from pipelines.models import PIPELINE_SOURCE, Pipeline

if TYPE_CHECKING:
    from django.contrib.auth.models import AbstractBaseUser

    from runs.models import PipelineRun

logger = logging.getLogger(__name__)


class TriggerError(Exception):
    """The event cannot become a run (unknown ref, unreachable repository, ...). Fit to show a user."""


class RunNotCreated(TriggerError):
    """The config's `workflow: rules` filtered the event out: no run, on purpose."""


def run_trigger(
    *,
    pipeline: Pipeline,
    ref: str,
    trigger: str,
    triggered_by: str = "",
    user: AbstractBaseUser | None = None,
    variables: dict[str, str] | None = None,
    commit_sha: str | None = None,
    is_tag: bool | None = None,
    ci_variables: dict[str, str] | None = None,
) -> PipelineRun:
    """Fetch the repository, read the pipeline's config at the commit, and create the run.

    An invalid config still creates a run: status FAILURE with the parser's message, so the
    author sees why nothing ran. An unknown ref or an unreachable repository raises
    TriggerError and creates nothing. `ci_variables` are event variables (CI_MERGE_REQUEST_*
    and the like) that rules see; `variables` are the user's, passed to jobs as well.
    """
    from runs.services import run_create, run_create_invalid

    repository = pipeline.repository
    try:
        mirror = git.mirror_fetch(repository_id=repository.pk, clone_url=repository.clone_url)
        sha, tag = git.resolve_ref(mirror=mirror, ref=commit_sha or ref, is_tag=is_tag)
        if commit_sha:
            tag = bool(is_tag)
        commit = git.commit_info(mirror=mirror, sha=sha)
    except git.GitError as exc:
        raise TriggerError(f"{repository.name}: {exc}") from exc

    user_variables = {str(k): str(v) for k, v in (variables or {}).items()}
    context = TriggerContext(
        source=PIPELINE_SOURCE.get(trigger, "api"),
        ref=ref,
        is_tag=tag,
        default_branch=repository.default_branch,
        commit_sha=sha,
        variables={**(ci_variables or {}), **user_variables},
    )
    common = {
        "pipeline": pipeline,
        "commit_sha": sha,
        "branch": ref,
        "is_tag": tag,
        "trigger": trigger,
        "triggered_by": triggered_by or (user.get_username() if user else ""),
        "triggered_by_user": user,
        "variables": user_variables,
        "commit_message": commit.message,
    }

    max_bytes = settings.CONVEYOR_MAX_CONFIG_BYTES
    try:
        text = git.read_file(mirror=mirror, sha=sha, path=pipeline.config_path, max_bytes=max_bytes)
    except git.GitError as exc:
        return run_create_invalid(error_message=f"{pipeline.config_path}: {exc}", **common)
    if text is None:
        return run_create_invalid(error_message=f"no {pipeline.config_path} at commit {sha[:12]}", **common)

    def read_included(path: str) -> str:
        try:
            included = git.read_file(mirror=mirror, sha=sha, path=path, max_bytes=max_bytes)
        except git.GitError as exc:
            raise ConfigError.single(f"include {path!r}: {exc}", key="include") from exc
        if included is None:
            raise ConfigError.single(f"include {path!r}: no such file at commit {sha[:12]}", key="include")
        return included

    try:
        spec = parse_pipeline(text, context=context, read_file=read_included)
    except ConfigError as exc:
        return run_create_invalid(error_message=str(exc), config_source=text, **common)
    if spec.workflow_skipped:
        raise RunNotCreated(spec.workflow_skipped)
    return run_create(spec=spec, config_source=text, **common)
