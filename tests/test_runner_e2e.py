"""End to end: real `manage.py runner` processes execute real runs from real git repositories.

The runners are subprocesses talking to this session's test database (trusted mode), or,
in HTTP mode, to a real uvicorn serving the runner API on a free 127.0.0.1 port. Rows must
be committed for them to be seen, hence `transaction=True` everywhere. Nothing here is
mocked: PostgreSQL, git, the runner, its shell jobs and their process groups are all real.
Every wait is a wait-until with a generous deadline; no assertion is about time.
"""

from __future__ import annotations

import contextlib
import itertools
import os
import re
import signal
import socket
import subprocess
import sys
import textwrap
import time
from collections.abc import Callable
from pathlib import Path
from typing import TypeVar
from urllib.parse import quote, urlencode

import pytest
import requests
from django.conf import settings
from django.db import connection

from logs.selectors import log_text
from pipelines.models import Pipeline, Repository, Trigger
from pipelines.services import run_trigger
from runners.models import Runner
from runners.services import registration_token_create
from runs.models import Job, JobStatus, PipelineRun, RunStatus, Step, StepStatus
from runs.services import jobs_reap_expired_leases, run_cancel

pytestmark = pytest.mark.django_db(transaction=True)

ROOT = Path(__file__).resolve().parents[1]
LEASE_S = 5  # the smallest lease settings allow
SECRET_KEY = "e2e-secret-key-that-no-job-may-see"
_numbers = itertools.count(1)

T = TypeVar("T")


# --- Waiting.


def wait_until(predicate: Callable[[], T], *, timeout: float = 30.0, what: str = "the condition", diagnose=None) -> T:
    """Poll `predicate` until it returns something truthy; fail after `timeout` seconds."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            details = f"\n{diagnose()}" if diagnose else ""
            raise AssertionError(f"gave up waiting for {what} after {timeout}s{details}")
        time.sleep(0.05)


def process_is_alive(pid: int) -> bool:
    """True while `pid` runs (a zombie, dead but not yet reaped, counts as gone)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except (FileNotFoundError, ProcessLookupError):
        return False
    return stat.rsplit(")", 1)[1].split()[0] not in {"Z", "X"}


def read_pid(path: Path, timeout: float = 30.0) -> int:
    text = wait_until(lambda: path.exists() and path.read_text().strip(), timeout=timeout, what=f"a pid in {path}")
    return int(text)


# --- The database as the runners see it.


def database_url() -> str:
    """A DATABASE_URL naming this session's test database (settings now point at it)."""
    db = connection.settings_dict
    user, password = quote(db["USER"] or "", safe=""), quote(db["PASSWORD"] or "", safe="")
    auth = f"{user}:{password}@" if password else (f"{user}@" if user else "")
    query = {k: str(v) for k, v in (db.get("OPTIONS") or {}).items()}
    host = db["HOST"] or ""
    if host.startswith("/"):
        query["host"], host = host, ""  # a unix socket directory
    elif ":" in host:
        host = f"[{host}]"
    if db["PORT"]:
        host += f":{db['PORT']}"
    return f"postgres://{auth}{host}/{quote(db['NAME'], safe='')}" + (f"?{urlencode(query)}" if query else "")


def run_status(run: PipelineRun) -> str:
    return PipelineRun.objects.values_list("status", flat=True).get(pk=run.pk)


def run_finished(run: PipelineRun) -> str | None:
    status = run_status(run)
    return status if status in RunStatus.TERMINAL else None


def attempts(run: PipelineRun, name: str) -> list[Job]:
    return list(Job.objects.filter(run=run, name=name).select_related("runner").order_by("attempt"))


def current(run: PipelineRun, name: str) -> Job:
    return Job.objects.select_related("runner").get(run=run, name=name, retried=False)


def unfinished_steps(job: Job) -> list[tuple[int, str]]:
    return list(Step.objects.filter(job=job).exclude(status__in=StepStatus.TERMINAL).values_list("index", "status"))


def step_log(job: Job, index: int) -> str:
    return log_text(step=Step.objects.get(job=job, index=index))


