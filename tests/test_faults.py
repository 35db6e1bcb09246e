"""Fault injection: real processes and servers, killed, frozen and restarted while they work.

Runners, the web server (uvicorn), Celery workers and beat run as subprocesses, as in
tests/test_runner_e2e.py (whose harness this reuses). A test that stops or restarts
PostgreSQL or Redis does it to a private server of its own (tests/fault_servers.py), never
to the shared embedded ones under var/. Every wait is a wait-until with a generous deadline;
no assertion is about time.
"""

from __future__ import annotations

import contextlib
import hashlib
import hmac
import json
import os
import random
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import psycopg
import pytest
import requests
from django.conf import settings

from logs.selectors import log_text
from pipelines.models import Pipeline, PipelineSchedule, Repository, Trigger, WebhookDelivery
from pipelines.services import run_trigger
from runs.models import Job, JobStatus, PipelineRun, RunStatus, Step, StepStatus
from runs.services import job_retry, run_cancel
from tests.fault_servers import (
    LiveLogViewer,
    PrivatePostgres,
    PrivateRedis,
    StallingGitServer,
    children_of,
    django_script,
)
from tests.test_runner_e2e import (
    LEASE_S,
    Harness,
    Process,
    assert_run_ends,
    attempts,
    current,
    describe,
    free_port,
    process_is_alive,
    read_pid,
    register_http_runner,
    run_finished,
    run_status,
    step_log,
    unfinished_steps,
    wait_until,
)

pytestmark = [pytest.mark.slow, pytest.mark.django_db(transaction=True)]

ROOT = Path(__file__).resolve().parents[1]


# --- More processes: Celery, and a web server with an environment of its own.


def celery_worker(harness: Harness, *, beat: bool = False, concurrency: int = 1, **env: str) -> Process:
    """`celery -A cicd worker` (prefork), with an embedded beat if asked. Give it a private
    REDIS_URL: the shared Redis's queue may be consumed by other sessions' workers."""
    assert "REDIS_URL" in env, "a Celery worker in a test needs a broker of its own"
    args = [sys.executable, "-m", "celery", "-A", "cicd", "worker", "-Q", "default", "--loglevel", "info"]
    args += ["--concurrency", str(concurrency), "--without-gossip", "--without-mingle", "--without-heartbeat"]
    if beat:
        args += ["--beat", "--schedule", str(harness.tmp_path / f"beat-{free_port()}")]
    worker = harness.start("celery", args, CONVEYOR_SWEEP_INTERVAL_S="1", **env)
    wait_until(
        lambda: "ready." in worker.output(), timeout=60, what="the Celery worker to start", diagnose=worker.output
    )
    return worker


class Web:
    """uvicorn on a free port with the given environment (a private database or Redis)."""

    def __init__(self, harness: Harness, **env: str):
        self.harness, self.env = harness, env
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.process: Process | None = None
        self.start()

    def start(self) -> None:
        args = [sys.executable, "-m", "uvicorn", "cicd.asgi:application", "--host", "127.0.0.1"]
        args += ["--port", str(self.port), "--log-level", "warning"]
        self.process = self.harness.start("web", args, **self.env)
        wait_until(self.answers, timeout=60, what="the web server to answer", diagnose=self.process.output)

    def answers(self) -> bool:
        assert self.process is not None and self.process.alive(), self.process.output()
        try:
            return requests.get(f"{self.url}/healthz", timeout=2).status_code in {200, 503}
        except requests.RequestException:
            return False

    def crash(self) -> None:
        assert self.process is not None
        self.process.kill()


def http_runner(harness: Harness, web, name: str, *args: str, tags=(), **env: str) -> tuple[Process, str]:
    """Register a runner through the web server and start it; returns it and its token."""
    token = register_http_runner(web, harness, name, *tags)
    return harness.runner(name, "--url", web.url, *args, CONVEYOR_RUNNER_TOKEN=token, **env), token


def reap_until_requeued(*, timeout: float = LEASE_S * 4) -> None:
    """What Celery beat's sweep does, called until the expired lease is taken back."""
    from runs.services import jobs_reap_expired_leases

    wait_until(lambda: jobs_reap_expired_leases()["requeued"], timeout=timeout, what="the lease to expire")


def numbered_lines(prefix: str, count: int) -> str:
    return "".join(f"{prefix} {i}\n" for i in range(1, count + 1))


# --- 1. A runner killed with SIGKILL mid-job.


