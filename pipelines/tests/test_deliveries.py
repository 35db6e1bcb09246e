"""From a webhook delivery to a run: real git repositories, the real parser and engine, the
processing task run eagerly after commit."""

from __future__ import annotations

import json
from datetime import timedelta

import pytest
from django.utils import timezone

from pipelines import deliveries
from pipelines.models import AutoCancel, DeliveryStatus, Pipeline, Repository, Trigger, WebhookDelivery
from pipelines.tasks import process_deliveries, process_delivery
from pipelines.tests import webhook_payloads as p
from pipelines.tests.conftest import SECRET
from runs.models import Job, JobStatus, PipelineRun, RunStatus
from runs.services import job_start

pytestmark = pytest.mark.django_db


@pytest.fixture
def eager(settings):
    settings.CELERY_TASK_ALWAYS_EAGER = True


@pytest.fixture
def deliver(poster, eager, django_capture_on_commit_callbacks):
    """Post a webhook and run what follows its commit (the processing task, eagerly)."""

    def post(provider: str, payload, **kwargs):
        with django_capture_on_commit_callbacks(execute=True):
            response = getattr(poster, provider)(payload, **kwargs)
        return response

    return post


def job_names(run: PipelineRun) -> list[str]:
    return sorted(run.jobs.values_list("name", flat=True))


def only_run() -> PipelineRun:
    return PipelineRun.objects.get()


# --- Pushes.


def test_a_github_push_creates_a_push_run_of_the_commit_by_the_pusher(forge, deliver):
    before = forge.sha
    after = forge.commit({"README.md": "v2\n"})
    payload = p.github_push(after=after, before=before, full_name=forge.repository.forge_project)

    response = deliver("github", payload, event="push")

    assert response.status_code == 202
    run = only_run()
    assert (run.pipeline, run.trigger, run.branch, run.is_tag) == (forge.pipeline, Trigger.PUSH, "main", False)
    assert (run.commit_sha, run.triggered_by) == (after, "ada")
    assert job_names(run) == ["branch-only", "build"]
    assert run.variables == {"CI_COMMIT_BEFORE_SHA": before}
    delivery = WebhookDelivery.objects.get()
    assert delivery.status == DeliveryStatus.DONE
    assert list(delivery.runs.all()) == [run]
    assert f"run #{run.number} created" in delivery.result
    assert delivery.processed_at is not None


def test_a_push_of_an_older_commit_runs_that_commit_not_the_branch_tip(forge, deliver):
    first = forge.sha
    forge.commit({"README.md": "newer\n"})
    deliver("github", p.github_push(after=first, full_name=forge.repository.forge_project), event="push")
    assert only_run().commit_sha == first


def test_a_tag_push_creates_a_tag_run_that_tag_jobs_see(forge, deliver):
    forge.git("tag", "-a", "v1.0.0", "-m", "release")
    tag_object = forge.git("rev-parse", "v1.0.0")
    payload = p.gitlab_push(ref="refs/tags/v1.0.0", after=tag_object, path=forge.repository.forge_project, tag=True)

    deliver("gitlab", payload, event="Tag Push Hook")

    run = only_run()
    # An annotated tag's `after` is the tag object; the run is of the commit it points to.
    assert (run.branch, run.is_tag, run.commit_sha, run.triggered_by) == ("v1.0.0", True, forge.sha, "jsmith")
    assert job_names(run) == ["build", "tag-only"]


def test_a_gitlab_push_and_a_generic_push_create_runs(forge, deliver):
    second = forge.commit({"a": "1"}, branch="develop")
    deliver(
        "gitlab",
        p.gitlab_push(ref="refs/heads/develop", after=second, path=forge.repository.forge_project),
        event="Push Hook",
    )
    third = forge.commit({"a": "2"}, branch="develop")
    body = {"repository": forge.repository.name, "ref": "refs/heads/develop", "after": third, "pusher": "hook"}
    deliver("generic", body)

    runs = list(PipelineRun.objects.order_by("number"))
    assert [(r.branch, r.commit_sha, r.triggered_by) for r in runs] == [
        ("develop", second, "jsmith"),
        ("develop", third, "hook"),
    ]


# --- Pull and merge requests.


