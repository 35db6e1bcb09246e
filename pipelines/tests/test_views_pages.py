"""The dashboard's repository pages (pipelines.views_pages): repositories and their
pipelines, the Run pipeline form, schedules, webhook deliveries, environments, API tokens."""

from __future__ import annotations

import json

import pytest
from django.test import Client
from django.urls import reverse

from pipelines.api_tokens import api_token_authenticate
from pipelines.models import (
    ApiToken,
    DeliveryStatus,
    PipelineSchedule,
    Repository,
    RepositoryMembership,
    WebhookDelivery,
)
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


# --- An environment's page: its deployment history.


def _production(people):
    from runs.models import Environment

    return Environment.objects.get(repository=people.repository, name="production")


@pytest.mark.parametrize("role", ROLES)
def test_an_environments_page_shows_its_deployments_to_those_who_see_the_repository(people, role) -> None:
    environment = _production(people)
    listed = people.client(role).get(reverse("runs:environments")).content.decode()
    response = people.client(role).get(reverse("runs:environment", args=[environment.pk]))
    assert (reverse("runs:environment", args=[environment.pk]) in listed) is SEES[role]
    assert response.status_code == (200 if SEES[role] else 404)


def test_an_environments_page_says_who_deployed_what_and_who_approved_when(people) -> None:
    from runs.models import Deployment, DeploymentStatus

    environment = _production(people)
    waiting = Deployment.objects.get(environment=environment, status=DeploymentStatus.WAITING)
    earlier = waiting.previous
    Deployment.objects.filter(pk=earlier.pk).update(status=DeploymentStatus.ROLLED_BACK)
    html = people.client("viewer").get(reverse("runs:environment", args=[environment.pk])).content.decode()
    approval = waiting.approvals.get()
    rows = html.split('<tr data-deployment="')[1:]
    assert [row.split('"', 1)[0] for row in rows] == [str(waiting.pk), str(earlier.pk)]  # newest first
    assert "Approve by <strong>grace</strong>" in rows[0]
    assert approval.created_at.strftime("%Y-%m-%d") in rows[0]
    assert "main is green" in rows[0]
    assert earlier.run.commit_sha[:8] in rows[1] and "ada" in rows[1]
    assert "Rolled back" in rows[1]
    assert reverse("runs:run", args=[waiting.run_id]) in rows[0]


def test_an_environments_page_pages_through_its_history(people) -> None:
    from pipelines.views_pages import DEPLOYMENTS_PER_PAGE
    from runs.models import Deployment, Job

    environment = _production(people)
    run = people.tree.run
    for n in range(DEPLOYMENTS_PER_PAGE):
        job = Job.objects.create(run=run, name=f"deploy-{n}", stage="deploy", stage_index=2)
        Deployment.objects.create(environment=environment, run=run, job=job, status="SKIPPED")
    client = people.client("viewer")
    url = reverse("runs:environment", args=[environment.pk])
    first = client.get(url).content.decode()
    second = client.get(url, {"page": 2}).content.decode()
    assert first.count("<tr data-deployment=") == DEPLOYMENTS_PER_PAGE
    assert second.count("<tr data-deployment=") == 2
    assert "Page 1 of 2" in first and "?page=2" in first


@pytest.mark.parametrize("extra", [0, 6])
def test_an_environments_page_query_count_does_not_depend_on_the_number_of_deployments(
    people, django_assert_num_queries, extra: int
) -> None:
    from runs.models import Approval, Deployment, Job

    environment = _production(people)
    run = people.tree.run
    for n in range(extra):
        job = Job.objects.create(run=run, name=f"deploy-{n}", stage="deploy", stage_index=2)
        deployment = Deployment.objects.create(environment=environment, run=run, job=job, status="SUCCEEDED")
        Approval.objects.create(deployment=deployment, job=job, username="ada", decision="approve")
    client = people.client("viewer")
    url = reverse("runs:environment", args=[environment.pk])
    client.get(url)
    # session, user, environment, current deployment, count, the page, their decisions
    with django_assert_num_queries(7):
        client.get(url)


# --- Members of a repository, edited on its page.


def _members_html(people, role) -> str:
    return people.client(role).get(reverse("runs:repository", args=[people.repository.name])).content.decode()


@pytest.mark.parametrize("role", ROLES)
def test_members_are_listed_to_the_repositorys_people_and_editable_by_maintainers(people, role) -> None:
    response = people.client(role).get(reverse("runs:repository", args=[people.repository.name]))
    if not SEES[role]:
        assert response.status_code == 404
        return
    html = response.content.decode()
    assert 'id="members"' in html
    assert people["developer"].username in html
    assert ('data-role="add-member"' in html) is MAINTAINS[role]
    assert ('data-role="remove-member"' in html) is MAINTAINS[role]


