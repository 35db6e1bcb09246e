"""Webhook payloads shaped as GitHub and GitLab document them (fields trimmed to what a
receiver reads, plus a few neighbours so the shapes stay recognizable), and signing helpers.

GitHub: "Webhook events and payloads" (push, pull_request, ping) and "Validating webhook
deliveries". GitLab: "Webhook events" (Push events, Tag events, Merge request events).
"""

from __future__ import annotations

import hashlib
import hmac
import json
from typing import Any

ZERO = "0" * 40

# GitHub's documented test vector for X-Hub-Signature-256.
GITHUB_VECTOR_SECRET = "It's a Secret to Everybody"
GITHUB_VECTOR_BODY = b"Hello, World!"
GITHUB_VECTOR_SIGNATURE = "sha256=757107ea0eb2509fc211221cce984b8a37570b6d7586c22c46f4379c8b043e17"


def sign(secret: str, body: bytes) -> str:
    return "sha256=" + hmac.new(secret.encode(), body, hashlib.sha256).hexdigest()


def dumps(payload: dict[str, Any]) -> bytes:
    return json.dumps(payload).encode()


# --- GitHub.


def github_repository(full_name: str = "acme/web") -> dict[str, Any]:
    owner, name = full_name.split("/")
    return {
        "id": 1296269,
        "node_id": "MDEwOlJlcG9zaXRvcnkxMjk2MjY5",
        "name": name,
        "full_name": full_name,
        "private": False,
        "owner": {"login": owner, "id": 1, "type": "Organization"},
        "html_url": f"https://github.com/{full_name}",
        "url": f"https://api.github.com/repos/{full_name}",
        "git_url": f"git://github.com/{full_name}.git",
        "ssh_url": f"git@github.com:{full_name}.git",
        "clone_url": f"https://github.com/{full_name}.git",
        "default_branch": "main",
    }


def github_push(
    *, ref: str = "refs/heads/main", before: str = ZERO, after: str, full_name: str = "acme/web", deleted: bool = False
) -> dict[str, Any]:
    return {
        "ref": ref,
        "before": before,
        "after": after,
        "created": before == ZERO,
        "deleted": deleted,
        "forced": False,
        "base_ref": None,
        "compare": f"https://github.com/{full_name}/compare/{before[:12]}...{after[:12]}",
        "commits": [
            {
                "id": after,
                "tree_id": "f9d2a07e9488b91af2641b26b9407fe22a451433",
                "distinct": True,
                "message": "Update README.md",
                "timestamp": "2026-11-26T14:12:01-08:00",
                "author": {"name": "Ada Lovelace", "email": "ada@example.com", "username": "ada"},
                "added": [],
                "removed": [],
                "modified": ["README.md"],
            }
        ]
        if not deleted
        else [],
        "head_commit": None if deleted else {"id": after, "message": "Update README.md"},
        "repository": github_repository(full_name),
        "pusher": {"name": "ada", "email": "ada@example.com"},
        "sender": {"login": "ada", "id": 583231, "type": "User"},
    }


def github_pull_request(
    *,
    action: str,
    number: int = 7,
    head_ref: str = "feature",
    head_sha: str,
    base_ref: str = "main",
    base_sha: str = "6dcb09b5b57875f334f61aebed695e2e4193db5e",
    full_name: str = "acme/web",
    head_full_name: str | None = None,
) -> dict[str, Any]:
    head_repo = github_repository(head_full_name or full_name)
    return {
        "action": action,
        "number": number,
        "pull_request": {
            "url": f"https://api.github.com/repos/{full_name}/pulls/{number}",
            "id": 1,
            "html_url": f"https://github.com/{full_name}/pull/{number}",
            "number": number,
            "state": "closed" if action == "closed" else "open",
            "locked": False,
            "title": "Add the feature",
            "user": {"login": "ada", "id": 583231},
            "draft": False,
            "merged": False,
            "head": {"label": f"ada:{head_ref}", "ref": head_ref, "sha": head_sha, "repo": head_repo},
            "base": {
                "label": f"acme:{base_ref}",
                "ref": base_ref,
                "sha": base_sha,
                "repo": github_repository(full_name),
            },
        },
        "repository": github_repository(full_name),
        "sender": {"login": "ada", "id": 583231, "type": "User"},
    }