def test_a_github_pull_request_creates_a_merge_request_run_with_its_variables(forge, deliver):
    head = forge.commit({"feature.txt": "x\n"}, branch="feature")
    payload = p.github_pull_request(
        action="opened", number=12, head_ref="feature", head_sha=head, full_name=forge.repository.forge_project
    )

    deliver("github", payload, event="pull_request")

    run = only_run()
    assert (run.trigger, run.branch, run.commit_sha) == (Trigger.PR, "feature", head)
    # CI_PIPELINE_SOURCE is merge_request_event and CI_COMMIT_BRANCH is unset, as in GitLab.
    assert job_names(run) == ["build", "mr-only"]
    assert run.variables["CI_MERGE_REQUEST_IID"] == "12"
    assert run.variables["CI_MERGE_REQUEST_TARGET_BRANCH_NAME"] == "main"
    assert run.variables["CI_MERGE_REQUEST_SOURCE_BRANCH_NAME"] == "feature"


def test_a_pull_request_from_a_fork_runs_the_commit_the_forge_keeps_under_its_pull_ref(forge, deliver):
    # The fork's commit is not on any branch of the repository, only under refs/pull/3/head.
    head = forge.commit({"fork.txt": "from a fork\n"}, branch="fork-work")
    forge.git("update-ref", "refs/pull/3/head", head)
    forge.git("checkout", "--quiet", "main")
    forge.git("branch", "-D", "fork-work")
    payload = p.github_pull_request(
        action="synchronize",
        number=3,
        head_ref="fork-work",
        head_sha=head,
        full_name=forge.repository.forge_project,
        head_full_name="someone/web",
    )

    deliver("github", payload, event="pull_request")

    run = only_run()
    assert run.commit_sha == head
    assert job_names(run) == ["build", "mr-only"]
    assert run.variables["CI_MERGE_REQUEST_SOURCE_PROJECT_PATH"] == "someone/web"


@pytest.mark.parametrize(("action", "oldrev"), [("open", None), ("reopen", None), ("update", "f" * 40)])
def test_gitlab_merge_requests_create_merge_request_runs(forge, deliver, action, oldrev):
    head = forge.commit({"mr.txt": action}, branch="feature")
    payload = p.gitlab_merge_request(
        action=action, iid=9, last_commit=head, oldrev=oldrev, path=forge.repository.forge_project
    )
    deliver("gitlab", payload, event="Merge Request Hook")

    run = only_run()
    assert (run.trigger, run.branch, run.commit_sha, run.triggered_by) == (Trigger.PR, "feature", head, "root")
    assert run.variables["CI_MERGE_REQUEST_IID"] == "9"


def test_a_push_and_its_pull_request_make_one_run(forge, deliver):
    head = forge.commit({"x": "1"}, branch="feature")
    project = forge.repository.forge_project
    deliver("github", p.github_push(ref="refs/heads/feature", after=head, full_name=project), event="push")
    deliver("github", p.github_pull_request(action="opened", head_sha=head, full_name=project), event="pull_request")

    run = only_run()
    assert run.trigger == Trigger.PUSH
    pr_delivery = WebhookDelivery.objects.get(event="pull_request")
    assert pr_delivery.status == DeliveryStatus.DONE
    assert list(pr_delivery.runs.all()) == [run]
    assert f"already ran as #{run.number}" in pr_delivery.result


def test_a_pipeline_with_separate_pull_request_runs_runs_both(forge, deliver):
    Pipeline.objects.filter(pk=forge.pipeline.pk).update(separate_pr_runs=True)
    head = forge.commit({"x": "1"}, branch="feature")
    project = forge.repository.forge_project
    deliver("github", p.github_push(ref="refs/heads/feature", after=head, full_name=project), event="push")
    deliver("github", p.github_pull_request(action="opened", head_sha=head, full_name=project), event="pull_request")

    assert sorted(PipelineRun.objects.values_list("trigger", flat=True)) == [Trigger.PR, Trigger.PUSH]


def test_pr_pipelines_run_only_for_pull_requests_and_schedule_pipelines_never_for_webhooks(forge, deliver):
    Pipeline.objects.filter(pk=forge.pipeline.pk).update(trigger=Trigger.PR)
    Pipeline.objects.create(repository=forge.repository, name="nightly", trigger=Trigger.SCHEDULE)
    project = forge.repository.forge_project
    deliver("github", p.github_push(after=forge.sha, full_name=project), event="push")
    assert WebhookDelivery.objects.get().status == DeliveryStatus.SKIPPED
    assert "runs for push events" in WebhookDelivery.objects.get().result

    head = forge.commit({"x": "1"}, branch="feature")
    deliver("github", p.github_pull_request(action="opened", head_sha=head, full_name=project), event="pull_request")
    assert [(r.pipeline.name, r.trigger) for r in PipelineRun.objects.all()] == [("default", Trigger.PR)]


