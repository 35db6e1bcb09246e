"""The webhook endpoints over HTTP: every status code the issue lists, redeliveries, repository
matching, the body limit, and a fuzz test that nothing a client sends produces a 500."""

from __future__ import annotations

import io
import json
import uuid
from urllib.parse import urlencode

import pytest
from django.test import RequestFactory
from hypothesis import HealthCheck, given
from hypothesis import settings as hypothesis_settings
from hypothesis import strategies as st

from pipelines.models import DeliveryStatus, Repository, WebhookDelivery, WebhookProvider
from pipelines.tests import webhook_payloads as p
from pipelines.tests.conftest import SECRET
from pipelines.views import read_body
from pipelines.webhooks import WebhookError
from runs.models import PipelineRun

pytestmark = pytest.mark.django_db

SHA = "c" * 40


@pytest.fixture
def repository(db) -> Repository:
    return Repository.objects.create(
        name="web", clone_url="https://github.com/acme/web.git", forge_project="acme/web", webhook_secret=SECRET
    )


def nothing_was_created() -> bool:
    return not WebhookDelivery.objects.exists() and not PipelineRun.objects.exists()


# --- Accepted requests.


def test_a_signed_github_push_is_stored_and_queued_with_202(poster, repository, django_capture_on_commit_callbacks):
    with django_capture_on_commit_callbacks() as callbacks:
        response = poster.github(p.github_push(after=SHA), event="push", delivery="d-1")

    assert response.status_code == 202
    assert response.json()["status"] == "queued"
    delivery = WebhookDelivery.objects.get()
    assert (delivery.provider, delivery.delivery_id, delivery.event) == (WebhookProvider.GITHUB, "d-1", "push")
    assert (delivery.repository, delivery.ref, delivery.commit_sha) == (repository, "main", SHA)
    assert delivery.status == DeliveryStatus.QUEUED
    assert json.loads(delivery.body)["after"] == SHA
    assert delivery.headers["x-github-event"] == "push"
    assert "x-hub-signature-256" not in delivery.headers
    # The processing task is sent only once the delivery is committed.
    assert len(callbacks) == 1


def test_a_delivery_to_a_named_repository_costs_two_queries(poster, repository, django_assert_num_queries):
    # The repository's row (its secret, decrypted, checks the signature) and the INSERT.
    with django_assert_num_queries(2):
        response = poster.generic({"ref": "refs/heads/main", "after": SHA}, query="?repository=web", delivery="g-1")

    assert response.status_code == 202, response.json()
    assert WebhookDelivery.objects.get().repository == repository


def test_a_form_encoded_github_payload_is_accepted(poster, repository):
    response = poster.github(p.github_push(after=SHA), event="push", form=True)
    assert response.status_code == 202
    assert WebhookDelivery.objects.get().content_type.startswith("application/x-www-form-urlencoded")


def test_a_github_ping_answers_200_pong_and_runs_nothing(poster, repository, django_capture_on_commit_callbacks):
    with django_capture_on_commit_callbacks() as callbacks:
        response = poster.github(p.github_ping(), event="ping")
    assert (response.status_code, response.json()["status"]) == (200, "pong")
    assert WebhookDelivery.objects.get().status == DeliveryStatus.IGNORED
    assert callbacks == []


@pytest.mark.parametrize(
    ("provider", "event", "payload", "reason"),
    [
        ("github", "issues", {"action": "opened", "repository": p.github_repository()}, "'issues' starts no run"),
        ("github", "pull_request", p.github_pull_request(action="closed", head_sha=SHA), "'closed' starts no run"),
        ("github", "push", p.github_push(before=SHA, after=p.ZERO, deleted=True), "branch 'main' was deleted"),
        ("github", "push", p.github_push(ref="refs/tags/v1", before=SHA, after=p.ZERO, deleted=True), "tag 'v1' was"),
        ("gitlab", "Issue Hook", {"object_kind": "issue", "project": p.gitlab_project()}, "starts no run"),
        ("gitlab", "Merge Request Hook", p.gitlab_merge_request(action="close", last_commit=SHA), "'close'"),
        ("gitlab", "Push Hook", p.gitlab_push(before=SHA, after=p.ZERO), "was deleted"),
    ],
)
def test_events_that_start_no_run_get_202_ignored_and_are_kept(
    poster, repository, django_capture_on_commit_callbacks, provider, event, payload, reason
):
    with django_capture_on_commit_callbacks() as callbacks:
        response = getattr(poster, provider)(payload, event=event)
    assert response.status_code == 202
    assert response.json()["status"] == "ignored"
    assert reason in response.json()["reason"]
    delivery = WebhookDelivery.objects.get()
    assert delivery.status == DeliveryStatus.IGNORED
    assert reason in delivery.result
    assert callbacks == []
    assert not PipelineRun.objects.exists()


