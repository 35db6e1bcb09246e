"""Reading webhook payloads and checking signatures (pipelines.webhooks): no database, no git."""

from __future__ import annotations

import json
from urllib.parse import urlencode

import pytest

from pipelines.models import WebhookProvider
from pipelines.tests import webhook_payloads as p
from pipelines.webhooks import (
    EventKind,
    WebhookError,
    decode_payload,
    delivery_id_from,
    parse_event,
    verify_signature,
)

SHA = "a" * 40
OTHER = "b" * 40


# --- Signatures.


def test_githubs_documented_test_vector_verifies() -> None:
    verify_signature(
        WebhookProvider.GITHUB,
        secret=p.GITHUB_VECTOR_SECRET,
        headers={"x-hub-signature-256": p.GITHUB_VECTOR_SIGNATURE},
        body=p.GITHUB_VECTOR_BODY,
    )


@pytest.mark.parametrize(
    ("provider", "headers", "secret", "message"),
    [
        (WebhookProvider.GITHUB, {}, p.GITHUB_VECTOR_SECRET, "missing X-Hub-Signature-256"),
        (WebhookProvider.GITHUB, {"x-hub-signature-256": "sha256=00"}, p.GITHUB_VECTOR_SECRET, "does not match"),
        # The legacy SHA-1 header alone is not enough.
        (WebhookProvider.GITHUB, {"x-hub-signature": "sha1=01234"}, p.GITHUB_VECTOR_SECRET, "missing"),
        # The right signature under another secret.
        (WebhookProvider.GITHUB, {"x-hub-signature-256": p.GITHUB_VECTOR_SIGNATURE}, "another secret", "does not"),
        # Without the sha256= prefix.
        (WebhookProvider.GITHUB, {"x-hub-signature-256": p.GITHUB_VECTOR_SIGNATURE[7:]}, p.GITHUB_VECTOR_SECRET, "not"),
        # An empty secret accepts nothing, not even a signature made with the empty key.
        (WebhookProvider.GITHUB, {"x-hub-signature-256": p.sign("", p.GITHUB_VECTOR_BODY)}, "", "does not match"),
        (WebhookProvider.GITHUB, {"x-hub-signature-256": "sha256=ünïcödé"}, p.GITHUB_VECTOR_SECRET, "does not"),
        (WebhookProvider.GITLAB, {}, "token", "missing X-Gitlab-Token"),
        (WebhookProvider.GITLAB, {"x-gitlab-token": "tokem"}, "token", "does not match"),
        (WebhookProvider.GITLAB, {"x-gitlab-token": ""}, "", "missing"),
        (WebhookProvider.GENERIC, {}, p.GITHUB_VECTOR_SECRET, "missing X-Conveyor-Signature-256"),
    ],
)
def test_a_missing_or_wrong_signature_is_refused_with_401(provider, headers, secret, message) -> None:
    with pytest.raises(WebhookError) as caught:
        verify_signature(provider, secret=secret, headers=headers, body=p.GITHUB_VECTOR_BODY)
    assert caught.value.status == 401
    assert message in caught.value.message


def test_gitlab_compares_the_token_and_generic_takes_either_signature_header() -> None:
    verify_signature(WebhookProvider.GITLAB, secret="token", headers={"x-gitlab-token": "token"}, body=b"{}")
    for name in ("x-conveyor-signature-256", "x-hub-signature-256"):
        headers = {name: p.GITHUB_VECTOR_SIGNATURE}
        verify_signature(WebhookProvider.GENERIC, secret=p.GITHUB_VECTOR_SECRET, headers=headers, body=b"Hello, World!")


# --- Bodies.


def test_a_form_encoded_body_carries_the_json_in_payload() -> None:
    body = urlencode({"payload": json.dumps({"zen": "hi"})}).encode()
    assert decode_payload(body, "application/x-www-form-urlencoded; charset=utf-8") == {"zen": "hi"}


@pytest.mark.parametrize(
    ("body", "content_type", "message"),
    [
        (b"", "application/json", "the body is empty"),
        (b"{not json", "application/json", "not valid JSON"),
        (b"[1, 2]", "application/json", "must be a JSON object, not list"),
        (b"\xff\xfe", "application/json", "not valid UTF-8"),
        (b"other=1", "application/x-www-form-urlencoded", "'payload' field"),
        (b"payload=%5B%5D", "application/x-www-form-urlencoded", "not list"),
        (b"[" * 100_000, "application/json", "not valid JSON"),
        (b"payload=%7B%7D&other=\x00", "application/x-www-form-urlencoded", "NUL byte"),
    ],
)
def test_an_unreadable_body_is_a_400_that_says_why(body, content_type, message) -> None:
    with pytest.raises(WebhookError) as caught:
        decode_payload(body, content_type)
    assert caught.value.status == 400
    assert message in caught.value.message