def test_a_public_repositorys_members_are_not_listed_to_people_without_a_role(people) -> None:
    Repository.objects.filter(pk=people.repository.pk).update(is_private=False)
    html = _members_html(people, "outsider")
    assert 'id="members"' not in html


def _add(people, role, username, new_role="developer", *, client=None):
    return (client or people.client(role)).post(
        reverse("runs:member-add", args=[people.repository.name]), {"username": username, "role": new_role}
    )


@pytest.mark.parametrize("role", ROLES)
def test_only_maintainers_add_members(people, role) -> None:
    from django.contrib.auth import get_user_model

    newcomer = get_user_model().objects.create_user(f"newcomer-{role}")
    response = _add(people, role, newcomer.username)
    added = RepositoryMembership.objects.filter(repository=people.repository, user=newcomer).first()
    assert response.status_code == (302 if MAINTAINS[role] else 403 if SEES[role] else 404)
    assert (added is not None) is MAINTAINS[role]
    if added:
        assert added.role == "developer"
        assert response["Location"].endswith("#members")


def test_adding_an_unknown_user_or_a_member_twice_or_a_bad_role_says_why(people) -> None:
    client = people.client("maintainer")
    unknown = _add(people, "maintainer", "nobody-at-all", client=client)
    assert unknown.status_code == 302
    assert "no active user" in client.get(unknown["Location"]).content.decode()
    twice = _add(people, "maintainer", people["viewer"].username, client=client)
    assert "a member of" in client.get(twice["Location"]).content.decode()
    assert RepositoryMembership.objects.get(repository=people.repository, user=people["viewer"]).role == "viewer"
    bad_role = _add(people, "maintainer", people["outsider"].username, new_role="owner", client=client)
    assert "role: one of viewer, developer, maintainer" in client.get(bad_role["Location"]).content.decode()
    assert not RepositoryMembership.objects.filter(user=people["outsider"]).exists()


def test_a_maintainer_changes_a_role_and_removes_a_member_and_both_are_audited(people) -> None:
    from audit.models import AuditEvent

    client = people.client("maintainer")
    viewer = RepositoryMembership.objects.get(repository=people.repository, user=people["viewer"])
    name = people.repository.name
    client.post(reverse("runs:member-role", args=[name, viewer.pk]), {"role": "developer"})
    viewer.refresh_from_db()
    assert viewer.role == "developer"
    client.post(reverse("runs:member-remove", args=[name, viewer.pk]))
    assert not RepositoryMembership.objects.filter(pk=viewer.pk).exists()
    events = list(
        AuditEvent.objects.filter(repository=people.repository, action__startswith="membership.").order_by("at", "id")
    )
    assert [(e.action, e.actor, e.details.get("previous_role")) for e in events] == [
        ("membership.save", people["maintainer"].username, "viewer"),
        ("membership.delete", people["maintainer"].username, None),
    ]


@pytest.mark.parametrize("role", ["viewer", "developer"])
def test_people_who_do_not_maintain_cannot_change_or_remove_members(people, role) -> None:
    membership = RepositoryMembership.objects.get(repository=people.repository, user=people["maintainer"])
    client = people.client(role)
    name = people.repository.name
    assert client.post(reverse("runs:member-role", args=[name, membership.pk]), {"role": "viewer"}).status_code == 403
    assert client.post(reverse("runs:member-remove", args=[name, membership.pk])).status_code == 403
    membership.refresh_from_db()
    assert membership.role == "maintainer"


def test_the_last_maintainer_can_be_neither_removed_nor_demoted(people) -> None:
    membership = RepositoryMembership.objects.get(repository=people.repository, user=people["maintainer"])
    client = people.client("maintainer")
    name = people.repository.name
    removed = client.post(reverse("runs:member-remove", args=[name, membership.pk]))
    demoted = client.post(reverse("runs:member-role", args=[name, membership.pk]), {"role": "viewer"})
    membership.refresh_from_db()
    assert membership.role == "maintainer"
    assert "needs a maintainer" in client.get(removed["Location"]).content.decode()
    assert demoted.status_code == 302

    # With a second maintainer, the first may step down.
    _add(people, "maintainer", people["outsider"].username, new_role="maintainer")
    stepped_down = client.post(reverse("runs:member-role", args=[name, membership.pk]), {"role": "viewer"})
    membership.refresh_from_db()
    assert membership.role == "viewer"
    assert stepped_down["Location"].endswith("#members")


