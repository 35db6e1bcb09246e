"""The dashboard's run pages (runs.views): the runs list, a run with its graph, a job with its
steps and live log, runners, badges, live-status JSON and the POST buttons."""

from __future__ import annotations

import re

import pytest
from django.test import Client
from django.urls import reverse

from pipelines.models import Repository, Trigger
from runs.models import Job, JobStatus, PipelineRun, RunStatus
from runs.views import RUNS_PER_PAGE
from tests.access import ROLES, RUNS, SEES
from tests.builders import make_pipeline, make_run_tree, make_runs

pytestmark = pytest.mark.django_db


def test_the_landing_page_sends_anonymous_visitors_to_the_login_page(client) -> None:
    response = client.get("/")
    assert response.status_code == 302
    assert response["Location"] == "/login/?next=/"


def test_people_log_in_on_conveyors_own_page_without_being_staff(people) -> None:
    people["viewer"].set_password("pw")
    people["viewer"].save()
    client = Client()
    page = client.get("/login/")
    assert page.status_code == 200
    response = client.post("/login/", {"username": people["viewer"].username, "password": "pw"})
    assert response.status_code == 302
    assert "#1" in client.get("/").content.decode()


def test_the_runs_list_shows_each_run_with_its_commit_trigger_and_duration(admin_client) -> None:
    (run,) = make_runs(make_pipeline("acme-web"), 1)
    PipelineRun.objects.filter(pk=run.pk).update(commit_message="Fix the greeting")
    html = admin_client.get(reverse("runs:list")).content.decode()
    assert f'href="{reverse("runs:run", args=[run.pk])}">#1</a>' in html
    assert "acme-web</a>/default" in html
    assert run.commit_sha[:8] in html
    assert "Fix the greeting" in html
    assert "ada" in html and "(push)" in html
    assert "1m 23s" in html


def test_the_landing_page_is_the_first_page_of_the_runs_list(admin_client) -> None:
    runs = make_runs(make_pipeline(), RUNS_PER_PAGE + 2)
    shown = list(admin_client.get("/").context["runs"])
    assert shown == sorted(runs, key=lambda run: run.created_at, reverse=True)[:RUNS_PER_PAGE]


def test_the_runs_list_pages_through_older_runs(admin_client) -> None:
    runs = make_runs(make_pipeline(), RUNS_PER_PAGE + 2)
    second = admin_client.get(reverse("runs:list"), {"page": 2})
    assert [r.pk for r in second.context["runs"]] == [r.pk for r in runs[:2][::-1]]
    assert "Page 2 of 2" in second.content.decode()


def test_the_runs_list_filters_by_repository_branch_status_and_trigger(admin_client) -> None:
    web, api = make_pipeline("web"), make_pipeline("api")
    (keep,) = make_runs(web, 1)
    PipelineRun.objects.filter(pk=keep.pk).update(branch="feature/x", status=RunStatus.FAILURE, trigger=Trigger.PR)
    make_runs(web, 1)
    make_runs(api, 1)
    query = {"repository": "web", "branch": "feature/x", "status": "FAILURE", "trigger": "PR"}
    shown = admin_client.get(reverse("runs:list"), query).context["runs"]
    assert [run.pk for run in shown] == [keep.pk]
    assert (
        list(admin_client.get(reverse("runs:list"), {"status": "FAILURE", "repository": "api"}).context["runs"]) == []
    )


@pytest.mark.parametrize("query", [{"status": "NOPE"}, {"trigger": "push"}, {"pipeline": "x1"}, {"branch": "a\x00b"}])
def test_an_invalid_filter_is_a_400_not_a_500(admin_client, query) -> None:
    assert admin_client.get(reverse("runs:list"), query).status_code == 400


@pytest.mark.parametrize("role", ROLES)
def test_the_runs_list_shows_a_private_repositorys_runs_only_to_those_who_see_it(people, role) -> None:
    (public_run,) = make_runs(make_pipeline("public-repo"), 1)
    Repository.objects.filter(name="public-repo").update(is_private=False)
    shown = {run.pk for run in people.client(role).get(reverse("runs:list")).context["runs"]}
    assert (people.tree.run.pk in shown) is SEES[role]
    assert public_run.pk in shown


