"""The runner HTTP API (/api/runner/) through Django's test client.

Every refusal is checked twice: the status code, and that the database is exactly as it
was (a snapshot of the jobs, steps and logs before and after the call).
"""

from __future__ import annotations

import asyncio
import json
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from datetime import timedelta

import pytest
from django.db import connection, connections
from django.test import AsyncClient, Client
from django.utils import timezone

from logs.models import StepLog
from runners.models import RegistrationToken, Runner
from runners.services import (
    job_claim,
    registration_token_create,
    runner_register,
    runner_revoke,
    step_finish,
    step_start,
)
from runs.models import Job, JobStatus, Step, StepStatus
from runs.tests.factories import create_run, current_job, job
from tests.asgi_calls import Answer, call, scope, web_application

API = "/api/runner/"


# --- Helpers.


def post(client: Client, path: str, body=None, *, token: str | None = None, raw: bytes | None = None, headers=None):
    headers = headers if headers is not None else ({"Authorization": f"Bearer {token}"} if token else {})
    data = raw if raw is not None else json.dumps(body if body is not None else {})
    if path == "jobs/request":
        return AsyncPost(path, data, headers).result(timeout=60)
    return client.post(API + path, data=data, content_type="application/json", headers=headers)


class AsyncPost:
    """A POST through the async test client, in a thread of its own (the long-poll claim is an
    async view: this is how a slow answer can be waited for while the test goes on)."""

    def __init__(self, path: str, data: str | bytes, headers: dict[str, str]):
        self.response = None
        self.error: BaseException | None = None
        self.thread = threading.Thread(target=self._run, args=(path, data, headers), daemon=True)
        self.thread.start()

    def _run(self, path: str, data: str | bytes, headers: dict[str, str]) -> None:
        # The view's database work runs in the loop's default executor; with one thread of our
        # own there, its connection can be closed afterwards (else it outlives the test and
        # keeps the test database from being dropped).
        loop = asyncio.new_event_loop()
        loop.set_default_executor(ThreadPoolExecutor(max_workers=1))
        request = AsyncClient().post(API + path, data=data, content_type="application/json", headers=headers)
        try:
            self.response = loop.run_until_complete(request)
        except BaseException as exc:  # surfaced by result()
            self.error = exc
        finally:
            loop.run_until_complete(loop.run_in_executor(None, connections.close_all))
            loop.run_until_complete(loop.shutdown_default_executor())
            loop.close()

    def result(self, *, timeout: float):
        self.thread.join(timeout)
        assert not self.thread.is_alive(), f"no answer within {timeout}s"
        if self.error is not None:
            raise self.error
        return self.response


def long_poll(token: str, *, wait: float) -> AsyncPost:
    return AsyncPost("jobs/request", json.dumps({"wait": wait}), {"Authorization": f"Bearer {token}"})


def db_snapshot() -> dict:
    """Everything a runner call could change, in a comparable form."""
    return {
        "jobs": sorted(
            Job.objects.values_list(
                "id",
                "status",
                "status_reason",
                "runner_id",
                "lease_expires_at",
                "exit_code",
                "attempt",
                "retried",
                "finished_at",
            )
        ),
        "steps": sorted(Step.objects.values_list("id", "status", "exit_code", "started_at", "finished_at")),
        "logs": sorted(StepLog.objects.values_list("step_id", "offset", "content")),
        "runners": sorted(Runner.objects.values_list("id", "name", "tags", "token_hash", "revoked_at")),
        "registration_tokens": sorted(RegistrationToken.objects.values_list("id", "uses", "revoked_at")),
    }


def register_runner(name: str, *, tags: list[str] | None = None) -> tuple[Runner, str]:
    _, registration = registration_token_create(description=f"for {name}")
    return runner_register(registration_token=registration, name=name, tags=tags or [])


@pytest.fixture
def client() -> Client:
    return Client()


@pytest.fixture
def holder(db) -> tuple[Runner, str]:
    return register_runner("holder")


@pytest.fixture
def intruder(db) -> tuple[Runner, str]:
    return register_runner("intruder")


@pytest.fixture
def held_job(holder, pipeline, make_queued_jobs):
    """A job RUNNING on `holder` (two steps), and a second job still QUEUED behind it."""
    runner, _ = holder
    make_queued_jobs(2, steps=2)
    claimed = job_claim(runner=runner)
    assert claimed is not None
    return claimed


# Every job call of the API: (name, path template, a valid body).
JOB_CALLS = [
    ("heartbeat", "jobs/{job}/heartbeat", {}),
    ("step start", "jobs/{job}/steps/{step}/start", {}),
    ("step finish", "jobs/{job}/steps/{step}/finish", {"status": "SUCCESS", "exit_code": 0}),
    ("step log", "jobs/{job}/steps/{step}/log", {"offset": 0, "content": "hello\n"}),
    ("finish", "jobs/{job}/finish", {"status": "SUCCESS", "exit_code": 0}),
    ("release", "jobs/{job}/release", {"reason": "going away"}),
]
ALL_CALLS = [("claim", "jobs/request", {"wait": 0}), *JOB_CALLS]


def call_path(template: str, claimed) -> str:
    return template.format(job=claimed.id, step=claimed.steps[0].id)


# --- Registration.


