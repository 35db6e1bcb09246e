"""Writes for repositories and pipelines; `run_trigger` turns an event into a run."""

from __future__ import annotations

import logging
from dataclasses import dataclass
from datetime import datetime
from typing import TYPE_CHECKING

from django.conf import settings
from django.db import transaction
from django.utils import timezone

from cicd.tokens import token_generate, token_hash
from pipelines import git
from pipelines.config.parser import parse_pipeline
from pipelines.config.spec import ConfigError, TriggerContext
from pipelines.locks import advisory_lock
from pipelines.models import PIPELINE_SOURCE, AutoCancel, Pipeline, Trigger, TriggerToken

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
    source: str | None = None,
    extra_refs: tuple[str, ...] = (),
) -> PipelineRun:
    """Fetch the repository, read the pipeline's config at the commit, and create the run.

    An invalid config still creates a run: status FAILURE with the parser's message, so the
    author sees why nothing ran. An unknown ref or an unreachable repository raises
    TriggerError and creates nothing. `ci_variables` are event variables (CI_MERGE_REQUEST_*
    and the like) and `variables` the user's: rules see both, and both are kept with the run
    and passed to its jobs. `source` is CI_PIPELINE_SOURCE when the trigger alone does not
    say it (an API run is MANUAL with source "api"). `extra_refs` are fetched into the mirror
    too (a pull request's head ref).
    """
    from runs.services import run_create, run_create_invalid

    repository = pipeline.repository
    try:
        mirror = git.mirror_fetch(repository_id=repository.pk, clone_url=repository.clone_url, extra_refs=extra_refs)
        sha, tag = git.resolve_ref(mirror=mirror, ref=commit_sha or ref, is_tag=is_tag)
        if commit_sha:
            tag = bool(is_tag)
        commit = git.commit_info(mirror=mirror, sha=sha)
    except git.GitError as exc:
        raise TriggerError(f"{repository.name}: {exc}") from exc

    event_variables = {str(k): str(v) for k, v in (ci_variables or {}).items()}
    source = source or PIPELINE_SOURCE.get(trigger, "api")
    if source != PIPELINE_SOURCE.get(trigger):
        # The run's trigger column has no value for this source: jobs read it from the variables.
        event_variables["CI_PIPELINE_SOURCE"] = source
    # The event's own variables win: a variable given with an API run cannot pass it off as a push.
    user_variables = {**{str(k): str(v) for k, v in (variables or {}).items()}, **event_variables}
    context = TriggerContext(
        source=source,
        ref=ref,
        is_tag=tag,
        default_branch=repository.default_branch,
        commit_sha=sha,
        variables=user_variables,
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


# --- Runs for events: one canonical run per commit, and auto-cancel of superseded runs.


@dataclass(frozen=True)
class EventRun:
    run: PipelineRun | None
    created: bool
    message: str
    failed: bool = False


def run_trigger_once(
    *,
    pipeline: Pipeline,
    ref: str,
    commit_sha: str,
    is_tag: bool,
    trigger: str,
    triggered_by: str = "",
    ci_variables: dict[str, str] | None = None,
    extra_refs: tuple[str, ...] = (),
    dedupe_triggers: tuple[str, ...] = (),
) -> EventRun:
    """run_trigger for a forge event, unless the commit already has its run on this branch or
    tag (by one of `dedupe_triggers`): then that run is returned, and nothing is created.
    Raises TriggerError / RunNotCreated as run_trigger does."""
    from pipelines.selectors import run_for_commit

    # A push and its pull request, or two deliveries of one push, may be processed at once.
    with advisory_lock("conveyor.run-for-commit", pipeline.pk, commit_sha):
        existing = run_for_commit(
            pipeline=pipeline,
            commit_sha=commit_sha,
            ref=ref,
            is_tag=is_tag,
            triggers=dedupe_triggers or (trigger,),
        )
        if existing is not None:
            return EventRun(run=existing, created=False, message=f"{pipeline.name}: already ran as #{existing.number}")
        run = run_trigger(
            pipeline=pipeline,
            ref=ref,
            trigger=trigger,
            triggered_by=triggered_by,
            commit_sha=commit_sha,
            is_tag=is_tag,
            ci_variables=ci_variables,
            extra_refs=extra_refs,
        )
    return EventRun(run=run, created=True, message=f"{pipeline.name}: run #{run.number} created")


def _started_non_interruptible(run: PipelineRun) -> bool:
    from runs.models import Job

    return Job.objects.filter(run=run, interruptible=False, started_at__isnull=False).exists()


def runs_cancel_superseded(*, run: PipelineRun, event_time: datetime | None = None) -> list[PipelineRun]:
    """Auto-cancel: a new push (or pull request update) makes the older active runs of the same
    branch redundant. With the pipeline's `conservative` policy a run is cancelled unless one of
    its jobs that is not `interruptible` has started (a deploy half done is left to finish).

    Older means an earlier event (`event_time`: when the delivery arrived), not an earlier
    row: deliveries processed out of order must not cancel the newer commit's run. If a newer
    event's run already exists, this run is the redundant one. Returns the cancelled runs.
    """
    from pipelines.selectors import runs_superseded_by
    from runs.services import run_cancel

    pipeline = run.pipeline
    if pipeline.auto_cancel == AutoCancel.NONE or run.is_tag or run.trigger not in (Trigger.PUSH, Trigger.PR):
        return []
    event_time = event_time or run.created_at
    cancelled: list[PipelineRun] = []
    newer = None
    for other in runs_superseded_by(run=run):
        other_time = other.event_time or other.created_at
        if other_time > event_time:
            newer = other
            continue
        if _started_non_interruptible(other):
            continue
        run_cancel(run=other, by=f"auto-cancel: superseded by #{run.number} ({run.commit_sha[:8]})")
        cancelled.append(other)
    if newer is not None and not _started_non_interruptible(run):
        run_cancel(run=run, by=f"auto-cancel: superseded by #{newer.number} ({newer.commit_sha[:8]})")
        cancelled.append(run)
    return cancelled


# --- Manual and API runs; trigger tokens.

TRIGGER_TOKEN_PREFIX = "cvt_"  # noqa: S105 (a prefix, not a secret)


class InvalidTriggerToken(Exception):
    """The token is unknown, revoked, or not for this pipeline."""


@transaction.atomic
def trigger_token_create(
    *, pipeline: Pipeline, description: str, user: AbstractBaseUser | None = None
) -> tuple[TriggerToken, str]:
    """A new API trigger token for the pipeline. The token is returned this once; only its hash is kept."""
    token = token_generate(TRIGGER_TOKEN_PREFIX)
    row = TriggerToken.objects.create(
        pipeline=pipeline, description=description, token_hash=token_hash(token), created_by=user
    )
    return row, token


def trigger_token_authenticate(*, pipeline_id: int, token: str) -> TriggerToken:
    """The live token of this pipeline that `token` is, or InvalidTriggerToken. The lookup is by
    hash (an index), so comparing is constant-time in effect; the pipeline check is separate."""
    if not token.startswith(TRIGGER_TOKEN_PREFIX) or len(token) > 200:
        raise InvalidTriggerToken("invalid trigger token")
    row = (
        TriggerToken.objects.select_related("pipeline__repository")
        .filter(token_hash=token_hash(token), revoked_at__isnull=True)
        .first()
    )
    if row is None or row.pipeline_id != pipeline_id or not row.pipeline.is_active:
        raise InvalidTriggerToken("invalid trigger token")
    TriggerToken.objects.filter(pk=row.pk).update(last_used_at=timezone.now())
    return row


def trigger_token_revoke(*, token: TriggerToken) -> None:
    TriggerToken.objects.filter(pk=token.pk, revoked_at__isnull=True).update(revoked_at=timezone.now())


def run_manual(
    *,
    pipeline: Pipeline,
    ref: str,
    user: AbstractBaseUser | None = None,
    triggered_by: str = "",
    variables: dict[str, str] | None = None,
    source: str = "web",
) -> PipelineRun:
    """A person ("web": the admin's Run pipeline) or a script ("api": a trigger token) runs the
    pipeline on a branch or tag. Raises TriggerError / RunNotCreated as run_trigger does."""
    from pipelines.commit_status import commit_status_enqueue

    run = run_trigger(
        pipeline=pipeline,
        ref=ref,
        trigger=Trigger.MANUAL,
        triggered_by=triggered_by,
        user=user,
        variables=variables,
        source=source,
    )
    commit_status_enqueue(run_id=run.pk)
    return run
