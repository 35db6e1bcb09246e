"""The dashboard's repository pages (pipelines.views_pages): repositories and their
pipelines, the Run pipeline form, schedules, webhook deliveries, environments, API tokens."""

from __future__ import annotations

import pytest
from django.test import Client
from django.urls import reverse

from pipelines.api_tokens import api_token_authenticate
from pipelines.models import ApiToken, PipelineSchedule, Repository, WebhookDelivery
from runs.models import PipelineRun, RunStatus
from tests.access import MAINTAINS, ROLES, RUNS, SEES, make_people
from tests.builders import make_pipeline, make_run_tree, make_runs

pytestmark = pytest.mark.django_db


@pytest.mark.parametrize("role", ROLES)
def test_the_repositories_page_lists_a_private_repository_only_to_those_who_see_it(people, role) -> None:
    Repository.objects.create(name="everyones", clone_url="/x", is_private=False)
    html = people.client(role).get(reverse("runs:repositories")).content.decode()
    assert (f'href="/repositories/{people.repository.name}/"' in html) is SEES[role]
    assert 'href="/repositories/everyones/"' in html


def test_the_repositories_page_shows_each_pipelines_latest_run_and_the_users_role(people) -> None:
    html = people.client("developer").get(reverse("runs:repositories")).content.decode()
    latest = PipelineRun.objects.filter(pipeline__repository=people.repository).order_by("-created_at").first()
    assert reverse("runs:run", args=[latest.pk]) in html
    assert "Developer" in html


@pytest.mark.parametrize("count", [1, 8])
def test_the_repositories_page_query_count_does_not_depend_on_the_number_of_repositories(
    admin_client, django_assert_num_queries, count: int
) -> None:
    for n in range(count):
        make_runs(make_pipeline(f"repo-{n}"), 2)
    admin_client.get(reverse("runs:repositories"))
    with django_assert_num_queries(4):  # session, user, repositories, pipelines with their latest runs
        admin_client.get(reverse("runs:repositories"))


@pytest.mark.parametrize("role", ROLES)
def test_a_repository_page_is_a_404_to_outsiders_and_offers_run_pipeline_to_developers(people, role) -> None:
    response = people.client(role).get(reverse("runs:repository", args=[people.repository.name]))
    assert response.status_code == (200 if SEES[role] else 404)
    if SEES[role]:
        html = response.content.decode()
        assert ('data-role="run-pipeline"' in html) is RUNS[role]
        assert ("Webhook deliveries" in html) is MAINTAINS[role]
        assert f"/badges/{people.repository.name}/main.svg" in html


def test_a_missing_repository_and_a_hidden_one_get_the_same_answer(people) -> None:
    client = people.client("outsider")
    hidden = client.get(reverse("runs:repository", args=[people.repository.name]))
    missing = client.get(reverse("runs:repository", args=["no-such-repository"]))
    assert hidden.status_code == missing.status_code == 404


# --- The Run pipeline form, against a real git repository.


@pytest.fixture
def forge_people(forge):
    return make_people(forge.repository)


def _run_url(forge) -> str:
    return reverse("runs:pipeline-run", args=[forge.repository.name, forge.pipeline.pk])


@pytest.mark.parametrize("role", ROLES)
def test_the_run_pipeline_form_is_for_developers(forge, forge_people, role) -> None:
    response = forge_people.client(role).get(_run_url(forge))
    assert response.status_code == (200 if RUNS[role] else 403 if SEES[role] else 404)


def test_running_a_pipeline_from_the_form_starts_a_manual_run_with_the_variables(forge, forge_people) -> None:
    developer = forge_people["developer"]
    response = forge_people.client("developer").post(
        _run_url(forge), {"ref": "main", "variables": "GREETING=hello\nDEPLOY=1"}
    )
    run = PipelineRun.objects.get(pipeline=forge.pipeline)
    assert response.status_code == 302
    assert response["Location"] == reverse("runs:run", args=[run.pk])
    assert run.trigger == "MANUAL" and run.commit_sha == forge.sha
    assert run.triggered_by_user == developer
    assert run.variables["GREETING"] == "hello"
    assert run.variables["DEPLOY"] == "1"


def test_the_run_pipeline_form_says_what_is_wrong_with_an_unknown_branch(forge, forge_people) -> None:
    response = forge_people.client("developer").post(_run_url(forge), {"ref": "no-such-branch", "variables": ""})
    assert response.status_code == 200
    assert "no-such-branch" in response.content.decode()
    assert not PipelineRun.objects.filter(pipeline=forge.pipeline).exists()


def test_the_run_pipeline_form_refuses_malformed_variables(forge, forge_people) -> None:
    response = forge_people.client("developer").post(_run_url(forge), {"ref": "main", "variables": "not a pair"})
    assert "write NAME=value" in response.content.decode()
    assert not PipelineRun.objects.filter(pipeline=forge.pipeline).exists()


