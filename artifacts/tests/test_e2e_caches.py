"""End to end with real runners and the shell executor: `cache:` carries files from one run
to the next, and a deploy job gets the exact digest of the image its build job recorded.
Nothing is mocked: real git repositories, real `manage.py runner` processes (trusted, and
HTTP against a real uvicorn), real storage."""

from __future__ import annotations

import pytest

from artifacts.models import Cache, CacheStatus
from artifacts.tests.test_e2e import start_server, storage_env
from pipelines.models import Trigger
from pipelines.services import run_trigger
from runs.models import RunStatus
from tests.test_runner_e2e import assert_run_ends, current, register_http_runner, step_log, wait_until

pytestmark = pytest.mark.django_db(transaction=True)

DIGEST = "sha256:" + "ab" * 32

CONFIG = f"""
stages: [build, deploy]
build:
  stage: build
  script:
    - >-
      if [ -f vendor/deps.txt ]; then echo "restored - $(cat vendor/deps.txt)";
      else mkdir -p vendor && echo "fetched in run $CI_PIPELINE_IID" > vendor/deps.txt; fi
    - conveyor-artifact docker 127.0.0.1:5000/app:$CI_COMMIT_SHORT_SHA --digest {DIGEST} --name app
  cache:
    key: deps-$CI_COMMIT_REF_NAME
    paths: [vendor/]
deploy:
  stage: deploy
  needs: [build]
  script:
    - echo "deploying $CONVEYOR_IMAGE_APP"
    - test "$CONVEYOR_IMAGE" = "$CONVEYOR_IMAGE_APP" && test "$CONVEYOR_IMAGE_APP_DIGEST" = "{DIGEST}"
  cache:
    key: deps-$CI_COMMIT_REF_NAME
    paths: [vendor/]
    policy: pull
"""


def _env(tmp_path, settings) -> dict[str, str]:
    # The server's key for secrets at rest: the runner and server processes read the rows.
    key = getattr(settings, "CONVEYOR_ENCRYPTION_KEY", "")
    return {**storage_env(tmp_path), **({"CONVEYOR_ENCRYPTION_KEY": str(key)} if key else {})}


def _check_two_runs(first, runner) -> None:
    assert_run_ends(first, RunStatus.SUCCESS, runners=[runner])
    build_log = step_log(current(first, "build"), 0)
    assert "cache: no cache for key deps-main: the job starts without it" in build_log
    assert "cache: saved deps-main: 1 files" in step_log(current(first, "build"), 1)
    (cache,) = Cache.objects.filter(repository=first.pipeline.repository)
    assert (cache.key, cache.status) == ("deps-main", CacheStatus.AVAILABLE)
    # The deploy job pulls (policy: pull) and gets the image built upstream, pinned.
    deploy_log = step_log(current(first, "deploy"), 0)
    assert "cache: restored deps-main: 1 files" in deploy_log
    assert f"deploying 127.0.0.1:5000/app:{first.commit_sha[:8]}@{DIGEST}" in deploy_log

    second = run_trigger(pipeline=first.pipeline, ref="main", trigger=Trigger.PUSH, triggered_by="e2e")
    assert_run_ends(second, RunStatus.SUCCESS, runners=[runner])

    assert f"restored - fetched in run {first.number}" in step_log(current(second, "build"), 0)
    # Run 2's build pushed again: its upload replaced run 1's, one cache per key.
    (replaced,) = Cache.objects.filter(repository=first.pipeline.repository)
    assert replaced.pk != cache.pk and replaced.job_id == current(second, "build").pk


@pytest.mark.slow
def test_a_trusted_runner_saves_a_cache_in_one_run_and_restores_it_in_the_next(harness, trigger, tmp_path, settings):
    settings.STORAGES = {
        **settings.STORAGES,
        "artifacts": {
            "BACKEND": "django.core.files.storage.FileSystemStorage",
            "OPTIONS": {"location": tmp_path / "artifact-storage"},
        },
    }
    first = trigger(CONFIG)
    runner = harness.runner("caches-trusted", **_env(tmp_path, settings))
    _check_two_runs(first, runner)


@pytest.mark.slow
def test_an_http_runner_saves_a_cache_in_one_run_and_restores_it_in_the_next(harness, trigger, tmp_path, settings):
    settings.STORAGES = {
        **settings.STORAGES,
        "artifacts": {
            "BACKEND": "django.core.files.storage.FileSystemStorage",
            "OPTIONS": {"location": tmp_path / "artifact-storage"},
        },
    }
    first = trigger(CONFIG)
    server = start_server(harness, **_env(tmp_path, settings))
    token = register_http_runner(server, harness, "caches-http")
    runner = harness.runner("caches-http", "--url", server.url, CONVEYOR_RUNNER_TOKEN=token, **_env(tmp_path, settings))
    wait_until(lambda: "waiting for jobs" in runner.output(), timeout=60, what="the runner to start")
    _check_two_runs(first, runner)