@pytest.mark.django_db(transaction=True)
def test_a_valid_registration_token_gives_a_runner_and_a_token_that_works(client):
    registration_row, registration = registration_token_create(description="ci", tags=["linux"])

    response = post(
        client,
        "register",
        {"registration_token": registration, "name": "builder-1", "tags": ["docker"], "concurrency": 4},
    )

    assert response.status_code == 201
    body = response.json()
    runner = Runner.objects.get(pk=body["id"])
    assert runner.name == "builder-1"
    assert runner.tags == ["docker", "linux"]
    assert runner.concurrency == 4
    assert body["token"].startswith("cvr_")
    assert body["token"] not in json.dumps(db_snapshot(), default=str), "the runner token is stored in clear"
    registration_row.refresh_from_db()
    assert registration_row.uses == 1
    assert post(client, "jobs/request", {"wait": 0}, token=body["token"]).status_code == 204


def test_a_wrong_registration_token_is_refused_and_registers_nothing(client, db):
    registration_token_create(description="ci")
    before = db_snapshot()

    response = post(client, "register", {"registration_token": "cvreg_not-the-token", "name": "x"})

    assert response.status_code == 403
    assert "registration token" in response.json()["detail"]
    assert db_snapshot() == before


def test_an_expired_registration_token_is_refused_and_registers_nothing(client, db):
    row, registration = registration_token_create(expires_at=timezone.now() - timedelta(seconds=1))
    before = db_snapshot()

    response = post(client, "register", {"registration_token": registration, "name": "late"})

    assert response.status_code == 403
    assert db_snapshot() == before


def test_a_registration_token_with_a_use_limit_registers_that_many_runners_and_no_more(client, db):
    _, registration = registration_token_create(max_uses=2)
    first = post(client, "register", {"registration_token": registration, "name": "one"})
    second = post(client, "register", {"registration_token": registration, "name": "two"})
    before = db_snapshot()

    third = post(client, "register", {"registration_token": registration, "name": "three"})

    assert (first.status_code, second.status_code, third.status_code) == (201, 201, 403)
    assert "used up" in third.json()["detail"]
    assert db_snapshot() == before


def test_a_revoked_registration_token_is_refused_and_registers_nothing(client, db):
    row, registration = registration_token_create()
    RegistrationToken.objects.filter(pk=row.pk).update(revoked_at=timezone.now())
    before = db_snapshot()

    response = post(client, "register", {"registration_token": registration, "name": "revoked"})

    assert response.status_code == 403
    assert db_snapshot() == before


@pytest.mark.parametrize(
    ("body", "message"),
    [
        ({"name": "no-token"}, "registration_token"),
        ({"registration_token": "TOKEN"}, "name"),
        ({"registration_token": "TOKEN", "name": 7}, "name"),
        ({"registration_token": "TOKEN", "name": "x", "tags": "linux"}, "tags"),
        ({"registration_token": "TOKEN", "name": "x", "tags": [""]}, "tags"),
        ({"registration_token": "TOKEN", "name": "x", "tags": ["x" * 101]}, "tags"),
        ({"registration_token": "TOKEN", "name": "x", "executor": "docker"}, "executor"),
        ({"registration_token": "TOKEN", "name": "x", "concurrency": "4"}, "concurrency"),
        ({"registration_token": "TOKEN", "name": "x", "concurrency": True}, "concurrency"),
        ({"registration_token": "TOKEN", "name": "x", "concurrency": 10**6}, "concurrency"),
        ({"registration_token": "TOKEN", "name": "x", "concurrency": 0}, "concurrency"),
        ({"registration_token": "TOKEN", "name": ""}, "name"),
    ],
)
def test_a_malformed_registration_is_a_400_naming_the_problem(client, db, body, message):
    _, registration = registration_token_create()
    body = {k: registration if v == "TOKEN" else v for k, v in body.items()}
    before = db_snapshot()

    response = post(client, "register", body)

    assert response.status_code == 400, response.content
    assert message in response.json()["detail"]
    assert db_snapshot() == before


@pytest.mark.parametrize(
    "raw", [b"{not json", b"[1, 2]", b'"text"', b"\xff\xfe", b'{"name": "x", "registration_token": NaN}']
)
def test_a_registration_body_that_is_not_a_json_object_is_a_400(client, db, raw):
    before = db_snapshot()
    response = post(client, "register", raw=raw)
    assert response.status_code == 400
    assert response.json()["detail"]
    assert db_snapshot() == before


def test_the_api_answers_only_post(client, holder, held_job):
    _, token = holder
    headers = {"Authorization": f"Bearer {token}"}
    for _name, template, _body in ALL_CALLS:
        assert client.get(API + call_path(template, held_job), headers=headers).status_code == 405
    assert client.get(API + "register").status_code == 405


# --- Credentials: wrong, missing, revoked. Nothing may change.


