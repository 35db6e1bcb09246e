"""The dashboard in a real browser: Playwright for Python driving Debian's Chromium against a
real uvicorn (HTTP and WebSockets) and a real `manage.py runner`, on this session's test
database. A person logs in, runs the demo pipeline, watches the graph change and a job's
log stream in live, approves the production deploy, retries a job; a screenshot of the run
page is kept as a test artifact (CONVEYOR_TEST_ARTIFACTS_DIR, default var/test-artifacts/).

Skipped, saying why, where /usr/bin/chromium or the playwright package is missing (install:
`apt-get install chromium` and `pip install playwright`; never `playwright install`, which
downloads a browser build). Every wait is a wait-until with a generous deadline.
"""

from __future__ import annotations

import importlib.util
import os
import subprocess
import sys
from pathlib import Path

import pytest
from django.contrib.auth import get_user_model

from pipelines.demo import CICD_YML, demo_repository_ensure
from pipelines.models import Pipeline, Repository, RepositoryMembership, Role
from runs.models import Environment, Job, JobStatus, PipelineRun, RunStatus
from tests.test_runner_e2e import ROOT, wait_until

CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
    "--disable-quic",
]
WAIT_MS = 60_000  # an upper bound for anything to show up, never a measurement
PASSWORD = "browser-test-password"

pytestmark = [
    pytest.mark.browser,
    pytest.mark.slow,
    pytest.mark.django_db(transaction=True),
    pytest.mark.skipif(
        not CHROMIUM.exists(), reason="no browser: /usr/bin/chromium is missing (apt-get install chromium)"
    ),
    pytest.mark.skipif(
        importlib.util.find_spec("playwright") is None,
        reason="the playwright package is missing (pip install playwright; the system Chromium is used)",
    ),
]

# The demo pipeline, with a test job that writes its output slowly: lines arrive while the
# browser watches, one every half second.
SLOW_TEST_SCRIPT = """  script:
    - for i in 1 2 3 4 5 6 7 8 9 10 11 12; do echo "progress $i of 12"; sleep 0.5; done
    - python3 -m unittest -v
"""


def artifacts_dir() -> Path:
    path = Path(os.environ.get("CONVEYOR_TEST_ARTIFACTS_DIR") or ROOT / "var" / "test-artifacts")
    path.mkdir(parents=True, exist_ok=True)
    return path


def slow_demo_config() -> str:
    head, tail = CICD_YML.split("test:\n  stage: test\n  needs: [build]\n", 1)
    _script, rest = tail.split("\n\n", 1)
    return f"{head}test:\n  stage: test\n  needs: [build]\n{SLOW_TEST_SCRIPT}\n{rest}"


@pytest.fixture
def demo(tmp_path, settings):
    """The demo repository (pipelines.demo) with the slow test job, registered as `demo`, with
    a protected production environment."""
    settings.CONVEYOR_MIRRORS_DIR = tmp_path / "mirrors"
    path = tmp_path / "demo-repo"
    demo_repository_ensure(path=path)
    (path / ".cicd.yml").write_text(slow_demo_config())
    subprocess.run(["git", "commit", "--quiet", "-am", "A slower test job"], cwd=path, check=True)
    repository = Repository.objects.create(name="demo", clone_url=str(path), is_private=True)
    pipeline = Pipeline.objects.create(repository=repository, name="default")
    Environment.objects.create(
        repository=repository, name="production", protected=True, required_approvals=1, allow_self_approval=True
    )
    return pipeline


@pytest.fixture
def person(demo):
    """A maintainer of the demo who may approve deploys (the approve_deployment permission)."""
    from django.contrib.auth.models import Permission

    user = get_user_model().objects.create_user("grace", password=PASSWORD)
    user.user_permissions.add(Permission.objects.get(codename="approve_deployment"))
    RepositoryMembership.objects.create(repository=demo.repository, user=user, role=Role.MAINTAINER)
    return user


@pytest.fixture
def server(harness, tmp_path, settings):
    static_root = tmp_path / "static"
    env = {**os.environ, "STATIC_ROOT": str(static_root)}
    collected = subprocess.run(
        [sys.executable, "manage.py", "collectstatic", "--noinput", "-v", "0"],
        cwd=ROOT,
        env={k: v for k, v in env.items() if not k.startswith("PYTEST_")},
        capture_output=True,
        text=True,
    )
    assert collected.returncode == 0, collected.stderr
    original_env = harness.env

    def env_with_static(**extra):
        # The server decrypts what this process stored (repository secrets): the same key,
        # whatever SECRET_KEY the harness gives it.
        key = {"CONVEYOR_ENCRYPTION_KEY": settings.CONVEYOR_ENCRYPTION_KEY}
        return original_env(STATIC_ROOT=str(static_root), **{**key, **extra})

    harness.env = env_with_static
    return harness.server()


@pytest.fixture
def browser(monkeypatch):
    from playwright.sync_api import sync_playwright

    # Playwright's sync API keeps an event loop in this thread; the test's own ORM reads are
    # plain synchronous queries between browser steps (Django's documented escape hatch).
    monkeypatch.setenv("DJANGO_ALLOW_ASYNC_UNSAFE", "true")

    with sync_playwright() as playwright:
        chromium = playwright.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
        yield chromium
        chromium.close()