def test_a_viewer_posting_the_form_starts_nothing(forge, forge_people) -> None:
    response = forge_people.client("viewer").post(_run_url(forge), {"ref": "main", "variables": ""})
    assert response.status_code == 403
    assert not PipelineRun.objects.filter(pipeline=forge.pipeline).exists()


# --- Schedules, deliveries, environments.


@pytest.mark.parametrize("role", ROLES)
def test_the_schedules_page_lists_a_private_repositorys_schedules_only_to_those_who_see_it(people, role) -> None:
    schedule = PipelineSchedule.objects.filter(pipeline__repository=people.repository).first()
    html = people.client(role).get(reverse("runs:schedules")).content.decode()
    assert (schedule.description in html) is SEES[role]


@pytest.mark.parametrize("role", ROLES)
def test_webhook_deliveries_are_shown_to_maintainers_only(people, role) -> None:
    delivery = WebhookDelivery.objects.get(repository=people.repository)
    client = people.client(role)
    listed = client.get(reverse("runs:deliveries")).content.decode()
    assert (reverse("runs:delivery", args=[delivery.pk]) in listed) is MAINTAINS[role]
    detail = client.get(reverse("runs:delivery", args=[delivery.pk]))
    assert detail.status_code == (200 if MAINTAINS[role] else 404)


def test_a_delivery_page_shows_its_body_and_the_runs_it_started(people) -> None:
    delivery = WebhookDelivery.objects.get(repository=people.repository)
    html = people.client("maintainer").get(reverse("runs:delivery", args=[delivery.pk])).content.decode()
    assert "refs/heads/main" in html
    assert reverse("runs:run", args=[people.tree.run.pk]) in html


@pytest.mark.parametrize("count", [1, 5])
def test_the_deliveries_page_query_count_does_not_depend_on_the_number_of_deliveries(
    admin_client, django_assert_num_queries, count: int
) -> None:
    for _ in range(count):
        make_run_tree()
    admin_client.get(reverse("runs:deliveries"))
    with django_assert_num_queries(4):  # session, user, count, the page (run counts joined)
        admin_client.get(reverse("runs:deliveries"))


@pytest.mark.parametrize("role", ROLES)
def test_the_environments_page_shows_what_runs_where_to_those_who_see_it(people, role) -> None:
    html = people.client(role).get(reverse("runs:environments")).content.decode()
    assert ("registry.test/acme/web:" in html) is SEES[role]


def test_the_environments_page_query_count_is_constant(admin_client, django_assert_num_queries) -> None:
    make_run_tree()
    admin_client.get(reverse("runs:environments"))
    with django_assert_num_queries(3):
        admin_client.get(reverse("runs:environments"))


# --- API tokens.


def test_a_user_creates_a_token_sees_it_once_and_can_revoke_it(people) -> None:
    client = people.client("viewer")
    html = client.post(reverse("runs:tokens"), {"description": "my laptop"}).content.decode()
    token = html.split('data-role="new-token">', 1)[1].split("<", 1)[0]
    assert token.startswith("cvp_")
    assert api_token_authenticate(token=token).user == people["viewer"]
    assert token not in client.get(reverse("runs:tokens")).content.decode()
    row = ApiToken.objects.get(user=people["viewer"], description="my laptop")
    assert client.post(reverse("runs:token-revoke", args=[row.pk])).status_code == 302
    row.refresh_from_db()
    assert row.revoked_at is not None


def test_nobody_revokes_someone_elses_token(people) -> None:
    from pipelines.api_tokens import api_token_create

    row, _ = api_token_create(user=people["viewer"], description="theirs")
    assert people.client("developer").post(reverse("runs:token-revoke", args=[row.pk])).status_code == 404
    row.refresh_from_db()
    assert row.revoked_at is None


def test_every_dashboard_page_needs_a_login() -> None:
    client = Client()
    for name in ("runs:list", "runs:repositories", "runs:runners", "runs:schedules", "runs:deliveries", "runs:tokens"):
        response = client.get(reverse(name))
        assert response.status_code == 302 and response["Location"].startswith("/login/"), name


def test_the_run_status_of_a_finished_run_says_finished(admin_client) -> None:
    (run,) = make_runs(make_pipeline(), 1)
    data = admin_client.get(reverse("runs:run-status", args=[run.pk])).json()
    assert data["run"] == {"id": str(run.pk), "status": RunStatus.SUCCESS, "duration_s": 83.0, "finished": True}


def test_text_filters_that_the_database_cannot_compare_are_400s(admin_client) -> None:
    assert admin_client.get(reverse("runs:deliveries"), {"repository": "a\x00b"}).status_code == 400
    badge = reverse("runs:badge", kwargs={"repository": "acme", "branch": "main"})
    make_pipeline("acme")
    assert admin_client.get(badge, {"pipeline": "\x00"}).status_code == 400
