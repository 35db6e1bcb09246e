"""The REST API (/api/v1/): visibility and roles on every endpoint, token authentication,
filters, triggering, cancelling and retrying, logs, lint, the schema and bad input."""

from __future__ import annotations

import json
from datetime import timedelta

import pytest
from django.test import Client
from django.utils import timezone

from logs.models import StepLog
from pipelines.api_tokens import api_token_create, api_token_revoke
from pipelines.models import ApiToken
from runs.models import Job, JobStatus, PipelineRun, RunStatus, Step, StepStatus
from tests.access import ROLES, RUNS, SEES, make_people
from tests.builders import make_pipeline, make_run_tree, make_runs

pytestmark = pytest.mark.django_db


def bearer(user, description: str = "test") -> Client:
    _row, token = api_token_create(user=user, description=description)
    return Client(HTTP_AUTHORIZATION=f"Bearer {token}")


def detail_urls(tree) -> dict[str, str]:
    deployment = tree.jobs["deploy"].deployment
    return {
        "repository": f"/api/v1/repositories/{tree.run.pipeline.repository.name}/",
        "pipeline": f"/api/v1/pipelines/{tree.run.pipeline_id}/",
        "run": f"/api/v1/runs/{tree.run.pk}/",
        "job": f"/api/v1/jobs/{tree.jobs['build'].pk}/",
        "step": f"/api/v1/steps/{tree.step.pk}/",
        "step log": f"/api/v1/steps/{tree.step.pk}/log/",
        "job log": f"/api/v1/jobs/{tree.jobs['build'].pk}/log/",
        "artifact": f"/api/v1/artifacts/{tree.artifact.pk}/",
        "environment": f"/api/v1/environments/{deployment.environment_id}/",
        "deployment": f"/api/v1/deployments/{deployment.pk}/",
        "approval": f"/api/v1/approvals/{deployment.approvals.first().pk}/",
    }


LISTS = {
    "repositories": "name",
    "pipelines": "id",
    "runs": "id",
    "jobs": "id",
    "steps": "id",
    "artifacts": "id",
    "environments": "id",
    "deployments": "id",
    "approvals": "id",
    "schedules": "id",
}


@pytest.mark.parametrize("role", ROLES)
def test_every_detail_endpoint_is_a_404_to_outsiders_and_a_200_to_those_who_see(people, role) -> None:
    client = bearer(people[role])
    for name, url in detail_urls(people.tree).items():
        assert client.get(url).status_code == (200 if SEES[role] else 404), (name, url)


@pytest.mark.parametrize("role", ROLES)
def test_every_list_holds_the_private_repositorys_rows_only_for_those_who_see_it(people, role) -> None:
    client = bearer(people[role])
    for name in LISTS:
        response = client.get(f"/api/v1/{name}/", {"page_size": 200})
        assert response.status_code == 200, name
        repository_rows = [row for row in response.json()["results"] if _of_repository(name, row, people)]
        assert bool(repository_rows) is SEES[role], name


def _of_repository(name: str, row: dict, people) -> bool:
    repository = people.repository
    if name == "repositories":
        return row["name"] == repository.name
    if name in {"pipelines", "runs", "environments", "schedules"}:
        return row.get("repository") == repository.name
    model = {"jobs": Job, "steps": Step, "deployments": None, "approvals": None, "artifacts": None}[name]
    if model is Job:
        return Job.objects.filter(pk=row["id"], run__pipeline__repository=repository).exists()
    if model is Step:
        return Step.objects.filter(pk=row["id"], job__run__pipeline__repository=repository).exists()
    return True  # the tree's deployments, approvals and artifacts are all of the private repository


def test_anonymous_requests_get_401_or_403_and_no_data() -> None:
    response = Client().get("/api/v1/runs/")
    assert response.status_code in {401, 403}
    assert "results" not in response.json()