# --- Idempotency and failures.


def test_a_redelivery_after_processing_answers_200_and_creates_no_second_run(forge, deliver):
    payload = p.github_push(after=forge.sha, full_name=forge.repository.forge_project)
    assert deliver("github", payload, event="push", delivery="guid-1").status_code == 202
    again = deliver("github", payload, event="push", delivery="guid-1")

    assert again.status_code == 200
    assert again.json()["delivery_status"] == DeliveryStatus.DONE
    assert PipelineRun.objects.count() == 1


def test_the_processing_task_delivered_twice_creates_one_run(forge, poster):
    poster.github(p.github_push(after=forge.sha, full_name=forge.repository.forge_project), event="push")
    delivery = WebhookDelivery.objects.get()

    assert process_delivery(delivery.pk) == DeliveryStatus.DONE
    assert process_delivery(delivery.pk) is None
    assert PipelineRun.objects.count() == 1


def test_a_second_delivery_of_the_same_push_links_the_existing_run(forge, deliver):
    payload = p.github_push(after=forge.sha, full_name=forge.repository.forge_project)
    deliver("github", payload, event="push", delivery="one")
    deliver("github", payload, event="push", delivery="two")

    run = only_run()
    assert [list(d.runs.all()) for d in WebhookDelivery.objects.order_by("pk")] == [[run], [run]]


def test_an_unreachable_repository_fails_the_delivery_and_a_replay_after_the_fix_runs_it(
    forge, deliver, eager, django_capture_on_commit_callbacks
):
    good_url = forge.repository.clone_url
    Repository.objects.filter(pk=forge.repository.pk).update(clone_url=str(forge.path) + "-gone")
    deliver("github", p.github_push(after=forge.sha, full_name=forge.repository.forge_project), event="push")

    delivery = WebhookDelivery.objects.get()
    assert delivery.status == DeliveryStatus.FAILED
    assert "the repository exists" in delivery.error_message  # git's own words, passed on
    assert not PipelineRun.objects.exists()

    Repository.objects.filter(pk=forge.repository.pk).update(clone_url=good_url)
    with django_capture_on_commit_callbacks(execute=True):
        assert deliveries.delivery_replay(delivery=delivery) is True
    delivery.refresh_from_db()
    assert delivery.status == DeliveryStatus.DONE
    assert delivery.attempts == 2
    assert PipelineRun.objects.count() == 1


def test_a_redelivery_of_a_failed_delivery_tries_it_again(forge, deliver):
    good_url = forge.repository.clone_url
    Repository.objects.filter(pk=forge.repository.pk).update(clone_url="/nonexistent/repo")
    payload = p.github_push(after=forge.sha, full_name=forge.repository.forge_project)
    deliver("github", payload, event="push", delivery="retry-me")
    Repository.objects.filter(pk=forge.repository.pk).update(clone_url=good_url)

    again = deliver("github", payload, event="push", delivery="retry-me")

    assert (again.status_code, again.json()["status"]) == (200, "requeued")
    assert WebhookDelivery.objects.get().status == DeliveryStatus.DONE
    assert PipelineRun.objects.count() == 1


def test_a_commit_the_repository_does_not_have_fails_the_delivery(forge, deliver):
    deliver("github", p.github_push(after="d" * 40, full_name=forge.repository.forge_project), event="push")
    delivery = WebhookDelivery.objects.get()
    assert delivery.status == DeliveryStatus.FAILED
    assert delivery.error_message


def test_workflow_rules_that_filter_the_push_out_skip_the_delivery(forge, deliver):
    sha = forge.commit({".cicd.yml": "workflow:\n  rules:\n    - if: $CI_COMMIT_TAG\njob:\n  script: x\n"})
    deliver("github", p.github_push(after=sha, full_name=forge.repository.forge_project), event="push")
    delivery = WebhookDelivery.objects.get()
    assert delivery.status == DeliveryStatus.SKIPPED
    assert "no run" in delivery.result
    assert not PipelineRun.objects.exists()