def test_a_runner_killed_with_sigkill_leaves_no_job_process_behind_and_the_job_fails_after_its_last_attempt(
    harness, trigger, tmp_path
):
    """Each attempt's runner is SIGKILLed in the middle of a step whose `sleep` runs in the
    background with its output elsewhere. The runner's guardian kills the step's process
    group; the reaper (a real Celery beat) ends the attempt "lease expired" and queues the
    next, and after the third lost attempt the job fails with that reason: never RUNNING."""
    redis = PrivateRedis()
    try:
        celery_worker(harness, beat=True, REDIS_URL=redis.url)
        run = trigger(
            f"""
            doomed:
              script:
                - echo "attempt $CI_JOB_ATTEMPT"
                - sleep 300 > /dev/null 2>&1 & echo $! > {tmp_path}/sleep-$CI_JOB_ATTEMPT.pid; wait
            after:
              needs: []
              script: echo "a sibling is not held up"
            """
        )
        for attempt in (1, 2, 3):
            runner = harness.runner(f"victim-{attempt}")
            sleep_pid = read_pid(tmp_path / f"sleep-{attempt}.pid")
            assert process_is_alive(sleep_pid)

            runner.signal(signal.SIGKILL)
            runner.wait_exit()

            wait_until(
                lambda pid=sleep_pid: not process_is_alive(pid),
                timeout=10,
                what=f"attempt {attempt}'s sleep to die with its runner",
            )
            wait_until(
                lambda n=attempt: attempts(run, "doomed")[n - 1].status == JobStatus.FAILURE,
                timeout=LEASE_S * 6,
                what=f"the sweep to take attempt {attempt} back",
                diagnose=lambda: describe(run),
            )

        assert_run_ends(run, RunStatus.FAILURE, runners=[], timeout=30)
        lost = attempts(run, "doomed")
        assert [(j.attempt, j.status, j.retried) for j in lost] == [
            (1, JobStatus.FAILURE, True),
            (2, JobStatus.FAILURE, True),
            (3, JobStatus.FAILURE, False),
        ]
        assert [j.status_reason for j in lost] == [
            f"lease expired on attempt {n}: the runner stopped reporting" for n in (1, 2, 3)
        ]
        assert all(unfinished_steps(j) == [] for j in lost)
        assert [step_log(j, 0).count(f"attempt {j.attempt}") for j in lost] == [1, 1, 1]
        assert not Job.objects.filter(run=run, status=JobStatus.RUNNING).exists()
    finally:
        redis.close()


def test_a_runner_that_exits_normally_leaves_no_background_process_of_its_jobs(harness, trigger, tmp_path):
    """A step's background process with its output redirected would outlive the job (nothing
    reads its pipe): it is killed when the job ends, and later steps of the job still see it."""
    run = trigger(
        f"""
        server:
          script:
            - sleep 300 > /dev/null 2>&1 & echo $! > {tmp_path}/bg.pid
            - kill -0 $(cat {tmp_path}/bg.pid) && echo "still serving in the next step"
        """
    )
    runner = harness.runner("tidy", "--max-jobs", "1")

    assert_run_ends(run, RunStatus.SUCCESS, runners=[runner])
    assert "still serving in the next step" in step_log(current(run, "server"), 1)
    wait_until(
        lambda: not process_is_alive(read_pid(tmp_path / "bg.pid")), timeout=10, what="the job's background sleep"
    )
    assert runner.wait_exit() == 0


def test_the_number_of_a_finished_group_now_owned_by_another_process_is_left_alone():
    """pid_max can be small (32768): once a step's group is empty its number may be reused
    by an unrelated process (another job's step). The kill at the end of a job, and the
    guardian's, spare a group whose leader started at another time than ours."""
    from runners.executors.shell import _kill_group_if_ours, _start_time

    other = subprocess.Popen(["sleep", "60"], start_new_session=True)
    try:
        _kill_group_if_ours(other.pid, str(int(_start_time(other.pid)) - 1))
        assert other.poll() is None, "a reused group number was killed"
        _kill_group_if_ours(other.pid, _start_time(other.pid))
        assert other.wait(10) == -signal.SIGKILL
    finally:
        other.kill()
        other.wait(10)


# --- 2. A runner frozen past its lease, then woken.


def test_a_frozen_http_runner_is_fenced_off_when_it_wakes_and_the_job_completes_once(harness, trigger, tmp_path):
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
    web = harness.server()
    frozen, frozen_token = http_runner(harness, web, "frozen")
    first = wait_until(
        lambda: (job := current(run, "work")).runner_id and "$ if" in step_log(job, 1) and job,
        what="attempt 1 to be in its waiting step",
    )

    frozen.signal(signal.SIGSTOP)  # a stalled network, a swapped-out VM: no heartbeats
    reap_until_requeued()
    rescuer, _ = http_runner(harness, web, "rescuer")
    assert_run_ends(run, RunStatus.SUCCESS, runners=[rescuer])

    go.touch()  # attempt 1's step ends while its runner still sleeps
    frozen.signal(signal.SIGCONT)

    wait_until(
        lambda: "was cancelled or taken away" in frozen.output(),
        what="the woken runner to learn it lost the job",
        diagnose=frozen.output,
    )
    wait_until(lambda: "ignored" in frozen.output(), what="the woken runner's late reports", diagnose=frozen.output)
    assert "not running on this runner" in frozen.output()
    # Whatever the woken runner sends about attempt 1 is refused: its token is still good,
    # but it no longer holds the job (409 job_not_held).
    step = Step.objects.get(job=first, index=2)
    late = {
        f"jobs/{first.pk}/finish": {"status": "SUCCESS", "exit_code": 0, "reason": ""},
        f"jobs/{first.pk}/steps/{step.pk}/finish": {"status": "SUCCESS", "exit_code": 0},
        f"jobs/{first.pk}/heartbeat": {},
    }
    for path, body in late.items():
        refused = requests.post(
            f"{web.url}/api/runner/{path}", json=body, headers={"Authorization": f"Bearer {frozen_token}"}, timeout=10
        )
        assert (refused.status_code, refused.json().get("code")) == (409, "job_not_held"), (path, refused.text)
    lost, done = attempts(run, "work")
    assert (lost.status, lost.retried, lost.runner.name) == (JobStatus.FAILURE, True, "frozen")
    assert lost.status_reason == "lease expired on attempt 1: the runner stopped reporting"
    assert Step.objects.get(pk=step.pk).status == StepStatus.CANCELLED
    assert "says it is done" not in step_log(lost, 2)
    assert (done.attempt, done.status, done.runner.name) == (2, JobStatus.SUCCESS, "rescuer")
    assert Job.objects.filter(run=run, status=JobStatus.SUCCESS).count() == 1
    assert run_status(run) == RunStatus.SUCCESS
    assert frozen.alive()
    follow_up = trigger("next:\n  script: echo next\n")
    assert_run_ends(follow_up, RunStatus.SUCCESS, runners=[frozen, rescuer])