def describe(run: PipelineRun) -> str:
    lines = [f"run {run.pk}: {run_status(run)}"]
    for job in Job.objects.filter(run=run).order_by("name", "attempt"):
        lines.append(f"  {job.name} #{job.attempt}: {job.status} {job.status_reason!r} retried={job.retried}")
    return "\n".join(lines)


# --- Processes.


class Process:
    """A subprocess whose output goes to a file, started in its own process group."""

    def __init__(self, name: str, args: list[str], *, env: dict[str, str], log_dir: Path):
        self.name = name
        self.log_path = log_dir / f"{name}-{next(_numbers)}.log"
        self._log = self.log_path.open("wb")
        self.popen = subprocess.Popen(
            args, cwd=ROOT, env=env, stdout=self._log, stderr=subprocess.STDOUT, start_new_session=True
        )

    @property
    def pid(self) -> int:
        return self.popen.pid

    def output(self) -> str:
        return self.log_path.read_text(errors="replace")

    def alive(self) -> bool:
        return self.popen.poll() is None

    def signal(self, signum: int) -> None:
        self.popen.send_signal(signum)

    def wait_exit(self, timeout: float = 30.0) -> int:
        try:
            return self.popen.wait(timeout)
        except subprocess.TimeoutExpired:
            raise AssertionError(f"{self.name} did not exit within {timeout}s:\n{self.output()[-3000:]}") from None

    def kill(self) -> None:
        if self.alive():
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.popen.pid, signal.SIGKILL)
            self.popen.wait(10)
        self._log.close()


class Harness:
    """Starts runners and servers against the test database; kills them all at teardown."""

    def __init__(self, tmp_path: Path):
        self.tmp_path = tmp_path
        self.builds_dir = tmp_path / "builds"
        self.processes: list[Process] = []

    def env(self, **extra: str) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items() if not k.startswith(("PYTEST_", "DJANGO_SETTINGS_MODULE"))}
        env.update(
            DATABASE_URL=database_url(),
            REDIS_URL=settings.REDIS_URL,
            SECRET_KEY=SECRET_KEY,
            # The key this test process encrypts CI/CD variables with: servers and trusted
            # runners decrypt them at claim time, so they must share it (README: Secrets).
            CONVEYOR_ENCRYPTION_KEY=settings.CONVEYOR_ENCRYPTION_KEY,
            CONVEYOR_JOB_LEASE_S=str(LEASE_S),
            CONVEYOR_HEARTBEAT_S="0.3",
            CONVEYOR_RUNNER_POLL_S="1",
            CONVEYOR_BUILDS_DIR=str(self.builds_dir),
            CONVEYOR_MIRRORS_DIR=str(self.tmp_path / "runner-mirrors"),
            PYTHONUNBUFFERED="1",
            LOG_LEVEL="INFO",
        )
        env.update(extra)
        return env

    def start(self, name: str, args: list[str], **env: str) -> Process:
        process = Process(name, args, env=self.env(**env), log_dir=self.tmp_path)
        self.processes.append(process)
        return process

    def runner(self, name: str, *args: str, **env: str) -> Process:
        command = [sys.executable, "manage.py", "runner", "--name", name, "--builds-dir", str(self.builds_dir)]
        return self.start(f"runner-{name}", [*command, "--poll-interval", "1", *args], **env)

    def server(self, port: int | None = None) -> Server:
        return Server(self, port or free_port())

    def close(self) -> None:
        for process in self.processes:
            process.kill()
        # Jobs of a SIGKILLed runner live on in their own sessions: kill what runs from our builds dir.
        for pid in _pids_running_from(self.builds_dir):
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(pid, signal.SIGKILL)


