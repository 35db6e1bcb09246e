"""Manual runs ("Run pipeline" in the admin) and API runs with a pipeline trigger token."""

from __future__ import annotations

import hashlib
import json

import pytest

from pipelines import services
from pipelines.models import Trigger, TriggerToken
from runs.models import PipelineRun

pytestmark = pytest.mark.django_db

CONFIG = """
build:
  script: echo "$CI_PIPELINE_SOURCE"
api-only:
  script: echo api
  rules:
    - if: $CI_PIPELINE_SOURCE == "api"
web-only:
  script: echo web
  rules:
    - if: $CI_PIPELINE_SOURCE == "web"
deploy:
  script: echo deploy
  rules:
    - if: $DEPLOY == "yes"
"""


@pytest.fixture
def pipeline(forge):
    forge.commit({".cicd.yml": CONFIG})
    return forge.pipeline


@pytest.fixture
def token(pipeline, admin_user) -> str:
    _, token = services.trigger_token_create(pipeline=pipeline, description="release script", user=admin_user)
    return token


def trigger(client, pipeline_id, body=None, *, token=None, form=False):
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    if form:
        from urllib.parse import urlencode

        return client.post(
            f"/api/pipelines/{pipeline_id}/trigger/",
            data=urlencode(body or {}),
            content_type="application/x-www-form-urlencoded",
            headers=headers,
        )
    return client.post(
        f"/api/pipelines/{pipeline_id}/trigger/",
        data=json.dumps(body or {}),
        content_type="application/json",
        headers=headers,
    )


def names(run: PipelineRun) -> list[str]:
    return sorted(run.jobs.values_list("name", flat=True))


def test_an_api_run_with_a_trigger_token_is_created_with_its_variables(client, pipeline, token, admin_user):
    response = trigger(client, pipeline.pk, {"ref": "main", "variables": {"DEPLOY": "yes"}}, token=token)

    assert response.status_code == 201, response.content
    run = PipelineRun.objects.get(pk=response.json()["id"])
    assert response.json()["number"] == run.number
    assert (run.trigger, run.branch, run.triggered_by_user) == (Trigger.MANUAL, "main", admin_user)
    assert run.triggered_by == "api: release script"
    assert names(run) == ["api-only", "build", "deploy"]
    # Jobs see the source too: it is kept with the run's variables.
    assert run.variables == {"CI_PIPELINE_SOURCE": "api", "DEPLOY": "yes"}
    assert TriggerToken.objects.get().last_used_at is not None


def test_the_token_and_variables_may_come_form_encoded_as_gitlab_takes_them(client, pipeline, token):
    body = {"token": token, "ref": "main", "variables[DEPLOY]": "yes"}
    response = trigger(client, pipeline.pk, body, form=True)
    assert response.status_code == 201, response.content
    assert names(PipelineRun.objects.get()) == ["api-only", "build", "deploy"]


@pytest.mark.parametrize(
    ("body", "sent", "status", "message"),
    [
        ({"ref": "main"}, None, 401, "missing or invalid trigger token"),
        ({"ref": "main"}, "cvt_not-a-real-token", 401, "invalid trigger token"),
        ({"ref": "main"}, "glptt-123", 401, "invalid trigger token"),
        ({}, "TOKEN", 400, "'ref'"),
        ({"ref": ""}, "TOKEN", 400, "'ref'"),
        ({"ref": "main", "variables": ["DEPLOY"]}, "TOKEN", 400, "'variables' must be an object"),
        ({"ref": "main", "variables": {"1BAD": "x"}}, "TOKEN", 400, "invalid variable name"),
        ({"ref": "main", "variables": {"OK": {"nested": 1}}}, "TOKEN", 400, "must be a string"),
        ({"ref": "no-such-branch"}, "TOKEN", 400, "no branch or tag named 'no-such-branch'"),
    ],
)
def test_bad_api_calls_get_a_clear_error_and_no_run(client, pipeline, token, body, sent, status, message):
    response = trigger(client, pipeline.pk, body, token=token if sent == "TOKEN" else sent)
    assert response.status_code == status, response.content
    assert message in response.json()["error"]
    assert not PipelineRun.objects.exists()


