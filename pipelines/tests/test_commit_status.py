"""Commit statuses posted to GitHub's and GitLab's APIs, checked against a local HTTP server that
records the calls and answers as told."""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from pipelines import commit_status
from pipelines.models import CommitStatusReport, Forge, Repository
from pipelines.services import run_manual
from pipelines.tasks import report_commit_status, sweep_commit_statuses
from pipelines.tests import webhook_payloads as p
from runs.models import JobStatus, PipelineRun, RunStatus
from runs.services import job_finish, job_start, run_cancel

pytestmark = pytest.mark.django_db


@dataclass
class Call:
    method: str
    path: str
    headers: dict[str, str]
    body: dict


@dataclass
class ForgeApi:
    """A stand-in forge: records each call; answers with the queued statuses, then 201."""

    url: str
    calls: list[Call] = field(default_factory=list)
    answers: list[int] = field(default_factory=list)


@pytest.fixture
def forge_api() -> Iterator[ForgeApi]:
    api = ForgeApi(url="")

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:  # noqa: N802 (http.server's name)
            length = int(self.headers.get("Content-Length") or 0)
            body = json.loads(self.rfile.read(length) or b"{}")
            api.calls.append(Call("POST", self.path, {k.lower(): v for k, v in self.headers.items()}, body))
            status = api.answers.pop(0) if api.answers else 201
            payload = json.dumps({"message": "nope"} if status >= 400 else {"id": len(api.calls)}).encode()
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(payload)))
            self.end_headers()
            self.wfile.write(payload)

        def log_message(self, *args) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    api.url = f"http://127.0.0.1:{server.server_address[1]}"
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield api
    server.shutdown()
    server.server_close()


@pytest.fixture
def github(forge, forge_api):
    Repository.objects.filter(pk=forge.repository.pk).update(
        forge=Forge.GITHUB, forge_project="acme/web", forge_api_url=forge_api.url, forge_token="ghp_secret"
    )
    forge.repository.refresh_from_db()
    return forge


@pytest.fixture
def gitlab(forge, forge_api):
    Repository.objects.filter(pk=forge.repository.pk).update(
        forge=Forge.GITLAB, forge_project="acme/web", forge_api_url=f"{forge_api.url}/api/v4", forge_token="glpat-x"
    )
    forge.repository.refresh_from_db()
    return forge


def start_run(forge) -> PipelineRun:
    return run_manual(pipeline=forge.pipeline, ref="main", triggered_by="test")


def test_a_github_run_reports_pending_then_success_to_the_statuses_api(github, forge_api, settings):
    run = start_run(github)
    assert report_commit_status(str(run.pk)) == "sent"

    while run.jobs.exclude(status__in=sorted(JobStatus.TERMINAL)).exists():
        for job in run.jobs.filter(status=JobStatus.QUEUED):
            job_start(job=job, runner=None, lease_seconds=60)
            job_finish(job_id=job.pk, status=JobStatus.SUCCESS, exit_code=0)
    run.refresh_from_db()
    assert run.status == RunStatus.SUCCESS
    assert report_commit_status(str(run.pk)) == "sent"

    first, last = forge_api.calls
    assert first.path == f"/repos/acme/web/statuses/{run.commit_sha}"
    assert first.headers["authorization"] == "Bearer ghp_secret"
    assert first.headers["accept"] == "application/vnd.github+json"
    assert first.body["state"] == "pending"
    assert first.body["context"] == "conveyor/default"
    assert first.body["target_url"] == f"{settings.CONVEYOR_BASE_URL}/admin/runs/pipelinerun/{run.pk}/change/"
    assert (last.body["state"], last.body["description"]) == ("success", f"Run #{run.number} passed")


def test_an_unchanged_status_is_not_posted_again(github, forge_api):
    run = start_run(github)
    assert report_commit_status(str(run.pk)) == "sent"
    assert report_commit_status(str(run.pk)) == "unchanged"
    assert len(forge_api.calls) == 1


def test_gitlab_gets_its_own_states_and_the_private_token(gitlab, forge_api):
    run = start_run(gitlab)
    report_commit_status(str(run.pk))
    run_cancel(run=run, by="someone")
    report_commit_status(str(run.pk))

    running, cancelled = forge_api.calls
    assert running.path == f"/api/v4/projects/acme%2Fweb/statuses/{run.commit_sha}"
    assert running.headers["private-token"] == "glpat-x"
    assert running.body["state"] == "running"
    assert (running.body["ref"], running.body["name"]) == ("main", "conveyor/default")
    assert cancelled.body["state"] == "canceled"


