"""The artifact calls as the web server serves them (cicd.pooled): the short JSON ones in the
"runner-api" pool of threads with kept connections, answering exactly as they do over the
sync test client; the ones that move a body keep a thread of their own."""

from __future__ import annotations

import asyncio
import json
import threading

import pytest
from django.test import Client

from artifacts import selectors, views
from artifacts.services import artifact_docker_record
from artifacts.tests.conftest import job_named
from artifacts.tests.helpers import TWO_STAGES, upload
from cicd.tokens import token_generate, token_hash
from runners.models import Runner
from runners.tests.test_api import long_poll
from runs.models import Job, JobStatus
from tests.asgi_calls import Answer, call, scope, web_application

CONFIG = TWO_STAGES
DIGEST = "sha256:" + "a" * 64


@pytest.fixture
def served():
    with web_application({"runner-api": 2}) as app:
        yield app


def over_pool(app, method: str, path: str, token: str, body: dict | None = None) -> Answer:
    data = json.dumps(body).encode() if body is not None else b""
    headers = {"authorization": f"Bearer {token}"}
    request_scope = scope(f"/api/runner/{path}", body=data, headers=headers, method=method.upper())
    return asyncio.run(call(app, request_scope, data))


def over_wsgi(method: str, path: str, token: str, body: dict | None = None):
    kwargs = {"data": json.dumps(body), "content_type": "application/json"} if body is not None else {}
    return getattr(Client(), method)(f"/api/runner/{path}", headers={"Authorization": f"Bearer {token}"}, **kwargs)


@pytest.fixture
def dependent(make_run, start, finish):
    """(the test job, RUNNING with its token) after build uploaded an archive and recorded an image."""
    run = make_run(CONFIG)
    build, _ = start(job_named(run, "build"))
    upload(build, b"archive bytes")
    artifact_docker_record(job=build, reference="registry.test/app:1", digest=DIGEST, name="app")
    finish(build)
    return start(job_named(run, "test"))


def test_only_the_calls_that_move_no_body_are_served_in_the_pool() -> None:
    pooled = [views.upload_begin, views.docker_record, views.reuse, views.dependencies, views.images]
    pooled += [views.cache_lookup, views.cache_upload_begin]
    own_thread = [views.content, views.upload_commit, views.cache_content, views.cache_commit, views.download]

    assert all(getattr(view, "served_in_pool", None) == "runner-api" for view in pooled)
    assert not any(hasattr(view, "served_in_pool") for view in own_thread)


@pytest.mark.django_db(transaction=True)
def test_dependencies_and_images_are_looked_up_in_the_pool_and_answer_as_over_wsgi(
    dependent, served, monkeypatch
) -> None:
    test, token = dependent
    threads: list[str] = []
    for name in ["job_dependency_artifacts", "job_dependency_images"]:
        real = getattr(selectors, name)

        def spy(*, job, real=real, **kwargs):
            threads.append(threading.current_thread().name)
            return real(job=job, **kwargs)

        monkeypatch.setattr(selectors, name, spy)

    listing = over_pool(served, "get", f"jobs/{test.pk}/artifacts/dependencies", token)
    images = over_pool(served, "get", f"jobs/{test.pk}/artifacts/images", token)

    assert (listing.status, images.status) == (200, 200)
    assert [entry["name"] for entry in listing.json()["artifacts"]] == ["dist"]
    assert images.json() == {
        "images": [{"name": "app", "job": "build", "reference": "registry.test/app:1", "digest": DIGEST}]
    }
    assert all(name.startswith("pool-runner-api") for name in threads) and len(threads) == 2, threads
    assert listing.json() == over_wsgi("get", f"jobs/{test.pk}/artifacts/dependencies", token).json()
    assert images.json() == over_wsgi("get", f"jobs/{test.pk}/artifacts/images", token).json()


@pytest.mark.django_db(transaction=True)
def test_pooled_artifact_calls_keep_their_authentication_and_error_answers(dependent, served, finish) -> None:
    test, token = dependent
    calls = [
        ("get", f"jobs/{test.pk}/artifacts/dependencies", "cvj_not-a-token", None),
        ("get", f"jobs/{test.pk}/artifacts/images", "cvr_not-a-runner", None),
        ("post", f"jobs/{test.pk}/artifacts/dependencies", token, {}),
        ("post", f"jobs/{test.pk}/caches/lookup", token, {"keys": []}),
        ("post", f"jobs/{test.pk}/artifacts", token, {"name": "dist"}),
        ("post", f"jobs/{test.pk}/artifacts/docker", token, {"reference": "r", "digest": "not-a-digest"}),
    ]

    answers = [over_pool(served, *call) for call in calls]
    expected = [over_wsgi(*call) for call in calls]
    finish(test)
    not_held = over_pool(served, "get", f"jobs/{test.pk}/artifacts/images", token)

    assert [a.status for a in answers] == [401, 401, 405, 400, 400, 400]
    assert [(a.status, a.body) for a in answers] == [(e.status_code, e.content) for e in expected]
    assert (not_held.status, not_held.json()["code"]) == (409, "job_not_held")


@pytest.mark.django_db(transaction=True)  # the long-poll claims in a thread of its own
def test_the_claim_answer_carries_the_artifact_lists_the_runner_would_ask_for(dependent) -> None:
    test, _ = dependent
    Job.objects.filter(pk=test.pk).update(status=JobStatus.QUEUED, runner=None)
    token = token_generate("cvr_")
    Runner.objects.create(name="claimer", tags=[], token_hash=token_hash(token))

    claimed = long_poll(token, wait=0).result(timeout=20)

    assert claimed.status_code == 200
    answer = claimed.json()
    assert answer["id"] == str(test.pk)
    lists = answer["artifact_lists"]
    assert [entry["name"] for entry in lists["dependencies"]["artifacts"]] == ["dist"]
    assert lists["dependencies"] == over_wsgi("get", f"jobs/{test.pk}/artifacts/dependencies", token).json()
    assert lists["images"] == over_wsgi("get", f"jobs/{test.pk}/artifacts/images", token).json()


@pytest.mark.django_db(transaction=True)  # the long-poll claims in a thread of its own
def test_a_claim_in_a_run_without_artifacts_answers_the_lists_the_endpoints_would(make_run, start, finish) -> None:
    run = make_run(CONFIG)
    build, _ = start(job_named(run, "build"))
    finish(build)  # done, and recorded no artifact
    token = token_generate("cvr_")
    Runner.objects.create(name="claimer", tags=[], token_hash=token_hash(token))

    claimed = long_poll(token, wait=0).result(timeout=20)

    assert claimed.status_code == 200
    test_id = claimed.json()["id"]
    assert test_id == str(job_named(run, "test").pk)
    assert not selectors.run_has_other_artifacts(run_id=run.pk, job_id=test_id)
    lists = claimed.json()["artifact_lists"]
    assert lists["dependencies"] == over_wsgi("get", f"jobs/{test_id}/artifacts/dependencies", token).json()
    assert lists["images"] == over_wsgi("get", f"jobs/{test_id}/artifacts/images", token).json()


def test_a_run_has_other_artifacts_once_another_of_its_jobs_recorded_one(dependent) -> None:
    test, _ = dependent
    build = job_named(test.run, "build")

    assert selectors.run_has_other_artifacts(run_id=test.run_id, job_id=test.pk)
    assert not selectors.run_has_other_artifacts(run_id=test.run_id, job_id=build.pk)