def test_a_token_works_only_for_its_own_pipeline_and_not_once_revoked(client, pipeline, token, forge):
    from pipelines.models import Pipeline

    other = Pipeline.objects.create(repository=forge.repository, name="other")
    assert trigger(client, other.pk, {"ref": "main"}, token=token).status_code == 401
    services.trigger_token_revoke(token=TriggerToken.objects.get())
    assert trigger(client, pipeline.pk, {"ref": "main"}, token=token).status_code == 401
    assert not PipelineRun.objects.exists()


def test_a_huge_api_body_is_refused(client, pipeline, token):
    response = trigger(client, pipeline.pk, {"ref": "main", "padding": "x" * 100_000}, token=token)
    assert response.status_code == 413


def test_workflow_rules_that_filter_an_api_run_out_say_so(client, forge, token, pipeline):
    forge.commit({".cicd.yml": "workflow:\n  rules:\n    - if: $CI_COMMIT_TAG\njob:\n  script: x\n"})
    response = trigger(client, pipeline.pk, {"ref": "main"}, token=token)
    assert response.status_code == 400
    assert "workflow rules" in response.json()["error"]


# --- The admin.


def test_adding_a_trigger_token_in_the_admin_shows_it_once_and_stores_only_its_hash(admin_client, pipeline):
    response = admin_client.post(
        "/admin/pipelines/triggertoken/add/", {"pipeline": pipeline.pk, "description": "deploy bot"}, follow=True
    )
    assert response.status_code == 200
    [message] = [str(m) for m in response.context["messages"] if "Trigger token" in str(m)]
    token = message.rsplit(" ", 1)[-1]
    row = TriggerToken.objects.get()
    assert row.token_hash == hashlib.sha256(token.encode()).hexdigest()
    assert token not in admin_client.get(f"/admin/pipelines/triggertoken/{row.pk}/change/").content.decode()
    assert row.token_hash not in admin_client.get("/admin/pipelines/triggertoken/").content.decode()


def test_run_pipeline_in_the_admin_starts_a_web_run_with_variables(admin_client, pipeline, admin_user):
    url = f"/admin/pipelines/pipeline/{pipeline.pk}/run/"
    page = admin_client.get(url)
    assert page.status_code == 200
    assert 'value="main"' in page.content.decode()

    response = admin_client.post(url, {"ref": "main", "variables": "DEPLOY=yes\n"})

    run = PipelineRun.objects.get()
    assert response.status_code == 302
    assert response["Location"] == f"/admin/runs/pipelinerun/{run.pk}/change/"
    assert (run.trigger, run.triggered_by, run.triggered_by_user) == (Trigger.MANUAL, "admin", admin_user)
    assert names(run) == ["build", "deploy", "web-only"]
    assert run.variables == {"DEPLOY": "yes"}


def test_run_pipeline_in_the_admin_shows_an_unknown_branch_as_a_form_error(admin_client, pipeline):
    response = admin_client.post(f"/admin/pipelines/pipeline/{pipeline.pk}/run/", {"ref": "nope", "variables": ""})
    assert response.status_code == 200
    assert "no branch or tag named" in response.content.decode()
    bad = admin_client.post(f"/admin/pipelines/pipeline/{pipeline.pk}/run/", {"ref": "main", "variables": "NOEQUALS"})
    assert "write NAME=value" in bad.content.decode()
    assert not PipelineRun.objects.exists()


def test_the_pipeline_page_links_to_run_pipeline(admin_client, pipeline):
    page = admin_client.get(f"/admin/pipelines/pipeline/{pipeline.pk}/change/").content.decode()
    assert f"/admin/pipelines/pipeline/{pipeline.pk}/run/" in page


def test_variables_given_with_an_api_run_cannot_change_its_source(client, pipeline, token):
    body = {"ref": "main", "variables": {"CI_PIPELINE_SOURCE": "web"}}
    response = trigger(client, pipeline.pk, body, token=token)
    run = PipelineRun.objects.get(pk=response.json()["id"])
    assert run.variables["CI_PIPELINE_SOURCE"] == "api"
    assert "api-only" in names(run)
    assert "web-only" not in names(run)
