"""Webhook payloads from GitHub, GitLab and the generic format: decoding, signatures, events.

Pure functions: no database, no git. `parse_event` turns a provider's event into a
WebhookEvent (a push, a tag, a pull/merge request, a ping, or something to ignore) or
raises WebhookError with the HTTP status and a message fit to show the sender. The
view (pipelines.views) and the delivery processor (pipelines.deliveries) share them, so a
stored delivery is read exactly as it was when it arrived.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import re
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any
from urllib.parse import parse_qs

from pipelines.models import WebhookProvider

ZERO_SHA = re.compile(r"^0+$")
_SHA = re.compile(r"^[0-9a-fA-F]{40}([0-9a-fA-F]{24})?$")
_CONTROL = re.compile(r"[\x00-\x1f\x7f\ufffd]")
# What PostgreSQL text cannot hold (NUL) and UTF-8 cannot encode (lone surrogates, which JSON's
# \ud800 escapes produce): replaced on the way in, so a hostile payload cannot break a query.
_UNSTORABLE = re.compile("[\x00\ud800-\udfff]")
MAX_REF_LENGTH = 255

# The headers kept with a stored delivery (lower-case). Never a signature or a token.
HEADERS_OF_INTEREST = (
    "content-type",
    "user-agent",
    "x-github-event",
    "x-github-delivery",
    "x-github-hook-id",
    "x-github-hook-installation-target-type",
    "x-gitlab-event",
    "x-gitlab-event-uuid",
    "x-gitlab-webhook-uuid",
    "x-gitlab-instance",
    "idempotency-key",
    "x-conveyor-event",
)
GITHUB_SIGNATURE = "X-Hub-Signature-256"
GITLAB_TOKEN_HEADER = "X-Gitlab-Token"  # noqa: S105 (a header name, not a secret)
GENERIC_SIGNATURE = "X-Conveyor-Signature-256"


class WebhookError(Exception):
    """The request cannot be accepted: `status` is the HTTP status to answer with."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message


def bad_request(message: str) -> WebhookError:
    return WebhookError(400, message)


class EventKind(StrEnum):
    PUSH = "push"
    TAG = "tag"
    PULL_REQUEST = "pull_request"
    PING = "ping"
    IGNORED = "ignored"


@dataclass(frozen=True)
class PullRequest:
    number: int
    source_branch: str
    target_branch: str
    title: str = ""
    url: str = ""
    target_sha: str = ""
    project_path: str = ""
    source_project_path: str = ""
    project_url: str = ""
    draft: bool = False
    # The head ref a forge keeps for the request in its target repository, which also holds
    # commits of pull requests from forks (refs/pull/N/head, refs/merge-requests/N/head).
    head_ref: str = ""


@dataclass(frozen=True)
class WebhookEvent:
    kind: EventKind
    event: str  # the provider's event name, as sent
    action: str = ""
    ref: str = ""  # branch or tag name, without refs/heads/ or refs/tags/
    sha: str = ""
    before: str = ""
    actor: str = ""
    reason: str = ""  # why it is ignored
    pull_request: PullRequest | None = None
    # How the payload names its repository: owner/name paths and clone URLs.
    repository_paths: tuple[str, ...] = ()
    repository_urls: tuple[str, ...] = ()
    repository_name: str = ""  # the generic format's "repository"

    @property
    def runs(self) -> bool:
        return self.kind in (EventKind.PUSH, EventKind.TAG, EventKind.PULL_REQUEST)

    def ci_variables(self) -> dict[str, str]:
        """The event's CI_* variables beyond those the trigger context sets itself."""
        values: dict[str, str] = {}
        if self.before and not ZERO_SHA.match(self.before):
            values["CI_COMMIT_BEFORE_SHA"] = self.before
        pr = self.pull_request
        if pr is not None:
            values.update(
                {
                    "CI_MERGE_REQUEST_IID": str(pr.number),
                    "CI_MERGE_REQUEST_TITLE": pr.title,
                    "CI_MERGE_REQUEST_SOURCE_BRANCH_NAME": pr.source_branch,
                    "CI_MERGE_REQUEST_SOURCE_BRANCH_SHA": self.sha,
                    "CI_MERGE_REQUEST_TARGET_BRANCH_NAME": pr.target_branch,
                    "CI_MERGE_REQUEST_EVENT_TYPE": "detached",
                    "CI_MERGE_REQUEST_DRAFT": "true" if pr.draft else "false",
                }
            )
            optional = {
                "CI_MERGE_REQUEST_TARGET_BRANCH_SHA": pr.target_sha,
                "CI_MERGE_REQUEST_PROJECT_PATH": pr.project_path,
                "CI_MERGE_REQUEST_PROJECT_URL": pr.project_url,
                "CI_MERGE_REQUEST_SOURCE_PROJECT_PATH": pr.source_project_path,
                "CI_MERGE_REQUEST_URL": pr.url,
            }
            values.update({name: value for name, value in optional.items() if value})
        return values