def test_a_wrong_revoked_or_expired_token_is_a_401(people) -> None:
    assert Client(HTTP_AUTHORIZATION="Bearer cvp_nope").get("/api/v1/runs/").status_code == 401
    assert Client(HTTP_AUTHORIZATION="Bearer").get("/api/v1/runs/").status_code == 401
    row, token = api_token_create(user=people["viewer"], description="old")
    api_token_revoke(token=row)
    assert Client(HTTP_AUTHORIZATION=f"Bearer {token}").get("/api/v1/runs/").status_code == 401
    row, token = api_token_create(user=people["viewer"], description="expired")
    ApiToken.objects.filter(pk=row.pk).update(expires_at=timezone.now() - timedelta(seconds=1))
    assert Client(HTTP_AUTHORIZATION=f"Bearer {token}").get("/api/v1/runs/").status_code == 401


def test_tokens_are_stored_hashed_and_record_their_use(people) -> None:
    row, token = api_token_create(user=people["viewer"], description="ci")
    assert token not in {row.token_hash, row.hint} and row.hint == token[:8]
    Client(HTTP_AUTHORIZATION=f"Bearer {token}").get("/api/v1/runs/")
    row.refresh_from_db()
    assert row.last_used_at is not None


def test_the_session_works_too_with_csrf_for_writes(people) -> None:
    client = Client(enforce_csrf_checks=True)
    client.force_login(people["developer"])
    assert client.get("/api/v1/runs/").status_code == 200
    assert client.post(f"/api/v1/runs/{people.tree.run.pk}/cancel/").status_code == 403
    people.tree.run.refresh_from_db()
    assert people.tree.run.status == RunStatus.RUNNING


def test_the_repositories_list_tells_the_callers_role(people) -> None:
    rows = bearer(people["developer"]).get("/api/v1/repositories/").json()["results"]
    assert {row["name"]: row["role"] for row in rows}[people.repository.name] == "developer"
    assert "clone_url" not in rows[0] and "webhook_secret" not in rows[0]


def test_the_run_detail_has_the_graph_with_stages_and_needs_edges(people) -> None:
    data = bearer(people["viewer"]).get(f"/api/v1/runs/{people.tree.run.pk}/").json()
    assert [stage["name"] for stage in data["stages"]] == ["build", "test", "deploy"]
    assert {(e["source"], e["target"]) for e in data["edges"]} == {
        ("build", "test"),
        ("test", "deploy"),
        ("lint", "deploy"),
    }
    assert data["status"] == "RUNNING" and data["repository"] == people.repository.name


def test_the_runs_list_filters(admin_client) -> None:
    (failed,) = make_runs(make_pipeline("api-filters"), 1)
    PipelineRun.objects.filter(pk=failed.pk).update(status=RunStatus.FAILURE, branch="dev")
    make_runs(make_pipeline("api-filters"), 1)
    rows = admin_client.get("/api/v1/runs/", {"repository": "api-filters", "status": "FAILURE", "branch": "dev"}).json()
    assert [row["id"] for row in rows["results"]] == [str(failed.pk)]


@pytest.mark.parametrize(
    ("url", "query"),
    [
        ("/api/v1/runs/", {"status": "NOPE"}),
        ("/api/v1/runs/", {"trigger": "push"}),
        ("/api/v1/runs/", {"pipeline": "one"}),
        ("/api/v1/jobs/", {"run": "not-a-uuid"}),
        ("/api/v1/jobs/", {"status": "DONE"}),
        ("/api/v1/steps/", {"job": "zzz"}),
        ("/api/v1/artifacts/", {"run": "1"}),
        ("/api/v1/deployments/", {"environment": "x"}),
        ("/api/v1/approvals/", {"deployment": "x"}),
        ("/api/v1/runs/", {"page_size": "lots"}),
        ("/api/v1/runs/", {"branch": "nul\x00"}),
        ("/api/v1/pipelines/", {"repository": "nul\x00"}),
        ("/api/v1/environments/", {"repository": "nul\x00"}),
    ],
)
def test_bad_filters_are_400s_with_a_message(admin_client, url, query) -> None:
    response = admin_client.get(url, query)
    assert response.status_code in {400, 200}  # page_size is clamped to the default by DRF
    if response.status_code == 400:
        assert response.json()


def test_unknown_ids_and_pages_are_404s(admin_client) -> None:
    assert admin_client.get("/api/v1/runs/00000000-0000-0000-0000-000000000000/").status_code == 404
    assert admin_client.get("/api/v1/runs/not-a-uuid/").status_code == 404
    assert admin_client.get("/api/v1/runs/", {"page": 999}).status_code == 404
    assert admin_client.get("/api/v1/steps/00000000-0000-0000-0000-000000000000/log/").status_code == 404