@pytest.mark.django_db(transaction=True)
@pytest.mark.parametrize("credential", ["missing", "wrong", "revoked", "other scheme"])
@pytest.mark.parametrize(("name", "template", "body"), ALL_CALLS, ids=[c[0] for c in ALL_CALLS])
def test_a_call_without_valid_runner_credentials_is_a_401_and_changes_nothing(
    client, holder, held_job, credential, name, template, body
):
    runner, token = holder
    if credential == "revoked":
        runner_revoke(runner=runner)
    headers = {
        "missing": {},
        "wrong": {"Authorization": "Bearer cvr_wrong-token"},
        "revoked": {"Authorization": f"Bearer {token}"},
        "other scheme": {"Authorization": f"Basic {token}"},
    }[credential]
    before = db_snapshot()

    response = post(client, call_path(template, held_job), body, headers=headers)

    assert response.status_code == 401, response.content
    assert response.json()["detail"]
    assert db_snapshot() == before


@pytest.mark.django_db(transaction=True)
def test_a_paused_runner_is_given_no_job(client, holder, held_job):
    runner, token = holder
    Runner.objects.filter(pk=runner.pk).update(is_paused=True)
    before = db_snapshot()

    assert post(client, "jobs/request", {"wait": 0}, token=token).status_code == 204
    assert db_snapshot() == before


# --- Another runner's job.


@pytest.mark.parametrize(("name", "template", "body"), JOB_CALLS, ids=[c[0] for c in JOB_CALLS])
def test_a_runner_touching_another_runners_job_gets_a_409_and_changes_nothing(
    client, intruder, held_job, name, template, body
):
    _, token = intruder
    before = db_snapshot()

    response = post(client, call_path(template, held_job), body, token=token)

    assert response.status_code == 409, response.content
    assert response.json()["code"] == "job_not_held"
    assert db_snapshot() == before


@pytest.mark.parametrize(("name", "template", "body"), JOB_CALLS, ids=[c[0] for c in JOB_CALLS])
def test_a_report_on_a_finished_job_gets_a_409_and_changes_nothing(client, holder, held_job, name, template, body):
    _, token = holder
    finished = post(client, f"jobs/{held_job.id}/finish", {"status": "SUCCESS", "exit_code": 0}, token=token)
    assert finished.status_code == 200
    before = db_snapshot()

    response = post(client, call_path(template, held_job), body, token=token)

    assert response.status_code == 409, response.content
    assert db_snapshot() == before


def test_a_job_token_cannot_write_the_log_of_another_job(client, intruder, held_job):
    intruder_runner, _ = intruder
    own_job = job_claim(runner=intruder_runner)  # the second queued job
    before = db_snapshot()

    response = post(
        client,
        f"jobs/{held_job.id}/steps/{held_job.steps[0].id}/log",
        {"offset": 0, "content": "forged\n"},
        token=own_job.job_token,
    )

    assert response.status_code == 401, response.content
    assert db_snapshot() == before


def test_a_step_of_another_job_is_a_404_and_changes_nothing(client, holder, held_job):
    _, token = holder
    other_step = Step.objects.exclude(job_id=held_job.id).first()
    before = db_snapshot()

    for action, body in [
        ("start", {}),
        ("finish", {"status": "SUCCESS", "exit_code": 0}),
        ("log", {"offset": 0, "content": "x"}),
    ]:
        response = post(client, f"jobs/{held_job.id}/steps/{other_step.pk}/{action}", body, token=token)
        assert response.status_code == 404, (action, response.content)
    assert db_snapshot() == before


# --- The holder's own reports.


def test_the_holder_reports_a_whole_job_through_the_api(client, holder, held_job):
    _, token = holder
    step = held_job.steps[0]
    lease_before = Job.objects.get(pk=held_job.id).lease_expires_at

    assert post(client, f"jobs/{held_job.id}/heartbeat", token=token).json() == {"continue": True}
    assert Job.objects.get(pk=held_job.id).lease_expires_at >= lease_before
    assert post(client, f"jobs/{held_job.id}/steps/{step.id}/start", token=token).status_code == 200
    first = post(client, f"jobs/{held_job.id}/steps/{step.id}/log", {"offset": 0, "content": "héllo\n"}, token=token)
    assert first.json() == {"next_offset": len("héllo\n".encode())}
    # A resent chunk is accepted once and not stored twice.
    again = post(client, f"jobs/{held_job.id}/steps/{step.id}/log", {"offset": 0, "content": "héllo\n"}, token=token)
    assert again.status_code == 200
    gap = post(client, f"jobs/{held_job.id}/steps/{step.id}/log", {"offset": 99, "content": "late"}, token=token)
    assert (gap.status_code, gap.json()["code"], gap.json()["expected_offset"]) == (409, "log_gap", 7)
    finish_step = {"status": "FAILURE", "exit_code": 3}
    assert post(client, f"jobs/{held_job.id}/steps/{step.id}/finish", finish_step, token=token).status_code == 200
    finish = {"status": "FAILURE", "exit_code": 3, "reason": "step exited with 3"}
    assert post(client, f"jobs/{held_job.id}/finish", finish, token=token).status_code == 200

    stored = Job.objects.get(pk=held_job.id)
    assert (stored.status, stored.exit_code, stored.status_reason) == (JobStatus.FAILURE, 3, "step exited with 3")
    assert Step.objects.values_list("status", "exit_code").get(pk=step.id) == (StepStatus.FAILURE, 3)
    assert list(StepLog.objects.filter(step_id=step.id).values_list("offset", "content")) == [(0, "héllo\n")]