@pytest.mark.parametrize("count", [1, 12])
def test_the_runs_list_query_count_does_not_depend_on_the_number_of_runs(
    people, django_assert_num_queries, count: int
) -> None:
    make_runs(make_pipeline("acme"), count)
    client = people.client("viewer")
    client.get(reverse("runs:list"))  # warm the session
    # Session, user, count, the page of runs (pipeline and repository joined; visibility as a
    # subquery), the repositories of the filter.
    with django_assert_num_queries(5):
        response = client.get(reverse("runs:list"))
    assert len(response.context["runs"]) == min(RUNS_PER_PAGE, count + 2)


def test_the_runs_list_follows_its_active_runs_over_a_socket_and_can_poll_them(admin_client) -> None:
    runs = make_runs(make_pipeline(), 2)
    PipelineRun.objects.filter(pk=runs[0].pk).update(status=RunStatus.RUNNING, duration_s=None, finished_at=None)
    html = admin_client.get(reverse("runs:list")).content.decode()
    assert f'data-poll="{reverse("runs:list-status")}"' in html
    assert 'data-ws="/ws/runs/"' in html
    assert 'data-role="new-runs" hidden' in html
    data = admin_client.get(reverse("runs:list-status"), {"id": [str(r.pk) for r in runs]}).json()
    assert {row["id"]: row["status"] for row in data["runs"]} == {
        str(runs[0].pk): "RUNNING",
        str(runs[1].pk): "SUCCESS",
    }


def test_the_runs_list_shows_how_long_a_running_run_has_taken_so_far(admin_client) -> None:
    from datetime import timedelta

    from django.utils import timezone

    (run,) = make_runs(make_pipeline(), 1)
    started = timezone.now() - timedelta(minutes=3)
    PipelineRun.objects.filter(pk=run.pk).update(
        status=RunStatus.RUNNING, started_at=started, duration_s=None, finished_at=None
    )
    html = admin_client.get(reverse("runs:list")).content.decode()
    cell = html.split(f'<tr data-run="{run.pk}">', 1)[1].split('data-role="run-duration"', 1)[1].split("</td>", 1)[0]
    elapsed = float(re.search(r'data-elapsed="([0-9.]+)"', cell).group(1))
    assert 180 <= elapsed < 24 * 3600  # counted from its start, not empty while it runs
    assert ">3m " in cell


@pytest.mark.parametrize("role", ROLES)
def test_the_status_poll_tells_only_of_runs_the_user_may_see(people, role) -> None:
    data = people.client(role).get(reverse("runs:list-status"), {"id": str(people.tree.run.pk)}).json()
    assert bool(data["runs"]) is SEES[role]


def test_the_status_poll_refuses_malformed_ids(admin_client) -> None:
    assert admin_client.get(reverse("runs:list-status"), {"id": "not-a-uuid"}).status_code == 400


# --- The run page.


def test_the_run_page_draws_the_graph_by_stage_with_needs_edges_statuses_and_durations(admin_client) -> None:
    tree = make_run_tree()
    html = admin_client.get(reverse("runs:run", args=[tree.run.pk])).content.decode()
    stages = re.findall(r'<div class="graph-stage"[^>]*>([^<]+)</div>', html)
    assert stages == ["build", "test", "deploy"]
    edges = set(re.findall(r'data-from="([^"]+)" data-to="([^"]+)"', html))
    assert edges == {("build", "test"), ("test", "deploy"), ("lint", "deploy")}
    assert f'class="graph-job job-running" href="/jobs/{tree.jobs["test"].pk}/"' in html
    assert 'class="graph-job job-success"' in html
    assert f'data-poll="{reverse("runs:run-status", args=[tree.run.pk])}" data-active="1"' in html
    assert f'data-ws="/ws/runs/{tree.run.pk}/"' in html  # live over the run's socket, polling as a fallback


def test_the_run_page_shows_deployments_waiting_for_approval_with_approve_and_reject(admin_client) -> None:
    tree = make_run_tree()
    html = admin_client.get(reverse("runs:run", args=[tree.run.pk])).content.decode()
    deployment = tree.jobs["deploy"].deployment
    assert f'data-decide="{reverse("deployment_approve", args=[deployment.pk])}"' in html
    assert f'data-decide="{reverse("deployment_reject", args=[deployment.pk])}"' in html
    assert "awaiting approval (1 of 2)" in html
    assert f'href="{reverse("runs:environment", args=[deployment.environment_id])}"' in html


