"""The HTTP runner reads claim answers: from servers newer than itself, and with what they bring.
It reaches its server as the environment says: through its proxies, trusting its CA bundle."""

from __future__ import annotations

import datetime
import ipaddress
import json
import socket
import ssl
from pathlib import Path

import pytest
import requests

from runners.http_client import HttpBackend, RunnerApiClient, _job_from_json


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
    or as new as the test needs. Over HTTPS with a `certificate` (cert and key files). As a
    proxy, the path it records is the URL asked for; a CONNECT (an HTTPS tunnel) it records
    as ("CONNECT host:port", {}) and refuses."""

    def __init__(self, *, certificate: tuple[Path, Path] | None = None) -> None:
        import http.server
        import threading

        self.calls: list[tuple[str, dict]] = []
        self.authorizations: list[str | None] = []
        calls, authorizations = self.calls, self.authorizations

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_POST(self) -> None:  # noqa: N802 (http.server's name)
                body = self.rfile.read(int(self.headers["Content-Length"] or 0))
                calls.append((self.path, json.loads(body or b"{}")))
                authorizations.append(self.headers["Authorization"])
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", "2")
                self.end_headers()
                self.wfile.write(b"{}")

            def do_CONNECT(self) -> None:  # noqa: N802
                calls.append((f"CONNECT {self.path}", {}))
                self.send_error(502)

            def log_message(self, *args) -> None:
                pass

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        scheme = "http"
        if certificate:
            context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
            context.load_cert_chain(*certificate)
            self.server.socket = context.wrap_socket(self.server.socket, server_side=True)
            scheme = "https"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()
        self.url = f"{scheme}://127.0.0.1:{self.server.server_address[1]}"

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


# --- The environment: proxies, NO_PROXY, CA bundles (read once per session, not per call).


@pytest.fixture
def environment(monkeypatch):
    """None of the proxies, CA bundles or .netrc of the machine the tests run on: each test sets its own."""
    for name in ("HTTP_PROXY", "HTTPS_PROXY", "ALL_PROXY", "NO_PROXY"):
        monkeypatch.delenv(name, raising=False)
        monkeypatch.delenv(name.lower(), raising=False)
    for name in ("REQUESTS_CA_BUNDLE", "CURL_CA_BUNDLE", "NETRC"):
        monkeypatch.delenv(name, raising=False)
    return monkeypatch


@pytest.fixture
def proxy():
    proxy = RecordingServer()
    yield proxy
    proxy.close()


@pytest.fixture
def server():
    server = RecordingServer()
    yield server
    server.close()


def test_the_runner_reaches_its_server_through_the_http_proxy_of_its_environment(environment, proxy) -> None:
    environment.setenv("HTTP_PROXY", proxy.url)
    # A name that resolves nowhere: only the proxy can answer for it.
    client = RunnerApiClient("http://conveyor.invalid:8000", "cvr_x")

    response = client.post("jobs/request", {"wait": 0})

    assert response.status_code == 200
    assert proxy.calls == [("http://conveyor.invalid:8000/api/runner/jobs/request", {"wait": 0})]


def test_the_runner_asks_the_https_proxy_of_its_environment_for_a_tunnel_to_an_https_server(environment, proxy) -> None:
    environment.setenv("HTTPS_PROXY", proxy.url)
    client = RunnerApiClient("https://conveyor.invalid", "cvr_x")

    with pytest.raises(requests.ConnectionError):  # the proxy refuses the tunnel
        client.post("jobs/request", {"wait": 0})

    assert proxy.calls == [("CONNECT conveyor.invalid:443", {})]


def test_a_server_named_in_no_proxy_is_reached_without_the_proxy(environment, proxy, server) -> None:
    environment.setenv("HTTP_PROXY", proxy.url)
    environment.setenv("NO_PROXY", "example.com,127.0.0.1")
    client = RunnerApiClient(server.url, "cvr_x")

    client.post("jobs/request", {"wait": 0})

    assert server.calls == [("/api/runner/jobs/request", {"wait": 0})]
    assert proxy.calls == []


@pytest.mark.parametrize("variable", ["REQUESTS_CA_BUNDLE", "CURL_CA_BUNDLE"])
def test_an_https_server_is_trusted_when_the_ca_bundle_of_the_environment_vouches_for_it(
    environment, tmp_path, variable
) -> None:
    certificate, key = _self_signed_certificate(tmp_path)
    server = RecordingServer(certificate=(certificate, key))
    try:
        with pytest.raises(requests.exceptions.SSLError):  # unknown to the default CA bundle
            RunnerApiClient(server.url, "cvr_x").post("jobs/request", {"wait": 0})
        environment.setenv(variable, str(certificate))

        RunnerApiClient(server.url, "cvr_x").post("jobs/request", {"wait": 0})
    finally:
        server.close()

    assert server.calls == [("/api/runner/jobs/request", {"wait": 0})]


def test_a_netrc_entry_for_the_server_does_not_replace_the_runners_token(environment, server, tmp_path) -> None:
    netrc = tmp_path / "netrc"
    netrc.write_text("machine 127.0.0.1 login someone password secret\n")
    netrc.chmod(0o600)
    environment.setenv("NETRC", str(netrc))
    client = RunnerApiClient(server.url, "cvr_x")

    client.post("jobs/request", {"wait": 0})
    client.post("jobs/j/steps/s/log", {"offset": 0, "content": "x"}, token="cvjob_y")

    assert server.authorizations == ["Bearer cvr_x", "Bearer cvjob_y"]


def _self_signed_certificate(directory: Path) -> tuple[Path, Path]:
    """(certificate, key) files for 127.0.0.1 that only a CA bundle of the certificate itself vouches for."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "conveyor test")])
    now = datetime.datetime.now(datetime.UTC)
    certificate = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(hours=1))
        .add_extension(x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]), critical=False)
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(key, hashes.SHA256())
    )
    certificate_file, key_file = directory / "server.crt", directory / "server.key"
    certificate_file.write_bytes(certificate.public_bytes(serialization.Encoding.PEM))
    key_file.write_bytes(
        key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
    )
    return certificate_file, key_file