def test_a_step_report_of_the_holder_is_one_statement(holder, held_job, django_assert_num_queries):
    runner, _ = holder
    step = held_job.steps[0]

    with django_assert_num_queries(1):  # the held check is part of the UPDATE
        step_start(job_id=held_job.id, step_id=step.id, runner=runner)
    with django_assert_num_queries(1):
        step_finish(job_id=held_job.id, step_id=step.id, runner=runner, status="SUCCESS", exit_code=0)

    assert Step.objects.values_list("status", "exit_code").get(pk=step.id) == (StepStatus.SUCCESS, 0)


def test_a_resent_step_report_changes_nothing_and_is_not_refused(holder, held_job):
    runner, _ = holder
    step = held_job.steps[0]
    step_start(job_id=held_job.id, step_id=step.id, runner=runner)
    step_finish(job_id=held_job.id, step_id=step.id, runner=runner, status="FAILURE", exit_code=2)
    before = db_snapshot()

    step_start(job_id=held_job.id, step_id=step.id, runner=runner)
    step_finish(job_id=held_job.id, step_id=step.id, runner=runner, status="SUCCESS", exit_code=0)

    assert db_snapshot() == before


def test_a_finish_can_carry_the_end_of_the_jobs_last_step(client, holder, held_job):
    _, token = holder
    first, last = held_job.steps
    for step in (first, last):
        assert post(client, f"jobs/{held_job.id}/steps/{step.id}/start", token=token).status_code == 200
    done = {"status": "SUCCESS", "exit_code": 0}
    assert post(client, f"jobs/{held_job.id}/steps/{first.id}/finish", done, token=token).status_code == 200

    finish = {**done, "steps": [{"id": last.id, "status": "FAILURE", "exit_code": 1}]}
    response = post(client, f"jobs/{held_job.id}/finish", finish, token=token)

    assert response.status_code == 200, response.content
    assert Job.objects.get(pk=held_job.id).status == JobStatus.SUCCESS
    ended = Step.objects.get(pk=last.id)
    assert (ended.status, ended.exit_code) == (StepStatus.FAILURE, 1)
    assert ended.finished_at is not None


def test_a_finish_carrying_the_end_of_another_jobs_step_is_a_404_and_changes_nothing(client, holder, held_job):
    _, token = holder
    other_step = Step.objects.exclude(job_id=held_job.id).first()
    before = db_snapshot()

    finish = {"status": "SUCCESS", "exit_code": 0, "steps": [{"id": str(other_step.pk), "status": "SUCCESS"}]}
    response = post(client, f"jobs/{held_job.id}/finish", finish, token=token)

    assert response.status_code == 404, response.content
    assert db_snapshot() == before


def test_a_finish_with_step_ends_on_a_job_no_longer_held_is_a_409_and_changes_nothing(client, holder, held_job):
    _, token = holder
    Job.objects.filter(pk=held_job.id).update(status=JobStatus.CANCELLED)
    before = db_snapshot()

    finish = {"status": "SUCCESS", "steps": [{"id": held_job.steps[0].id, "status": "SUCCESS", "exit_code": 0}]}
    response = post(client, f"jobs/{held_job.id}/finish", finish, token=token)

    assert (response.status_code, response.json()["code"]) == (409, "job_not_held")
    assert db_snapshot() == before


def test_a_released_job_is_queued_again_as_a_new_attempt(client, holder, held_job):
    _, token = holder

    assert post(client, f"jobs/{held_job.id}/release", {"reason": "node draining"}, token=token).status_code == 200

    old = Job.objects.get(pk=held_job.id)
    assert (old.status, old.retried, old.status_reason) == (JobStatus.FAILURE, True, "node draining")
    new = Job.objects.get(run_id=old.run_id, name=old.name, retried=False)
    assert (new.status, new.attempt) == (JobStatus.QUEUED, 2)


# --- Malformed bodies: a 400 with a message, never a 500.


NO_STEP = "5d0c6a4e-0000-4000-8000-00000000dead"  # a step id of no step