# --- Bodies and signatures.


def header(headers: dict[str, str], name: str) -> str:
    """A header by case-insensitive name ('' if absent). `headers` has lower-case keys."""
    return headers.get(name.lower(), "")


def decode_payload(body: bytes, content_type: str) -> dict[str, Any]:
    """The JSON object in the body: raw JSON, or form-encoded with the JSON in `payload=`."""
    media_type = content_type.split(";", 1)[0].strip().lower()
    if b"\x00" in body:
        # No JSON text has one, and the body is stored as text (PostgreSQL refuses NUL).
        raise bad_request("the body contains a NUL byte")
    if media_type == "application/x-www-form-urlencoded":
        try:
            form = parse_qs(body.decode("utf-8"), keep_blank_values=True, strict_parsing=False, max_num_fields=100)
        except (UnicodeDecodeError, ValueError) as exc:
            raise bad_request(f"the form-encoded body cannot be read: {exc}") from None
        if "payload" not in form:
            raise bad_request("a form-encoded body must carry the JSON in a 'payload' field")
        text = form["payload"][0]
    else:
        if not body.strip():
            raise bad_request("the body is empty: a JSON object was expected")
        try:
            text = body.decode("utf-8")
        except UnicodeDecodeError:
            raise bad_request("the body is not valid UTF-8") from None
    try:
        payload = json.loads(text)
    except (ValueError, RecursionError) as exc:
        raise bad_request(f"the body is not valid JSON: {exc}") from None
    if not isinstance(payload, dict):
        raise bad_request(f"the payload must be a JSON object, not {type(payload).__name__}")
    return payload


def hmac_sha256(secret: str, body: bytes) -> str:
    return hmac.new(secret.encode("utf-8"), body, hashlib.sha256).hexdigest()


def _equal(expected: str, given: str) -> bool:
    # compare_digest on str refuses non-ASCII text; on bytes it takes anything, in constant time.
    return hmac.compare_digest(expected.encode("utf-8"), given.encode("utf-8", "surrogateescape"))


def verify_signature(provider: str, *, secret: str, headers: dict[str, str], body: bytes) -> None:
    """Raise WebhookError(401) unless the request is signed with `secret`.

    GitHub and the generic format: HMAC-SHA256 of the raw body, hex, after 'sha256='
    (X-Hub-Signature-256; the generic format also takes X-Conveyor-Signature-256).
    GitLab: the secret itself in X-Gitlab-Token. An empty secret accepts nothing.
    """
    if provider == WebhookProvider.GITLAB:
        given = header(headers, GITLAB_TOKEN_HEADER)
        if not given:
            raise WebhookError(401, f"missing {GITLAB_TOKEN_HEADER} header")
        if not secret or not _equal(secret, given):
            raise WebhookError(401, f"{GITLAB_TOKEN_HEADER} does not match the repository's webhook secret")
        return
    names = [GITHUB_SIGNATURE] if provider == WebhookProvider.GITHUB else [GENERIC_SIGNATURE, GITHUB_SIGNATURE]
    given = next((header(headers, name) for name in names if header(headers, name)), "")
    if not given:
        raise WebhookError(401, f"missing {' or '.join(names)} header")
    if not secret or not _equal(f"sha256={hmac_sha256(secret, body)}", given.strip()):
        raise WebhookError(401, "the signature does not match the body and the repository's webhook secret")


