"""A `deploy:` job on the runner: its deploy step runs the Kubernetes rollout.

A job with a `deploy:` section gets one step of kind `deploy` after its script steps and before
its after_script (runs.services.run_create). The shell executor runs the other steps as shell
commands as usual and hands this one to `run_deploy_step`, in the same workspace: it expands
the job's variables in the section, parses it (`parse_deploy_spec`), calls `rollout(...)` and
streams every line the rollout logs into the step's log. Like any script step it runs only if
everything before it passed, and after_script runs after it either way.

The outcome travels to the server in the job's ordinary completion: SUCCEEDED is a successful
step and job; ROLLED_BACK and FAILED fail the step (exit code 1) and the job, with a reason
starting with ROLLED_BACK_REASON or FAILED_REASON, which the server's deployment record reads
(runs.deployments). Cancelling the job (or its timeout) stops the rollout, which undoes a
rolling update it had started.

The cluster: the runner's CONVEYOR_DEPLOY_KUBECONFIG file if set, else the in-cluster service
account, else $KUBECONFIG or ~/.kube/config; `deploy: context:` picks a context.

The section is expanded with the job's variables only (CI_*, the run's and the job's), the
same values the server uses to record the deployed image; variables that earlier script
steps export do not reach it.
"""

from __future__ import annotations

import re
import threading
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from django.conf import settings
from kubernetes import config

from runners.deploy.kubernetes import RolloutResult, RolloutStatus, rollout
from runners.deploy.spec import DeploySpecError, parse_deploy_spec
from runners.executors.base import LogStream, Reporter
from runners.services import ClaimedJob, ClaimedStep
from runs.models import StepStatus

# The job's reason on failure starts with one of these (runs.deployments maps them back).
ROLLED_BACK_REASON = "deploy rolled back: "
FAILED_REASON = "deploy failed: "
# How often buffered log lines are shipped while the rollout waits on the cluster.
_FLUSH_EVERY_S = 0.2

# $NAME, ${NAME}, and $$ for a literal dollar sign (GitLab's spelling).
_VARIABLE = re.compile(r"\$\$|\$\{([A-Za-z_][A-Za-z0-9_]*)\}|\$([A-Za-z_][A-Za-z0-9_]*)")
_DIGEST = re.compile(r"@(sha256:[0-9a-fA-F]{64})$")


def expand(text: str, variables: Mapping[str, str]) -> str:
    """`$NAME` and `${NAME}` replaced by the variable's value (empty if unset), `$$` by `$`."""

    def value(match: re.Match[str]) -> str:
        if match.group(0) == "$$":
            return "$"
        return str(variables.get(match.group(1) or match.group(2), ""))

    return _VARIABLE.sub(value, text)


def expand_section(value: Any, variables: Mapping[str, str]) -> Any:
    """Every string inside a `deploy:` mapping expanded (keys stay as they are)."""
    if isinstance(value, str):
        return expand(value, variables)
    if isinstance(value, Mapping):
        return {key: expand_section(item, variables) for key, item in value.items()}
    if isinstance(value, list):
        return [expand_section(item, variables) for item in value]
    return value


def image_digest(image: str) -> str:
    """The `sha256:...` digest an image reference pins, or ""."""
    match = _DIGEST.search(image)
    return match.group(1) if match else ""


def deploy_step_command(section: Mapping[str, Any]) -> str:
    """The command shown for a deploy step. No shell runs it (the shell executor hands the step
    to run_deploy_step); an executor that does not know deploy steps fails on it (command not
    found) instead of passing without deploying."""
    strategy = section.get("strategy") or "rolling"
    return f"conveyor-deploy {strategy} {section.get('namespace')}/{section.get('deployment')} {section.get('image')}"


def job_result_of(result: RolloutResult) -> tuple[str, int, str]:
    """(step and job status, exit code, reason) for a rollout's result."""
    if result.status is RolloutStatus.SUCCEEDED:
        return StepStatus.SUCCESS, 0, ""
    prefix = ROLLED_BACK_REASON if result.status is RolloutStatus.ROLLED_BACK else FAILED_REASON
    return StepStatus.FAILURE, 1, prefix + result.message


def run_deploy_step(
    reporter: Reporter,
    job: ClaimedJob,
    step: ClaimedStep,
    env: Mapping[str, str],
    workdir: Path,
    stop: threading.Event,
    deadline: float,
    log: LogStream | None = None,
) -> tuple[str, int | None, str]:
    """Run the job's rollout as `step`, like the shell executor runs a script step: report its
    start, stream its log (continuing `log`, the stream its checkout wrote to, if given), report
    its end. `env` is the job's environment (smoke test commands get it), `workdir` its
    checkout, `deadline` (monotonic) its timeout. Returns (status, exit code, reason)."""
    reporter.step_started(job, step)
    log = log or LogStream(reporter, job, step)
    status, exit_code, note = _deploy(job, log, env=env, workdir=workdir, stop=stop, deadline=deadline)
    log.flush(final=True)
    reporter.step_finished(job, step, status=status, exit_code=exit_code)
    return status, exit_code, note


def _deploy(
    job: ClaimedJob, log: LogStream, *, env: Mapping[str, str], workdir: Path, stop: threading.Event, deadline: float
) -> tuple[str, int | None, str]:
    section = (job.spec or {}).get("deploy")
    try:
        spec = parse_deploy_spec(expand_section(section, job.variables))
    except DeploySpecError as exc:
        log.write(f"{exc}\n")
        return StepStatus.FAILURE, 1, f"{FAILED_REASON}{exc}"
    log.write(f"$ deploy {spec.strategy.value} {spec.namespace}/{spec.deployment} {spec.image}\n")
    # The rollout stops (and undoes a rolling update) when the job is cancelled or its timeout
    # passes; meanwhile this thread ships log lines the rollout has not followed with more.
    halt, done = threading.Event(), threading.Event()
    timed_out = threading.Event()

    def watch() -> None:
        while not done.wait(_FLUSH_EVERY_S):
            log.maybe_flush()
            if stop.is_set():
                halt.set()
            elif time.monotonic() > deadline:
                timed_out.set()
                halt.set()

    api_client = None
    kubeconfig = getattr(settings, "CONVEYOR_DEPLOY_KUBECONFIG", "")
    if kubeconfig:
        try:
            api_client = config.new_client_from_config(config_file=kubeconfig, context=spec.context)
        except (config.ConfigException, OSError, ValueError) as exc:
            message = f"cannot configure the Kubernetes client from {kubeconfig}: {exc}"
            log.write(f"{message}\n")
            return StepStatus.FAILURE, 1, f"{FAILED_REASON}{message}"
    watcher = threading.Thread(target=watch, name=f"deploy-{job.name}", daemon=True)
    watcher.start()
    try:
        result = rollout(
            spec,
            api_client=api_client,
            log=lambda line: log.write(f"{line}\n"),
            stop=halt,
            smoke_env=dict(env),
            workdir=str(workdir),
            change_cause=f"conveyor: {job.variables.get('CI_PIPELINE_URL', '')} job {job.name}".strip(),
        )
    finally:
        done.set()
        watcher.join()
    if stop.is_set():
        log.write("\nCancelled: cancelled\n")
        return StepStatus.CANCELLED, None, "cancelled"
    status, exit_code, reason = job_result_of(result)
    if timed_out.is_set() and status != StepStatus.SUCCESS:
        reason = f"{reason} (timed out after {job.timeout_s}s)"
    return status, exit_code, reason