def test_an_artifact_transfer_of_a_trusted_runner_reconnects_after_postgresql_dropped_its_connection():
    """What the restart test above caught once: a trusted runner's job thread whose database
    connection PostgreSQL dropped (a restart between two of its calls) retried its artifact
    calls on that dead connection for good. The retry now connects afresh."""
    import threading

    from django.db import connection

    from runners.artifacts import _retry

    seen: dict = {}
    dropped = threading.Event()

    def job_thread() -> None:
        try:
            with connection.cursor() as cursor:
                cursor.execute("SELECT pg_backend_pid()")
                seen["pid"] = cursor.fetchone()[0]
            dropped.wait(30)
            seen["jobs"] = _retry(lambda: Job.objects.count(), "artifact list")
        except Exception as exc:
            seen["error"] = repr(exc)
        finally:
            connection.close()

    thread = threading.Thread(target=job_thread, daemon=True)
    thread.start()
    wait_until(lambda: "pid" in seen, what="the job thread to connect")
    with connection.cursor() as cursor:
        cursor.execute("SELECT pg_terminate_backend(%s)", [seen["pid"]])
    dropped.set()
    thread.join(30)

    assert seen.get("jobs") == 0, seen


# --- 4. Redis killed and restarted during a run.


def viewer_credentials() -> tuple[str, str]:
    """A superuser's personal API token (what the CLI reads logs with) and a logged-in
    session id (what a browser's live log view connects with)."""
    from django.contrib.auth import get_user_model
    from django.test import Client

    from pipelines.api_tokens import api_token_create

    user = get_user_model().objects.create_superuser("viewer", "viewer@example.test", "x")
    browser = Client()
    browser.force_login(user)
    return api_token_create(user=user, description="faults")[1], browser.cookies["sessionid"].value


def test_redis_killed_mid_run_stops_no_job_and_loses_no_log_byte(harness, trigger, tmp_path):
    """Redis carries only the live fan-out of logs (and Celery's queue): with it gone, runners
    (HTTP and trusted) go on, every log byte is stored in PostgreSQL, and once it is back,
    viewers load the whole log and the next run streams as before."""
    redis = PrivateRedis()
    try:
        go = tmp_path / "go"
        script = """
            {name}:
              tags: [{name}]
              script:
                - for i in $(seq 1 40); do echo "{name} line $i"; done
                - while [ ! -f {go} ]; do sleep 0.1; done; for i in $(seq 41 400); do echo "{name} line $i"; done
                - for i in $(seq 401 600); do echo "{name} line $i"; sleep 0.005; done
            """
        run = trigger(script.format(name="http", go=go) + script.format(name="trusted", go=go))
        # The web server shares this process's SECRET_KEY, so the viewer's session is good there.
        web = Web(harness, REDIS_URL=redis.url, SECRET_KEY=settings.SECRET_KEY)
        http, _ = http_runner(harness, web, "http", tags=["http"], REDIS_URL=redis.url)
        trusted = harness.runner("trusted", "--tags", "trusted", REDIS_URL=redis.url)
        for name in ("http", "trusted"):
            wait_until(lambda n=name: "$ while" in step_log(current(run, n), 1), what=f"{name} to wait")
        token, session_id = viewer_credentials()
        watched = Step.objects.get(job=current(run, "trusted"), index=1)
        viewer = LiveLogViewer(base_url=web.url, step_id=str(watched.pk), session_id=session_id)
        viewer.start()
        wait_until(viewer.ready.is_set, what="the live log view to be live")

        redis.stop()
        go.touch()

        assert_run_ends(run, RunStatus.SUCCESS, runners=[http, trusted, web.process])
        redis.start()
        # The live view caught up by itself (its backstop re-reads the database, it reconnects).
        complete = log_text(step=watched)
        wait_until(
            lambda: viewer.end() >= len(complete.encode()) and StepStatus.SUCCESS in viewer.statuses,
            timeout=60,
            what="the live log view to catch up",
        )
        viewer.halt.set()
        viewer.join(10)
        assert viewer.text() == complete
        for name in ("http", "trusted"):
            job = current(run, name)
            assert job.attempt == 1, describe(run)
            stored = "".join(step_log(job, index) for index in range(3))
            body = "".join(line for line in stored.splitlines(keepends=True) if line.startswith(f"{name} line "))
            assert body == numbered_lines(f"{name} line", 600), f"{name}: log bytes missing or repeated"
            viewed = requests.get(
                f"{web.url}/api/v1/jobs/{job.pk}/log/", headers={"Authorization": f"Bearer {token}"}, timeout=30
            )
            assert viewed.status_code == 200, viewed.text[:500]
            assert viewed.content == stored.encode(), f"{name}: the viewer's log differs from the stored one"
        assert requests.get(f"{web.url}/healthz", timeout=10).json()["redis"] == "ok"
        again = trigger("again:\n  tags: [http]\n  script: echo after the outage\n")
        assert_run_ends(again, RunStatus.SUCCESS, runners=[http])
        assert http.alive() and trusted.alive() and web.process.alive()
    finally:
        redis.close()