def test_a_redelivery_answers_200_and_stores_nothing_new(poster, repository, django_capture_on_commit_callbacks):
    payload = p.github_push(after=SHA)
    first = poster.github(payload, event="push", delivery="same-guid")
    with django_capture_on_commit_callbacks() as callbacks:
        again = poster.github(payload, event="push", delivery="same-guid")

    assert first.status_code == 202
    assert again.status_code == 200
    assert again.json() == {"status": "duplicate", "delivery": first.json()["delivery"], "delivery_status": "QUEUED"}
    assert WebhookDelivery.objects.count() == 1
    assert callbacks == []


def test_a_body_resent_without_a_delivery_id_is_recognized_as_a_redelivery(poster, repository):
    body = json.dumps({"repository": "web", "ref": "refs/heads/main", "after": SHA}).encode()
    assert poster.generic(body).status_code == 202
    assert poster.generic(body).status_code == 200
    assert WebhookDelivery.objects.get().delivery_id.startswith("sha256:")


def test_gitlab_deliveries_are_keyed_by_idempotency_key(poster, repository):
    payload = p.gitlab_push(after=SHA)
    assert poster.gitlab(payload, event="Push Hook", delivery="k1").status_code == 202
    assert poster.gitlab(payload, event="Push Hook", delivery="k1").status_code == 200
    assert poster.gitlab(payload, event="Push Hook", delivery="k2").status_code == 202
    assert sorted(WebhookDelivery.objects.values_list("delivery_id", flat=True)) == ["k1", "k2"]


# --- Finding the repository.


def test_the_repository_is_found_by_the_payloads_owner_and_name_in_any_case(poster, repository):
    response = poster.github(p.github_push(after=SHA, full_name="Acme/Web"), event="push")
    assert response.status_code == 202
    assert WebhookDelivery.objects.get().repository == repository


def test_the_repository_is_found_by_a_clone_url_without_a_forge_project(poster, repository):
    Repository.objects.filter(pk=repository.pk).update(forge_project="", clone_url="git@github.com:acme/web")
    assert poster.github(p.github_push(after=SHA), event="push").status_code == 202


def test_the_repository_parameter_overrides_the_payload(poster, repository):
    other = Repository.objects.create(name="mirror", clone_url="/srv/git/mirror.git", webhook_secret="other-secret")
    response = poster.github(p.github_push(after=SHA), event="push", query="?repository=mirror", secret="other-secret")
    assert response.status_code == 202
    assert WebhookDelivery.objects.get().repository == other


def test_of_two_repositories_with_one_clone_url_the_one_whose_secret_signed_wins(poster, repository):
    twin = Repository.objects.create(
        name="web-twin", clone_url=repository.clone_url, forge_project="acme/web", webhook_secret="twin-secret"
    )
    assert poster.github(p.github_push(after=SHA), event="push", secret="twin-secret").status_code == 202
    assert WebhookDelivery.objects.get().repository == twin


# --- Bad requests: a clear error, nothing stored.


def _big(n: int) -> bytes:
    return json.dumps({"ref": "refs/heads/main", "after": SHA, "padding": "x" * n}).encode()


