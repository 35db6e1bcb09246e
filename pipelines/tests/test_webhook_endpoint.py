"""The webhook endpoint as the web server runs it (cicd.pooled.PooledViews): Django's
middleware, URLs and views in a pool of threads that keep their database connections, and
the processing task sent to a real broker by the task sender after the answer."""

from __future__ import annotations

import asyncio
import json
import time
import uuid
from datetime import timedelta
from urllib.parse import urlsplit

import pytest
import redis
from celery import Celery
from django.conf import settings as django_settings
from django.db import connection
from django.utils import timezone

from cicd import pooled
from cicd.pooled import PooledViews
from pipelines import deliveries
from pipelines.deliveries import TaskSender, deliveries_resend_stuck
from pipelines.models import DeliveryStatus, Repository, WebhookDelivery
from pipelines.tests.conftest import SECRET
from pipelines.tests.webhook_payloads import sign
from tests.asgi_calls import Answer, call, close_pool, scope

pytestmark = pytest.mark.django_db(transaction=True)  # the pool's threads have connections of their own

THREADS = 2


async def echo_app(scope, receive, send) -> None:
    await send({"type": "http.response.start", "status": 299, "headers": []})
    await send({"type": "http.response.body", "body": scope["path"].encode()})


def delivery(*, key: str | None = None, host: str = "testserver") -> tuple[dict, bytes]:
    body = json.dumps({"ref": "refs/heads/main", "after": uuid.uuid4().hex + "abcdef01"}).encode()
    headers = {"x-conveyor-signature-256": sign(SECRET, body), "idempotency-key": key or uuid.uuid4().hex}
    return scope("/webhooks/generic/", body=body, headers=headers, query="repository=web", host=host), body


def post(app, *, key: str | None = None, host: str = "testserver") -> Answer:
    request_scope, body = delivery(key=key, host=host)
    return asyncio.run(call(app, request_scope, body))


@pytest.fixture
def repository() -> Repository:
    return Repository.objects.create(name="web", clone_url="/srv/git/web.git", webhook_secret=SECRET)


@pytest.fixture
def endpoint():
    app = PooledViews(echo_app, pools={"webhooks": THREADS})
    yield app
    close_pool(app, "webhooks", THREADS)


@pytest.fixture
def broker():
    """A Celery app on the real Redis, its keys under a prefix of this test's own; and a
    reader of the tasks sent there."""
    prefix = f"conveyor-test-{uuid.uuid4().hex}:"
    app = Celery("conveyor-tests", broker=django_settings.CELERY_BROKER_URL, set_as_current=False)
    app.conf.broker_transport_options = {"global_keyprefix": prefix}
    url = django_settings.REDIS_URL
    client = (
        redis.Redis(unix_socket_path=urlsplit(url).path) if url.startswith("unix://") else redis.Redis.from_url(url)
    )

    def sent_tasks() -> list[list[int]]:
        """The delivery ids of each task sent, in the order sent."""
        messages = [
            json.loads(raw) for raw in client.lrange(f"{prefix}{django_settings.CELERY_TASK_DEFAULT_QUEUE}", 0, -1)
        ]
        assert {m["headers"]["task"] for m in messages} <= {"pipelines.tasks.process_deliveries"}
        # LPUSHed: the list holds the last task sent first.
        return [[int(i) for i in m["headers"]["argsrepr"].strip("([,])").split(",") if i] for m in reversed(messages)]

    def sent_delivery_ids() -> list[int]:
        return sorted(i for task in sent_tasks() for i in task)

    app.sent_tasks = sent_tasks
    app.sent_delivery_ids = sent_delivery_ids
    yield app
    keys = list(client.scan_iter(f"{prefix}*"))
    if keys:
        client.delete(*keys)
    app.close()


@pytest.fixture
def sender(broker, monkeypatch):
    sender = TaskSender(broker=broker)
    monkeypatch.setattr(deliveries, "task_sender", sender)
    yield sender
    sender.close()


def backends() -> int:
    with connection.cursor() as cursor:
        cursor.execute("SELECT count(*) FROM pg_stat_activity WHERE datname = current_database()")
        return cursor.fetchone()[0]


def test_a_signed_delivery_is_stored_answered_with_the_security_headers_and_its_task_sent_after(
    repository, endpoint, sender, broker
) -> None:
    answer = post(endpoint, key="first")

    assert answer.status == 202, answer.body
    assert answer.json()["status"] == "queued"
    stored = WebhookDelivery.objects.get()
    assert (stored.delivery_id, stored.status, stored.repository) == ("first", DeliveryStatus.QUEUED, repository)
    # Served without the middleware (cicd.pooled): SecurityMiddleware's headers and a
    # Content-Length, none of a page's (a JSON answer to a forge is never framed).
    assert answer.headers["x-content-type-options"] == "nosniff"
    assert answer.headers["referrer-policy"] == "same-origin"
    assert "x-frame-options" not in answer.headers and "content-security-policy" not in answer.headers
    assert answer.headers["content-length"] == str(len(answer.body))
    sender.close()  # sends what is pending, as at the process's exit
    assert broker.sent_delivery_ids() == [stored.pk]