MALFORMED = [
    ("step finish", "jobs/{job}/steps/{step}/finish", {}, "status"),
    ("step finish", "jobs/{job}/steps/{step}/finish", {"status": "RUNNING"}, "RUNNING"),
    ("step finish", "jobs/{job}/steps/{step}/finish", {"status": 1}, "status"),
    ("step finish", "jobs/{job}/steps/{step}/finish", {"status": "SUCCESS", "exit_code": "0"}, "exit_code"),
    ("step finish", "jobs/{job}/steps/{step}/finish", {"status": "SUCCESS", "exit_code": 2**40}, "exit_code"),
    ("step log", "jobs/{job}/steps/{step}/log", {"content": "x"}, "offset"),
    ("step log", "jobs/{job}/steps/{step}/log", {"offset": 0}, "content"),
    ("step log", "jobs/{job}/steps/{step}/log", {"offset": -1, "content": "x"}, "offset"),
    ("step log", "jobs/{job}/steps/{step}/log", {"offset": "0", "content": "x"}, "offset"),
    ("step log", "jobs/{job}/steps/{step}/log", {"offset": 1.5, "content": "x"}, "offset"),
    ("step log", "jobs/{job}/steps/{step}/log", {"offset": 0, "content": "nul\x00byte"}, "content"),
    ("finish", "jobs/{job}/finish", {}, "status"),
    ("finish", "jobs/{job}/finish", {"status": "CANCELLED"}, "CANCELLED"),
    ("finish", "jobs/{job}/finish", {"status": "SUCCESS", "exit_code": True}, "exit_code"),
    ("finish", "jobs/{job}/finish", {"status": "FAILURE", "exit_code": -(2**40)}, "exit_code"),
    ("finish", "jobs/{job}/finish", {"status": "SUCCESS", "reason": ["no"]}, "reason"),
    ("finish", "jobs/{job}/finish", {"status": "FAILURE", "reason": "nul\x00byte"}, "reason"),
    ("finish", "jobs/{job}/finish", {"status": "SUCCESS", "steps": "all"}, "steps"),
    ("finish", "jobs/{job}/finish", {"status": "SUCCESS", "steps": [1]}, "steps"),
    ("finish", "jobs/{job}/finish", {"status": "SUCCESS", "steps": [{"status": "SUCCESS"}]}, "id"),
    ("finish", "jobs/{job}/finish", {"status": "SUCCESS", "steps": [{"id": "s0", "status": "SUCCESS"}]}, "step id"),
    ("finish", "jobs/{job}/finish", {"status": "SUCCESS", "steps": [{"id": NO_STEP, "status": "RUNNING"}]}, "RUNNING"),
    ("finish", "jobs/{job}/finish", {"status": "SUCCESS", "steps": [{"id": NO_STEP}]}, "status"),
    (
        "finish",
        "jobs/{job}/finish",
        {"status": "SUCCESS", "steps": [{"id": NO_STEP, "status": "SUCCESS", "exit_code": "0"}]},
        "exit_code",
    ),
    ("finish", "jobs/{job}/finish", {"status": "SUCCESS", "steps": [{}] * 1001}, "at most 1000"),
    ("release", "jobs/{job}/release", {"reason": 5}, "reason"),
    ("claim", "jobs/request", {"wait": "forever"}, "wait"),
]


@pytest.mark.parametrize(
    ("name", "template", "body", "message"), MALFORMED, ids=[f"{m[0]}-{json.dumps(m[2])[:40]}" for m in MALFORMED]
)
def test_a_malformed_report_is_a_400_naming_the_problem_and_changes_nothing(
    client, holder, held_job, name, template, body, message
):
    _, token = holder
    before = db_snapshot()

    response = post(client, call_path(template, held_job), body, token=token)

    assert response.status_code == 400, response.content
    assert message in response.json()["detail"]
    assert db_snapshot() == before


@pytest.mark.parametrize("raw", [b"{oops", b"[]", b"null", b"\xff", b'{"offset": 0, "content": "x"'])
@pytest.mark.parametrize(("name", "template", "body"), ALL_CALLS, ids=[c[0] for c in ALL_CALLS])
def test_a_body_that_is_not_a_json_object_is_a_400_and_changes_nothing(
    client, holder, held_job, raw, name, template, body
):
    _, token = holder
    before = db_snapshot()

    response = post(client, call_path(template, held_job), token=token, raw=raw)

    assert response.status_code == 400, response.content
    assert response.json()["detail"]
    assert db_snapshot() == before


def test_a_job_id_that_is_not_a_uuid_is_a_404(client, holder, held_job):
    _, token = holder
    assert post(client, "jobs/not-a-uuid/heartbeat", token=token).status_code == 404


# --- The long-poll claim.


def listeners_waiting() -> int:
    """Connections of this test database LISTENing for queued jobs (the long-poll's)."""
    with connection.cursor() as cursor:
        cursor.execute(
            "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database() AND query ILIKE 'LISTEN %%'"
            " AND pid <> pg_backend_pid()"
        )
        return cursor.fetchone()[0]


def wait_until(predicate, *, timeout: float, interval: float = 0.05, what: str = "condition"):
    import time

    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(interval)


@pytest.mark.django_db(transaction=True)
def test_the_long_poll_answers_204_when_nothing_was_queued_during_its_wait(holder):
    runner, token = holder
    before = db_snapshot()

    response = long_poll(token, wait=0.5).result(timeout=20)

    assert response.status_code == 204
    assert db_snapshot() == before
    assert wait_until(lambda: listeners_waiting() == 0, timeout=10, what="the LISTEN connection to close") is True


@pytest.mark.django_db(transaction=True)
def test_the_long_poll_hands_over_a_job_queued_while_it_waits(holder):
    runner, token = holder
    # The longest wait the API allows: an answer before it is over came from the NOTIFY.
    poll = long_poll(token, wait=30)
    wait_until(lambda: listeners_waiting() == 1, timeout=10, what="the long-poll to LISTEN")

    run = create_run(job("compile", "build", script=["make"]))

    response = poll.result(timeout=15)
    assert response.status_code == 200, response.content
    body = response.json()
    compile_job = current_job(run, "compile")
    assert body["id"] == str(compile_job.pk)
    assert [s["command"] for s in body["steps"]] == ["make"]
    assert body["job_token"].startswith("cvj_")
    compile_job.refresh_from_db()
    assert (compile_job.status, compile_job.runner_id) == (JobStatus.RUNNING, runner.pk)


