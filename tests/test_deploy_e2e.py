"""End to end: `deploy:` jobs run by a real `manage.py runner` subprocess (trusted mode, shell
executor) against the fake Kubernetes API server (runners/tests/k8s_apps_fake.py, real HTTP and
the real `kubernetes` client), from real git repositories, with deployments recorded by the
server and notifications posted to a local Slack stand-in.

The runner finds the cluster through CONVEYOR_DEPLOY_KUBECONFIG and sends its notifications
itself (CELERY_TASK_ALWAYS_EAGER), since no Celery worker runs here. Every wait is a wait-until
with a generous deadline.
"""

from __future__ import annotations

import itertools
import textwrap
from pathlib import Path

import pytest
from django.contrib.auth.models import User

from logs.selectors import log_text
from pipelines.models import Pipeline, Repository, Trigger
from pipelines.services import run_trigger
from runners.tests.k8s_apps_fake import Behaviour, FakeCluster
from runners.tests.test_deploy_rollout import Smoke
from runs.deployments import deployment_approve, deployment_redeploy
from runs.models import Deployment, DeploymentStatus, Environment, JobStatus, PipelineRun, RunStatus, Step, StepKind
from runs.tests.test_notifications import FakeSlack
from tests.test_runner_e2e import Harness, assert_run_ends, current, describe, run_status, wait_until

pytestmark = [pytest.mark.django_db(transaction=True), pytest.mark.slow]

V1 = "registry.test/shop/web:1.0"
# Generous: a loaded machine starts runner processes slowly. Nothing asserts on time.
TIMEOUT = 120.0
_numbers = itertools.count(1)

ROLLING = """
stages: [test, deploy]
unit:
  stage: test
  script: echo "unit tests pass"
deploy-staging:
  stage: deploy
  environment: staging
  script: echo "deploying $CI_COMMIT_SHORT_SHA"
  deploy:
    namespace: shop
    deployment: web
    image: registry.test/shop/web:$CI_COMMIT_SHORT_SHA
    rollout_timeout: 2m
"""


@pytest.fixture
def cluster():
    with FakeCluster() as fake:
        fake.add_deployment("shop", "web", image=V1, replicas=2)
        yield fake


@pytest.fixture
def smoke():
    server = Smoke()
    yield server
    server.server.shutdown()
    server.server.server_close()


@pytest.fixture
def slack():
    fake = FakeSlack()
    yield fake
    fake.server.shutdown()
    fake.server.server_close()


@pytest.fixture
def harness(tmp_path: Path, cluster):
    kubeconfig = tmp_path / "kubeconfig"
    kubeconfig.write_text(
        textwrap.dedent(
            f"""\
            apiVersion: v1
            kind: Config
            clusters: [{{name: fake, cluster: {{server: "{cluster.url}"}}}}]
            users: [{{name: deployer, user: {{token: not-a-real-token}}}}]
            contexts: [{{name: fake, context: {{cluster: fake, user: deployer}}}}]
            current-context: fake
            """
        )
    )
    harness = Harness(tmp_path)
    harness.kubeconfig = kubeconfig
    yield harness
    harness.close()


def runner(harness: Harness, name: str):
    return harness.runner(
        name,
        CONVEYOR_DEPLOY_KUBECONFIG=str(harness.kubeconfig),
        CELERY_TASK_ALWAYS_EAGER="true",
        CONVEYOR_BASE_URL="https://ci.example.test",
    )


class Project:
    """A git repository with a pipeline; `push(config)` commits and runs it."""

    def __init__(self, make_git_repo) -> None:
        self.make_git_repo = make_git_repo
        self.path, _ = make_git_repo({"README.md": "shop\n"})
        repository = Repository.objects.create(name=f"deploy-e2e-{next(_numbers)}", clone_url=str(self.path))
        self.pipeline = Pipeline.objects.create(repository=repository, name="default")

    def push(self, config: str, *, message: str = "Change") -> PipelineRun:
        self.make_git_repo({".cicd.yml": textwrap.dedent(config)}, path=self.path, message=message)
        run = run_trigger(pipeline=self.pipeline, ref="main", trigger=Trigger.PUSH, triggered_by="e2e")
        assert run.status in RunStatus.ACTIVE, run.error_message
        return run

    def environment(self, name: str, **fields) -> Environment:
        """Set up before the first deploy to it (a deploy creates an unprotected one)."""
        return Environment.objects.create(repository=self.pipeline.repository, name=name, **fields)


