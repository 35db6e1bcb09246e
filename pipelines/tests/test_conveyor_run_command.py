"""`manage.py conveyor_run`: starts a run through the REST API of a live server and follows
its log to the end, with a real runner (a `manage.py runner` subprocess) executing the jobs."""

from __future__ import annotations

from io import StringIO

import pytest
from django.contrib.auth import get_user_model
from django.core.management import CommandError, call_command

from pipelines.api_tokens import api_token_create
from pipelines.models import Pipeline, Repository, RepositoryMembership, Role
from runs.models import PipelineRun, RunStatus

pytestmark = pytest.mark.django_db(transaction=True)

CONFIG = """
stages: [build, test]
build:
  stage: build
  script:
    - echo "hello $GREETING"
    - printf 'no newline at the end'
test:
  stage: test
  script:
    - echo "testing"
    - exit $FAIL
"""


@pytest.fixture
def project(make_git_repo, settings, tmp_path):
    settings.CONVEYOR_MIRRORS_DIR = tmp_path / "mirrors"
    path, _sha = make_git_repo({".cicd.yml": CONFIG})
    repository = Repository.objects.create(name="cli-demo", clone_url=str(path))
    Pipeline.objects.create(repository=repository, name="default")
    return repository


def token_for(repository: Repository, role: str) -> str:
    user = get_user_model().objects.create_user(f"cli-{role}", password="x")
    RepositoryMembership.objects.create(repository=repository, user=user, role=role)
    return api_token_create(user=user, description="cli")[1]


def conveyor_run(live_server, token: str, *args: str) -> str:
    out = StringIO()
    call_command(
        "conveyor_run", *args, "--url", live_server.url, "--token", token, "--poll-interval", "0.2", stdout=out
    )
    return out.getvalue()


def test_it_starts_a_run_and_prints_its_url(live_server, project) -> None:
    output = conveyor_run(live_server, token_for(project, Role.DEVELOPER), "cli-demo", "--var", "GREETING=hi")
    run = PipelineRun.objects.get(pipeline__repository=project)
    assert f"Started cli-demo/default #1 on main: {live_server.url}/runs/{run.pk}/" in output
    assert run.variables["GREETING"] == "hi"


@pytest.mark.slow
def test_with_follow_it_prints_every_jobs_log_until_the_run_succeeds(live_server, project, harness) -> None:
    harness.runner("cli")
    output = conveyor_run(
        live_server,
        token_for(project, Role.DEVELOPER),
        "cli-demo",
        "--var",
        "GREETING=world",
        "--var",
        "FAIL=0",
        "--follow",
    )
    assert "[build] hello world" in output
    assert "[build] no newline at the end" in output
    assert "[test] testing" in output
    assert output.index("--- build ---") < output.index("--- test ---")
    assert "Run #1: SUCCESS" in output


@pytest.mark.slow
def test_with_follow_a_failed_run_is_a_command_error(live_server, project, harness) -> None:
    harness.runner("cli")
    with pytest.raises(CommandError, match="ended FAILURE"):
        conveyor_run(live_server, token_for(project, Role.DEVELOPER), "cli-demo", "--var", "FAIL=3", "--follow")
    assert PipelineRun.objects.get(pipeline__repository=project).status == RunStatus.FAILURE


def test_a_viewers_token_cannot_start_a_run(live_server, project) -> None:
    with pytest.raises(CommandError, match="403"):
        conveyor_run(live_server, token_for(project, Role.VIEWER), "cli-demo")
    assert not PipelineRun.objects.exists()


def test_it_needs_a_token_and_well_formed_variables(live_server, project, monkeypatch) -> None:
    monkeypatch.delenv("CONVEYOR_TOKEN", raising=False)
    with pytest.raises(CommandError, match="token"):
        call_command("conveyor_run", "cli-demo", "--url", live_server.url, "--token", "")
    with pytest.raises(CommandError, match="NAME=VALUE"):
        conveyor_run(live_server, token_for(project, Role.DEVELOPER), "cli-demo", "--var", "oops")


def test_an_unknown_repository_says_so(live_server, project) -> None:
    with pytest.raises(CommandError, match="404"):
        conveyor_run(live_server, token_for(project, Role.DEVELOPER), "no-such-repo")