def test_a_failing_forge_is_retried_and_never_touches_the_run(github, forge_api, settings):
    settings.CELERY_TASK_ALWAYS_EAGER = True
    settings.CELERY_TASK_EAGER_PROPAGATES = False
    forge_api.answers = [502, 503]
    run = start_run(github)

    result = report_commit_status.apply(args=[str(run.pk)])

    assert [c.body["state"] for c in forge_api.calls] == ["pending", "pending", "pending"]
    assert result.get() == "sent"
    report = CommitStatusReport.objects.get(run=run)
    assert (report.state, report.attempts, report.last_error) == ("pending", 3, "")
    run.refresh_from_db()
    assert run.status == RunStatus.RUNNING


def test_a_refusal_is_recorded_and_not_retried(github, forge_api):
    forge_api.answers = [422]
    run = start_run(github)

    assert report_commit_status(str(run.pk)) == "refused"

    report = CommitStatusReport.objects.get(run=run)
    assert "422" in report.last_error
    assert len(forge_api.calls) == 1
    assert report_commit_status(str(run.pk)) == "unchanged"


def test_an_unreachable_forge_raises_for_a_retry(github):
    Repository.objects.filter(pk=github.repository.pk).update(forge_api_url="http://127.0.0.1:9")
    run = start_run(github)
    with pytest.raises(commit_status.ForgeUnavailable):
        commit_status.commit_status_report(run_id=run.pk)
    assert CommitStatusReport.objects.get(run=run).last_error


def test_repositories_without_a_forge_token_report_nothing(forge, forge_api):
    run = start_run(forge)
    assert report_commit_status(str(run.pk)) == "not configured"
    assert forge_api.calls == []


def test_runs_started_by_webhooks_get_their_status_queued(
    github, forge_api, poster, settings, django_capture_on_commit_callbacks
):
    settings.CELERY_TASK_ALWAYS_EAGER = True
    payload = p.github_push(after=github.sha, full_name="acme/web")
    with django_capture_on_commit_callbacks(execute=True):
        poster.github(payload, event="push")
    assert [c.body["state"] for c in forge_api.calls] == ["pending"]


def test_the_sweep_reports_changes_nobody_announced_and_only_those(github, forge_api, settings):
    settings.CELERY_TASK_ALWAYS_EAGER = True
    run = start_run(github)
    assert sweep_commit_statuses() == 1
    assert sweep_commit_statuses() == 0
    run_cancel(run=run, by="someone")
    assert sweep_commit_statuses() == 1
    assert [c.body["state"] for c in forge_api.calls] == ["pending", "error"]
    # A run whose final state is reported is out of the sweep's reach.
    assert sweep_commit_statuses() == 0


def test_the_forge_token_is_write_only_in_the_admin(admin_client, forge):
    url = f"/admin/pipelines/repository/{forge.repository.pk}/change/"
    form = {
        "name": forge.repository.name,
        "clone_url": forge.repository.clone_url,
        "default_branch": "main",
        "forge": Forge.GITHUB,
        "forge_project": "acme/web",
        "forge_api_url": "",
        "forge_token": "ghp_very_secret",
        "pipelines-TOTAL_FORMS": "0",
        "pipelines-INITIAL_FORMS": "0",
    }
    assert admin_client.post(url, form).status_code == 302
    forge.repository.refresh_from_db()
    assert forge.repository.forge_token == "ghp_very_secret"
    page = admin_client.get(url).content.decode()
    assert "ghp_very_secret" not in page
    assert forge.repository.webhook_secret in page
    assert "/webhooks/github/?repository=" in page

    # Saving without a token keeps it; "clear" removes it.
    assert admin_client.post(url, {**form, "forge_token": ""}).status_code == 302
    forge.repository.refresh_from_db()
    assert forge.repository.forge_token == "ghp_very_secret"
    assert admin_client.post(url, {**form, "forge_token": "", "clear_forge_token": "on"}).status_code == 302
    forge.repository.refresh_from_db()
    assert forge.repository.forge_token == ""