@pytest.fixture
def project(make_git_repo, settings, tmp_path):
    settings.CONVEYOR_MIRRORS_DIR = tmp_path / "mirrors"
    return Project(make_git_repo)


def deploy_log(run: PipelineRun, name: str) -> str:
    return log_text(step=Step.objects.get(job=current(run, name), kind=StepKind.DEPLOY))


def deployment(run: PipelineRun) -> Deployment:
    return Deployment.objects.get(run=run, job=current(run, next(iter(job_names(run)))))


def job_names(run: PipelineRun) -> list[str]:
    return [name for name in current_names(run) if name.startswith("deploy")]


def current_names(run: PipelineRun) -> list[str]:
    return list(run.jobs.filter(retried=False).order_by("name").values_list("name", flat=True))


def test_staging_deploys_after_the_tests_pass_with_a_healthy_rolling_update(harness, cluster, project, slack):
    project.environment("staging", slack_webhook_url=slack.url)
    run = project.push(ROLLING)
    image = f"registry.test/shop/web:{run.commit_sha[:8]}"
    worker = runner(harness, "deployer")

    assert_run_ends(run, RunStatus.SUCCESS, runners=[worker], timeout=TIMEOUT)

    assert cluster.image_of("shop", "web") == image
    assert cluster.rolled_out("shop", "web")
    record = deployment(run)
    assert (record.status, record.image, record.environment.name) == (DeploymentStatus.SUCCEEDED, image, "staging")
    assert record.started_at >= current(run, "unit").finished_at
    log = deploy_log(run, "deploy-staging")
    assert f"Rolling update of deployment shop/web to {image}" in log
    assert 'deployment "web" successfully rolled out' in log
    (text,) = wait_until(lambda: slack.texts, what="the Slack notification", timeout=TIMEOUT)
    assert "to *staging* succeeded" in text and f"`{image}`" in text


def test_a_crash_looping_image_is_rolled_back_and_recorded_and_announced(harness, cluster, project, slack):
    project.environment("staging", slack_webhook_url=slack.url)
    run = project.push(ROLLING)
    image = f"registry.test/shop/web:{run.commit_sha[:8]}"
    cluster.behave(image, Behaviour.CRASH_LOOP)
    worker = runner(harness, "crasher")

    assert_run_ends(run, RunStatus.FAILURE, runners=[worker], timeout=TIMEOUT)

    job = current(run, "deploy-staging")
    assert job.status == JobStatus.FAILURE
    assert job.status_reason.startswith("deploy rolled back: ")
    assert "CrashLoopBackOff" in job.status_reason
    record = deployment(run)
    assert record.status == DeploymentStatus.ROLLED_BACK
    assert cluster.image_of("shop", "web") == V1
    assert "Rolling back deployment shop/web to revision 1" in deploy_log(run, "deploy-staging")
    (text,) = wait_until(lambda: slack.texts, what="the Slack notification", timeout=TIMEOUT)
    assert "to *staging* failed and was rolled back" in text
    assert "CrashLoopBackOff" in text


BLUE_GREEN = """
deploy-production:
  stage: deploy
  environment: production
  script: echo "switching colours"
  deploy:
    namespace: shop
    deployment: web
    image: registry.test/shop/web:$CI_COMMIT_SHORT_SHA
    strategy: blue-green
    service: web
    smoke_test:
      url: {smoke}
      retries: 0
    rollout_timeout: 2m
"""


@pytest.fixture
def blue_live(cluster):
    cluster.add_deployment("shop", "web-blue", image=V1, labels={"app": "shop", "color": "blue"}, ports=[8080])
    cluster.add_service("shop", "web", selector={"app": "shop", "color": "blue"})
    return cluster