def test_an_invalid_config_still_makes_a_failed_run_that_says_why(forge, deliver):
    sha = forge.commit({".cicd.yml": "job: [not, a, job]\n"})
    deliver("github", p.github_push(after=sha, full_name=forge.repository.forge_project), event="push")
    run = only_run()
    assert run.status == RunStatus.FAILURE
    assert "job" in run.error_message
    assert WebhookDelivery.objects.get().status == DeliveryStatus.DONE


def test_deliveries_whose_task_was_lost_are_sent_again(forge, poster, eager):
    poster.github(p.github_push(after=forge.sha, full_name=forge.repository.forge_project), event="push")
    delivery = WebhookDelivery.objects.get()
    assert deliveries.deliveries_resend_stuck() == 0  # just received: its task may still be on its way

    later = timezone.now() + deliveries.QUEUED_STALE_AFTER + timedelta(seconds=1)
    assert deliveries.deliveries_resend_stuck(now=later) == 1
    delivery.refresh_from_db()
    assert delivery.status == DeliveryStatus.DONE


def test_a_delivery_whose_worker_died_mid_processing_is_taken_over(forge, poster):
    poster.github(p.github_push(after=forge.sha, full_name=forge.repository.forge_project), event="push")
    long_ago = timezone.now() - deliveries.PROCESSING_STALE_AFTER - timedelta(minutes=1)
    WebhookDelivery.objects.update(status=DeliveryStatus.PROCESSING, started_at=long_ago)

    assert process_delivery(WebhookDelivery.objects.get().pk) == DeliveryStatus.DONE


def test_old_processed_deliveries_are_pruned_and_pending_ones_kept(forge, poster, settings):
    project = forge.repository.forge_project
    poster.github(p.github_ping(project), event="ping")
    poster.github(p.github_push(after=forge.sha, full_name=project), event="push")
    WebhookDelivery.objects.update(
        received_at=timezone.now() - timedelta(days=settings.CONVEYOR_WEBHOOK_RETENTION_DAYS + 1)
    )

    assert deliveries.deliveries_prune() == 1
    assert list(WebhookDelivery.objects.values_list("status", flat=True)) == [DeliveryStatus.QUEUED]


# --- Auto-cancel.

INTERRUPTIBLE = """
build:
  stage: build
  script: echo build
  interruptible: true
deploy:
  stage: deploy
  script: echo deploy
"""


def push(forge, deliver, files, *, delivery=None):
    sha = forge.commit(files)
    deliver(
        "github", p.github_push(after=sha, full_name=forge.repository.forge_project), event="push", delivery=delivery
    )
    return PipelineRun.objects.get(commit_sha=sha)


def test_a_new_push_cancels_the_older_run_of_the_branch(forge, deliver):
    older = push(forge, deliver, {".cicd.yml": INTERRUPTIBLE})
    newer = push(forge, deliver, {"README.md": "again\n"})

    older.refresh_from_db()
    newer.refresh_from_db()
    assert older.status == RunStatus.CANCELLED
    assert "auto-cancel: superseded by" in Job.objects.filter(run=older).first().status_reason
    assert newer.status == RunStatus.RUNNING


def test_a_run_whose_non_interruptible_job_started_is_left_to_finish(forge, deliver):
    older = push(forge, deliver, {".cicd.yml": INTERRUPTIBLE.replace("interruptible: true", "interruptible: false")})
    job_start(job=Job.objects.get(run=older, name="build"), runner=None, lease_seconds=60)
    push(forge, deliver, {"README.md": "again\n"})

    older.refresh_from_db()
    assert older.status == RunStatus.RUNNING


def test_a_run_whose_started_jobs_are_all_interruptible_is_cancelled(forge, deliver):
    older = push(forge, deliver, {".cicd.yml": INTERRUPTIBLE})
    job_start(job=Job.objects.get(run=older, name="build"), runner=None, lease_seconds=60)
    push(forge, deliver, {"README.md": "again\n"})

    older.refresh_from_db()
    assert older.status == RunStatus.CANCELLED
    assert Job.objects.get(run=older, name="build").status == JobStatus.CANCELLED


def test_auto_cancel_none_keeps_older_runs(forge, deliver):
    Pipeline.objects.filter(pk=forge.pipeline.pk).update(auto_cancel=AutoCancel.NONE)
    older = push(forge, deliver, {".cicd.yml": INTERRUPTIBLE})
    push(forge, deliver, {"README.md": "again\n"})
    older.refresh_from_db()
    assert older.status == RunStatus.RUNNING