BAD_REQUESTS = [
    # (provider, call kwargs, status, message)
    ("github", {"payload": p.github_push(after=SHA), "event": "push", "secret": "wrong"}, 401, "signature"),
    (
        "github",
        {"payload": p.github_push(after=SHA), "event": "push", "headers": {"X-Hub-Signature-256": ""}},
        401,
        "missing X-Hub-Signature-256",
    ),
    ("gitlab", {"payload": p.gitlab_push(after=SHA), "event": "Push Hook", "token": "wrong"}, 401, "X-Gitlab-Token"),
    ("generic", {"payload": {"repository": "web", "ref": "main", "after": SHA}, "secret": "wrong"}, 401, "signature"),
    (
        "github",
        {"payload": p.github_push(after=SHA, full_name="acme/unknown"), "event": "push"},
        404,
        "no repository matches",
    ),
    (
        "github",
        {"payload": p.github_push(after=SHA), "event": "push", "query": "?repository=nope"},
        404,
        "no repository named 'nope'",
    ),
    (
        "gitlab",
        {"payload": p.gitlab_push(after=SHA, path="other/project"), "event": "Push Hook"},
        404,
        "no repository matches",
    ),
    ("generic", {"payload": {"repository": "nope", "ref": "main", "after": SHA}}, 404, "no repository named"),
    ("generic", {"payload": {"ref": "main", "after": SHA}}, 400, "say which repository"),
    ("github", {"payload": b"{not json", "event": "push", "query": "?repository=web"}, 400, "not valid JSON"),
    ("github", {"payload": b"{not json", "event": "push"}, 400, "not valid JSON"),
    ("github", {"payload": b"", "event": "push", "query": "?repository=web"}, 400, "the body is empty"),
    ("github", {"payload": b"[]", "event": "push", "query": "?repository=web"}, 400, "must be a JSON object"),
    ("github", {"payload": {"repository": p.github_repository(), "after": SHA}, "event": "push"}, 400, "no 'ref'"),
    (
        "github",
        {"payload": {"repository": p.github_repository(), "ref": "refs/heads/main"}, "event": "push"},
        400,
        "no 'after'",
    ),
    ("github", {"payload": p.github_push(after="xyz"), "event": "push"}, 400, "hex commit sha"),
    ("github", {"payload": p.github_push(after=SHA), "event": ""}, 400, "missing X-GitHub-Event"),
    (
        "github",
        {"payload": {**p.github_pull_request(action="opened", head_sha=SHA), "number": "7"}, "event": "pull_request"},
        400,
        "'number' must be int",
    ),
    ("gitlab", {"payload": p.gitlab_push(after=SHA), "event": ""}, 400, "missing X-Gitlab-Event"),
    (
        "gitlab",
        {
            "payload": {
                **p.gitlab_merge_request(action="open", last_commit=SHA),
                "object_attributes": {"action": "open", "iid": 1},
            },
            "event": "Merge Request Hook",
        },
        400,
        "no 'object_attributes.source_branch'",
    ),
    ("generic", {"payload": {"repository": "web", "ref": "main"}}, 400, "no 'after'"),
    (
        "generic",
        {"payload": {"repository": "web", "ref": "main", "after": SHA}, "delivery": "k" * 300},
        400,
        "at most 200",
    ),
    ("generic", {"payload": _big(10_000), "query": "?repository=web"}, 413, "the limit is 8192"),
    ("github", {"payload": _big(10_000), "event": "push", "query": "?repository=web"}, 413, "the limit is 8192"),
]


@pytest.mark.parametrize(("provider", "kwargs", "status", "message"), BAD_REQUESTS)
def test_bad_requests_get_a_clear_error_and_nothing_is_created(
    poster, repository, settings, provider, kwargs, status, message
):
    settings.CONVEYOR_WEBHOOK_MAX_BYTES = 8192
    kwargs = dict(kwargs)
    payload = kwargs.pop("payload")
    if provider == "generic" and kwargs.get("delivery"):
        kwargs["headers"] = {"Idempotency-Key": kwargs.pop("delivery")}
    response = getattr(poster, provider)(payload, **kwargs)

    assert response.status_code == status, response.content
    assert message in response.json()["error"]
    assert nothing_was_created()


def test_webhook_endpoints_take_only_post(client):
    for provider in ("github", "gitlab", "generic"):
        assert client.get(f"/webhooks/{provider}/").status_code == 405


def test_a_repository_with_an_empty_secret_accepts_no_webhook(poster, repository):
    Repository.objects.filter(pk=repository.pk).update(webhook_secret="")
    assert poster.github(p.github_push(after=SHA), event="push", secret="").status_code == 401
    assert nothing_was_created()