def test_a_blue_green_deploy_switches_the_service_once_green_passes_its_smoke_test(harness, blue_live, project, smoke):
    smoke.answer("/green/healthz", 200)
    run = project.push(BLUE_GREEN.format(smoke=smoke.url("/{color}/healthz")))
    worker = runner(harness, "blue-green")

    assert_run_ends(run, RunStatus.SUCCESS, runners=[worker], timeout=TIMEOUT)

    assert blue_live.get("services", "shop", "web")["spec"]["selector"]["color"] == "green"
    assert blue_live.image_of("shop", "web-green") == f"registry.test/shop/web:{run.commit_sha[:8]}"
    assert blue_live.get("deployments", "shop", "web-blue") is None
    assert smoke.hits == ["/green/healthz"]
    assert deployment(run).status == DeploymentStatus.SUCCEEDED


def test_a_failed_blue_green_deploy_never_switches_the_service(harness, blue_live, project, smoke):
    smoke.answer("/green/healthz", 500)
    run = project.push(BLUE_GREEN.format(smoke=smoke.url("/{color}/healthz")))
    worker = runner(harness, "blue-green-fails")

    assert_run_ends(run, RunStatus.FAILURE, runners=[worker], timeout=TIMEOUT)

    assert blue_live.get("services", "shop", "web")["spec"]["selector"]["color"] == "blue"
    assert not any(method == "PATCH" and "/services/" in path for method, path, _ in blue_live.requests)
    assert blue_live.get("deployments", "shop", "web-green") is None
    assert blue_live.image_of("shop", "web-blue") == V1
    assert deployment(run).status == DeploymentStatus.ROLLED_BACK
    assert "service shop/web still selects color=blue" in current(run, "deploy-production").status_reason


PRODUCTION = """
deploy-production:
  stage: deploy
  environment: production
  script: echo "to production"
  deploy:
    namespace: shop
    deployment: web
    image: registry.test/shop/web:$CI_COMMIT_SHORT_SHA
    rollout_timeout: 2m
"""


def test_production_waits_for_approval_and_a_redeploy_rolls_back_to_an_earlier_image(harness, cluster, project):
    approver = User.objects.create_superuser(username="grace", password="x")
    operator = User.objects.create_superuser(username="ops", password="x")
    project.environment("production", protected=True)
    first = project.push(PRODUCTION, message="First")
    worker = runner(harness, "production")

    wait_until(
        lambda: run_status(first) == RunStatus.BLOCKED,
        what="the deploy to wait",
        timeout=TIMEOUT,
        diagnose=lambda: describe(first),
    )
    assert current(first, "deploy-production").status_reason == "awaiting approval (0 of 1) to deploy to production"
    assert cluster.image_of("shop", "web") == V1
    deployment_approve(deployment=deployment(first), user=approver, comment="go")
    assert_run_ends(first, RunStatus.SUCCESS, runners=[worker], timeout=TIMEOUT)
    first_image = f"registry.test/shop/web:{first.commit_sha[:8]}"
    assert cluster.image_of("shop", "web") == first_image

    second = project.push(PRODUCTION.replace("to production", "to production, again"), message="Second")
    wait_until(lambda: run_status(second) == RunStatus.BLOCKED, what="the second deploy to wait", timeout=TIMEOUT)
    deployment_approve(deployment=deployment(second), user=approver)
    assert_run_ends(second, RunStatus.SUCCESS, runners=[worker], timeout=TIMEOUT)
    assert cluster.image_of("shop", "web") == f"registry.test/shop/web:{second.commit_sha[:8]}"

    redeploy = deployment_redeploy(deployment=deployment(first), user=operator)
    assert current_names(redeploy) == ["deploy-production"]  # nothing is built again
    wait_until(
        lambda: run_status(redeploy) == RunStatus.BLOCKED, what="the redeploy to wait for approval", timeout=TIMEOUT
    )
    deployment_approve(deployment=deployment(redeploy), user=approver, comment="roll back")
    assert_run_ends(redeploy, RunStatus.SUCCESS, runners=[worker], timeout=TIMEOUT)

    assert cluster.image_of("shop", "web") == first_image
    record = deployment(redeploy)
    assert (record.status, record.image, record.redeploy_of) == (
        DeploymentStatus.SUCCEEDED,
        first_image,
        deployment(first),
    )
    assert record.previous == deployment(second)