# --- Field access with clear messages.


def _get(data: Any, path: str, kind: type | tuple[type, ...], *, required: bool = True) -> Any:
    current = data
    for part in path.split("."):
        if not isinstance(current, dict) or part not in current or current[part] is None:
            if required:
                raise bad_request(f"the payload has no '{path}'")
            return None
        current = current[part]
    if not isinstance(current, kind) or (isinstance(current, bool) and bool not in _as_tuple(kind)):
        if required:
            expected = " or ".join(k.__name__ for k in _as_tuple(kind))
            raise bad_request(f"'{path}' must be {expected}, not {type(current).__name__}")
        return None
    return current


def _as_tuple(kind: type | tuple[type, ...]) -> tuple[type, ...]:
    return kind if isinstance(kind, tuple) else (kind,)


def _str(data: Any, path: str, *, required: bool = True) -> str:
    return _UNSTORABLE.sub("\ufffd", _get(data, path, str, required=required) or "")


def _sha(data: Any, path: str) -> str:
    value = _str(data, path)
    if not _SHA.match(value):
        raise bad_request(f"'{path}' must be a 40 (or 64) character hex commit sha, not {value[:80]!r}")
    return value.lower()


def _name(value: str, what: str) -> str:
    if not value or len(value) > MAX_REF_LENGTH or _CONTROL.search(value):
        raise bad_request(f"{what} {value[:80]!r} is not a valid branch or tag name")
    return value


def split_ref(ref: str) -> tuple[str, bool] | None:
    """'refs/heads/x' -> ('x', False), 'refs/tags/v1' -> ('v1', True); other refs -> None."""
    for prefix, is_tag in (("refs/heads/", False), ("refs/tags/", True)):
        if ref.startswith(prefix):
            return _name(ref[len(prefix) :], "ref"), is_tag
    return None


def _urls(data: Any, *paths: str) -> tuple[str, ...]:
    return tuple(value for path in paths if (value := _str(data, path, required=False)))


def ignored(event: str, reason: str, *, action: str = "", **fields: Any) -> WebhookEvent:
    return WebhookEvent(kind=EventKind.IGNORED, event=event, action=action, reason=reason, **fields)


def _push_event(
    *, event: str, ref: str, after: str, before: str, actor: str, where: dict[str, Any], deleted: bool = False
) -> WebhookEvent:
    split = split_ref(ref)
    if split is None:
        return ignored(event, f"ref {ref[:100]!r} is neither a branch nor a tag", **where)
    name, is_tag = split
    if deleted or ZERO_SHA.match(after):
        what = "tag" if is_tag else "branch"
        return ignored(event, f"{what} {name!r} was deleted", ref=name, **where)
    if not _SHA.match(after):
        raise bad_request(f"'after' must be a 40 (or 64) character hex commit sha, not {after[:80]!r}")
    return WebhookEvent(
        kind=EventKind.TAG if is_tag else EventKind.PUSH,
        event=event,
        ref=name,
        sha=after.lower(),
        before=before if _SHA.match(before) else "",
        actor=actor,
        **where,
    )


# --- GitHub.

GITHUB_PR_ACTIONS = frozenset({"opened", "synchronize", "reopened"})


def _github_where(payload: dict[str, Any]) -> dict[str, Any]:
    return {
        "repository_paths": _urls(payload, "repository.full_name"),
        "repository_urls": _urls(
            payload, "repository.clone_url", "repository.ssh_url", "repository.git_url", "repository.html_url"
        ),
    }