def test_runs_of_other_branches_and_tags_are_not_cancelled(forge, deliver):
    main_run = push(forge, deliver, {".cicd.yml": INTERRUPTIBLE})
    other = forge.commit({"x": "1"}, branch="develop")
    deliver(
        "github",
        p.github_push(ref="refs/heads/develop", after=other, full_name=forge.repository.forge_project),
        event="push",
    )
    main_run.refresh_from_db()
    assert main_run.status == RunStatus.RUNNING


def test_deliveries_processed_out_of_order_cancel_the_older_commits_run(forge, poster, eager):
    project = forge.repository.forge_project
    first = forge.commit({".cicd.yml": INTERRUPTIBLE})
    second = forge.commit({"README.md": "second\n"})
    poster.github(p.github_push(after=first, full_name=project), event="push", delivery="first")
    poster.github(p.github_push(after=second, full_name=project), event="push", delivery="second")
    WebhookDelivery.objects.filter(delivery_id="first").update(received_at=timezone.now() - timedelta(seconds=5))

    # The newer push is processed first.
    process_delivery(WebhookDelivery.objects.get(delivery_id="second").pk)
    process_delivery(WebhookDelivery.objects.get(delivery_id="first").pk)

    statuses = dict(PipelineRun.objects.values_list("commit_sha", "status"))
    assert statuses == {first: RunStatus.CANCELLED, second: RunStatus.RUNNING}


# --- Admin.


def test_the_admin_lists_deliveries_and_replays_one(admin_client, forge, deliver, django_capture_on_commit_callbacks):
    Repository.objects.filter(pk=forge.repository.pk).update(clone_url="/nonexistent/repo")
    deliver("github", p.github_push(after=forge.sha, full_name=forge.repository.forge_project), event="push")
    delivery = WebhookDelivery.objects.get()
    Repository.objects.filter(pk=forge.repository.pk).update(clone_url=str(forge.path))

    listing = admin_client.get("/admin/pipelines/webhookdelivery/")
    assert listing.status_code == 200
    assert "FAILED" in listing.content.decode() or "Failed" in listing.content.decode()
    page = admin_client.get(f"/admin/pipelines/webhookdelivery/{delivery.pk}/change/").content.decode()
    assert json.loads(delivery.body)["after"] in page
    assert SECRET not in page

    with django_capture_on_commit_callbacks(execute=True):
        response = admin_client.post(
            "/admin/pipelines/webhookdelivery/",
            {"action": "replay", "_selected_action": [str(delivery.pk)]},
            follow=True,
        )
    assert response.status_code == 200
    delivery.refresh_from_db()
    assert delivery.status == DeliveryStatus.DONE
    run = only_run()
    assert str(run) in admin_client.get(f"/admin/pipelines/webhookdelivery/{delivery.pk}/change/").content.decode()


def test_text_postgresql_cannot_store_is_replaced_not_fatal(forge, deliver):
    head = forge.commit({"x": "1"}, branch="feature")
    payload = p.github_pull_request(action="opened", head_sha=head, full_name=forge.repository.forge_project)
    payload["pull_request"]["title"] = "evil \u0000 \ud800 title"
    payload["sender"]["login"] = "mallory\u0000"

    deliver("github", json.dumps(payload).encode(), event="pull_request")

    run = only_run()
    assert run.variables["CI_MERGE_REQUEST_TITLE"] == "evil \ufffd \ufffd title"
    assert run.triggered_by == "mallory\ufffd"


def test_a_burst_sent_as_one_task_processes_each_delivery_even_after_one_fails(forge, poster, monkeypatch):
    project = forge.repository.forge_project
    for name in ["first", "second", "third"]:
        poster.github(p.github_push(after=forge.sha, full_name=project), event="push", delivery=name)
    ids = [WebhookDelivery.objects.get(delivery_id=name).pk for name in ["first", "second", "third"]]
    real = deliveries.delivery_process

    def failing_on_the_second(*, delivery_id, takeover=False):
        if delivery_id == ids[1]:
            raise RuntimeError("the database went away")
        return real(delivery_id=delivery_id, takeover=takeover)

    monkeypatch.setattr(deliveries, "delivery_process", failing_on_the_second)

    process_deliveries(ids)

    statuses = dict(WebhookDelivery.objects.values_list("delivery_id", "status"))
    assert statuses["first"] != DeliveryStatus.QUEUED
    assert statuses["second"] == DeliveryStatus.QUEUED  # left for the stuck-delivery sweep
    assert statuses["third"] != DeliveryStatus.QUEUED