@pytest.mark.django_db(transaction=True)
def test_the_long_poll_of_a_runner_without_the_jobs_tags_keeps_waiting(holder):
    _, token = holder
    _, gpu_token = register_runner("gpu", tags=["gpu"])
    poll = long_poll(token, wait=1)
    wait_until(lambda: listeners_waiting() == 1, timeout=10, what="the long-poll to LISTEN")

    run = create_run(job("train", "build", tags=["gpu"]))

    assert poll.result(timeout=20).status_code == 204
    assert current_job(run, "train").status == JobStatus.QUEUED
    claimed = long_poll(gpu_token, wait=0).result(timeout=20)
    assert claimed.json()["id"] == str(current_job(run, "train").pk)


@pytest.mark.django_db(transaction=True)
def test_a_claim_without_wait_answers_at_once(holder, held_job):
    _, token = holder
    second = long_poll(token, wait=0).result(timeout=20)
    assert second.status_code == 200
    third = long_poll(token, wait=0).result(timeout=20)
    assert third.status_code == 204


# --- As the web server serves them (cicd.pooled): the job calls run in the "runner-api" pool.


@pytest.fixture
def served():
    with web_application({"runner-api": 2}) as app:
        yield app


def served_post(app, path: str, body: dict, token: str) -> Answer:
    data = json.dumps(body).encode()
    return asyncio.run(call(app, scope(API + path, body=data, headers={"authorization": f"Bearer {token}"}), data))


@pytest.mark.django_db(transaction=True)
def test_a_whole_job_reported_through_the_pool_is_stored_as_over_the_test_client(holder, held_job, served):
    _, token = holder
    step = held_job.steps[0]

    def job_call(path: str, body: dict) -> Answer:
        return served_post(served, f"jobs/{held_job.id}/{path}", body, token)

    assert job_call("heartbeat", {}).json() == {"continue": True}
    assert job_call(f"steps/{step.id}/start", {}).status == 200
    assert job_call(f"steps/{step.id}/log", {"offset": 0, "content": "hi\n"}).json() == {"next_offset": 3}
    assert job_call(f"steps/{step.id}/finish", {"status": "SUCCESS", "exit_code": 0}).status == 200
    assert job_call("finish", {"status": "SUCCESS", "exit_code": 0}).status == 200
    assert job_call("finish", {"status": "SUCCESS", "exit_code": 0}).json()["code"] == "job_not_held"

    assert Job.objects.get(pk=held_job.id).status == JobStatus.SUCCESS
    assert Step.objects.values_list("status", "exit_code").get(pk=step.id) == (StepStatus.SUCCESS, 0)
    assert list(StepLog.objects.filter(step_id=step.id).values_list("content", flat=True)) == ["hi\n"]


@pytest.mark.django_db(transaction=True)
def test_the_job_calls_are_served_by_the_pool_and_the_long_poll_is_not(served):
    def pool_of(path: str) -> str | None:
        executor = served.executor_for(scope(API + path, body=b"", headers={}))
        return next((name for name, pool in served.executors.items() if pool is executor), None)

    job, step = "0" * 8 + "-0000-0000-0000-" + "0" * 12, "1" * 8 + "-1111-1111-1111-" + "1" * 12
    assert pool_of(f"jobs/{job}/heartbeat") == "runner-api"
    assert pool_of(f"jobs/{job}/steps/{step}/log") == "runner-api"
    assert pool_of(f"jobs/{job}/finish") == "runner-api"
    assert pool_of(f"jobs/{job}/artifacts/dependencies") == "runner-api"
    assert pool_of("jobs/request") is None  # an async view, waiting up to 30 s: not in a pool thread
    assert pool_of(f"jobs/{job}/artifacts") == "runner-api"  # an upload's start
    assert pool_of(f"jobs/{job}/artifacts/{step}/content") is None  # its body: a thread of its own


@pytest.mark.django_db(transaction=True)
def test_the_long_poll_is_served_without_middleware_with_the_same_answers(holder, served):
    _, token = holder
    run = create_run(job("compile", "build", script=["make"]))

    claimed = served_post(served, "jobs/request", {"wait": 0}, token)
    assert claimed.status == 200
    assert claimed.json()["id"] == str(current_job(run, "compile").pk)
    assert served_post(served, "jobs/request", {"wait": 0}, token).status == 204
    assert served_post(served, "jobs/request", {"wait": "soon"}, token).status == 400
    assert served_post(served, "jobs/request", {"wait": 0}, "cvr_wrong").status == 401
    # The middleware did not run (cicd.pooled): none of the page headers it adds to a page;
    # SecurityMiddleware's are there, and the host is checked as everywhere.
    assert "x-frame-options" not in claimed.headers and "content-security-policy" not in claimed.headers
    assert claimed.headers["x-content-type-options"] == "nosniff"
    assert claimed.headers["content-length"] == str(len(claimed.body))
    data = json.dumps({"wait": 0}).encode()
    elsewhere = scope(
        API + "jobs/request", body=data, headers={"authorization": f"Bearer {token}"}, host="evil.example"
    )
    assert asyncio.run(call(served, elsewhere, data)).status == 400