def test_the_run_page_sums_up_test_reports_and_links_artifact_downloads(admin_client) -> None:
    from artifacts.models import Artifact, ArtifactType, TestReport

    tree = make_run_tree()
    TestReport.objects.filter(run=tree.run).delete()  # the tree's own report: this test sets its numbers
    report = Artifact.objects.create(
        run=tree.run, job=tree.jobs["test"], name="junit", type=ArtifactType.TEST_REPORT, storage_path="x"
    )
    failed = {"suite": "s", "classname": "app.GreetTest", "name": "test_greets", "kind": "failure", "message": "boom"}
    TestReport.objects.create(
        artifact=report,
        run=tree.run,
        job=tree.jobs["test"],
        suites=1,
        tests=7,
        failures=1,
        skipped=2,
        failed_cases=[failed],
    )
    html = admin_client.get(reverse("runs:run", args=[tree.run.pk])).content.decode()
    assert "<strong>7</strong> tests" in html and "4 passed" in html and "1 failed" in html and "2 skipped" in html
    assert "app.GreetTest.test_greets" in html and "boom" in html
    assert reverse("artifacts:download", args=[tree.artifact.pk]) in html


def test_the_run_page_of_an_invalid_config_shows_the_parsers_message(admin_client) -> None:
    (run,) = make_runs(make_pipeline(), 1)
    PipelineRun.objects.filter(pk=run.pk).update(
        status=RunStatus.FAILURE, error_message="line 3: job 'test': unknown stage 'nowhere'"
    )
    html = admin_client.get(reverse("runs:run", args=[run.pk])).content.decode()
    assert "The run could not start" in html
    assert "unknown stage &#x27;nowhere&#x27;" in html


def test_job_names_are_escaped_everywhere_on_the_run_page(admin_client) -> None:
    tree = make_run_tree(job_names={"lint": "<script>alert(1)</script>"})
    html = admin_client.get(reverse("runs:run", args=[tree.run.pk])).content.decode()
    assert "<script>alert(1)</script>" not in html
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in html


@pytest.mark.parametrize("role", ROLES)
def test_the_run_page_is_a_404_to_outsiders_and_shows_buttons_only_to_developers(people, role) -> None:
    response = people.client(role).get(reverse("runs:run", args=[people.tree.run.pk]))
    assert response.status_code == (200 if SEES[role] else 404)
    if SEES[role]:
        html = response.content.decode()
        assert ('data-role="cancel-run"' in html) is RUNS[role]
        assert ('data-role="retry-job"' in html) is RUNS[role]


@pytest.mark.parametrize("jobs", [4, 12])
def test_the_run_page_query_count_does_not_depend_on_the_number_of_jobs(
    people, django_assert_num_queries, jobs: int
) -> None:
    tree = people.tree
    for n in range(jobs - 4):
        Job.objects.create(run=tree.run, name=f"extra-{n}", stage="test", stage_index=1, status=JobStatus.SUCCESS)
    client = people.client("developer")
    client.get(reverse("runs:run", args=[tree.run.pk]))
    # Session, user, run (+pipeline, repository; visibility as a subquery), graph jobs, graph
    # edges, job timings, artifacts, test totals, failed tests, deployments, the user's role.
    with django_assert_num_queries(11):
        client.get(reverse("runs:run", args=[tree.run.pk]))


def test_the_run_status_json_has_the_run_and_each_current_job(admin_client) -> None:
    tree = make_run_tree()
    data = admin_client.get(reverse("runs:run-status", args=[tree.run.pk])).json()
    assert data["run"]["status"] == "RUNNING" and data["run"]["finished"] is False
    assert {job["name"]: job["status"] for job in data["jobs"]} == {
        "build": "SUCCESS",
        "lint": "SUCCESS",
        "test": "RUNNING",
        "deploy": "PENDING",
    }