# --- GitHub events.


def test_a_github_branch_push_is_a_push_of_that_branch_by_the_pusher() -> None:
    event = parse_event(WebhookProvider.GITHUB, "push", p.github_push(after=SHA, before=OTHER))
    assert (event.kind, event.ref, event.sha, event.actor) == (EventKind.PUSH, "main", SHA, "ada")
    assert event.repository_paths == ("acme/web",)
    assert "https://github.com/acme/web.git" in event.repository_urls
    assert event.ci_variables() == {"CI_COMMIT_BEFORE_SHA": OTHER}


def test_a_github_tag_push_is_a_tag() -> None:
    event = parse_event(WebhookProvider.GITHUB, "push", p.github_push(ref="refs/tags/v1.2.0", after=SHA))
    assert (event.kind, event.ref) == (EventKind.TAG, "v1.2.0")


@pytest.mark.parametrize("ref", ["refs/heads/old-feature", "refs/tags/v0.1"])
def test_a_github_branch_or_tag_deletion_is_ignored(ref: str) -> None:
    event = parse_event(WebhookProvider.GITHUB, "push", p.github_push(ref=ref, before=SHA, after=p.ZERO, deleted=True))
    assert event.kind == EventKind.IGNORED
    assert "was deleted" in event.reason


@pytest.mark.parametrize("action", ["opened", "synchronize", "reopened"])
def test_github_pull_requests_opened_synchronized_or_reopened_run(action: str) -> None:
    payload = p.github_pull_request(action=action, number=42, head_sha=SHA, head_ref="feature/x")
    event = parse_event(WebhookProvider.GITHUB, "pull_request", payload)
    assert (event.kind, event.ref, event.sha, event.action) == (EventKind.PULL_REQUEST, "feature/x", SHA, action)
    assert event.pull_request.head_ref == "refs/pull/42/head"
    variables = event.ci_variables()
    assert variables["CI_MERGE_REQUEST_IID"] == "42"
    assert variables["CI_MERGE_REQUEST_SOURCE_BRANCH_NAME"] == "feature/x"
    assert variables["CI_MERGE_REQUEST_TARGET_BRANCH_NAME"] == "main"
    assert variables["CI_MERGE_REQUEST_SOURCE_BRANCH_SHA"] == SHA
    assert variables["CI_MERGE_REQUEST_TARGET_BRANCH_SHA"] == payload["pull_request"]["base"]["sha"]
    assert variables["CI_MERGE_REQUEST_PROJECT_PATH"] == "acme/web"


@pytest.mark.parametrize("action", ["closed", "edited", "labeled", "assigned", "review_requested"])
def test_other_github_pull_request_actions_are_acknowledged_and_ignored(action: str) -> None:
    event = parse_event(WebhookProvider.GITHUB, "pull_request", p.github_pull_request(action=action, head_sha=SHA))
    assert event.kind == EventKind.IGNORED
    assert action in event.reason


def test_a_github_ping_is_a_ping_and_other_events_are_ignored() -> None:
    assert parse_event(WebhookProvider.GITHUB, "ping", p.github_ping()).kind == EventKind.PING
    assert parse_event(WebhookProvider.GITHUB, "issues", {"action": "opened"}).kind == EventKind.IGNORED


@pytest.mark.parametrize(
    ("event", "payload", "message"),
    [
        ("push", {"after": SHA}, "no 'ref'"),
        ("push", {"ref": "refs/heads/main"}, "no 'after'"),
        ("push", {"ref": "refs/heads/main", "after": "not-a-sha"}, "40 (or 64) character hex"),
        ("push", {"ref": 42, "after": SHA}, "'ref' must be str, not int"),
        ("push", {"ref": "refs/heads/\x01bad", "after": SHA}, "not a valid branch or tag name"),
        ("pull_request", {"action": "opened"}, "no 'number'"),
        ("pull_request", {"action": "opened", "number": True}, "'number' must be int, not bool"),
        ("pull_request", {"action": "opened", "number": 1, "pull_request": {}}, "no 'pull_request.head.ref'"),
    ],
)
def test_github_payloads_missing_fields_are_a_400_naming_the_field(event, payload, message) -> None:
    with pytest.raises(WebhookError) as caught:
        parse_event(WebhookProvider.GITHUB, event, payload)
    assert caught.value.status == 400
    assert message in caught.value.message