# --- 6. The web server restarted while runners stream logs and upload artifacts.


def test_the_web_server_restarted_mid_upload_loses_no_log_line_and_the_artifact_arrives_whole(
    harness, trigger, tmp_path
):
    """An HTTP runner streams a log and then uploads a large artifact; the web server is
    killed as the upload begins and stays down while the runner retries (a slow restart, a
    rolling deploy). The runner waits it out: the log has every line once, and the
    artifact arrives with the sha256 of what the job built."""
    from artifacts.models import Artifact, ArtifactStatus

    artifacts_dir = tmp_path / "artifacts"
    blob_sum = tmp_path / "blob.sha256"
    run = trigger(
        f"""
        build:
          variables:
            ARTIFACT_COMPRESSION_LEVEL: fastest
          script:
            - for i in $(seq 1 300); do echo "build line $i"; done
            - head -c 30000000 /dev/urandom > blob.bin && sha256sum blob.bin | cut -d' ' -f1 > {blob_sum}
            - for i in $(seq 301 600); do echo "build line $i"; done
          artifacts:
            paths: [blob.bin]
        """
    )
    web = Web(harness, ARTIFACTS_DIR=str(artifacts_dir))
    runner, _ = http_runner(harness, web, "uploader")

    wait_until(
        lambda: Artifact.objects.filter(job__run=run).exists(),
        timeout=60,
        what="the upload to begin",
        diagnose=runner.output,
    )
    web.crash()
    wait_until(
        lambda: runner.output().count("upload of artifacts artifacts failed") >= 3 or run_finished(run),
        timeout=60,
        what="the runner to retry the upload against the dead server",
        diagnose=runner.output,
    )
    web.start()

    assert_run_ends(run, RunStatus.SUCCESS, runners=[runner, web.process])
    job = current(run, "build")
    assert job.attempt == 1, describe(run)
    stored = "".join(step_log(job, index) for index in range(3))
    body = "".join(line for line in stored.splitlines(keepends=True) if line.startswith("build line "))
    assert body == numbered_lines("build line", 600)
    artifact = Artifact.objects.get(job=job, status=ArtifactStatus.AVAILABLE)
    archive = artifacts_dir / artifact.storage_path
    assert hashlib.sha256(archive.read_bytes()).hexdigest() == artifact.sha256
    assert archive.stat().st_size == artifact.size_bytes
    import tarfile

    with tarfile.open(archive) as tar:
        member = tar.extractfile("blob.bin")
        digest = hashlib.sha256()
        for block in iter(lambda: member.read(1 << 20), b""):
            digest.update(block)
    assert digest.hexdigest() == blob_sum.read_text().strip()


# --- 5. A Celery worker killed mid-task; two beats at once.


def signed_push(web: Web, repository: str, secret: str, sha: str, key: str) -> requests.Response:
    body = json.dumps({"ref": "refs/heads/main", "after": sha, "pusher": "alice"}).encode()
    signature = "sha256=" + hmac.new(secret.encode(), body, hashlib.sha256).hexdigest()
    headers = {"Content-Type": "application/json", "X-Conveyor-Signature-256": signature, "Idempotency-Key": key}
    return requests.post(f"{web.url}/webhooks/generic/?repository={repository}", data=body, headers=headers, timeout=30)


def test_a_celery_worker_killed_while_it_processes_a_webhook_delivery_does_not_lose_it(
    harness, make_git_repo, tmp_path
):
    """The worker process running process_delivery is SIGKILLed while it fetches the
    repository (the forge hangs). The broker hands the task out again (acks_late,
    reject_on_worker_lost) and the new worker process takes the delivery over at once,
    instead of leaving it PROCESSING until the stale-delivery sweep (15 minutes later)."""
    from pipelines.models import DeliveryStatus

    redis = PrivateRedis()
    path, sha = make_git_repo({".cicd.yml": "hello:\n  script: echo hello\n"})
    forge = StallingGitServer(path)
    try:
        repository = Repository.objects.create(name="hooked", clone_url=forge.url, webhook_secret="s3cret")
        Pipeline.objects.create(repository=repository, name="default")
        env = {"REDIS_URL": redis.url, "CONVEYOR_MIRRORS_DIR": str(tmp_path / "mirrors")}
        web = Web(harness, **env)
        worker = celery_worker(harness, **env)

        answer = signed_push(web, "hooked", "s3cret", sha, "push-1")
        assert (answer.status_code, answer.json()["status"]) == (202, "queued"), answer.text
        wait_until(
            lambda: forge.requests, timeout=60, what="the worker to fetch from the forge", diagnose=worker.output
        )
        delivery = WebhookDelivery.objects.get(repository=repository)
        assert delivery.status == DeliveryStatus.PROCESSING
        [pool_process] = children_of(worker.pid)

        os.kill(pool_process, signal.SIGKILL)
        wait_until(lambda: "SIGKILL" in worker.output(), what="the worker to see its process die")
        forge.stalled.clear()  # the forge answers again

        wait_until(
            lambda: WebhookDelivery.objects.get(pk=delivery.pk).status in DeliveryStatus.TERMINAL,
            timeout=60,
            what="the delivery to be processed after all",
            diagnose=worker.output,
        )
        delivery.refresh_from_db()
        assert (delivery.status, delivery.attempts) == (DeliveryStatus.DONE, 2), (
            delivery.error_message,
            worker.output(),
        )
        assert list(
            PipelineRun.objects.filter(pipeline__repository=repository).values_list("commit_sha", "trigger")
        ) == [(sha, Trigger.PUSH)]
        assert worker.alive()
    finally:
        forge.close()
        redis.close()