@pytest.mark.parametrize("role", ROLES)
def test_cancelling_a_run_needs_a_developer_and_hides_private_runs_from_outsiders(people, role) -> None:
    run = people.tree.run
    response = people.client(role).post(reverse("runs:run-cancel", args=[run.pk]))
    expected = 302 if RUNS[role] else (403 if SEES[role] else 404)
    assert response.status_code == expected
    run.refresh_from_db()
    assert (run.status == RunStatus.CANCELLED) is RUNS[role]


def test_the_buttons_only_take_posts(admin_client) -> None:
    tree = make_run_tree()
    assert admin_client.get(reverse("runs:run-cancel", args=[tree.run.pk])).status_code == 405
    assert admin_client.get(reverse("runs:job-retry", args=[tree.jobs["build"].pk])).status_code == 405


def test_the_buttons_need_a_csrf_token(people) -> None:
    client = Client(enforce_csrf_checks=True)
    client.force_login(people["developer"])
    assert client.post(reverse("runs:run-cancel", args=[people.tree.run.pk])).status_code == 403
    people.tree.run.refresh_from_db()
    assert people.tree.run.status == RunStatus.RUNNING


@pytest.mark.parametrize("role", ROLES)
def test_retrying_a_job_makes_a_new_attempt_for_developers_only(people, role) -> None:
    build = people.tree.jobs["build"]
    response = people.client(role).post(reverse("runs:job-retry", args=[build.pk]))
    assert response.status_code == (302 if RUNS[role] else 403 if SEES[role] else 404)
    attempts = Job.objects.filter(run=build.run, name="build").count()
    assert attempts == (2 if RUNS[role] else 1)
    if RUNS[role]:
        new = Job.objects.get(run=build.run, name="build", retried=False)
        assert response["Location"] == reverse("runs:job", args=[new.pk])
        assert new.attempt == 2 and new.status == JobStatus.QUEUED


def test_retrying_a_running_job_says_why_it_cannot(admin_client) -> None:
    tree = make_run_tree()
    response = admin_client.post(reverse("runs:job-retry", args=[tree.jobs["test"].pk]), follow=True)
    assert "cannot be retried" in response.content.decode()


def test_starting_a_manual_job_queues_it(people) -> None:
    deploy = people.tree.jobs["deploy"]
    Job.objects.filter(pk=deploy.pk).update(status=JobStatus.MANUAL)
    response = people.client("developer").post(reverse("runs:job-play", args=[deploy.pk]), {"next": "run"})
    assert response.status_code == 302
    assert response["Location"] == reverse("runs:run", args=[deploy.run_id])
    deploy.refresh_from_db()
    assert deploy.status == JobStatus.QUEUED


# --- The job page.


def test_the_job_page_lists_steps_with_exit_codes_and_durations_and_includes_the_live_log(admin_client) -> None:
    from datetime import timedelta

    from runs.models import Step

    tree = make_run_tree()
    step = tree.step
    Step.objects.filter(pk=step.pk).update(exit_code=0, finished_at=step.job.started_at + timedelta(seconds=75))
    Step.objects.filter(pk=step.pk).update(started_at=step.job.started_at)
    html = admin_client.get(reverse("runs:job", args=[tree.jobs["build"].pk])).content.decode()
    assert "<code>echo build</code>" in html
    assert "<td>0</td>" in html and "1m 15s" in html
    assert 'class="job-log"' in html  # templates/logs/_job_log.html
    assert reverse("logs:job-raw", args=[tree.jobs["build"].pk]) in html
    running = admin_client.get(reverse("runs:job", args=[tree.jobs["test"].pk])).content.decode()
    assert 'data-ws="/ws/steps/' in running


@pytest.mark.parametrize("role", ROLES)
def test_the_job_page_is_a_404_to_outsiders(people, role) -> None:
    response = people.client(role).get(reverse("runs:job", args=[people.tree.jobs["build"].pk]))
    assert response.status_code == (200 if SEES[role] else 404)


# --- Runners.


def test_the_runners_page_shows_online_runners_and_their_current_jobs(admin_client) -> None:
    tree = make_run_tree()
    html = admin_client.get(reverse("runs:runners")).content.decode()
    assert tree.runner.name in html and "Online" in html
    assert reverse("runs:job", args=[tree.jobs["test"].pk]) in html


