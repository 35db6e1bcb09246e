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


class RecordingServer:
    """A runner API that answers every POST with {} and records (path, body): a server as old
    or as new as the test needs."""

    def __init__(self) -> None:
        import http.server
        import threading

        self.calls: list[tuple[str, dict]] = []
        calls = self.calls

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_POST(self) -> None:  # noqa: N802 (http.server's name)
                body = self.rfile.read(int(self.headers["Content-Length"] or 0))
                calls.append((self.path, json.loads(body or b"{}")))
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", "2")
                self.end_headers()
                self.wfile.write(b"{}")

            def log_message(self, *args) -> None:
                pass

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        threading.Thread(target=self.server.serve_forever, daemon=True).start()
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


def _finish_through(answer: dict) -> list[tuple[str, dict]]:
    from runners.executors.base import JobResult
    from runners.services import StepEnd

    server = RecordingServer()
    try:
        backend = HttpBackend(url=server.url, token="cvr_x")
        job = _job_from_json(answer)
        result = JobResult(
            status="SUCCESS", exit_code=0, step_ends=[StepEnd(step_id="s0", status="SUCCESS", exit_code=0)]
        )
        backend.complete(job, result)
        backend.close_thread()
    finally:
        server.close()
    return server.calls


def test_the_last_steps_end_goes_in_the_finish_to_a_server_that_takes_it() -> None:
    calls = _finish_through(claim_answer(finish_takes_step_ends=True))

    job_id = claim_answer()["id"]
    steps = [{"id": "s0", "status": "SUCCESS", "exit_code": 0}]
    assert calls == [
        (f"/api/runner/jobs/{job_id}/finish", {"status": "SUCCESS", "exit_code": 0, "reason": "", "steps": steps})
    ]


def test_an_older_server_hears_of_the_last_steps_end_on_its_own_before_the_finish() -> None:
    calls = _finish_through(claim_answer())  # an older server does not say it takes them

    job_id = claim_answer()["id"]
    assert calls == [
        (f"/api/runner/jobs/{job_id}/steps/s0/finish", {"status": "SUCCESS", "exit_code": 0}),
        (f"/api/runner/jobs/{job_id}/finish", {"status": "SUCCESS", "exit_code": 0, "reason": ""}),
    ]
