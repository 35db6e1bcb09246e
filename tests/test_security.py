"""Hardening: `check --deploy` is clean with production settings, pages send the security
headers, and every kind of token is stored hashed, scoped and revocable at once."""

from __future__ import annotations

import hashlib
import json
import os
import secrets
import subprocess
import sys
from pathlib import Path

import pytest
from django.contrib.auth import get_user_model
from django.test import Client

from artifacts.tests.helpers import upload
from logs.selectors import log_text
from logs.tests.conftest import make_running_job
from pipelines.api_tokens import api_token_create, api_token_revoke
from pipelines.models import ApiToken, TriggerToken
from pipelines.services import trigger_token_create
from runners.models import RegistrationToken, Runner
from runners.services import registration_token_create, runner_register, runner_revoke
from runs.models import Job, JobStatus
from runs.services import run_cancel
from tests.test_secrets import rows_containing

ROOT = Path(__file__).resolve().parent.parent

CSP = "Content-Security-Policy"


# --- manage.py check --deploy.


def check_deploy(**env: str) -> subprocess.CompletedProcess:
    base = {k: v for k, v in os.environ.items() if not k.startswith(("PYTEST_", "CONVEYOR_TEST_"))}
    base.update(DEBUG="false", SECRET_KEY=secrets.token_urlsafe(50), ALLOWED_HOSTS="ci.example.com", **env)
    command = [sys.executable, "manage.py", "check", "--deploy", "--fail-level", "WARNING"]
    return subprocess.run(command, cwd=ROOT, env=base, capture_output=True, text=True, timeout=120)


def test_check_deploy_is_clean_with_the_production_settings() -> None:
    done = check_deploy(CONVEYOR_HTTPS="true", CONVEYOR_REQUIRE_SECRET_KEY="true")

    assert done.returncode == 0, done.stdout + done.stderr
    assert "no issues" in done.stdout


def test_check_deploy_warns_without_the_https_switch() -> None:
    done = check_deploy()

    assert done.returncode != 0
    for warning in ["security.W004", "security.W008", "security.W012", "security.W016"]:
        assert warning in done.stderr


# --- Headers.


@pytest.mark.django_db
@pytest.mark.parametrize("path", ["/login/", "/api/v1/docs/", "/healthz"])
def test_pages_send_the_security_headers(path) -> None:
    response = Client().get(path)

    assert response.status_code == 200, response.status_code
    assert response["X-Frame-Options"] == "DENY"
    assert response["X-Content-Type-Options"] == "nosniff"
    assert response["Referrer-Policy"] == "same-origin"
    assert response["Cross-Origin-Opener-Policy"] == "same-origin"
    policy = response[CSP]
    assert "script-src 'self';" in policy and "frame-ancestors 'none'" in policy and "object-src 'none'" in policy


@pytest.mark.django_db
def test_the_dashboard_has_no_inline_script_the_policy_would_block(client) -> None:
    client.force_login(get_user_model().objects.create_superuser("csp"))
    for path in ["/", "/runs/", "/api/v1/docs/", "/admin/"]:
        html = client.get(path).content.decode()
        scripts = html.split("<script")[1:]
        assert all(" src=" in tag.split(">", 1)[0] for tag in scripts), path


@pytest.mark.django_db
def test_the_session_and_csrf_cookies_are_http_only_and_secure_behind_https(settings) -> None:
    settings.SESSION_COOKIE_SECURE = settings.CSRF_COOKIE_SECURE = True
    get_user_model().objects.create_user("cookie", password="a long password 1")
    client = Client(enforce_csrf_checks=False)

    response = client.post("/login/", {"username": "cookie", "password": "a long password 1"}, secure=True)

    session = response.cookies[settings.SESSION_COOKIE_NAME]
    assert session["secure"] and session["httponly"]
    assert response.cookies[settings.CSRF_COOKIE_NAME]["secure"]


@pytest.mark.django_db
def test_https_mode_redirects_pages_but_not_the_runner_api_or_health_checks(settings) -> None:
    settings.SECURE_SSL_REDIRECT = True
    settings.SECURE_HSTS_SECONDS = 31536000
    client = Client()

    page = client.get("/login/")
    runner_api = client.post("/api/runner/jobs/request", data="{}", content_type="application/json")
    health = client.get("/healthz")
    secure = client.get("/login/", secure=True)

    assert page.status_code == 301 and page["Location"].startswith("https://")
    assert runner_api.status_code == 401  # answered (the runner has no token), not redirected
    assert health.status_code == 200
    assert secure["Strict-Transport-Security"].startswith("max-age=31536000")


# --- Tokens: stored hashed.