def _pids_running_from(directory: Path) -> list[int]:
    found = []
    marker = str(directory).encode()
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            with contextlib.suppress(OSError):
                if marker in (entry / "cmdline").read_bytes():
                    found.append(int(entry.name))
    return found


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class Server:
    """`uvicorn cicd.asgi:application` on 127.0.0.1:<port>; can be stopped and started again."""

    def __init__(self, harness: Harness, port: int):
        self.harness, self.port = harness, port
        self.url = f"http://127.0.0.1:{port}"
        self.process: Process | None = None
        self.start()

    def start(self) -> None:
        args = [sys.executable, "-m", "uvicorn", "cicd.asgi:application", "--host", "127.0.0.1"]
        self.process = self.harness.start("server", [*args, "--port", str(self.port), "--log-level", "warning"])
        wait_until(self._healthy, timeout=60, what="the server to answer", diagnose=self.process.output)

    def _healthy(self) -> bool:
        assert self.process is not None and self.process.alive(), self.process.output()
        try:
            return requests.get(f"{self.url}/healthz", timeout=2).status_code == 200
        except requests.RequestException:
            return False

    def crash(self) -> None:
        assert self.process is not None
        self.process.kill()


@pytest.fixture
def harness(tmp_path: Path):
    harness = Harness(tmp_path)
    yield harness
    harness.close()


# --- Repositories and runs.


@pytest.fixture
def trigger(make_git_repo, settings, tmp_path: Path):
    """trigger(config, files={...}) -> a run of a fresh git repository holding `.cicd.yml`."""
    settings.CONVEYOR_MIRRORS_DIR = tmp_path / "mirrors"

    def trigger(config: str, *, files: dict[str, str] | None = None) -> PipelineRun:
        path, _sha = make_git_repo({".cicd.yml": textwrap.dedent(config), **(files or {})})
        repository = Repository.objects.create(name=f"e2e-{next(_numbers)}", clone_url=str(path))
        pipeline = Pipeline.objects.create(repository=repository, name="default")
        run = run_trigger(pipeline=pipeline, ref="main", trigger=Trigger.PUSH, triggered_by="e2e")
        assert run.status in RunStatus.ACTIVE, run.error_message
        return run

    return trigger


def assert_run_ends(run: PipelineRun, expected: str, *, runners: list[Process], timeout: float = 60.0) -> None:
    """Wait until the run is finished, then check how; the failure message tells the story."""

    def diagnose() -> str:
        return describe(run) + "".join(f"\n--- {p.name}:\n{p.output()[-4000:]}" for p in runners)

    status = wait_until(
        lambda: run_finished(run), timeout=timeout, what=f"run {run.number} to finish", diagnose=diagnose
    )
    assert status == expected, diagnose()