def parse_github(event: str, payload: dict[str, Any]) -> WebhookEvent:
    where = _github_where(payload)
    if event == "ping":
        return WebhookEvent(kind=EventKind.PING, event=event, reason="ping", **where)
    if event == "push":
        return _push_event(
            event=event,
            ref=_str(payload, "ref"),
            after=_str(payload, "after"),
            before=_str(payload, "before", required=False),
            actor=_str(payload, "pusher.name", required=False) or _str(payload, "sender.login", required=False),
            deleted=_get(payload, "deleted", bool, required=False) is True,
            where=where,
        )
    if event == "pull_request":
        action = _str(payload, "action")
        if action not in GITHUB_PR_ACTIONS:
            return ignored(event, f"pull request action {action[:40]!r} starts no run", action=action, **where)
        number = _get(payload, "number", int)
        head_repo = _str(payload, "pull_request.head.repo.full_name", required=False)
        pr = PullRequest(
            number=number,
            source_branch=_name(_str(payload, "pull_request.head.ref"), "pull_request.head.ref"),
            target_branch=_name(_str(payload, "pull_request.base.ref"), "pull_request.base.ref"),
            title=_str(payload, "pull_request.title", required=False),
            url=_str(payload, "pull_request.html_url", required=False),
            target_sha=_str(payload, "pull_request.base.sha", required=False),
            project_path=_str(payload, "repository.full_name", required=False),
            source_project_path=head_repo,
            project_url=_str(payload, "repository.html_url", required=False),
            draft=_get(payload, "pull_request.draft", bool, required=False) is True,
            head_ref=f"refs/pull/{number}/head",
        )
        return WebhookEvent(
            kind=EventKind.PULL_REQUEST,
            event=event,
            action=action,
            ref=pr.source_branch,
            sha=_sha(payload, "pull_request.head.sha"),
            actor=_str(payload, "sender.login", required=False),
            pull_request=pr,
            **where,
        )
    return ignored(event, f"event {event[:60]!r} starts no run", **where)


# --- GitLab.

GITLAB_MR_ACTIONS = frozenset({"open", "reopen", "update"})


def _gitlab_where(payload: dict[str, Any]) -> dict[str, Any]:
    return {
        "repository_paths": _urls(payload, "project.path_with_namespace"),
        "repository_urls": _urls(
            payload,
            "project.git_http_url",
            "project.git_ssh_url",
            "project.http_url",
            "project.ssh_url",
            "project.web_url",
            "repository.git_http_url",
            "repository.git_ssh_url",
        ),
    }


def parse_gitlab(event: str, payload: dict[str, Any]) -> WebhookEvent:
    where = _gitlab_where(payload)
    if event in ("Push Hook", "Tag Push Hook"):
        kind = "tag_push" if event == "Tag Push Hook" else "push"
        object_kind = _str(payload, "object_kind", required=False)
        if object_kind and object_kind != kind:
            raise bad_request(f"X-Gitlab-Event {event!r} does not match object_kind {object_kind[:40]!r}")
        # `after` of an annotated tag is the tag object; git peels it to its commit.
        return _push_event(
            event=event,
            ref=_str(payload, "ref"),
            after=_str(payload, "after"),
            before=_str(payload, "before", required=False),
            actor=_str(payload, "user_username", required=False) or _str(payload, "user_name", required=False),
            where=where,
        )
    if event == "Merge Request Hook":
        action = _str(payload, "object_attributes.action", required=False)
        if action not in GITLAB_MR_ACTIONS:
            what = action[:40] or "(none)"
            return ignored(event, f"merge request action {what!r} starts no run", action=action, **where)
        # "update" is also sent for a new title or label; only new commits (oldrev) need a run.
        if action == "update" and not _str(payload, "object_attributes.oldrev", required=False):
            return ignored(event, "merge request update without new commits", action=action, **where)
        iid = _get(payload, "object_attributes.iid", int)
        pr = PullRequest(
            number=iid,
            source_branch=_name(_str(payload, "object_attributes.source_branch"), "object_attributes.source_branch"),
            target_branch=_name(_str(payload, "object_attributes.target_branch"), "object_attributes.target_branch"),
            title=_str(payload, "object_attributes.title", required=False),
            url=_str(payload, "object_attributes.url", required=False),
            project_path=_str(payload, "project.path_with_namespace", required=False),
            source_project_path=_str(payload, "object_attributes.source.path_with_namespace", required=False),
            project_url=_str(payload, "project.web_url", required=False),
            draft=_get(payload, "object_attributes.draft", bool, required=False) is True,
            head_ref=f"refs/merge-requests/{iid}/head",
        )
        return WebhookEvent(
            kind=EventKind.PULL_REQUEST,
            event=event,
            action=action,
            ref=pr.source_branch,
            sha=_sha(payload, "object_attributes.last_commit.id"),
            actor=_str(payload, "user.username", required=False),
            pull_request=pr,
            **where,
        )
    return ignored(event, f"event {event[:60]!r} starts no run", **where)