class EndlessStream(io.RawIOBase):
    """A request body that never ends, counting what was read of it."""

    def __init__(self) -> None:
        self.read_bytes = 0

    def readable(self) -> bool:
        return True

    def read(self, size: int = -1) -> bytes:
        size = 65536 if size is None or size < 0 else size
        self.read_bytes += size
        return b"x" * size


def test_a_body_without_a_length_is_read_no_further_than_the_limit():
    request = RequestFactory().post("/webhooks/generic/", data=b"", content_type="application/json")
    stream = EndlessStream()
    request._stream = stream
    request.META.pop("CONTENT_LENGTH", None)

    with pytest.raises(WebhookError) as caught:
        read_body(request, 4096)
    assert caught.value.status == 413
    assert stream.read_bytes <= 4097


def test_a_declared_length_over_the_limit_is_refused_before_reading():
    request = RequestFactory().post("/webhooks/generic/", data=b"{}", content_type="application/json")
    stream = EndlessStream()
    request._stream = stream
    request.META["CONTENT_LENGTH"] = str(10 * 1024 * 1024)

    with pytest.raises(WebhookError) as caught:
        read_body(request, 5 * 1024 * 1024)
    assert caught.value.status == 413
    assert stream.read_bytes == 0


def test_the_default_body_limit_is_five_megabytes(settings):
    assert settings.CONVEYOR_WEBHOOK_MAX_BYTES == 5 * 1024 * 1024


# --- Fuzz: nothing a client sends produces a 500.

json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=20),
    lambda children: st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=10), children, max_size=4),
    max_leaves=20,
)
SHAPES = [
    ("github", "push", p.github_push(after=SHA)),
    ("github", "pull_request", p.github_pull_request(action="opened", head_sha=SHA)),
    ("github", "ping", p.github_ping()),
    ("gitlab", "Push Hook", p.gitlab_push(after=SHA)),
    ("gitlab", "Tag Push Hook", p.gitlab_push(ref="refs/tags/v1", after=SHA, tag=True)),
    ("gitlab", "Merge Request Hook", p.gitlab_merge_request(action="update", last_commit=SHA, oldrev=SHA)),
    ("generic", "", {"repository": "web", "ref": "refs/heads/main", "after": SHA}),
]
# Bytes that have broken receivers before: NUL (PostgreSQL text refuses it), invalid UTF-8,
# escapes that decode to NUL, form syntax.
NASTY = st.sampled_from(
    [b"\x00", b"%00", b"\xff", b"\xc3\xa9", b"&", b"=", b"payload=", b"{", b'"\\u0000"']
) | st.binary(max_size=12)
HEADER_NAMES = [
    "X-GitHub-Event",
    "X-GitHub-Delivery",
    "X-Hub-Signature-256",
    "X-Gitlab-Event",
    "X-Gitlab-Token",
    "X-Gitlab-Event-UUID",
    "Idempotency-Key",
    "X-Conveyor-Event",
    "X-Conveyor-Signature-256",
    "Content-Length",
]


def _mutate(value, paths: list[list[str]], replacements: list):
    value = json.loads(json.dumps(value))
    for path, replacement in zip(paths, replacements, strict=False):
        target = value
        for key in path[:-1]:
            if not isinstance(target, dict) or not isinstance(target.get(key), dict):
                break
            target = target[key]
        else:
            if isinstance(target, dict) and path:
                target[path[-1]] = replacement
    return value