@pytest.mark.django_db
def test_every_kind_of_token_is_stored_only_as_its_sha256() -> None:
    user = get_user_model().objects.create_user("hashes")
    running = make_running_job()
    registration_row, registration = registration_token_create(description="hashed")
    runner, runner_token = runner_register(registration_token=registration, name="hashed", tags=[])
    api_row, api_token = api_token_create(user=user, description="hashed")
    trigger_row, trigger_token = trigger_token_create(
        pipeline=running.job.run.pipeline, description="hashed", user=user
    )

    stored = {
        running.token: Job.objects.get(pk=running.job.pk).token_hash,
        registration: RegistrationToken.objects.get(pk=registration_row.pk).token_hash,
        runner_token: Runner.objects.get(pk=runner.pk).token_hash,
        api_token: ApiToken.objects.get(pk=api_row.pk).token_hash,
        trigger_token: TriggerToken.objects.get(pk=trigger_row.pk).token_hash,
    }
    for token, token_hash in stored.items():
        assert token_hash == hashlib.sha256(token.encode()).hexdigest()
        assert rows_containing(token) == [], f"{token[:6]}… is stored in clear"


# --- Job tokens: only while the job runs, only for its own job.


def post_log(job, step, token: str, content: str):
    return Client().post(
        f"/api/runner/jobs/{job.pk}/steps/{step.pk}/log",
        data=json.dumps({"offset": 0, "content": content}),
        content_type="application/json",
        headers={"Authorization": f"Bearer {token}"},
    )


def artifact_call(job, token: str, suffix: str = "dependencies"):
    return Client().get(f"/api/runner/jobs/{job.pk}/artifacts/{suffix}", headers={"Authorization": f"Bearer {token}"})


@pytest.mark.django_db
def test_a_job_token_is_refused_once_its_run_is_cancelled() -> None:
    running = make_running_job()
    assert artifact_call(running.job, running.token).status_code == 200

    run_cancel(run=running.job.run, by="someone")

    assert Job.objects.get(pk=running.job.pk).status == JobStatus.CANCELLED
    refused_log = post_log(running.job, running.step, running.token, "after the cancel\n")
    refused_artifacts = artifact_call(running.job, running.token)
    assert (refused_log.status_code, refused_log.json()["code"]) == (409, "job_not_held")
    assert (refused_artifacts.status_code, refused_artifacts.json()["code"]) == (409, "job_not_held")
    assert log_text(step=running.step) == ""


@pytest.mark.django_db
def test_a_job_token_opens_nothing_of_another_job(settings, tmp_path) -> None:
    settings.STORAGES = {
        **settings.STORAGES,
        "artifacts": {"BACKEND": "django.core.files.storage.FileSystemStorage", "OPTIONS": {"location": tmp_path}},
    }
    mine, other = make_running_job(), make_running_job()
    artifact = upload(Job.objects.get(pk=other.job.pk), b"the other job's output")

    calls = {
        "log": post_log(other.job, other.step, mine.token, "intrusion\n"),
        "dependencies": artifact_call(other.job, mine.token),
        "content": artifact_call(other.job, mine.token, f"{artifact.pk}/content"),
        "content through my job": artifact_call(mine.job, mine.token, f"{artifact.pk}/content"),
    }

    assert {name: response.status_code for name, response in calls.items()} == {
        "log": 401,
        "dependencies": 401,
        "content": 401,
        "content through my job": 404,
    }
    assert log_text(step=other.step) == ""


# --- Revocation takes effect at once.


@pytest.mark.django_db
def test_a_revoked_api_token_is_refused_on_the_very_next_request() -> None:
    user = get_user_model().objects.create_superuser("revoker")
    row, token = api_token_create(user=user, description="script")
    client = Client(headers={"Authorization": f"Bearer {token}"})
    assert client.get("/api/v1/runs/").status_code == 200

    api_token_revoke(token=row)

    assert client.get("/api/v1/runs/").status_code == 401


@pytest.mark.django_db
def test_a_revoked_runner_token_is_refused_on_the_very_next_call() -> None:
    running = make_running_job()
    _, registration = registration_token_create(description="revoked")
    runner, token = runner_register(registration_token=registration, name="revoked", tags=running.runner.tags)
    Job.objects.filter(pk=running.job.pk).update(runner=runner)
    heartbeat = f"/api/runner/jobs/{running.job.pk}/heartbeat"
    client = Client(headers={"Authorization": f"Bearer {token}"})
    assert client.post(heartbeat, content_type="application/json").status_code == 200

    runner_revoke(runner=runner)

    assert client.post(heartbeat, content_type="application/json").status_code == 401
    assert post_log(running.job, running.step, token, "after revocation\n").status_code == 401