@pytest.mark.parametrize("role", ROLES)
def test_the_runners_page_names_current_jobs_only_of_repositories_the_user_sees(people, role) -> None:
    html = people.client(role).get(reverse("runs:runners")).content.decode()
    assert people.tree.runner.name in html
    assert (reverse("runs:job", args=[people.tree.jobs["test"].pk]) in html) is SEES[role]


@pytest.mark.parametrize("count", [1, 6])
def test_the_runners_page_query_count_does_not_depend_on_the_number_of_runners(
    admin_client, django_assert_num_queries, count: int
) -> None:
    for _ in range(count):
        make_run_tree()
    admin_client.get(reverse("runs:runners"))
    with django_assert_num_queries(4):  # session, user, runners, their running jobs
        admin_client.get(reverse("runs:runners"))


# --- Badges.


def _badge(client: Client, repository: str, branch: str = "main", **query):
    return client.get(reverse("runs:badge", kwargs={"repository": repository, "branch": branch}), query)


def test_a_public_repositorys_badge_needs_no_login_and_shows_the_latest_run(client) -> None:
    pipeline = make_pipeline("open")
    Repository.objects.filter(pk=pipeline.repository_id).update(is_private=False)
    make_runs(pipeline, 1)
    response = _badge(client, "open")
    assert response.status_code == 200
    assert response["Content-Type"] == "image/svg+xml"
    assert ">passed</text>" in response.content.decode()
    latest = make_runs(pipeline, 1)[0]
    PipelineRun.objects.filter(pk=latest.pk).update(status=RunStatus.FAILURE)
    assert ">failed</text>" in _badge(client, "open").content.decode()
    assert ">unknown</text>" in _badge(client, "open", "no-such-branch").content.decode()


def test_badges_take_branches_with_slashes_and_a_pipeline_name(client) -> None:
    pipeline = make_pipeline("slashy")
    Repository.objects.filter(pk=pipeline.repository_id).update(is_private=False)
    (run,) = make_runs(pipeline, 1)
    PipelineRun.objects.filter(pk=run.pk).update(branch="feature/a/b")
    assert ">passed</text>" in _badge(client, "slashy", "feature/a/b", pipeline="default").content.decode()
    assert ">unknown</text>" in _badge(client, "slashy", "feature/a/b", pipeline="other").content.decode()


@pytest.mark.parametrize("role", [*ROLES, "anonymous"])
def test_a_private_repositorys_badge_is_a_404_to_anyone_who_cannot_see_it(people, role) -> None:
    client = Client() if role == "anonymous" else people.client(role)
    response = _badge(client, people.repository.name)
    sees = SEES.get(role, False)
    assert response.status_code == (200 if sees else 404)
    assert _badge(client, "no-such-repository").status_code == 404


@pytest.mark.parametrize("chunks", [1, 40])
def test_the_job_page_query_count_does_not_grow_with_the_log(people, django_assert_num_queries, chunks: int) -> None:
    from logs.models import StepLog
    from runs.models import Step, StepStatus

    build = people.tree.jobs["build"]
    step = Step.objects.filter(job=build).order_by("index").last()
    Step.objects.filter(pk=step.pk).update(status=StepStatus.SUCCESS)
    for n in range(chunks):
        StepLog.objects.create(step=step, offset=n * 6, content=f"line{n % 10}\n", size=6)
    client = people.client("viewer")
    client.get(reverse("runs:job", args=[build.pk]))
    # Per step a fixed number (its log's tail and history), never per chunk: 15 for the two steps
    # (one of them whether the log expired).
    with django_assert_num_queries(15):
        client.get(reverse("runs:job", args=[build.pk]))


@pytest.mark.parametrize("count", [1, 6])
def test_the_schedules_page_query_count_does_not_depend_on_the_number_of_schedules(
    admin_client, django_assert_num_queries, count: int
) -> None:
    for _ in range(count):
        make_run_tree()
    admin_client.get(reverse("runs:schedules"))
    with django_assert_num_queries(3):  # session, user, schedules (pipeline, repository, last run joined)
        admin_client.get(reverse("runs:schedules"))
