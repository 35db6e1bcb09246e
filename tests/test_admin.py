"""The admin: every Conveyor model has working pages, lists do not leak secrets or do N+1 queries."""

from __future__ import annotations

import hashlib

import pytest
from django.apps import apps
from django.contrib import admin
from django.db import connection
from django.test.utils import CaptureQueriesContext
from django.urls import reverse

from pipelines.models import (
    ApiToken,
    Pipeline,
    PipelineSchedule,
    Repository,
    RepositoryMembership,
    TriggerToken,
    Variable,
)
from runners.models import RegistrationToken, Runner
from runs.admin import pipeline_graph_html
from runs.models import DeployFreeze, Environment, PipelineNotifications
from tests.builders import RunTree, make_run_tree

pytestmark = pytest.mark.django_db

CONVEYOR_APPS = ["pipelines", "runs", "runners", "logs", "artifacts", "audit"]
CONVEYOR_MODELS = [model for label in CONVEYOR_APPS for model in apps.get_app_config(label).get_models()]


SEARCHABLE_MODELS = [m for m in CONVEYOR_MODELS if m in admin.site._registry and admin.site._registry[m].search_fields]


def _id(model) -> str:
    return model._meta.label


def _instance(model):
    """A row of `model` (the tree fixture made one of each)."""
    return model._default_manager.order_by("pk").first()


def _admin_url(model, view: str, *args) -> str:
    return reverse(f"admin:{model._meta.app_label}_{model._meta.model_name}_{view}", args=args)


@pytest.fixture
def tree() -> RunTree:
    return make_run_tree()


def test_every_conveyor_model_is_in_the_admin() -> None:
    missing = [model._meta.label for model in CONVEYOR_MODELS if model not in admin.site._registry]
    assert missing == []


@pytest.mark.parametrize("model", CONVEYOR_MODELS, ids=_id)
def test_changelist_shows_rows_to_a_superuser(admin_client, tree: RunTree, model) -> None:
    response = admin_client.get(_admin_url(model, "changelist"))
    assert response.status_code == 200
    assert response.context["cl"].result_count >= 1


@pytest.mark.parametrize("model", SEARCHABLE_MODELS, ids=_id)
def test_changelist_search_works(admin_client, tree: RunTree, model) -> None:
    response = admin_client.get(_admin_url(model, "changelist"), {"q": "main"})
    assert response.status_code == 200


@pytest.mark.parametrize("model", CONVEYOR_MODELS, ids=_id)
def test_change_page_renders_for_a_superuser(admin_client, tree: RunTree, model) -> None:
    obj = _instance(model)
    response = admin_client.get(_admin_url(model, "change", obj.pk))
    assert response.status_code == 200
    assert str(obj) in response.content.decode()


@pytest.mark.parametrize("model", CONVEYOR_MODELS, ids=_id)
def test_changelist_query_count_does_not_grow_with_rows(admin_client, tree: RunTree, model) -> None:
    url = _admin_url(model, "changelist")
    admin_client.get(url)  # warm the session and content types
    with CaptureQueriesContext(connection) as few:
        admin_client.get(url)
    make_run_tree()
    make_run_tree()
    with CaptureQueriesContext(connection) as many:
        admin_client.get(url)
    assert len(many) == len(few), [q["sql"] for q in many.captured_queries]


CONFIGURATION_MODELS = [
    Repository,
    Pipeline,
    RegistrationToken,
    PipelineSchedule,
    TriggerToken,
    Environment,
    DeployFreeze,
    PipelineNotifications,
    RepositoryMembership,
    ApiToken,
    Variable,
]


@pytest.mark.parametrize("model", CONFIGURATION_MODELS, ids=_id)
def test_add_page_renders_for_configuration_models(admin_client, model) -> None:
    assert admin_client.get(_admin_url(model, "add")).status_code == 200


def test_runs_jobs_and_logs_cannot_be_added_or_edited_in_the_admin(admin_client, tree: RunTree) -> None:
    for model in CONVEYOR_MODELS:
        if model in CONFIGURATION_MODELS:
            continue
        assert admin_client.get(_admin_url(model, "add")).status_code == 403, model._meta.label
    response = admin_client.post(_admin_url(tree.run.__class__, "change", tree.run.pk), {"status": "SUCCESS"})
    assert response.status_code == 403
    tree.run.refresh_from_db()
    assert tree.run.status == "RUNNING"