def test_a_redelivery_is_answered_200_and_sends_no_second_task(repository, endpoint, sender, broker) -> None:
    first = post(endpoint, key="same")
    again = post(endpoint, key="same")

    assert (first.status, again.status) == (202, 200)
    assert again.json() == {"status": "duplicate", "delivery": first.json()["delivery"], "delivery_status": "QUEUED"}
    sender.close()
    assert broker.sent_delivery_ids() == [first.json()["delivery"]]


def test_the_same_delivery_arriving_twice_at_once_is_stored_once(repository, endpoint, sender) -> None:
    request_scope, body = delivery(key="raced")

    async def both() -> list[Answer]:
        return await asyncio.gather(
            call(endpoint, dict(request_scope), body), call(endpoint, dict(request_scope), body)
        )

    answers = asyncio.run(both())

    assert sorted(a.status for a in answers) == [200, 202]
    assert WebhookDelivery.objects.count() == 1


def test_requests_reuse_their_threads_database_connections(repository, endpoint, sender) -> None:
    before = backends()

    statuses = [post(endpoint).status for _ in range(12)]

    assert statuses == [202] * 12
    assert backends() <= before + THREADS


@pytest.mark.parametrize(
    "path",
    [
        "/api/runner/jobs/raw",  # no such view under the runner API either
        "/webhooks/bitbucket/",  # no such view: Django's ASGI handler answers 404
        "/",
    ],
)
def test_other_paths_go_to_the_wrapped_application(endpoint, path) -> None:
    request_scope = scope(path, body=b"{}", headers={})

    answer = asyncio.run(call(endpoint, request_scope, b"{}"))

    assert (answer.status, answer.body) == (299, path.encode())


def test_paths_are_routed_alike_the_first_time_and_after_and_few_are_remembered(endpoint, monkeypatch) -> None:
    monkeypatch.setattr(pooled, "PATHS_REMEMBERED", 2)
    paths = ["/webhooks/generic/", "/", "/webhooks/bitbucket/", "/api/runner/jobs/request", "/webhooks/github/"]

    for _ in range(2):
        routed = [endpoint.executor_for(scope(path, body=b"", headers={})) for path in paths]

        assert routed == [endpoint.executors["webhooks"], None, None, None, endpoint.executors["webhooks"]]
    assert len(endpoint._pools_by_path) <= 2


def test_webhooks_keep_the_https_redirect_and_the_allowed_hosts(repository, settings, sender) -> None:
    settings.SECURE_SSL_REDIRECT = True
    app = PooledViews(echo_app, pools={"webhooks": THREADS})  # middleware reads its settings when loaded
    try:
        redirected = post(app)
        wrong_host = post(app, host="evil.example")
    finally:
        close_pool(app, "webhooks", THREADS)

    assert redirected.status == 301
    assert redirected.headers["location"].startswith("https://testserver/webhooks/generic/")
    assert wrong_host.status == 400
    assert not WebhookDelivery.objects.exists()


def test_other_methods_get_djangos_answer(repository, endpoint) -> None:
    request_scope, _ = delivery()
    got = asyncio.run(call(endpoint, {**request_scope, "method": "GET"}, b""))

    assert got.status == 405


def test_deliveries_that_commit_close_together_go_out_in_one_task(sender, broker, monkeypatch) -> None:
    monkeypatch.setattr(deliveries, "SEND_WAIT", 0.5)  # ample, on a busy machine too

    for delivery_id in (11, 12, 13):
        sender.send(delivery_id)
        time.sleep(0.05)  # committed a little apart, as a burst's deliveries are
    deadline = time.monotonic() + 10
    while not broker.sent_tasks() and time.monotonic() < deadline:
        time.sleep(0.05)

    assert broker.sent_tasks() == [[11, 12, 13]]


def test_a_burst_goes_out_a_full_task_at_a_time(sender, broker, monkeypatch) -> None:
    monkeypatch.setattr(deliveries, "SEND_WAIT", 0.5)
    ids = list(range(1, 2 * deliveries.DELIVERIES_PER_TASK + 2))

    for delivery_id in ids:
        sender.send(delivery_id)
    sender.close()

    per_task = deliveries.DELIVERIES_PER_TASK
    assert broker.sent_tasks() == [ids[:per_task], ids[per_task : 2 * per_task], ids[2 * per_task :]]


def test_a_broker_that_is_down_loses_no_delivery(repository, endpoint, monkeypatch, caplog, settings) -> None:
    down = Celery("conveyor-tests-down", broker="redis+socket:///nonexistent/redis.sock", set_as_current=False)
    down.conf.broker_connection_retry = False
    sender = TaskSender(broker=down)
    monkeypatch.setattr(deliveries, "task_sender", sender)

    answer = post(endpoint)
    started = time.monotonic()
    sender.close(timeout=60)

    assert answer.status == 202  # answered before the broker was tried
    assert time.monotonic() - started < 60
    assert "processing task not sent" in caplog.text
    stored = WebhookDelivery.objects.get()
    assert stored.status == DeliveryStatus.QUEUED
    # The sweep sends it again once it has been QUEUED for too long (the task runs here, eagerly).
    settings.CELERY_TASK_ALWAYS_EAGER = True
    assert deliveries_resend_stuck(now=timezone.now() + timedelta(minutes=3)) == 1
    stored.refresh_from_db()
    assert stored.status != DeliveryStatus.QUEUED
    assert stored.attempts == 1
    down.close()