# --- Writes.


@pytest.mark.parametrize("role", ROLES)
def test_cancelling_a_run_through_the_api_needs_a_developer(people, role) -> None:
    response = bearer(people[role]).post(f"/api/v1/runs/{people.tree.run.pk}/cancel/")
    assert response.status_code == (200 if RUNS[role] else 403 if SEES[role] else 404)
    people.tree.run.refresh_from_db()
    assert (people.tree.run.status == RunStatus.CANCELLED) is RUNS[role]


@pytest.mark.parametrize("role", ROLES)
def test_retrying_a_job_through_the_api_needs_a_developer(people, role) -> None:
    build = people.tree.jobs["build"]
    response = bearer(people[role]).post(f"/api/v1/jobs/{build.pk}/retry/")
    assert response.status_code == (201 if RUNS[role] else 403 if SEES[role] else 404)
    if RUNS[role]:
        assert response.json()["attempt"] == 2 and response.json()["status"] == "QUEUED"


def test_retrying_a_running_job_is_a_409(people) -> None:
    response = bearer(people["developer"]).post(f"/api/v1/jobs/{people.tree.jobs['test'].pk}/retry/")
    assert response.status_code == 409
    assert "cannot be retried" in response.json()["detail"]


def test_retrying_a_run_retries_its_failed_jobs(people) -> None:
    run = people.tree.run
    Job.objects.filter(run=run).exclude(name="build").update(status=JobStatus.SUCCESS)
    Job.objects.filter(run=run, name="build").update(status=JobStatus.FAILURE)
    PipelineRun.objects.filter(pk=run.pk).update(status=RunStatus.FAILURE, finished_at=timezone.now())
    client = bearer(people["developer"])
    assert client.post(f"/api/v1/runs/{run.pk}/retry/").status_code == 200
    assert Job.objects.get(run=run, name="build", retried=False).attempt == 2
    assert client.post(f"/api/v1/runs/{run.pk}/retry/").status_code == 409  # nothing failed any more


def test_playing_a_manual_job_through_the_api_queues_it(people) -> None:
    deploy = people.tree.jobs["deploy"]
    Job.objects.filter(pk=deploy.pk).update(status=JobStatus.MANUAL)
    response = bearer(people["developer"]).post(f"/api/v1/jobs/{deploy.pk}/play/")
    assert response.status_code == 200 and response.json()["status"] == "QUEUED"


@pytest.fixture
def forge_people(forge):
    return make_people(forge.repository)


def test_triggering_a_run_through_the_api_creates_it_with_the_variables(forge, forge_people) -> None:
    response = bearer(forge_people["developer"]).post(
        "/api/v1/runs/",
        {"repository": forge.repository.name, "ref": "main", "variables": {"GREETING": "hi", "N": 3}},
        content_type="application/json",
    )
    assert response.status_code == 201, response.content
    run = PipelineRun.objects.get(pk=response.json()["id"])
    assert run.trigger == "MANUAL" and run.variables["GREETING"] == "hi" and run.variables["N"] == "3"
    assert run.variables["CI_PIPELINE_SOURCE"] == "api"
    assert response.json()["stages"]


@pytest.mark.parametrize("role", ROLES)
def test_triggering_needs_a_developer_and_outsiders_learn_nothing(forge, forge_people, role) -> None:
    response = bearer(forge_people[role]).post(
        "/api/v1/runs/", {"repository": forge.repository.name, "ref": "main"}, content_type="application/json"
    )
    assert response.status_code == (201 if RUNS[role] else 403 if SEES[role] else 404)