def test_a_member_of_another_repository_is_a_404_here(people) -> None:
    other = make_pipeline("elsewhere").repository
    theirs = RepositoryMembership.objects.create(repository=other, user=people["outsider"], role="viewer")
    url = reverse("runs:member-remove", args=[people.repository.name, theirs.pk])
    assert people.client("maintainer").post(url).status_code == 404
    assert RepositoryMembership.objects.filter(pk=theirs.pk).exists()


def test_the_member_forms_need_a_csrf_token(people) -> None:
    client = Client(enforce_csrf_checks=True)
    client.force_login(people["maintainer"])
    response = client.post(
        reverse("runs:member-add", args=[people.repository.name]), {"username": "x", "role": "viewer"}
    )
    assert response.status_code == 403


def test_staff_who_may_edit_memberships_in_the_admin_may_here_too(people) -> None:
    from django.contrib.auth import get_user_model
    from django.contrib.auth.models import Permission

    staff = get_user_model().objects.create_user("operator", is_staff=True)
    client = Client()
    client.force_login(staff)
    url = reverse("runs:member-add", args=[people.repository.name])
    assert client.post(url, {"username": people["outsider"].username, "role": "viewer"}).status_code == 403
    staff.user_permissions.add(Permission.objects.get(codename="change_repositorymembership"))
    staff = get_user_model().objects.get(pk=staff.pk)
    client.force_login(staff)
    assert client.post(url, {"username": people["outsider"].username, "role": "viewer"}).status_code == 302
    assert RepositoryMembership.objects.filter(repository=people.repository, user=people["outsider"]).exists()


# --- Redelivering a webhook delivery from its page.


@pytest.mark.parametrize("role", ROLES)
def test_only_maintainers_redeliver_a_delivery(people, role, django_capture_on_commit_callbacks) -> None:
    delivery = WebhookDelivery.objects.get(repository=people.repository)
    WebhookDelivery.objects.filter(pk=delivery.pk).update(status=DeliveryStatus.FAILED)
    with django_capture_on_commit_callbacks(execute=False) as callbacks:
        response = people.client(role).post(reverse("runs:delivery-redeliver", args=[delivery.pk]))
    delivery.refresh_from_db()
    assert response.status_code == (302 if MAINTAINS[role] else 404)
    assert (delivery.status == DeliveryStatus.QUEUED) is MAINTAINS[role]
    assert bool(callbacks) is MAINTAINS[role]  # the processing task, sent after commit


def test_the_delivery_page_offers_redeliver_unless_it_is_being_processed(people) -> None:
    delivery = WebhookDelivery.objects.get(repository=people.repository)
    client = people.client("maintainer")
    url = reverse("runs:delivery", args=[delivery.pk])
    WebhookDelivery.objects.filter(pk=delivery.pk).update(status=DeliveryStatus.DONE)
    assert 'data-role="redeliver"' in client.get(url).content.decode()
    WebhookDelivery.objects.filter(pk=delivery.pk).update(status=DeliveryStatus.PROCESSING)
    assert 'data-role="redeliver"' not in client.get(url).content.decode()
    response = client.post(reverse("runs:delivery-redeliver", args=[delivery.pk]))
    assert "being processed" in client.get(response["Location"]).content.decode()
    delivery.refresh_from_db()
    assert delivery.status == DeliveryStatus.PROCESSING


def test_a_redelivery_processes_the_stored_delivery_again(
    forge, forge_people, settings, django_capture_on_commit_callbacks
) -> None:
    from pipelines.tests import webhook_payloads as p

    settings.CELERY_TASK_ALWAYS_EAGER = True
    payload = p.github_push(after=forge.sha, full_name=forge.repository.forge_project)
    delivery = WebhookDelivery.objects.create(
        repository=forge.repository,
        provider="github",
        delivery_id="redeliver-me",
        event="push",
        body=json.dumps(payload),
        content_type="application/json",
        status=DeliveryStatus.FAILED,
        error_message="the repository was unreachable",
    )
    client = forge_people.client("maintainer")
    with django_capture_on_commit_callbacks(execute=True):
        client.post(reverse("runs:delivery-redeliver", args=[delivery.pk]))
    delivery.refresh_from_db()
    assert delivery.status == DeliveryStatus.DONE
    assert list(delivery.runs.values_list("commit_sha", flat=True)) == [forge.sha]
