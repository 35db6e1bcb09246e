"""Fixtures for the trigger tests: real git repositories behind Repository rows, and a poster
that signs webhook requests the way each forge does."""

from __future__ import annotations

import itertools
import json
import subprocess
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from pipelines.models import Pipeline, Repository
from pipelines.tests.webhook_payloads import sign

SECRET = "webhook-secret-for-tests"

# Jobs that show which event a run was created for.
CONFIG = """
stages: [build, test]
build:
  stage: build
  script: echo build
mr-only:
  stage: test
  script: echo "merge request $CI_MERGE_REQUEST_IID"
  rules:
    - if: $CI_PIPELINE_SOURCE == "merge_request_event"
branch-only:
  stage: test
  script: echo branch
  rules:
    - if: $CI_COMMIT_BRANCH
tag-only:
  stage: test
  script: echo tag
  only: [tags]
"""

_names = itertools.count(1)


@dataclass
class Forge:
    """A git repository (the 'forge' side) and its Repository and Pipeline rows."""

    path: Path
    sha: str
    repository: Repository
    pipeline: Pipeline

    def git(self, *args: str) -> str:
        return subprocess.run(["git", *args], cwd=self.path, check=True, capture_output=True, text=True).stdout.strip()

    def commit(self, files: dict[str, str], *, branch: str = "main", message: str = "change") -> str:
        if branch != self.git("rev-parse", "--abbrev-ref", "HEAD"):
            self.git("checkout", "--quiet", "-B", branch)
        for name, text in files.items():
            (self.path / name).write_text(text)
        self.git("add", "-A")
        self.git("commit", "--quiet", "--allow-empty", "-m", message)
        return self.git("rev-parse", "HEAD")


@pytest.fixture
def mirrors(settings, tmp_path):
    settings.CONVEYOR_MIRRORS_DIR = tmp_path / "mirrors"


@pytest.fixture
def forge(db, make_git_repo, mirrors) -> Forge:
    path, sha = make_git_repo({".cicd.yml": CONFIG, "README.md": "hello\n"})
    number = next(_names)
    repository = Repository.objects.create(
        name=f"web-{number}",
        clone_url=str(path),
        forge_project=f"acme/web-{number}",
        webhook_secret=SECRET,
    )
    pipeline = Pipeline.objects.create(repository=repository, name="default")
    return Forge(path=path, sha=sha, repository=repository, pipeline=pipeline)


@dataclass
class Poster:
    client: Any

    def github(
        self,
        payload: dict[str, Any] | bytes,
        *,
        event: str,
        secret: str = SECRET,
        delivery: str | None = None,
        query: str = "",
        form: bool = False,
        headers: dict[str, str] | None = None,
    ):
        body = payload if isinstance(payload, bytes) else json.dumps(payload).encode()
        content_type = "application/json"
        if form:
            from urllib.parse import urlencode

            body = urlencode({"payload": body.decode()}).encode()
            content_type = "application/x-www-form-urlencoded"
        sent = {
            "X-GitHub-Event": event,
            "X-GitHub-Delivery": delivery or str(uuid.uuid4()),
            "X-Hub-Signature-256": sign(secret, body),
            "User-Agent": "GitHub-Hookshot/044aadd",
            **(headers or {}),
        }
        return self.client.post(f"/webhooks/github/{query}", data=body, content_type=content_type, headers=sent)

    def gitlab(
        self,
        payload: dict[str, Any] | bytes,
        *,
        event: str,
        token: str = SECRET,
        delivery: str | None = None,
        query: str = "",
        headers: dict[str, str] | None = None,
    ):
        body = payload if isinstance(payload, bytes) else json.dumps(payload).encode()
        sent = {
            "X-Gitlab-Event": event,
            "X-Gitlab-Token": token,
            "X-Gitlab-Event-UUID": str(uuid.uuid4()),
            "Idempotency-Key": delivery or str(uuid.uuid4()),
            **(headers or {}),
        }
        return self.client.post(f"/webhooks/gitlab/{query}", data=body, content_type="application/json", headers=sent)

    def generic(
        self,
        payload: dict[str, Any] | bytes,
        *,
        secret: str = SECRET,
        delivery: str | None = None,
        query: str = "",
        headers: dict[str, str] | None = None,
    ):
        body = payload if isinstance(payload, bytes) else json.dumps(payload).encode()
        sent = {"X-Conveyor-Signature-256": sign(secret, body), **(headers or {})}
        if delivery:
            sent["Idempotency-Key"] = delivery
        return self.client.post(f"/webhooks/generic/{query}", data=body, content_type="application/json", headers=sent)


@pytest.fixture
def poster(client) -> Poster:
    return Poster(client)


# The people of a private repository (permission tests) and the runner harness (conveyor_run).
from tests.access import people  # noqa: E402, F401
from tests.test_runner_e2e import harness  # noqa: E402, F401