@pytest.mark.parametrize(
    "body",
    [
        b"not json",
        b"[1, 2]",
        json.dumps({"repository": "x"}).encode(),
        json.dumps({"repository": "", "ref": "main"}).encode(),
        json.dumps({"repository": "web", "ref": "\x01"}).encode(),
        json.dumps({"repository": "web", "ref": "main", "variables": "A=1"}).encode(),
        json.dumps({"repository": "web", "ref": "main", "variables": {"1BAD": "x"}}).encode(),
        json.dumps({"repository": "web", "ref": "main", "variables": {"A": {"nested": 1}}}).encode(),
        json.dumps({"repository": "web", "ref": "main", "variables": {f"V{n}": "x" for n in range(101)}}).encode(),
        json.dumps({"repository": "web", "ref": "x" * 300}).encode(),
        '{"repository": "\ud800"}'.encode("utf-8", "surrogatepass"),
    ],
)
def test_a_malformed_trigger_is_a_400(forge, forge_people, body) -> None:
    response = bearer(forge_people["developer"]).post("/api/v1/runs/", body, content_type="application/json")
    assert response.status_code == 400, response.content
    assert not PipelineRun.objects.filter(pipeline=forge.pipeline).exists()


def test_triggering_an_unknown_branch_is_a_400_that_says_so(forge, forge_people) -> None:
    response = bearer(forge_people["developer"]).post(
        "/api/v1/runs/", {"repository": forge.repository.name, "ref": "nope"}, content_type="application/json"
    )
    assert response.status_code == 400 and "nope" in json.dumps(response.json())


# --- Logs.


def test_a_steps_log_is_read_from_an_offset_until_it_is_complete(people) -> None:
    step = people.tree.step  # its first chunk: "$ echo build\nbuild\n" (19 bytes)
    client = bearer(people["viewer"])
    first = client.get(f"/api/v1/steps/{step.pk}/log/")
    assert first.content.decode() == "$ echo build\nbuild\n"
    assert first["X-Log-End"] == "19" and first["X-Log-Complete"] == "true"
    assert client.get(f"/api/v1/steps/{step.pk}/log/", {"offset": 13}).content.decode() == "build\n"
    assert client.get(f"/api/v1/steps/{step.pk}/log/", {"offset": "x"}).status_code == 400
    assert client.get(f"/api/v1/steps/{step.pk}/log/", {"offset": -1}).status_code == 400


def test_a_running_steps_log_is_not_complete(people) -> None:
    step = Step.objects.get(job=people.tree.jobs["test"], index=0)
    Step.objects.filter(pk=step.pk).update(status=StepStatus.RUNNING)
    StepLog.objects.create(step=step, offset=0, content="running\n", size=8)
    response = bearer(people["viewer"]).get(f"/api/v1/steps/{step.pk}/log/")
    assert response.content == b"running\n" and response["X-Log-Complete"] == "false"


def test_a_jobs_log_is_its_steps_logs_as_text(people) -> None:
    response = bearer(people["viewer"]).get(f"/api/v1/jobs/{people.tree.jobs['build'].pk}/log/")
    assert response.status_code == 200
    assert b"".join(response.streaming_content) == b"$ echo build\nbuild\n"


# --- Runners.


@pytest.mark.parametrize("role", ROLES)
def test_runners_show_the_running_jobs_the_caller_may_see(people, role) -> None:
    rows = bearer(people[role]).get("/api/v1/runners/").json()["results"]
    runner = next(row for row in rows if row["name"] == people.tree.runner.name)
    assert runner["is_online"] is True
    assert bool(runner["current_jobs"]) is SEES[role]


# --- Query counts.


@pytest.mark.parametrize("count", [1, 6])
@pytest.mark.parametrize(
    ("url", "queries"),
    [
        # Token (with its user), count, the page (names joined); + one prefetch where rows nest.
        ("/api/v1/runs/", 3),
        ("/api/v1/jobs/", 3),
        ("/api/v1/steps/", 3),
        ("/api/v1/artifacts/", 3),
        ("/api/v1/repositories/", 4),  # + the caller's roles
        ("/api/v1/pipelines/", 3),
        ("/api/v1/runners/", 4),
        ("/api/v1/deployments/", 3),
        ("/api/v1/environments/", 3),
        ("/api/v1/approvals/", 3),
    ],
)
def test_api_list_query_counts_do_not_depend_on_the_number_of_rows(
    django_assert_num_queries, count: int, url: str, queries: int
) -> None:
    from django.contrib.auth import get_user_model

    for _ in range(count):
        make_run_tree()
    # Staff see every row, and their roles are still looked up (a superuser's are not).
    client = bearer(get_user_model().objects.create_user("counter", password="x", is_staff=True))
    client.get(url)  # the token's last_used_at is written on the first use only
    with django_assert_num_queries(queries):
        assert client.get(url).status_code == 200


