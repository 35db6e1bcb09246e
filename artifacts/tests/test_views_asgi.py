"""The artifact calls under ASGI (the async test client builds ASGI requests): the short JSON
ones run in runners.api's pool of threads with kept connections, and answer exactly as they
do over the sync test client; the ones that move a body stay sync views."""

from __future__ import annotations

import asyncio
import json
import threading
from concurrent.futures import ThreadPoolExecutor

import pytest
from asgiref.sync import iscoroutinefunction
from django.db import connections
from django.test import AsyncClient, Client

from artifacts import selectors, views
from artifacts.services import artifact_docker_record
from artifacts.tests.conftest import job_named
from artifacts.tests.helpers import upload

CONFIG = """
stages: [build, test]
build:
  stage: build
  script: [make]
  artifacts:
    paths: [dist/]
test:
  stage: test
  script: [make test]
"""
DIGEST = "sha256:" + "a" * 64


@pytest.fixture(autouse=True)
def pool_connections_closed(monkeypatch):
    """The pool's threads close their connection after each call (as with CONN_MAX_AGE 0), so
    none outlives the test and keeps the test database from being dropped."""
    monkeypatch.setitem(connections.settings["default"], "CONN_MAX_AGE", 0)


def over_asgi(method: str, path: str, token: str, body: dict | None = None):
    """One call through the async test client, on an event loop of its own."""
    loop = asyncio.new_event_loop()
    loop.set_default_executor(ThreadPoolExecutor(max_workers=1))
    kwargs = {"data": json.dumps(body), "content_type": "application/json"} if body is not None else {}
    call = getattr(AsyncClient(), method)(f"/api/runner/{path}", headers={"Authorization": f"Bearer {token}"}, **kwargs)
    try:
        return loop.run_until_complete(call)
    finally:
        loop.run_until_complete(loop.run_in_executor(None, connections.close_all))
        loop.run_until_complete(loop.shutdown_default_executor())
        loop.close()


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


def test_only_the_calls_that_move_no_body_are_async_views() -> None:
    pooled = [views.upload_begin, views.docker_record, views.reuse, views.dependencies, views.images]
    pooled += [views.cache_lookup, views.cache_upload_begin]
    own_thread = [views.content, views.upload_commit, views.cache_content, views.cache_commit, views.download]

    assert all(iscoroutinefunction(view) for view in pooled)
    assert not any(iscoroutinefunction(view) for view in own_thread)


@pytest.mark.django_db(transaction=True)
def test_dependencies_and_images_over_asgi_are_looked_up_in_the_pool_and_answer_as_over_wsgi(
    dependent, monkeypatch
) -> None:
    test, token = dependent
    threads: list[str] = []
    for name in ["job_dependency_artifacts", "job_dependency_images"]:
        real = getattr(selectors, name)

        def spy(*, job, real=real):
            threads.append(threading.current_thread().name)
            return real(job=job)

        monkeypatch.setattr(selectors, name, spy)

    listing = over_asgi("get", f"jobs/{test.pk}/artifacts/dependencies", token)
    images = over_asgi("get", f"jobs/{test.pk}/artifacts/images", token)

    assert (listing.status_code, images.status_code) == (200, 200)
    assert [entry["name"] for entry in listing.json()["artifacts"]] == ["dist"]
    assert images.json() == {
        "images": [{"name": "app", "job": "build", "reference": "registry.test/app:1", "digest": DIGEST}]
    }
    assert all(name.startswith("runner-api") for name in threads) and len(threads) == 2, threads
    assert listing.json() == over_wsgi("get", f"jobs/{test.pk}/artifacts/dependencies", token).json()
    assert images.json() == over_wsgi("get", f"jobs/{test.pk}/artifacts/images", token).json()


@pytest.mark.django_db(transaction=True)
def test_artifact_calls_over_asgi_keep_their_authentication_and_error_answers(dependent, finish) -> None:
    test, token = dependent
    calls = [
        ("get", f"jobs/{test.pk}/artifacts/dependencies", "cvj_not-a-token", None),
        ("get", f"jobs/{test.pk}/artifacts/images", "cvr_not-a-runner", None),
        ("post", f"jobs/{test.pk}/artifacts/dependencies", token, {}),
        ("post", f"jobs/{test.pk}/caches/lookup", token, {"keys": []}),
        ("post", f"jobs/{test.pk}/artifacts", token, {"name": "dist"}),
        ("post", f"jobs/{test.pk}/artifacts/docker", token, {"reference": "r", "digest": "not-a-digest"}),
    ]

    answers = [over_asgi(*call) for call in calls]
    expected = [over_wsgi(*call) for call in calls]
    finish(test)
    not_held = over_asgi("get", f"jobs/{test.pk}/artifacts/images", token)

    assert [a.status_code for a in answers] == [401, 401, 405, 400, 400, 400]
    assert [(a.status_code, a.content) for a in answers] == [(e.status_code, e.content) for e in expected]
    assert (not_held.status_code, not_held.json()["code"]) == (409, "job_not_held")