@pytest.mark.django_db(transaction=True)
def test_the_job_calls_are_served_in_the_pool_without_middleware_the_host_checked_and_security_headers_set(
    holder, held_job, served
):
    _, token = holder

    heartbeat = served_post(served, f"jobs/{held_job.id}/heartbeat", {}, token)

    assert heartbeat.json() == {"continue": True}
    assert "x-frame-options" not in heartbeat.headers and "content-security-policy" not in heartbeat.headers
    assert heartbeat.headers["x-content-type-options"] == "nosniff"
    data = b"{}"
    elsewhere = scope(
        API + f"jobs/{held_job.id}/heartbeat",
        body=data,
        headers={"authorization": f"Bearer {token}"},
        host="evil.example",
    )
    assert asyncio.run(call(served, elsewhere, data)).status == 400
    # A page is still served with the middleware, by the same application.
    page = asyncio.run(call(served, scope("/login/", body=b"", headers={}, method="GET"), b""))
    assert "x-frame-options" in page.headers and "content-security-policy" in page.headers


@pytest.mark.django_db(transaction=True)
def test_a_finish_is_answered_before_its_runs_follow_ups_which_still_run(holder, held_job, served, monkeypatch):
    _, token = holder
    release, done = threading.Event(), threading.Event()

    def slow_follow_up(run_id, jobs_only=False):  # events, commit status, notifications (runs.services)
        release.wait(20)
        done.set()

    monkeypatch.setattr("runs.services._after_commit_run_changed", slow_follow_up)

    answer = served_post(served, f"jobs/{held_job.id}/finish", {"status": "SUCCESS", "exit_code": 0}, token)

    assert answer.status == 200
    assert Job.objects.get(pk=held_job.id).status == JobStatus.SUCCESS
    assert not done.is_set()
    release.set()
    assert done.wait(10), "the run's follow-ups never ran"


@pytest.mark.django_db(transaction=True)
def test_a_step_report_is_answered_before_its_viewers_hear_of_it(holder, held_job, served, monkeypatch):
    _, token = holder
    step = held_job.steps[0]
    release, done, heard = threading.Event(), threading.Event(), []

    def slow_event(step_id):  # the step's status to its run's live viewers (logs.services)
        release.wait(20)
        heard.append(str(step_id))
        done.set()

    monkeypatch.setattr("logs.services._publish_step_status", slow_event)

    started = served_post(served, f"jobs/{held_job.id}/steps/{step.id}/start", {}, token)

    assert started.status == 200
    assert Step.objects.get(pk=step.id).status == StepStatus.RUNNING
    assert heard == []
    release.set()
    assert done.wait(10), "the viewers never heard of the step"
    assert heard == [step.id]


@pytest.mark.django_db(transaction=True)  # the follow-ups are collected at commit
def test_outside_a_pool_a_finishs_follow_ups_run_before_the_answer(client, holder, held_job, monkeypatch):
    _, token = holder
    ran = []
    monkeypatch.setattr("runs.services._after_commit_run_changed", lambda run_id, **_: ran.append(run_id))

    response = post(client, f"jobs/{held_job.id}/finish", {"status": "SUCCESS", "exit_code": 0}, token=token)

    assert response.status_code == 200
    assert [str(run_id) for run_id in ran] == [held_job.run_id]


@pytest.mark.django_db(transaction=True)
def test_a_job_queued_while_the_long_poll_sets_up_its_listen_is_handed_over_at_once(holder, monkeypatch):
    from asgiref.sync import sync_to_async

    from runners import wakeups

    runner, token = holder
    listen = wakeups.connect_listener
    queued = []

    async def listen_after_a_job_was_queued():
        # The race: the job (and its NOTIFY) lands after the first claim found nothing, and
        # before LISTEN is in place.
        queued.append(await sync_to_async(create_run, thread_sensitive=False)(job("compile", "build", script=["make"])))
        return await listen()

    monkeypatch.setattr(wakeups, "connect_listener", listen_after_a_job_was_queued)

    response = long_poll(token, wait=20).result(timeout=10)

    assert response.status_code == 200, "the job waited for the next NOTIFY or the end of the long-poll"
    assert response.json()["id"] == str(current_job(queued[0], "compile").pk)


@pytest.mark.django_db(transaction=True)
def test_the_long_polls_of_a_web_process_share_one_listen_and_a_job_wakes_them(holder):
    from runners.wakeups import _of_loop, queue_wakeups

    _, token = holder
    _, other_token = register_runner("other")
    answers: list = []
    loop = asyncio.new_event_loop()
    loop.set_default_executor(ThreadPoolExecutor(max_workers=1))  # one connection, closed at the end

    async def two_long_polls():
        headers = [{"Authorization": f"Bearer {t}"} for t in (token, other_token)]
        polls = [
            AsyncClient().post(API + "jobs/request", data={"wait": 30}, content_type="application/json", headers=h)
            for h in headers
        ]
        answers.extend(await asyncio.gather(*polls))
        assert queue_wakeups()._listener is None, "the LISTEN outlived its last long-poll"

    serving = threading.Thread(target=lambda: loop.run_until_complete(two_long_polls()), daemon=True)
    serving.start()
    try:
        both_wait = lambda: loop in _of_loop and _of_loop[loop]._waiting == 2  # noqa: E731
        wait_until(lambda: both_wait() and listeners_waiting() > 0, timeout=10, what="both to wait, listening")
        assert listeners_waiting() == 1
        run = create_run(job("one", "build", script=["a"]), job("two", "build", script=["b"]))
        serving.join(timeout=15)
        assert not serving.is_alive(), "a queued job did not wake the long-polls"
        # The LISTEN connection is closed; its server process leaves pg_stat_activity a moment later.
        wait_until(lambda: listeners_waiting() == 0, timeout=10, what="the LISTEN connection to be gone")
    finally:
        loop.run_until_complete(loop.run_in_executor(None, connections.close_all))
        loop.run_until_complete(loop.shutdown_default_executor())
        loop.close()

    assert [answer.status_code for answer in answers] == [200, 200]
    assert {answer.json()["id"] for answer in answers} == {str(current_job(run, n).pk) for n in ("one", "two")}