# --- The generic format (see README: "The generic webhook").


def parse_generic(event: str, payload: dict[str, Any]) -> WebhookEvent:
    event = event or _str(payload, "event", required=False) or "push"
    where = {"repository_name": _str(payload, "repository", required=False)}
    if event == "ping":
        return WebhookEvent(kind=EventKind.PING, event=event, reason="ping", **where)
    if event != "push":
        return ignored(event, f"event {event[:60]!r} starts no run", **where)
    ref = _str(payload, "ref")
    if not ref.startswith("refs/"):
        ref = f"refs/heads/{ref}"
    return _push_event(
        event=event,
        ref=ref,
        after=_str(payload, "after"),
        before=_str(payload, "before", required=False),
        actor=_str(payload, "pusher", required=False),
        where=where,
    )


def repository_keys(provider: str, payload: dict[str, Any]) -> dict[str, tuple[str, ...]]:
    """How a GitHub or GitLab payload names its repository: owner/name paths and clone URLs."""
    if provider == WebhookProvider.GITHUB:
        return _github_where(payload)
    if provider == WebhookProvider.GITLAB:
        return _gitlab_where(payload)
    return {"repository_paths": (), "repository_urls": ()}


def event_name(provider: str, headers: dict[str, str]) -> str:
    """The event a request says it carries. GitHub and GitLab must name it; generic may not."""
    if provider == WebhookProvider.GITHUB:
        name = header(headers, "X-GitHub-Event")
        if not name:
            raise bad_request("missing X-GitHub-Event header")
        return name
    if provider == WebhookProvider.GITLAB:
        name = header(headers, "X-Gitlab-Event")
        if not name:
            raise bad_request("missing X-Gitlab-Event header")
        return name
    return header(headers, "X-Conveyor-Event")


def parse_event(provider: str, event: str, payload: dict[str, Any]) -> WebhookEvent:
    parser = {
        WebhookProvider.GITHUB: parse_github,
        WebhookProvider.GITLAB: parse_gitlab,
        WebhookProvider.GENERIC: parse_generic,
    }[WebhookProvider(provider)]
    return parser(event[:100], payload)


def delivery_id_from(provider: str, headers: dict[str, str]) -> str:
    """The provider's id of this delivery, the same on a redelivery; '' if it sent none."""
    names = {
        WebhookProvider.GITHUB: ("X-GitHub-Delivery",),
        # Idempotency-Key (GitLab 17.4+) is the same on every retry of one hook's event.
        WebhookProvider.GITLAB: ("Idempotency-Key", "X-Gitlab-Event-UUID"),
        WebhookProvider.GENERIC: ("Idempotency-Key", "X-Conveyor-Delivery"),
    }[WebhookProvider(provider)]
    for name in names:
        value = header(headers, name).strip()
        if value:
            if len(value) > 200 or _CONTROL.search(value):
                raise bad_request(f"{name} must be at most 200 printable characters")
            return value
    return ""


def body_delivery_id(repository_id: int, body: bytes) -> str:
    return "sha256:" + hashlib.sha256(f"{repository_id}:".encode() + body).hexdigest()


@dataclass
class Request:
    """What the receiver needs from an HTTP request, framework-free (and easy to test)."""

    provider: str
    headers: dict[str, str]  # lower-case names
    body: bytes
    query_repository: str = ""
    content_type: str = ""
    kept_headers: dict[str, str] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.kept_headers = {name: self.headers[name][:500] for name in HEADERS_OF_INTEREST if name in self.headers}