def github_ping(full_name: str = "acme/web") -> dict[str, Any]:
    return {
        "zen": "Keep it logically awesome.",
        "hook_id": 123456,
        "hook": {"type": "Repository", "id": 123456, "events": ["push", "pull_request"], "active": True},
        "repository": github_repository(full_name),
        "sender": {"login": "ada", "id": 583231},
    }


# --- GitLab.


def gitlab_project(path: str = "acme/web") -> dict[str, Any]:
    name = path.rsplit("/", 1)[-1]
    return {
        "id": 15,
        "name": name,
        "web_url": f"https://gitlab.example.com/{path}",
        "git_ssh_url": f"git@gitlab.example.com:{path}.git",
        "git_http_url": f"https://gitlab.example.com/{path}.git",
        "namespace": path.split("/")[0],
        "visibility_level": 0,
        "path_with_namespace": path,
        "default_branch": "main",
        "ssh_url": f"git@gitlab.example.com:{path}.git",
        "http_url": f"https://gitlab.example.com/{path}.git",
    }


def gitlab_push(
    *, ref: str = "refs/heads/main", before: str = ZERO, after: str, path: str = "acme/web", tag: bool = False
) -> dict[str, Any]:
    project = gitlab_project(path)
    return {
        "object_kind": "tag_push" if tag else "push",
        "event_name": "tag_push" if tag else "push",
        "before": before,
        "after": after,
        "ref": ref,
        "ref_protected": True,
        "checkout_sha": None if after == ZERO else after,
        "user_id": 4,
        "user_name": "John Smith",
        "user_username": "jsmith",
        "user_email": "john@example.com",
        "project_id": 15,
        "project": project,
        "repository": {
            "name": project["name"],
            "url": project["git_ssh_url"],
            "homepage": project["web_url"],
            "git_http_url": project["git_http_url"],
            "git_ssh_url": project["git_ssh_url"],
            "visibility_level": 0,
        },
        "commits": [] if after == ZERO else [{"id": after, "message": "Update Catalan translation", "title": "Update"}],
        "total_commits_count": 0 if after == ZERO else 1,
    }


def gitlab_merge_request(
    *,
    action: str,
    iid: int = 1,
    source_branch: str = "feature",
    target_branch: str = "main",
    last_commit: str,
    oldrev: str | None = None,
    path: str = "acme/web",
) -> dict[str, Any]:
    project = gitlab_project(path)
    attributes: dict[str, Any] = {
        "id": 99,
        "iid": iid,
        "target_branch": target_branch,
        "source_branch": source_branch,
        "source_project_id": 15,
        "target_project_id": 15,
        "author_id": 51,
        "title": "MS-Viewport",
        "state": {"close": "closed", "merge": "merged"}.get(action, "opened"),
        "merge_status": "unchecked",
        "url": f"https://gitlab.example.com/{path}/-/merge_requests/{iid}",
        "source": project,
        "target": project,
        "last_commit": {
            "id": last_commit,
            "message": "fixed readme",
            "title": "fixed readme",
            "author": {"name": "GitLab dev user", "email": "gitlabdev@dv6700.(none)"},
        },
        "work_in_progress": False,
        "draft": False,
        "action": action,
    }
    if oldrev:
        attributes["oldrev"] = oldrev
    return {
        "object_kind": "merge_request",
        "event_type": "merge_request",
        "user": {"id": 1, "name": "Administrator", "username": "root"},
        "project": project,
        "repository": {"name": project["name"], "url": project["git_ssh_url"], "homepage": project["web_url"]},
        "object_attributes": attributes,
        "labels": [],
        "changes": {},
    }