# --- Lint.

VALID = """
stages: [build, test]
build:
  stage: build
  script: make
test:
  stage: test
  needs: [build]
  script: make test
lint:
  stage: test
  script: make lint
"""


def test_lint_answers_the_jobs_and_what_each_waits_for(admin_client) -> None:
    data = admin_client.post("/api/v1/lint/", VALID, content_type="application/yaml").json()
    assert data["errors"] == []
    assert data["stages"] == [".pre", "build", "test", ".post"]
    waits = {job["name"]: job["needs"] for job in data["jobs"]}
    assert waits == {"build": [], "test": ["build"], "lint": ["build"]}


def test_lint_takes_json_with_a_ref_and_an_event(admin_client) -> None:
    config = VALID + "only-mr:\n  script: x\n  rules:\n    - if: $CI_PIPELINE_SOURCE == 'merge_request_event'\n"
    push = admin_client.post("/api/v1/lint/", {"config": config}, content_type="application/json").json()
    mr = admin_client.post(
        "/api/v1/lint/", {"config": config, "event": "merge_request_event"}, content_type="application/json"
    ).json()
    assert "only-mr" not in {job["name"] for job in push["jobs"]}
    assert "only-mr" in {job["name"] for job in mr["jobs"]}


def test_lint_reports_every_error_as_lint_config_does(admin_client) -> None:
    config = "stages: [build]\nbuild:\n  stage: nowhere\n  script: x\ntest:\n  needs: [ghost]\n  script: y\n"
    data = admin_client.post("/api/v1/lint/", config, content_type="text/plain").json()
    assert data["jobs"] == [] and len(data["errors"]) >= 2
    assert any("nowhere" in error for error in data["errors"])


@pytest.mark.parametrize(
    ("body", "content_type"),
    [
        (b"", "text/plain"),
        (b"\xff\xfe not utf-8", "text/plain"),
        (b"{{{{", "application/yaml"),
        (b"- a\n- b\n", "application/yaml"),
        (b"a: &x [*x]\n", "application/yaml"),
        (b"include: other.yml\n", "application/yaml"),
        (b"\x00", "text/plain"),
        (b"{}", "application/json"),
        (b'{"config": 1}', "application/json"),
        (b'{"config": "x: 1", "event": "nope"}', "application/json"),
        (b"[", "application/json"),
        (("a:\n" + "  " * 500 + "b: 1\n").encode(), "application/yaml"),
        (("[" * 5000).encode(), "application/yaml"),
    ],
)
def test_lint_never_answers_a_500(admin_client, body, content_type) -> None:
    response = admin_client.post("/api/v1/lint/", body, content_type=content_type)
    assert response.status_code in {200, 400}, response.content
    if response.status_code == 200:
        assert response.json()["errors"]


def test_lint_refuses_a_config_over_the_size_limit(admin_client, settings) -> None:
    settings.CONVEYOR_MAX_CONFIG_BYTES = 1024
    response = admin_client.post("/api/v1/lint/", "# " + "x" * 2000, content_type="text/plain")
    assert response.status_code == 400


# --- Schema and docs.


def test_the_openapi_schema_describes_every_endpoint(admin_client) -> None:
    response = admin_client.get("/api/v1/schema/", HTTP_ACCEPT="application/vnd.oai.openapi+json")
    assert response.status_code == 200
    paths = json.loads(response.content)["paths"]
    for expected in ("/api/v1/runs/", "/api/v1/runs/{id}/cancel/", "/api/v1/jobs/{id}/retry/", "/api/v1/lint/"):
        assert expected in paths
    assert "apiToken" in json.loads(response.content)["components"]["securitySchemes"]


def test_the_docs_page_loads_swagger_ui_from_this_server_only(admin_client) -> None:
    response = admin_client.get("/api/v1/docs/")
    assert response.status_code == 200
    html = response.content.decode()
    assert "swagger-ui" in html
    assert "cdn" not in html.lower() and "https://" not in html.split("<body", 1)[1].split("</body>", 1)[0]