def test_a_delivery_whose_whole_celery_worker_was_killed_is_sent_again_by_the_stale_delivery_sweep(
    harness, make_git_repo, tmp_path
):
    """The whole worker (main process and pool, an OOM kill of its pod) is SIGKILLed mid-task:
    its unacknowledged message only comes back after the broker's visibility timeout, and the
    delivery stays PROCESSING. The beat sweep sends it again once it is stale (15 minutes:
    the clock is moved by backdating the claim) and a new worker processes it, once."""
    from datetime import timedelta

    from django.db.models import F

    from pipelines.deliveries import PROCESSING_STALE_AFTER
    from pipelines.models import DeliveryStatus

    redis = PrivateRedis()
    path, sha = make_git_repo({".cicd.yml": "hello:\n  script: echo hello\n"})
    forge = StallingGitServer(path)
    try:
        repository = Repository.objects.create(name="hooked", clone_url=forge.url, webhook_secret="s3cret")
        Pipeline.objects.create(repository=repository, name="default")
        env = {"REDIS_URL": redis.url, "CONVEYOR_MIRRORS_DIR": str(tmp_path / "mirrors")}
        web = Web(harness, **env)
        doomed = celery_worker(harness, **env)
        assert signed_push(web, "hooked", "s3cret", sha, "push-1").status_code == 202
        wait_until(
            lambda: forge.requests, timeout=60, what="the worker to fetch from the forge", diagnose=doomed.output
        )

        doomed.kill()  # SIGKILL to its whole process group
        forge.stalled.clear()
        worker = celery_worker(harness, **env)
        delivery = WebhookDelivery.objects.get(repository=repository)
        assert delivery.status == DeliveryStatus.PROCESSING

        WebhookDelivery.objects.filter(pk=delivery.pk).update(
            started_at=F("started_at") - PROCESSING_STALE_AFTER - timedelta(minutes=1)
        )
        resent = django_script(
            "from pipelines.tasks import resend_stuck_deliveries; print(resend_stuck_deliveries())",
            env=harness.env(**env),
        )
        assert resent == 1
        wait_until(
            lambda: WebhookDelivery.objects.get(pk=delivery.pk).status in DeliveryStatus.TERMINAL,
            timeout=60,
            what="the resent delivery to be processed",
            diagnose=worker.output,
        )
        delivery.refresh_from_db()
        assert (delivery.status, delivery.attempts) == (DeliveryStatus.DONE, 2), delivery.error_message
        assert PipelineRun.objects.filter(pipeline__repository=repository, commit_sha=sha).count() == 1
    finally:
        forge.close()
        redis.close()