def test_run_page_shows_the_job_inline_and_the_pipeline_graph(admin_client, tree: RunTree) -> None:
    response = admin_client.get(_admin_url(tree.run.__class__, "change", tree.run.pk))
    html = response.content.decode()
    assert "Pipeline graph" in html
    assert 'class="cv-graph"' in html
    # One column per stage, in stage order.
    assert html.index("<h4>build</h4>") < html.index("<h4>test</h4>") < html.index("<h4>deploy</h4>")
    assert "needs <span>lint</span>, <span>test</span>" in html
    assert "(stage order)" in html
    assert 'class="cv-job cv-status-running"' in html
    assert reverse("admin:runs_job_change", args=[tree.jobs["test"].pk]) in html
    # The read-only job inline lists every job.
    inline = response.context["inline_admin_formsets"][0]
    assert {form.original.name for form in inline} == {"build", "lint", "test", "deploy"}


def test_pipeline_graph_takes_two_queries(django_assert_num_queries, tree: RunTree) -> None:
    with django_assert_num_queries(2):
        pipeline_graph_html(tree.run)


def test_pipeline_graph_escapes_job_names() -> None:
    tree = make_run_tree(job_names={"lint": "<script>alert(1)</script>"})
    html = str(pipeline_graph_html(tree.run))
    assert "<script>" not in html
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in html


def test_pipeline_graph_of_a_run_without_jobs_says_so(tree: RunTree) -> None:
    tree.run.jobs.all().delete()
    assert "No jobs." in str(pipeline_graph_html(tree.run))


def test_job_page_lists_needs_and_steps_with_links_to_their_logs(admin_client, tree: RunTree) -> None:
    job = tree.jobs["build"]
    html = admin_client.get(_admin_url(job.__class__, "change", job.pk)).content.decode()
    assert "echo build" in html
    log_link = reverse("admin:logs_steplog_changelist") + f"?step__id__exact={tree.step.pk}"
    assert log_link in html
    response = admin_client.get(log_link)
    assert response.status_code == 200
    assert list(response.context["cl"].result_list) == [tree.log]

    deploy = tree.jobs["deploy"]
    html = admin_client.get(_admin_url(deploy.__class__, "change", deploy.pk)).content.decode()
    assert "Needs (explicit" in html
    assert str(tree.jobs["lint"]) in html


def test_repository_list_never_shows_the_webhook_secret(admin_client, tree: RunTree) -> None:
    repository = tree.run.pipeline.repository
    listing = admin_client.get(_admin_url(Repository, "changelist")).content.decode()
    assert repository.webhook_secret not in listing
    # The change page shows it (read-only): it is needed to configure the forge's webhook.
    page = admin_client.get(_admin_url(Repository, "change", repository.pk)).content.decode()
    assert repository.webhook_secret in page


def test_runner_pages_show_status_and_tags_but_never_the_token_hash(admin_client, tree: RunTree) -> None:
    runner = tree.runner
    listing = admin_client.get(_admin_url(Runner, "changelist")).content.decode()
    page = admin_client.get(_admin_url(Runner, "change", runner.pk)).content.decode()
    for html in (listing, page):
        assert runner.token_hash not in html
        assert "token_hash" not in html
    assert "linux, docker" in listing
    assert 'alt="True"' in listing  # online
    token = tree.registration_token
    for html in (
        admin_client.get(_admin_url(RegistrationToken, "changelist")).content.decode(),
        admin_client.get(_admin_url(RegistrationToken, "change", token.pk)).content.decode(),
    ):
        assert token.token_hash not in html


def test_adding_a_registration_token_shows_it_once_and_stores_only_its_hash(admin_client, admin_user) -> None:
    response = admin_client.post(
        _admin_url(RegistrationToken, "add"), {"description": "build farm", "tags": "linux,arm64"}, follow=True
    )
    assert response.status_code == 200
    [message] = [str(m) for m in response.context["messages"] if "Registration token" in str(m)]
    token = message.rsplit(" ", 1)[-1]
    row = RegistrationToken.objects.get()
    assert row.description == "build farm"
    assert row.tags == ["arm64", "linux"]
    assert row.created_by == admin_user
    assert row.token_hash == hashlib.sha256(token.encode()).hexdigest()
    assert token not in admin_client.get(_admin_url(RegistrationToken, "change", row.pk)).content.decode()


def test_revoke_action_revokes_runners(admin_client, tree: RunTree) -> None:
    response = admin_client.post(
        _admin_url(Runner, "changelist"),
        {"action": "revoke", "_selected_action": [str(tree.runner.pk)]},
        follow=True,
    )
    assert response.status_code == 200
    tree.runner.refresh_from_db()
    assert tree.runner.revoked_at is not None
    assert tree.runner.token_hash is None
