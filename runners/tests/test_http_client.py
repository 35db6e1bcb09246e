"""The HTTP runner reads claim answers: from servers newer than itself, and with what they bring."""

from __future__ import annotations

import json
import socket

import requests

from runners.http_client import HttpBackend, _job_from_json


def claim_answer(**extra) -> dict:
    return {
        "id": "5d0c6a4e-0000-4000-8000-000000000001",
        "run_id": "5d0c6a4e-0000-4000-8000-000000000002",
        "name": "build",
        "stage": "build",
        "attempt": 1,
        "timeout_s": 3600,
        "lease_expires_at": "2026-11-27T10:00:00+00:00",
        "clone_url": "/srv/git/acme.git",
        "commit_sha": "a" * 40,
        "ref": "main",
        "job_token": "cvjob_x",
        "variables": {"CI": "true"},
        "steps": [{"id": "s0", "index": 0, "kind": "script", "name": "make", "command": "make", "added_later": 1}],
        **extra,
    }


def test_a_claim_answer_with_fields_this_runner_does_not_know_still_gives_the_job() -> None:
    answer = claim_answer(a_field_from_a_newer_server={"x": 1})

    job = _job_from_json(dict(answer))

    assert job.name == "build"
    assert [(step.id, step.command) for step in job.steps] == [("s0", "make")]
    assert not hasattr(job, "a_field_from_a_newer_server")


def test_the_artifact_lists_of_a_claim_answer_are_used_without_asking_the_server() -> None:
    lists = {
        "dependencies": {"artifacts": [{"name": "dist", "path": "jobs/j/artifacts/a/content"}], "missing": []},
        "images": {"images": [{"name": "app", "job": "build", "reference": "r/app:1", "digest": "sha256:" + "a" * 64}]},
    }
    answer = requests.Response()
    answer.status_code, answer._content = 200, json.dumps(claim_answer(artifact_lists=lists)).encode()
    # Nothing listens there: a request for the lists would fail.
    backend = HttpBackend(url=f"http://127.0.0.1:{_closed_port()}/api/runner/", token="cvr_x")

    job = backend._claimed(answer)

    assert backend.artifacts.dependencies(job) == ([{"name": "dist", "path": "jobs/j/artifacts/a/content"}], [])
    assert backend.artifacts.images(job) == lists["images"]["images"]


def _closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]