@st.composite
def webhook_requests(draw):
    provider, event, shape = draw(st.sampled_from(SHAPES))
    keys = [
        "ref",
        "after",
        "before",
        "action",
        "number",
        "repository",
        "pull_request",
        "object_attributes",
        "project",
        "deleted",
        "object_kind",
    ]
    nested = ["head", "ref", "sha", "iid", "last_commit", "id", "oldrev", "source_branch", "full_name"]
    paths = draw(st.lists(st.lists(st.sampled_from(keys + nested), min_size=1, max_size=3), max_size=4))
    payload = _mutate(shape, paths, draw(st.lists(json_values, min_size=len(paths), max_size=len(paths))))
    body_kind = draw(st.sampled_from(["json", "json", "raw", "form"]))
    if body_kind == "json":
        body = json.dumps(payload).encode()
        content_type = "application/json"
    elif body_kind == "form":
        valid = urlencode({"payload": json.dumps(payload)}).encode()
        body = draw(st.sampled_from([b"payload=", valid + b"&extra="])) + b"".join(draw(st.lists(NASTY, max_size=6)))
        content_type = "application/x-www-form-urlencoded"
    else:
        body = draw(st.sampled_from([b"", json.dumps(payload).encode()])) + b"".join(draw(st.lists(NASTY, max_size=6)))
        content_type = draw(st.sampled_from(["application/json", "text/plain", "", "multipart/form-data"]))
    headers = draw(st.dictionaries(st.sampled_from(HEADER_NAMES), st.text(max_size=40), max_size=5))
    if provider == "github":
        headers.setdefault("X-GitHub-Event", event)
        if draw(st.booleans()):
            headers["X-Hub-Signature-256"] = p.sign(SECRET, body)
    elif provider == "gitlab":
        headers.setdefault("X-Gitlab-Event", event)
        if draw(st.booleans()):
            headers["X-Gitlab-Token"] = SECRET
    elif draw(st.booleans()):
        headers["X-Conveyor-Signature-256"] = p.sign(SECRET, body)
    headers.pop("Content-Length", None)
    query = draw(st.sampled_from(["", "?repository=web", "?repository=nope", "?repository=%00", "?repository="]))
    return provider, body, content_type, headers, query


@hypothesis_settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(request=webhook_requests())
def test_no_request_makes_a_webhook_endpoint_answer_500(client, repository, request):
    provider, body, content_type, headers, query = request
    # Unique delivery ids keep each example independent of the ones before it.
    headers.setdefault("X-GitHub-Delivery", str(uuid.uuid4()))
    response = client.post(f"/webhooks/{provider}/{query}", data=body, content_type=content_type, headers=headers)
    assert response.status_code in {200, 202, 400, 401, 404, 413}, response.content
    assert "error" in response.json() or "status" in response.json()


hostile_text = st.text(
    alphabet=st.sampled_from(["a", "/", ".", "-", " ", "\x00", "\x1f", "\u2028", "\ud800", "é", "😀", "\\", '"']),
    max_size=12,
)
STRING_FIELDS = [
    ["ref"],
    ["action"],
    ["pusher", "name"],
    ["user_username"],
    ["repository", "full_name"],
    ["project", "path_with_namespace"],
    ["pull_request", "head", "ref"],
    ["pull_request", "base", "ref"],
    ["pull_request", "title"],
    ["object_attributes", "source_branch"],
    ["object_attributes", "title"],
    ["object_attributes", "action"],
    ["sender", "login"],
    ["pusher"],
]


@st.composite
def signed_hostile_requests(draw):
    provider, event, shape = draw(st.sampled_from(SHAPES))
    paths = draw(st.lists(st.sampled_from(STRING_FIELDS), max_size=3))
    payload = _mutate(shape, paths, draw(st.lists(hostile_text, min_size=len(paths), max_size=len(paths))))
    body = json.dumps(payload).encode()
    content_type = "application/json"
    if draw(st.booleans()):
        body = urlencode({"payload": body.decode()}).encode() + b"".join(draw(st.lists(NASTY, max_size=4)))
        content_type = "application/x-www-form-urlencoded"
    headers = {"X-GitHub-Event": event, "X-Gitlab-Event": event, "X-Gitlab-Token": SECRET}
    headers["X-Hub-Signature-256"] = headers["X-Conveyor-Signature-256"] = p.sign(SECRET, body)
    headers["X-GitHub-Delivery"] = headers["Idempotency-Key"] = str(uuid.uuid4())
    return provider, body, content_type, headers, draw(st.sampled_from(["", "?repository=web"]))


@hypothesis_settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(request=signed_hostile_requests())
def test_signed_payloads_with_hostile_text_never_make_a_webhook_endpoint_answer_500(client, repository, request):
    provider, body, content_type, headers, query = request
    response = client.post(f"/webhooks/{provider}/{query}", data=body, content_type=content_type, headers=headers)
    assert response.status_code in {200, 202, 400, 404}, response.content