def register_http_runner(server: Server, harness: Harness, name: str, *tags: str) -> str:
    """`manage.py runner register` against the server; returns the runner token it prints."""
    _, registration = registration_token_create(description=f"e2e {name}")
    command = [sys.executable, "manage.py", "runner", "register", "--url", server.url]
    command += ["--registration-token", registration, "--name", name, "--tags", ",".join(tags)]
    done = subprocess.run(command, cwd=ROOT, env=harness.env(), capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    match = re.search(r"runner token \(shown once, keep it secret\): (\S+)", done.stdout)
    assert match, done.stdout
    return match.group(1)


# --- The tests.


@pytest.mark.slow
def test_a_runner_executes_a_multi_stage_run_end_to_end(harness, trigger):
    run = trigger(
        """
        stages: [build, test, deploy]
        build:
          stage: build
          script:
            - echo "building $CI_COMMIT_SHA"
            - mkdir -p dist && cp README.md dist/
        unit:
          stage: test
          script:
            - cat README.md
            - printf 'before\\0after\\n'
        lint:
          stage: test
          allow_failure: true
          script:
            - echo "lint found problems"; exit 3
        deploy:
          stage: deploy
          needs: [unit]
          script: echo "deploying $CI_JOB_NAME to $CI_COMMIT_BRANCH"
        """,
        files={"README.md": "the project readme\n"},
    )
    runner = harness.runner("multi", "--concurrency", "2")

    assert_run_ends(run, RunStatus.SUCCESS, runners=[runner])

    jobs = {name: current(run, name) for name in ["build", "unit", "lint", "deploy"]}
    assert {name: j.status for name, j in jobs.items()} == {
        "build": JobStatus.SUCCESS,
        "unit": JobStatus.SUCCESS,
        "lint": JobStatus.FAILURE,
        "deploy": JobStatus.SUCCESS,
    }
    assert all(j.runner.name == "multi" and j.attempt == 1 for j in jobs.values())
    steps = {
        (s.job.name, s.index): (s.status, s.exit_code) for s in Step.objects.filter(job__run=run).select_related("job")
    }
    assert steps == {
        ("build", 0): (StepStatus.SUCCESS, 0),
        ("build", 1): (StepStatus.SUCCESS, 0),
        ("unit", 0): (StepStatus.SUCCESS, 0),
        ("unit", 1): (StepStatus.SUCCESS, 0),
        ("lint", 0): (StepStatus.FAILURE, 3),
        ("deploy", 0): (StepStatus.SUCCESS, 0),
    }
    assert jobs["lint"].exit_code == 3
    assert f"building {run.commit_sha}" in step_log(jobs["build"], 0)
    assert "the project readme" in step_log(jobs["unit"], 0)
    assert "before\ufffdafter" in step_log(jobs["unit"], 1), "a NUL byte in the output broke the log"
    assert "lint found problems" in step_log(jobs["lint"], 0)
    assert "deploying deploy to main" in step_log(jobs["deploy"], 0)
    assert runner.alive()


@pytest.mark.slow
def test_a_runner_killed_mid_job_loses_the_job_to_the_reaper_and_another_runner_finishes_it(harness, trigger, tmp_path):
    pid_file = tmp_path / "attempt-1.pid"
    run = trigger(
        f"""
        work:
          script:
            - echo "attempt $CI_JOB_ATTEMPT"
            - if [ "$CI_JOB_ATTEMPT" = 1 ]; then echo $$ > {pid_file}; sleep 60; fi
            - echo "finished on attempt $CI_JOB_ATTEMPT"
        """
    )
    doomed = harness.runner("doomed")
    read_pid(pid_file)  # attempt 1 is in its sleeping step

    doomed.signal(signal.SIGKILL)
    doomed.wait_exit()
    # What Celery beat does: reap until the lease of the dead runner's job has run out.
    wait_until(lambda: jobs_reap_expired_leases()["requeued"], timeout=LEASE_S * 4, what="the lease to expire")
    rescuer = harness.runner("rescuer")

    assert_run_ends(run, RunStatus.SUCCESS, runners=[rescuer])
    first, second = attempts(run, "work")
    assert (first.attempt, first.status, first.retried, first.runner.name) == (1, JobStatus.FAILURE, True, "doomed")
    assert "lease expired" in first.status_reason
    assert "attempt 1" in step_log(first, 0), "the lost attempt's log was not kept"
    assert unfinished_steps(first) == [], "the lost attempt's record shows steps still running"
    assert (second.attempt, second.status, second.retried, second.runner.name) == (
        2,
        JobStatus.SUCCESS,
        False,
        "rescuer",
    )
    assert "finished on attempt 2" in step_log(second, 2)


@pytest.mark.slow
def test_a_runner_frozen_past_its_lease_is_fenced_off_when_it_wakes_up(harness, trigger, tmp_path):
    go = tmp_path / "go"
    run = trigger(
        f"""
        work:
          script:
            - echo "attempt $CI_JOB_ATTEMPT"
            - if [ "$CI_JOB_ATTEMPT" = 1 ]; then while [ ! -f {go} ]; do sleep 0.1; done; fi
            - echo "attempt $CI_JOB_ATTEMPT says it is done"
        """
    )
    sleeper = harness.runner("sleeper")
    wait_until(lambda: "$ if" in step_log(current(run, "work"), 1), what="attempt 1 to be in its waiting step")

    sleeper.signal(signal.SIGSTOP)  # a runner stuck (GC pause, swapped out, partitioned): no heartbeats
    wait_until(lambda: jobs_reap_expired_leases()["requeued"], timeout=LEASE_S * 4, what="the lease to expire")
    go.touch()  # attempt 1's step ends while its runner cannot tell anyone
    sleeper.signal(signal.SIGCONT)

    # The woken runner's late reports on attempt 1 are refused; it goes on to run attempt 2.
    assert_run_ends(run, RunStatus.SUCCESS, runners=[sleeper])
    first, second = attempts(run, "work")
    assert (first.status, first.retried) == (JobStatus.FAILURE, True)
    assert "lease expired" in first.status_reason
    assert "says it is done" not in step_log(first, 2)
    assert unfinished_steps(first) == []
    assert (second.attempt, second.status) == (2, JobStatus.SUCCESS)
    assert "attempt 2 says it is done" in step_log(second, 2)
    assert sleeper.alive()


@pytest.mark.slow
def test_cancelling_a_run_kills_the_running_sleep_and_the_runner_takes_the_next_job(harness, trigger, tmp_path):
    pid_file = tmp_path / "sleep.pid"
    run = trigger(
        f"""
        sleepy:
          script:
            - sleep 300 & echo $! > {pid_file}; wait
            - echo "never runs"
        """
    )
    runner = harness.runner("canceller")
    sleep_pid = read_pid(pid_file)
    assert process_is_alive(sleep_pid)

    run_cancel(run=run, by="alice")

    wait_until(lambda: not process_is_alive(sleep_pid), timeout=10, what="the cancelled step's sleep to be killed")
    job = current(run, "sleepy")
    assert (job.status, job.status_reason) == (JobStatus.CANCELLED, "cancelled by alice")
    assert run_status(run) == RunStatus.CANCELLED
    assert list(Step.objects.filter(job=job).values_list("status", flat=True)) == [StepStatus.CANCELLED] * 2
    # The runner survived the cancel, reported nothing over it, and is free for the next job.
    follow_up = trigger("next:\n  script: echo next\n")
    assert_run_ends(follow_up, RunStatus.SUCCESS, runners=[runner])
    assert current(run, "sleepy").status == JobStatus.CANCELLED


@pytest.mark.slow
def test_a_job_past_its_timeout_is_killed_and_fails_with_a_timeout_reason(harness, trigger, tmp_path):
    pid_file = tmp_path / "sleep.pid"
    run = trigger(
        f"""
        slow:
          timeout: 2 seconds
          script:
            - sleep 300 & echo $! > {pid_file}; wait
        """
    )
    runner = harness.runner("timekeeper")

    sleep_pid = read_pid(pid_file)

    assert_run_ends(run, RunStatus.FAILURE, runners=[runner])
    job = current(run, "slow")
    assert job.status == JobStatus.FAILURE
    assert "timed out after 2s" in job.status_reason
    assert Step.objects.get(job=job).status == StepStatus.FAILURE
    assert "Timeout" in step_log(job, 0)
    wait_until(lambda: not process_is_alive(sleep_pid), timeout=10, what="the timed-out sleep to be killed")


@pytest.mark.slow
def test_a_failing_job_with_retry_1_runs_a_second_attempt_and_keeps_the_first(harness, trigger):
    run = trigger(
        """
        flaky:
          retry: 1
          script:
            - echo "attempt $CI_JOB_ATTEMPT"
            - test "$CI_JOB_ATTEMPT" -ge 2
        """
    )
    runner = harness.runner("retrier")

    assert_run_ends(run, RunStatus.SUCCESS, runners=[runner])
    first, second = attempts(run, "flaky")
    assert (first.attempt, first.status, first.exit_code, first.retried) == (1, JobStatus.FAILURE, 1, True)
    assert "attempt 1" in step_log(first, 0)
    assert Step.objects.get(job=first, index=1).exit_code == 1
    assert (second.attempt, second.status, second.retried) == (2, JobStatus.SUCCESS, False)
    assert "attempt 2" in step_log(second, 0)


@pytest.mark.slow
def test_sigterm_lets_a_job_finish_within_the_grace_period_and_hands_back_one_that_would_not(
    harness, trigger, tmp_path
):
    go, sleep_pid_file = tmp_path / "go", tmp_path / "slow.pid"
    run = trigger(
        f"""
        quick:
          script:
            - while [ ! -f {go} ]; do sleep 0.1; done; echo "quick done"
        slow:
          script:
            - if [ "$CI_JOB_ATTEMPT" = 1 ]; then sleep 300 & echo $! > {sleep_pid_file}; wait; fi
            - echo "slow done on attempt $CI_JOB_ATTEMPT"
        """
    )
    draining = harness.runner("draining", "--concurrency", "2", "--grace-period", "5")
    sleep_pid = read_pid(sleep_pid_file)
    quick_step = Step.objects.filter(job__run=run, job__name="quick")
    wait_until(lambda: quick_step.get().status == StepStatus.RUNNING, what="quick's step to start")

    draining.signal(signal.SIGTERM)
    go.touch()

    assert draining.wait_exit() == 0, draining.output()
    assert "runner 'draining' stopped after 2 job(s)" in draining.output()
    quick = attempts(run, "quick")
    assert [(j.attempt, j.status, j.runner.name) for j in quick] == [(1, JobStatus.SUCCESS, "draining")]
    handed_back = attempts(run, "slow")[0]
    assert (handed_back.status, handed_back.retried) == (JobStatus.FAILURE, True)
    assert "runner shut down" in handed_back.status_reason
    assert unfinished_steps(handed_back) == [], "the handed-back attempt's record shows steps still running"
    assert current(run, "slow").status == JobStatus.QUEUED
    wait_until(lambda: not process_is_alive(sleep_pid), timeout=10, what="the handed-back job's sleep to be killed")

    finisher = harness.runner("finisher")
    assert_run_ends(run, RunStatus.SUCCESS, runners=[finisher])
    slow = current(run, "slow")
    assert (slow.attempt, slow.status, slow.runner.name) == (2, JobStatus.SUCCESS, "finisher")
    assert "slow done on attempt 2" in step_log(slow, 1)


@pytest.mark.slow
@pytest.mark.parametrize("mode", ["trusted", "http"])
def test_a_job_environment_holds_no_database_url_secret_key_redis_url_or_runner_token(harness, trigger, mode):
    from pipelines.variables import variable_create

    run = trigger(
        """
        printenv:
          variables:
            GREETING: hello
          script:
            - env
        """
    )
    variable_create(repository=run.pipeline.repository, key="DEPLOY_PASSWORD", value="e2e-masked-value", masked=True)
    cloud = {"AWS_ACCESS_KEY_ID": "AKIAE2ERUNNERKEY", "AWS_SECRET_ACCESS_KEY": "e2e-runner-aws-secret"}
    secrets_in_runner_env = {
        "DATABASE_URL": harness.env()["DATABASE_URL"],
        "SECRET_KEY": SECRET_KEY,
        "REDIS_URL": settings.REDIS_URL,
        "CONVEYOR_ENCRYPTION_KEY": settings.CONVEYOR_ENCRYPTION_KEY,
        **cloud,
    }
    if mode == "http":
        server = harness.server()
        token = register_http_runner(server, harness, "http-env")
        secrets_in_runner_env["runner token"] = token
        runner = harness.runner("http-env", "--url", server.url, CONVEYOR_RUNNER_TOKEN=token, **cloud)
    else:
        runner = harness.runner("trusted-env", **cloud)

    assert_run_ends(run, RunStatus.SUCCESS, runners=[runner])
    log = step_log(current(run, "printenv"), 0)
    assert "GREETING=hello" in log
    assert f"CI_JOB_ID={current(run, 'printenv').pk}" in log
    for name, value in secrets_in_runner_env.items():
        assert value not in log, f"the job saw the runner's {name}"
    for name in ["DATABASE_URL", "SECRET_KEY", "REDIS_URL", "CONVEYOR_", "AWS_"]:
        assert f"\n{name}" not in log and not log.startswith(name), f"the job saw {name}"
    # The job's own secrets it does get, masked in its log.
    assert "DEPLOY_PASSWORD=[MASKED]" in log and "e2e-masked-value" not in log
    assert "CI_JOB_TOKEN=[MASKED]" in log


@pytest.mark.slow
def test_a_job_tagged_gpu_waits_for_a_runner_with_the_gpu_tag(harness, trigger):
    gpu_run = trigger("train:\n  tags: [gpu]\n  script: echo training\n")
    plain_run = trigger("plain:\n  script: echo plain\n")  # queued after the gpu job
    untagged = harness.runner("untagged", "--max-jobs", "1")

    assert untagged.wait_exit(timeout=60) == 0, untagged.output()
    assert current(plain_run, "plain").status == JobStatus.SUCCESS
    assert current(plain_run, "plain").runner.name == "untagged"
    assert current(gpu_run, "train").status == JobStatus.QUEUED

    gpu = harness.runner("gpu-box", "--tags", "gpu,linux")
    assert_run_ends(gpu_run, RunStatus.SUCCESS, runners=[gpu])
    train = current(gpu_run, "train")
    assert (train.runner.name, train.runner.tags) == ("gpu-box", ["gpu", "linux"])
    assert "training" in step_log(train, 0)


@pytest.mark.slow
def test_an_http_runner_survives_its_server_going_away_and_finishes_its_job_when_it_is_back(harness, trigger, tmp_path):
    go = tmp_path / "go"
    run = trigger(
        f"""
        steady:
          script:
            - echo "before the outage"
            - while [ ! -f {go} ]; do sleep 0.1; done; echo "during the outage"
            - echo "after the outage"
        """
    )
    server = harness.server()
    token = register_http_runner(server, harness, "steadfast")
    runner = harness.runner("steadfast", "--url", server.url, "--token", token)
    wait_until(lambda: "before the outage" in step_log(current(run, "steady"), 0), what="the first step's log")

    server.crash()
    go.touch()  # the job's next reports (log, step finished, heartbeats) meet a dead server
    wait_until(lambda: "failed" in runner.output(), what="the runner to notice the outage", diagnose=runner.output)
    assert runner.alive(), runner.output()
    server.start()

    assert_run_ends(run, RunStatus.SUCCESS, runners=[runner])
    job = current(run, "steady")
    assert (job.attempt, job.runner.name) == (1, "steadfast")
    assert "during the outage" in step_log(job, 1)
    assert "after the outage" in step_log(job, 2)
    # Back to claiming (the long-poll) as before.
    follow_up = trigger("next:\n  script: echo next\n")
    assert_run_ends(follow_up, RunStatus.SUCCESS, runners=[runner])
    assert runner.alive()
    runner.signal(signal.SIGTERM)
    assert runner.wait_exit() == 0


@pytest.mark.slow
def test_a_trusted_runner_whose_database_connections_drop_reconnects_and_finishes_its_job(harness, trigger, tmp_path):
    go = tmp_path / "go"
    run = trigger(
        f"""
        steady:
          script:
            - while [ ! -f {go} ]; do sleep 0.1; done
            - echo "after the drop"
        """
    )
    runner = harness.runner("resilient")
    # The waiting step prints nothing more: its end is the job's first report after the drop.
    wait_until(lambda: "$ while" in step_log(current(run, "steady"), 0), what="the first step's log")

    dropped = terminate_other_connections()
    assert dropped, "the runner had no database connection to drop"
    go.touch()

    assert_run_ends(run, RunStatus.SUCCESS, runners=[runner])
    job = current(run, "steady")
    assert list(Step.objects.filter(job=job).values_list("status", "exit_code")) == [(StepStatus.SUCCESS, 0)] * 2
    assert "after the drop" in step_log(job, 1)
    follow_up = trigger("next:\n  script: echo next\n")
    assert_run_ends(follow_up, RunStatus.SUCCESS, runners=[runner])
    assert runner.alive()


def terminate_other_connections() -> int:
    """Drop every other session of the test database (the runners'), as a database restart would."""
    with connection.cursor() as cursor:
        cursor.execute(
            "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity "
            "WHERE datname = current_database() AND pid <> pg_backend_pid()"
        )
        return cursor.fetchone()[0]


@pytest.mark.slow
def test_an_http_runner_whose_token_is_revoked_stops_with_a_clear_message(harness):
    from runners.services import runner_revoke

    server = harness.server()
    token = register_http_runner(server, harness, "doomed")
    runner_revoke(runner=Runner.objects.get(name="doomed"))

    runner = harness.runner("doomed", "--url", server.url, CONVEYOR_RUNNER_TOKEN=token)

    assert runner.wait_exit(timeout=60) == 1
    assert "refused this runner's token" in runner.output()
    assert "Traceback" not in runner.output()
