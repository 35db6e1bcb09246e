"""The runner API's log endpoint, POST /api/runner/jobs/<job>/steps/<step>/log, as runners use it."""

from __future__ import annotations

import json

import pytest
from django.test import Client

from logs.masking import MASK
from logs.selectors import log_text
from runners.services import job_complete, registration_token_create, runner_register
from runs.models import JobStatus

from .conftest import make_running_job

pytestmark = pytest.mark.django_db


def post_log(running, body, *, token=None, step=None):
    step = step or running.step
    headers = {"Authorization": f"Bearer {token if token is not None else running.token}"}
    return Client().post(
        f"/api/runner/jobs/{running.job.pk}/steps/{step.pk}/log",
        data=json.dumps(body),
        content_type="application/json",
        headers=headers,
    )


def test_a_job_token_appends_to_its_own_steps_and_gets_the_next_offset(running):
    response = post_log(running, {"offset": 0, "content": "héllo\n"})

    assert response.status_code == 200
    assert response.json() == {"next_offset": 7}
    assert log_text(step=running.step) == "héllo\n"


def test_a_resent_chunk_gets_the_same_answer_and_is_stored_once(running):
    post_log(running, {"offset": 0, "content": "one\n"})

    again = post_log(running, {"offset": 0, "content": "one\n"})

    assert (again.status_code, again.json()) == (200, {"next_offset": 4})
    assert log_text(step=running.step) == "one\n"


def test_a_gap_is_a_409_naming_the_offset_to_resend_from(running):
    post_log(running, {"offset": 0, "content": "one\n"})

    response = post_log(running, {"offset": 40, "content": "late\n"})

    assert response.status_code == 409
    assert response.json()["code"] == "log_gap"
    assert response.json()["expected_offset"] == 4


def test_the_job_token_of_another_job_is_refused(running):
    other = make_running_job()

    response = post_log(running, {"offset": 0, "content": "intrusion\n"}, token=other.token)

    assert response.status_code == 401
    assert log_text(step=running.step) == ""


def test_a_job_token_cannot_write_to_a_step_of_another_job(running):
    other = make_running_job()

    response = post_log(running, {"offset": 0, "content": "intrusion\n"}, step=other.step)

    assert response.status_code == 404
    assert log_text(step=other.step) == ""


def test_a_job_token_dies_with_its_job(running):
    job_complete(job_id=running.job.pk, runner=running.runner, status=JobStatus.SUCCESS, exit_code=0)

    response = post_log(running, {"offset": 0, "content": "too late\n"})

    assert response.status_code == 409
    assert response.json()["code"] == "job_not_held"
    assert log_text(step=running.step) == ""


def test_an_unknown_token_is_a_401(running):
    assert post_log(running, {"offset": 0, "content": "x"}, token="cvj_made-up").status_code == 401
    assert post_log(running, {"offset": 0, "content": "x"}, token="").status_code == 401


def test_the_runner_holding_the_job_may_still_send_with_its_own_token(running):
    # A runner with a real token: the fixture's runner was created without one.
    _, registration = registration_token_create(description="logs")
    holder, token = runner_register(registration_token=registration, name="holder", tags=running.runner.tags)
    running.job.runner = holder
    running.job.save(update_fields=["runner"])

    response = post_log(running, {"offset": 0, "content": "via the runner token\n"}, token=token)

    assert response.status_code == 200
    assert log_text(step=running.step) == "via the runner token\n"


def test_the_job_token_is_masked_in_what_is_stored(running):
    post_log(running, {"offset": 0, "content": f"CI_JOB_TOKEN={running.token}\n"})

    assert log_text(step=running.step) == f"CI_JOB_TOKEN={MASK}\n"