def test_two_beats_ticking_at_once_fire_each_due_schedule_once(harness, make_git_repo, tmp_path, settings):
    """Two scheduler ticks (two beats by mistake) in two processes, released at the same
    moment over the same due schedules: every schedule fires exactly once."""
    from datetime import timedelta

    from django.utils import timezone

    from pipelines.schedules import schedule_create

    settings.CONVEYOR_MIRRORS_DIR = tmp_path / "mirrors"
    path, _sha = make_git_repo({".cicd.yml": "nightly:\n  script: echo nightly\n"})
    repository = Repository.objects.create(name="scheduled", clone_url=str(path))
    pipeline = Pipeline.objects.create(repository=repository, name="nightly", trigger=Trigger.SCHEDULE)
    names = [f"slot-{i}" for i in range(10)]
    for name in names:
        schedule_create(pipeline=pipeline, description=name, cron_expression="*/5 * * * *", ref="main")
    PipelineSchedule.objects.update(next_run_at=timezone.now() - timedelta(minutes=1))

    go = tmp_path / "go"
    code = textwrap.dedent(
        """
        import json, os, sys, time
        from pipelines.schedules import schedules_run_due
        open(sys.argv[-1] if False else os.environ["READY_FILE"], "w").close()
        while not os.path.exists(os.environ["GO_FILE"]):
            time.sleep(0.005)
        print(json.dumps(schedules_run_due()))
        """
    )
    beats = [
        subprocess.Popen(
            [sys.executable, "manage.py", "shell", "-c", code],
            cwd=ROOT,
            env=harness.env(
                READY_FILE=str(tmp_path / f"ready-{i}"),
                GO_FILE=str(go),
                CONVEYOR_MIRRORS_DIR=str(tmp_path / "mirrors"),
            ),
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for i in range(2)
    ]
    wait_until(lambda: all((tmp_path / f"ready-{i}").exists() for i in range(2)), what="both beats to be ready")
    go.touch()
    outputs = [beat.communicate(timeout=120) for beat in beats]
    assert all(beat.returncode == 0 for beat in beats), outputs
    counts = [json.loads(out.strip().splitlines()[-1]) for out, _err in outputs]

    assert sum(c["fired"] for c in counts) == len(names), counts
    assert sum(c["runs"] for c in counts) == len(names), counts
    fired = sorted(PipelineRun.objects.filter(pipeline=pipeline).values_list("triggered_by", flat=True))
    assert fired == sorted(f"schedule: {name}" for name in names)
    assert all(s.next_run_at > timezone.now() for s in PipelineSchedule.objects.all())


def test_a_scheduler_tick_killed_while_it_fires_a_schedule_leaves_the_slot_to_the_next_tick(
    harness, make_git_repo, tmp_path, settings
):
    """A tick (a beat's task in a worker) claims a due schedule and is SIGKILLed while it
    fetches the repository for the run. Its claim dies with it: the next tick fires the
    slot, once, instead of the slot being skipped for good."""
    from datetime import timedelta

    from django.utils import timezone

    from pipelines.schedules import schedule_create, schedules_run_due

    settings.CONVEYOR_MIRRORS_DIR = tmp_path / "mirrors"
    path, _sha = make_git_repo({".cicd.yml": "nightly:\n  script: echo nightly\n"})
    forge = StallingGitServer(path)
    try:
        repository = Repository.objects.create(name="scheduled", clone_url=forge.url)
        pipeline = Pipeline.objects.create(repository=repository, name="nightly", trigger=Trigger.SCHEDULE)
        schedule = schedule_create(pipeline=pipeline, description="nightly", cron_expression="0 3 * * *", ref="main")
        due_at = timezone.now() - timedelta(minutes=1)
        PipelineSchedule.objects.filter(pk=schedule.pk).update(next_run_at=due_at)
        tick = harness.start(
            "tick",
            [sys.executable, "manage.py", "shell", "-c", "from pipelines.schedules import schedules_run_due as t; t()"],
            CONVEYOR_MIRRORS_DIR=str(tmp_path / "mirrors"),
        )
        wait_until(lambda: forge.requests, timeout=60, what="the tick to fetch the repository", diagnose=tick.output)

        tick.kill()  # SIGKILL, mid-fire
        forge.stalled.clear()

        schedule.refresh_from_db()
        assert schedule.next_run_at == due_at, "the dead tick's claim survived it: this slot will never fire"
        assert not PipelineRun.objects.filter(pipeline=pipeline).exists()
        assert schedules_run_due() == {"due": 1, "fired": 1, "runs": 1}
        assert schedules_run_due()["fired"] == 0
        assert PipelineRun.objects.filter(pipeline=pipeline, trigger=Trigger.SCHEDULE).count() == 1
    finally:
        forge.close()


# --- 3. PostgreSQL restarted while runners claim and report.

_PG_SETUP = """
import json
from pipelines.models import Pipeline, Repository, Trigger
from pipelines.services import run_trigger
from runners.services import registration_token_create

repository = Repository.objects.create(name="restarts", clone_url={clone_url!r})
pipeline = Pipeline.objects.create(repository=repository, name="default")
runs = [str(run_trigger(pipeline=pipeline, ref="main", trigger=Trigger.PUSH).pk) for _ in range({runs})]
print(json.dumps({{"runs": runs, "registration": registration_token_create(description="faults")[1]}}))
"""

_PG_SUMMARY = """
import json
from logs.selectors import log_text
from runs.models import Job, PipelineRun, Step

summary = {}
for run in PipelineRun.objects.all():
    jobs = {}
    for job in Job.objects.filter(run=run).order_by("name", "attempt"):
        steps = list(Step.objects.filter(job=job).order_by("index"))
        jobs.setdefault(job.name, []).append({
            "attempt": job.attempt, "status": job.status, "retried": job.retried, "reason": job.status_reason,
            "steps": [s.status for s in steps], "log": "".join(log_text(step=s) for s in steps),
        })
    summary[str(run.pk)] = {"status": run.status, "jobs": jobs}
print(json.dumps(summary))
"""


def test_postgresql_restarted_twice_mid_run_every_run_still_succeeds(harness, make_git_repo, tmp_path):
    """A private PostgreSQL behind a web server, a Celery worker with beat, a trusted runner
    and an HTTP runner is killed (immediate shutdown: every connection dropped) and started
    again, twice, while jobs are claimed, logged and finished. Everything reconnects by
    itself: every run succeeds, every log line is stored once, nothing is left running."""
    jobs_per_run, lines = 3, 30
    config = "stages: [build, test]\n" + "".join(
        f"{name}:\n  stage: {stage}\n  script:\n"
        f'    - for i in $(seq 1 {lines}); do echo "{name} line $i"; sleep 0.03; done\n'
        for name, stage in [("build", "build"), ("test-1", "test"), ("test-2", "test")]
    )
    path, _sha = make_git_repo({".cicd.yml": config})
    pg, redis = PrivatePostgres(), PrivateRedis()
    try:
        pg.copy_test_database()
        private = {"DATABASE_URL": pg.url, "REDIS_URL": redis.url}
        setup = django_script(_PG_SETUP.format(clone_url=str(path), runs=5), env=harness.env(**private))
        web = Web(harness, **private)
        celery = celery_worker(harness, beat=True, **private)
        registered = subprocess.run(
            [sys.executable, "manage.py", "runner", "register", "--url", web.url, "--name", "http-runner"]
            + ["--registration-token", setup["registration"]],
            cwd=ROOT,
            env=harness.env(**private),
            capture_output=True,
            text=True,
            timeout=60,
        )
        token = registered.stdout.split("runner token (shown once, keep it secret): ")[1].split()[0]
        runners = [
            harness.runner("trusted-runner", **private),
            harness.runner("http-runner", "--url", web.url, CONVEYOR_RUNNER_TOKEN=token),
        ]
        processes = [*runners, web.process, celery]

        def finished_jobs() -> int:
            with contextlib.suppress(psycopg.OperationalError), psycopg.connect(pg.url, connect_timeout=2) as conn:
                return conn.execute(
                    f"SELECT count(*) FROM {Job._meta.db_table} WHERE status = 'SUCCESS'"  # noqa: S608
                ).fetchone()[0]
            return -1

        def diagnose() -> str:
            return "".join(f"\n--- {p.name}:\n{p.output()[-3000:]}" for p in processes) + pg.log()

        total = len(setup["runs"]) * jobs_per_run
        for threshold in (2, 7):
            wait_until(
                lambda n=threshold: finished_jobs() >= n, timeout=90, what=f"{threshold} jobs done", diagnose=diagnose
            )
            pg.restart(down_for=1.0)
        wait_until(lambda: finished_jobs() >= total, timeout=180, what="every job to succeed", diagnose=diagnose)

        summary = django_script(_PG_SUMMARY, env=harness.env(**private))
        assert set(summary) == set(setup["runs"])
        for run_id, run in summary.items():
            assert run["status"] == RunStatus.SUCCESS, (run_id, run)
            for name, tries in run["jobs"].items():
                last = tries[-1]
                assert (last["status"], last["retried"]) == (JobStatus.SUCCESS, False), (name, tries)
                assert last["steps"] == [StepStatus.SUCCESS], (name, tries)
                body = "".join(line for line in last["log"].splitlines(keepends=True) if line.startswith(name))
                assert body == numbered_lines(f"{name} line", lines), (name, last["log"])
                # An attempt lost to the restart (lease expired) may precede it, never follow it.
                assert all(t["status"] == JobStatus.FAILURE and t["retried"] for t in tries[:-1]), tries
        assert all(p.alive() for p in processes), diagnose()
        assert requests.get(f"{web.url}/healthz", timeout=10).status_code == 200
    finally:
        harness.close()  # before their database goes away for good
        pg.close()
        redis.close()


# --- 7. The soak: many runs, random failures, cancels and retries, four runners.

SOAK_CONFIG = """
stages: [build, test, deploy]
build:
  stage: build
  script:
    - seq 1 50 | sed "s/^/build-$CI_JOB_ATTEMPT line /"; sleep "${SLOW:-0}"; test "$FAIL_BUILD" != 1 || exit 3
unit:
  stage: test
  retry: 1
  script:
    - seq 1 50 | sed "s/^/unit-$CI_JOB_ATTEMPT line /"; test "$FLAKY$CI_JOB_ATTEMPT" != 11
lint:
  stage: test
  allow_failure: true
  script:
    - seq 1 50 | sed "s/^/lint-$CI_JOB_ATTEMPT line /"; test "$FAIL_LINT" != 1 || exit 2
deploy:
  stage: deploy
  needs: [unit]
  script:
    - seq 1 50 | sed "s/^/deploy-$CI_JOB_ATTEMPT line /"
cleanup:
  stage: deploy
  when: on_failure
  script:
    - seq 1 50 | sed "s/^/cleanup-$CI_JOB_ATTEMPT line /"
"""
# Written again here from the config, not read from the engine: who waits for whom.
SOAK_UPSTREAM = {
    "build": [],
    "unit": ["build"],
    "lint": ["build"],
    "deploy": ["unit"],
    "cleanup": ["build", "unit", "lint"],
}
SOAK_ALLOW_FAILURE = {"lint"}


def soak_expected_status(variables: dict[str, str]) -> str:
    return RunStatus.FAILURE if variables.get("FAIL_BUILD") == "1" else RunStatus.SUCCESS


def check_soak_run(run: PipelineRun, variables: dict[str, str], *, cancelled: bool, retried: bool) -> list[str]:
    """Every way `run` breaks the rules, as sentences (empty: consistent)."""
    problems = []
    status = run_status(run)
    expected = soak_expected_status(variables)
    if status not in ({expected, RunStatus.CANCELLED} if cancelled else {expected}):
        problems.append(f"ended {status}, expected {expected} (cancelled: {cancelled})")
    every = list(Job.objects.filter(run=run).order_by("name", "attempt"))
    jobs = {job.name: job for job in every if not job.retried}
    for job in every:
        if job.status not in JobStatus.TERMINAL:
            problems.append(f"{job.name} #{job.attempt} is still {job.status}")
        if job.started_at is not None and unfinished_steps(job):
            problems.append(f"{job.name} #{job.attempt} has unfinished steps {unfinished_steps(job)}")
    for name, job in jobs.items():
        if job.started_at is None or status == RunStatus.CANCELLED and job.status == JobStatus.CANCELLED:
            continue
        upstream = [jobs[u] for u in SOAK_UPSTREAM[name] if u in jobs]
        failed = [u for u in upstream if u.status == JobStatus.FAILURE and u.name not in SOAK_ALLOW_FAILURE]
        if name == "cleanup" and not failed:
            problems.append("cleanup (on_failure) ran although nothing failed")
        if name != "cleanup" and failed:
            problems.append(f"{name} ran although {[u.name for u in failed]} failed")
        for u in upstream:
            if u.status not in JobStatus.TERMINAL or (
                not retried and u.finished_at is not None and u.finished_at > job.started_at
            ):
                problems.append(f"{name} started before {u.name} #{u.attempt} finished")
    for job in every:
        if job.status not in {JobStatus.SUCCESS, JobStatus.FAILURE, JobStatus.CANCELLED} or job.started_at is None:
            continue
        steps = list(Step.objects.filter(job=job).order_by("index"))
        text = log_text(step=steps[0]) if steps else ""
        got = [line for line in text.splitlines(keepends=True) if line.startswith(f"{job.name}-")]
        want = numbered_lines(f"{job.name}-{job.attempt} line", 50).splitlines(keepends=True)
        # A cancelled attempt may have been stopped anywhere: its log is a prefix, never more.
        if got != want and not (job.status == JobStatus.CANCELLED and got == want[: len(got)]):
            problems.append(f"{job.name} #{job.attempt} ({job.status}) log has {len(got)} of 50 lines, or others")
    return problems


def test_a_soak_of_runs_with_random_failures_cancels_and_retries_ends_consistent(harness, trigger, tmp_path):
    """CONVEYOR_SOAK_RUNS runs (default 60, under two minutes on two busy cores;
    CONVEYOR_SOAK_SEED repeats one) over three trusted runners and one HTTP runner, with
    random failing, flaky (retried by config) and slow jobs, random cancels, and retries of
    failed runs by hand. At the end every run is terminal, every job agrees with its
    upstream, and no log line is missing or doubled."""
    count = int(os.environ.get("CONVEYOR_SOAK_RUNS", "60"))
    seed = int(os.environ.get("CONVEYOR_SOAK_SEED") or random.randrange(1 << 32))
    print(f"soak: {count} runs, seed {seed} (CONVEYOR_SOAK_SEED={seed} repeats it)")
    rng = random.Random(seed)

    first = trigger(SOAK_CONFIG)
    pipeline = first.pipeline
    plans: dict = {}
    for i in range(count):
        variables = {
            name: value
            for name, value, p in [("FAIL_BUILD", "1", 0.15), ("FLAKY", "1", 0.3), ("FAIL_LINT", "1", 0.3)]
            + [("SLOW", "0.5", 0.15)]
            if rng.random() < p
        }
        run = (
            first if i == 0 else run_trigger(pipeline=pipeline, ref="main", trigger=Trigger.MANUAL, variables=variables)
        )
        if i == 0:
            variables = {}
        plans[run.pk] = {
            "run": run,
            "variables": variables,
            "cancel": rng.random() < 0.15,
            "retry": variables.get("FAIL_BUILD") == "1" and rng.random() < 0.5,
            "cancelled": False,
            "retried": False,
        }
    web = Web(harness)
    runners = [harness.runner(f"soak-{i}") for i in range(3)]
    runners.append(http_runner(harness, web, "soak-http")[0])

    deadline = time.monotonic() + max(120.0, count * 3.0)
    while True:
        active = 0
        statuses = dict(PipelineRun.objects.filter(pk__in=list(plans)).values_list("pk", "status"))
        for run_id, plan in plans.items():
            status = statuses[run_id]
            if plan["cancel"] and not plan["cancelled"] and status == RunStatus.RUNNING and rng.random() < 0.3:
                run_cancel(run=PipelineRun.objects.get(pk=run_id), by="soak")
                plan["cancelled"] = True
            elif plan["retry"] and not plan["retried"] and status == RunStatus.FAILURE:
                job_retry(job=Job.objects.get(run_id=run_id, name="build", retried=False))
                plan["retried"] = True
                status = run_status(plan["run"])
            active += status not in RunStatus.TERMINAL
        if not active:
            break
        assert time.monotonic() < deadline, (
            f"seed {seed}: {active} runs still active\n"
            + "\n".join(describe(p["run"]) for p in plans.values() if run_status(p["run"]) not in RunStatus.TERMINAL)[
                :5000
            ]
            + "".join(f"\n--- {r.name}:\n{r.output()[-2000:]}" for r in runners)
        )
        time.sleep(0.2)

    problems = {
        plan["run"].number: found
        for plan in plans.values()
        if (
            found := check_soak_run(
                plan["run"], plan["variables"], cancelled=plan["cancelled"], retried=plan["retried"]
            )
        )
    }
    assert not problems, f"seed {seed}: {json.dumps(problems, indent=1)[:5000]}"
    assert all(r.alive() for r in runners)
    # The HTTP runner's long polls ended cleanly, also the empty ones (204).
    assert "Exception in ASGI application" not in web.process.output(), web.process.output()[-3000:]
    assert "waiting for work failed" not in runners[-1].output(), runners[-1].output()[-3000:]
    statuses = [run_status(p["run"]) for p in plans.values()]
    print(f"soak: seed {seed}: " + ", ".join(f"{s} {statuses.count(s)}" for s in sorted(set(statuses))))