# --- GitLab events.


def test_a_gitlab_push_and_tag_push_are_read_from_their_documented_shapes() -> None:
    push = parse_event(WebhookProvider.GITLAB, "Push Hook", p.gitlab_push(after=SHA, before=OTHER))
    assert (push.kind, push.ref, push.sha, push.actor) == (EventKind.PUSH, "main", SHA, "jsmith")
    assert push.repository_paths == ("acme/web",)
    tag = parse_event(
        WebhookProvider.GITLAB, "Tag Push Hook", p.gitlab_push(ref="refs/tags/v1.0.0", after=SHA, tag=True)
    )
    assert (tag.kind, tag.ref) == (EventKind.TAG, "v1.0.0")


def test_a_gitlab_branch_or_tag_deletion_is_ignored() -> None:
    deleted = p.gitlab_push(before=SHA, after=p.ZERO)
    assert parse_event(WebhookProvider.GITLAB, "Push Hook", deleted).kind == EventKind.IGNORED
    tag = p.gitlab_push(ref="refs/tags/v1", before=SHA, after=p.ZERO, tag=True)
    assert parse_event(WebhookProvider.GITLAB, "Tag Push Hook", tag).kind == EventKind.IGNORED


@pytest.mark.parametrize(("action", "oldrev"), [("open", None), ("reopen", None), ("update", OTHER)])
def test_gitlab_merge_requests_opened_reopened_or_updated_with_commits_run(action, oldrev) -> None:
    payload = p.gitlab_merge_request(action=action, iid=5, last_commit=SHA, oldrev=oldrev)
    event = parse_event(WebhookProvider.GITLAB, "Merge Request Hook", payload)
    assert (event.kind, event.ref, event.sha, event.actor) == (EventKind.PULL_REQUEST, "feature", SHA, "root")
    assert event.pull_request.head_ref == "refs/merge-requests/5/head"
    assert event.ci_variables()["CI_MERGE_REQUEST_IID"] == "5"
    assert event.ci_variables()["CI_MERGE_REQUEST_PROJECT_URL"] == "https://gitlab.example.com/acme/web"


@pytest.mark.parametrize(
    ("action", "oldrev", "reason"),
    [
        ("update", None, "without new commits"),
        ("close", None, "'close' starts no run"),
        ("merge", None, "'merge' starts no run"),
        ("approved", None, "'approved' starts no run"),
    ],
)
def test_other_gitlab_merge_request_events_are_ignored(action, oldrev, reason) -> None:
    payload = p.gitlab_merge_request(action=action, last_commit=SHA, oldrev=oldrev)
    event = parse_event(WebhookProvider.GITLAB, "Merge Request Hook", payload)
    assert event.kind == EventKind.IGNORED
    assert reason in event.reason


def test_a_gitlab_event_header_that_contradicts_the_payload_is_a_400() -> None:
    with pytest.raises(WebhookError, match="does not match object_kind"):
        parse_event(WebhookProvider.GITLAB, "Tag Push Hook", p.gitlab_push(after=SHA))


# --- Generic format and delivery ids.


def test_the_generic_format_takes_full_or_bare_refs() -> None:
    full = parse_event(WebhookProvider.GENERIC, "", {"ref": "refs/tags/v2", "after": SHA, "pusher": "git"})
    assert (full.kind, full.ref, full.actor) == (EventKind.TAG, "v2", "git")
    bare = parse_event(WebhookProvider.GENERIC, "", {"ref": "develop", "after": SHA})
    assert (bare.kind, bare.ref) == (EventKind.PUSH, "develop")
    assert parse_event(WebhookProvider.GENERIC, "ping", {}).kind == EventKind.PING


def test_delivery_ids_come_from_each_providers_header() -> None:
    assert delivery_id_from(WebhookProvider.GITHUB, {"x-github-delivery": "72d3162e"}) == "72d3162e"
    both = {"idempotency-key": "key-1", "x-gitlab-event-uuid": "uuid-1"}
    assert delivery_id_from(WebhookProvider.GITLAB, both) == "key-1"
    assert delivery_id_from(WebhookProvider.GITLAB, {"x-gitlab-event-uuid": "uuid-1"}) == "uuid-1"
    assert delivery_id_from(WebhookProvider.GENERIC, {}) == ""
    with pytest.raises(WebhookError, match="at most 200"):
        delivery_id_from(WebhookProvider.GENERIC, {"idempotency-key": "x" * 201})