def test_a_person_runs_the_demo_watches_it_live_approves_the_deploy_and_retries_a_job(
    demo,
    person,
    server,
    harness,
    browser,
) -> None:
    runner = harness.runner("browser")
    page = browser.new_page(viewport={"width": 1400, "height": 900})
    page.set_default_timeout(WAIT_MS)
    problems: list[str] = []
    page.on("pageerror", lambda error: problems.append(str(error)))

    # Log in on Conveyor's own page (not the admin's: grace is not staff).
    page.goto(f"{server.url}/")
    assert page.url.startswith(f"{server.url}/login/")
    page.fill("input[name=username]", "grace")
    page.fill("input[name=password]", PASSWORD)
    page.click("button[type=submit]")
    page.wait_for_url(f"{server.url}/")

    # Statuses come over the WebSocket: the JSON endpoints the pages poll when it is down are
    # refused here, so whatever updates below came through the socket.
    polled: list[str] = []

    def refuse_poll(route) -> None:
        polled.append(route.request.url)
        route.abort()

    page.route("**/status.json*", refuse_poll)

    # Run the pipeline from the repository page.
    page.click("text=Repositories")
    page.click("a[href='/repositories/demo/']")
    page.click("[data-role=run-pipeline]")
    page.fill("textarea[name=variables]", "GREETING=hello")
    page.click("button:has-text('Run pipeline')")
    page.wait_for_url("**/runs/*/")
    run = PipelineRun.objects.get(pipeline=demo)
    assert page.url == f"{server.url}/runs/{run.pk}/"

    # The graph: a column per stage, a box per job, the `needs` edges drawn.
    stages = page.locator(".graph-stage").all_inner_texts()
    assert [s.strip().lower() for s in stages] == ["build", "test", "security", "deploy"]
    assert page.locator(".graph-job").count() == 6
    assert page.locator("path.graph-edge[data-from=build][data-to=test]").count() == 1
    assert page.locator("path.graph-edge[data-from=deploy-staging][data-to=deploy-production]").count() == 1

    # The graph follows the run over the run's socket without a reload: build goes green, test
    # starts running (and the page is still the one loaded above: the marker survives).
    page.wait_for_selector("#graph[data-live=websocket]")
    page.evaluate("window.loadedOnce = true")
    page.wait_for_selector(".graph-job[data-name=build].job-success")
    page.wait_for_selector(".graph-job[data-name=test].job-running")
    page.wait_for_selector("tr[data-job] [data-role=job-status].status-running")
    assert page.evaluate("window.loadedOnce === true"), "the run page reloaded instead of updating"
    assert polled == [], polled

    # The test job's page follows its log live over the WebSocket while the job runs.
    page.click(".graph-job[data-name=test]")
    page.wait_for_url("**/jobs/*/")
    assert page.locator(".log[data-live]").count() >= 1, "the step was not running when the page loaded"
    page.wait_for_selector(".log-line:has-text('progress 2 of 12')")
    test_job = Job.objects.get(run=run, name="test", retried=False)
    assert test_job.status == JobStatus.RUNNING, "the line arrived live, while the job still ran"
    page.screenshot(path=str(artifacts_dir() / "job-page-live.png"), full_page=True)
    page.wait_for_selector(".log-line:has-text('progress 12 of 12')")
    wait_until(
        lambda: Job.objects.get(pk=test_job.pk).status == JobStatus.SUCCESS,
        timeout=120,
        what="the test job to succeed",
        diagnose=runner.output,
    )
    page.reload()
    page.wait_for_selector("h1 [data-role=job-status].status-success")
    assert "Ran 3 tests" in page.inner_text(".job-log")  # the finished log, rendered by the server

    # Back on the run page: the run waits for the production deploy's approval.
    # The page follows the run's status by itself (it reloads when the run's status changes).
    page.goto(f"{server.url}/runs/{run.pk}/")
    wait_until(lambda: PipelineRun.objects.get(pk=run.pk).status == RunStatus.BLOCKED, timeout=120, what="BLOCKED")
    page.wait_for_selector("h1 [data-role=run-status].status-blocked")
    page.click("[data-role=approve]")
    wait_until(
        lambda: PipelineRun.objects.get(pk=run.pk).status == RunStatus.SUCCESS,
        timeout=120,
        what="the run to succeed after the approval",
        diagnose=runner.output,
    )
    page.wait_for_selector("h1 [data-role=run-status].status-success")
    page.wait_for_load_state()
    page.wait_for_selector(".graph-job[data-name=deploy-production].job-success")
    page.screenshot(path=str(artifacts_dir() / "run-page.png"), full_page=True)

    # Retry a job: a new attempt, queued, on its own page.
    page.click("tr:has(a:text-is('lint')) [data-role=retry-job]")
    page.wait_for_url("**/jobs/*/")
    assert "attempt 2" in page.inner_text("main")
    assert Job.objects.get(run=run, name="lint", retried=False).attempt == 2

    # The runs list follows the run over its own socket while the new attempt runs.
    page.goto(f"{server.url}/runs/")
    page.wait_for_selector("table.runs[data-live=websocket]")
    page.wait_for_selector(f'tr[data-run="{run.pk}"] [data-role=run-status].status-success')
    assert polled == [], polled

    # The production environment's history names the approval: who, and when.
    page.click("text=Environments")
    page.click("a:text-is('production')")
    page.wait_for_url("**/environments/*/")
    assert "Approve by grace" in page.locator("[data-role=decision]").first.inner_text()

    assert problems == [], problems