def long_polls_of_one_process(tokens: list[str], *, wait: float, while_they_wait) -> list:
    """Long-polls of these runners served by one event loop (one web process: one LISTEN, one
    set of waiters), with `while_they_wait()` called once every one of them is waiting on the
    LISTEN. Their answers, in the order of `tokens`."""
    from runners.wakeups import _of_loop

    answers: list = []
    loop = asyncio.new_event_loop()
    loop.set_default_executor(ThreadPoolExecutor(max_workers=1))  # one connection, closed at the end

    async def long_polls():
        polls = [
            AsyncClient().post(
                API + "jobs/request",
                data={"wait": wait},
                content_type="application/json",
                headers={"Authorization": f"Bearer {token}"},
            )
            for token in tokens
        ]
        answers.extend(await asyncio.gather(*polls))

    def all_idle() -> bool:
        wakeups = _of_loop.get(loop)
        return wakeups is not None and len(wakeups._waiters) == len(tokens) and wakeups._listening.is_set()

    serving = threading.Thread(target=lambda: loop.run_until_complete(long_polls()), daemon=True)
    serving.start()
    try:
        wait_until(all_idle, timeout=10, what="the long-polls to wait on the LISTEN")
        while_they_wait()
        serving.join(timeout=wait + 15)
        assert not serving.is_alive(), "the long-polls did not answer"
    finally:
        loop.run_until_complete(loop.run_in_executor(None, connections.close_all))
        loop.run_until_complete(loop.shutdown_default_executor())
        loop.close()
    return answers


@pytest.fixture
def claims(monkeypatch) -> list[str]:
    """The claims the API makes from here on (runners.services.job_claim, called through), each
    as its runner's name."""
    from runners import services

    made: list[str] = []
    claim = services.job_claim

    def counted(*, runner):
        made.append(runner.name)
        return claim(runner=runner)

    monkeypatch.setattr(services, "job_claim", counted)
    return made


@pytest.mark.django_db(transaction=True)
def test_jobs_queued_for_eight_idle_long_polls_wake_as_many_as_there_are_jobs_and_one_more(claims):
    tokens = [register_runner(f"idle-{i}")[1] for i in range(8)]
    claims_while_idle: list[int] = []
    runs = []

    def queue_three_jobs():
        # Each long-poll claimed twice before it waited: at once, and again once LISTEN was in place.
        claims_while_idle.append(len(claims))
        runs.append(create_run(*(job(name, "build", script=["true"]) for name in ("a", "b", "c"))))

    answers = long_polls_of_one_process(tokens, wait=4, while_they_wait=queue_three_jobs)

    assert claims_while_idle == [16]
    # One NOTIFY: the longest waiting wakes and claims a job, which wakes the next, and so on,
    # until a claim finds nothing. Waking all eight would have made eight claims.
    assert len(claims) - 16 == 4
    assert sorted(answer.status_code for answer in answers) == [200, 200, 200, 204, 204, 204, 204, 204]
    claimed = {answer.json()["id"] for answer in answers if answer.status_code == 200}
    assert claimed == {str(current_job(runs[0], name).pk) for name in ("a", "b", "c")}


@pytest.mark.django_db(transaction=True)
def test_a_job_with_tags_wakes_only_a_long_poll_of_a_runner_that_has_them(claims):
    plain = [register_runner(f"plain-{i}")[1] for i in range(3)]
    _, gpu_token = register_runner("gpu", tags=["gpu"])
    claims_while_idle: list[int] = []
    runs = []

    def queue_a_gpu_job():
        claims_while_idle.append(len(claims))
        runs.append(create_run(job("train", "build", tags=["gpu"])))

    answers = long_polls_of_one_process([*plain, gpu_token], wait=4, while_they_wait=queue_a_gpu_job)

    assert [answer.status_code for answer in answers] == [204, 204, 204, 200]
    assert answers[-1].json()["id"] == str(current_job(runs[0], "train").pk)
    # The notification says the job needs "gpu": the runners without it were not woken to look.
    assert claims[claims_while_idle[0] :] == ["gpu"]


@pytest.mark.django_db(transaction=True)
def test_without_a_listen_the_long_poll_polls_and_still_hands_over_a_job(holder, monkeypatch):
    from runners import wakeups

    _, token = holder

    async def database_refuses():
        raise OSError("connection refused")

    monkeypatch.setattr(wakeups, "connect_listener", database_refuses)
    poll = long_poll(token, wait=20)
    time.sleep(0.3)  # the long-poll has found nothing and failed to LISTEN by now
    run = create_run(job("compile", "build", script=["make"]))

    response = poll.result(timeout=10)  # polling once a second, not waiting out the 20 s

    assert response.status_code == 200
    assert response.json()["id"] == str(current_job(run, "compile").pk)
