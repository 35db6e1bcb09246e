"""Huge and hostile inputs, each refused or bounded with a clear message (issue 10, "Bad input"):
a 50 MB webhook body, a config with 10,000 jobs, 1,000-deep `extends` and `needs` chains, a
10 MB log line without a newline sent by a real runner client, and artifact archives that are
zip bombs or hold `../../etc/passwd`, absolute paths, links out of the workspace, hard links
or devices. Real servers throughout: the WSGI and ASGI apps, uvicorn, PostgreSQL."""

from __future__ import annotations

import asyncio
import gzip
import hashlib
import io
import json
import os
import socket
import sys
import tarfile
from pathlib import Path

import pytest
import requests
from django.core import signals
from django.core.handlers.wsgi import WSGIHandler
from django.db import close_old_connections
from django.test import Client
from django.utils import timezone

from cicd.tokens import token_hash
from logs.models import LogChunkKind, StepLog
from pipelines.config.parser import parse_pipeline
from pipelines.config.spec import ConfigError, TriggerContext
from pipelines.models import Pipeline, Repository, Trigger, WebhookDelivery
from runners.archives import ArchiveError, collect, unpack, write_archive
from runners.executors.base import LogStream
from runners.http_client import HttpBackend
from runners.models import Runner
from runs.models import Job, JobStatus, PipelineRun, Step
from runs.services import run_create
from tests.test_runner_e2e import free_port, wait_until

MB = 1024 * 1024


# --- A 50 MB webhook body.


class CountingStream:
    """A request body of `size` bytes made as it is read, counting what was read."""

    def __init__(self, size: int) -> None:
        self.size, self.read_bytes = size, 0

    def read(self, size: int = -1) -> bytes:
        left = self.size - self.read_bytes
        size = left if size is None or size < 0 else min(size, left)
        self.read_bytes += size
        return b"{" * size

    def readline(self, size: int = -1) -> bytes:
        return self.read(size)


def wsgi_post(path: str, stream: CountingStream, content_length: int | None, token: str = "") -> tuple[str, dict]:
    environ = {
        "REQUEST_METHOD": "POST",
        "PATH_INFO": path,
        "QUERY_STRING": "repository=web",
        "SERVER_NAME": "localhost",
        "SERVER_PORT": "80",
        "HTTP_HOST": "localhost",
        "CONTENT_TYPE": "application/json",
        "wsgi.input": stream,
        "wsgi.url_scheme": "http",
        "wsgi.errors": sys.stderr,
    }
    if content_length is not None:
        environ["CONTENT_LENGTH"] = str(content_length)
    if token:
        environ["HTTP_AUTHORIZATION"] = f"Bearer {token}"
    answer: dict = {}

    def start_response(status: str, headers: list) -> None:
        answer["status"] = status

    # As Django's test client does: the request must not close the test's connection.
    signals.request_started.disconnect(close_old_connections)
    signals.request_finished.disconnect(close_old_connections)
    try:
        body = b"".join(WSGIHandler()(environ, start_response))
    finally:
        signals.request_started.connect(close_old_connections)
        signals.request_finished.connect(close_old_connections)
    return answer["status"], json.loads(body)


@pytest.mark.django_db
@pytest.mark.parametrize("provider", ["github", "gitlab", "generic"])
def test_a_50_mb_webhook_body_is_refused_with_413_before_a_byte_of_it_is_read(provider):
    stream = CountingStream(50 * MB)

    status, body = wsgi_post(f"/webhooks/{provider}/", stream, content_length=50 * MB)

    assert status.startswith("413")
    assert body == {"error": f"the body is {50 * MB} bytes; the limit is {5 * MB}"}
    assert stream.read_bytes == 0
    assert not WebhookDelivery.objects.exists()


class AsgiBody:
    """50 MB sent in 1 MB pieces with no Content-Length (chunked), as a client streaming it would."""

    def __init__(self, size: int) -> None:
        self.left, self.sent, self.answer = size, 0, []

    async def receive(self) -> dict:
        if self.left <= 0:
            return {"type": "http.disconnect"}
        piece = min(MB, self.left)
        self.left -= piece
        self.sent += piece
        return {"type": "http.request", "body": b"{" * piece, "more_body": self.left > 0}

    async def send(self, message: dict) -> None:
        self.answer.append(message)


@pytest.mark.django_db
@pytest.mark.parametrize("provider", ["github", "gitlab", "generic"])
def test_a_50_mb_webhook_body_streamed_without_a_length_is_cut_off_at_the_limit_with_413(provider):
    from cicd.asgi import application

    body = AsgiBody(50 * MB)
    scope = {
        "type": "http",
        "asgi": {"version": "3.0"},
        "http_version": "1.1",
        "method": "POST",
        "scheme": "http",
        "path": f"/webhooks/{provider}/",
        "raw_path": f"/webhooks/{provider}/".encode(),
        "query_string": b"repository=web",
        "root_path": "",
        "headers": [(b"host", b"localhost"), (b"content-type", b"application/json")],
        "client": ("127.0.0.1", 5000),
        "server": ("localhost", 80),
    }

    asyncio.run(application(scope, body.receive, body.send))

    start = next(m for m in body.answer if m["type"] == "http.response.start")
    assert start["status"] == 413
    content = b"".join(m.get("body", b"") for m in body.answer if m["type"] == "http.response.body")
    assert json.loads(content) == {"error": f"the body is over the limit of {5 * MB} bytes"}
    assert body.sent <= 6 * MB  # read no further than the limit and the piece that passed it
    assert not WebhookDelivery.objects.exists()


@pytest.mark.slow
@pytest.mark.django_db(transaction=True)
def test_a_real_server_answers_413_to_a_declared_50_mb_webhook_before_the_body_is_sent(harness):
    server = harness.server()
    with socket.create_connection(("127.0.0.1", server.port), timeout=30) as sock:
        sock.sendall(
            b"POST /webhooks/github/?repository=web HTTP/1.1\r\nHost: 127.0.0.1\r\n"
            b"Content-Type: application/json\r\nX-GitHub-Event: push\r\n"
            + f"Content-Length: {50 * MB}\r\n\r\n".encode()
        )
        # Not one byte of the body is sent: the answer must come anyway.
        answer = b""
        while b"\r\n\r\n" not in answer or not answer.rstrip().endswith(b"}"):
            piece = sock.recv(65536)
            if not piece:
                break
            answer += piece
    head, _, payload = answer.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 413")
    assert json.loads(payload) == {"error": f"the body is {50 * MB} bytes; the limit is {5 * MB}"}
    assert not WebhookDelivery.objects.exists()


@pytest.mark.django_db
@pytest.mark.parametrize("path", ["/api/v1/lint/", "/api/v1/runs/"])
def test_a_50_mb_json_body_to_the_rest_api_is_a_413_in_json_before_it_is_read(path, django_user_model):
    from pipelines.api_tokens import api_token_create

    _row, token = api_token_create(user=django_user_model.objects.create_user("big"), description="big")
    stream = CountingStream(50 * MB)

    status, body = wsgi_post(path, stream, 50 * MB, token=token)

    assert status.startswith("413")
    assert body == {"detail": f"the request body is larger than {5 * MB // 2} bytes"}
    assert stream.read_bytes == 0


# --- Configs: 10,000 jobs, 1,000-deep extends and needs chains.


def config_errors(text: str) -> list[str]:
    with pytest.raises(ConfigError) as caught:
        parse_pipeline(text, context=TriggerContext())
    return [problem.message for problem in caught.value.problems]


def test_a_config_with_10000_jobs_is_refused_with_the_limit_in_the_message():
    text = "".join(f"job{index}:\n  script: echo {index}\n" for index in range(10_000))

    assert config_errors(text) == ["the config defines 10000 jobs; the limit is 2000"]


@pytest.mark.slow
def test_a_config_with_10000_jobs_parses_when_the_limit_is_raised(settings):
    settings.CONVEYOR_MAX_JOBS_PER_RUN = 10_000
    text = "".join(f"job{index}:\n  script: echo {index}\n" for index in range(10_000))

    spec = parse_pipeline(text, context=TriggerContext())

    assert len(spec.jobs) == 10_000


def test_a_1000_deep_extends_chain_is_refused_with_the_depth_limit():
    text = ".t0:\n  script: x\n" + "".join(f".t{i}:\n  extends: .t{i - 1}\n" for i in range(1, 1000))
    text += "job:\n  extends: .t999\n"

    assert config_errors(text) == ["extends nested more than 11 levels deep"]


def test_a_1000_long_needs_cycle_is_reported_in_a_message_of_bounded_length():
    text = "".join(f"j{i}:\n  script: x\n  needs: [j{(i + 1) % 1000}]\n" for i in range(1000))

    (message,) = config_errors(text)

    assert message.startswith("needs form a cycle: j0 -> j1 -> ")
    assert "(1000 jobs)" in message and message.endswith("-> j999 -> j0")
    assert len(message) < 300


def needs_chain(depth: int) -> str:
    # The deepest job first: walking the chain from the first job defined goes all the way down.
    return "".join(
        f"j{i}:\n  script: echo {i}\n" + (f"  needs: [j{i - 1}]\n" if i else "") for i in reversed(range(depth))
    )


@pytest.mark.django_db
def test_a_1000_deep_needs_chain_becomes_a_run_whose_first_job_alone_is_queued(django_user_model):
    spec = parse_pipeline(needs_chain(1000), context=TriggerContext())
    repository = Repository.objects.create(name="deep", clone_url="/srv/git/deep.git")
    pipeline = Pipeline.objects.create(repository=repository, name="default")

    run = run_create(pipeline=pipeline, spec=spec, commit_sha="a" * 40, branch="main", trigger=Trigger.PUSH)

    jobs = Job.objects.filter(run=run)
    assert jobs.count() == 1000
    assert list(jobs.filter(status=JobStatus.QUEUED).values_list("name", flat=True)) == ["j0"]
    # Its page and its API answer too.
    client = Client()
    client.force_login(django_user_model.objects.create_superuser("root", password=None))
    assert client.get(f"/api/v1/runs/{run.pk}/").status_code == 200
    assert client.get(f"/runs/{run.pk}/").status_code == 200


# --- A 10 MB log line without a newline, from a real runner client to a real server.


def start_server(harness, **env: str) -> str:
    port = free_port()
    args = [sys.executable, "-m", "uvicorn", "cicd.asgi:application", "--host", "127.0.0.1", "--port", str(port)]
    process = harness.start("server", [*args, "--log-level", "warning"], **env)
    url = f"http://127.0.0.1:{port}"

    def healthy() -> bool:
        assert process.alive(), process.output()
        try:
            return requests.get(f"{url}/healthz", timeout=2).status_code == 200
        except requests.RequestException:
            return False

    wait_until(healthy, timeout=60, what="the server to answer", diagnose=process.output)
    return url


def running_job_with_a_step() -> tuple[str, Step]:
    """A runner (its token returned) and a queued job with one step, committed for the server."""
    repository = Repository.objects.create(name="logs", clone_url="/srv/git/logs.git")
    pipeline = Pipeline.objects.create(repository=repository, name="default")
    run = PipelineRun.objects.create(pipeline=pipeline, number=1, status="RUNNING", commit_sha="b" * 40)
    now = timezone.now()
    job = Job.objects.create(
        run=run, name="noisy", stage="test", stage_index=0, status=JobStatus.QUEUED, queued_at=now, queue_key=now
    )
    step = Step.objects.create(job=job, index=0, name="print", command="print")
    token = "cvr_" + "x" * 40
    Runner.objects.create(name="big-logs", token_hash=token_hash(token))
    return token, step


def send_a_line(url: str, token: str, text: str) -> None:
    backend = HttpBackend(url=url, token=token)
    job = backend.claim()
    assert job is not None
    backend.step_started(job, job.steps[0])
    stream = LogStream(backend, job, job.steps[0], masked=[])
    # As the shell executor does: the output arrives in pieces, never a newline.
    data = text.encode()
    for start in range(0, len(data), 65536):
        stream.write_bytes(data[start : start + 65536])
    stream.flush(final=True)
    backend.step_finished(job, job.steps[0], status="SUCCESS", exit_code=0)


def stored_log(step: Step) -> tuple[str, list[str]]:
    chunks = list(StepLog.objects.filter(step=step).order_by("offset").values_list("content", "kind"))
    return "".join(c for c, kind in chunks if kind == LogChunkKind.OUTPUT), [
        c for c, kind in chunks if kind == LogChunkKind.TRUNCATION
    ]


@pytest.mark.slow
@pytest.mark.django_db(transaction=True)
def test_a_10_mb_line_of_non_ascii_text_arrives_whole_and_the_viewer_shows_its_tail(harness, django_user_model):
    token, step = running_job_with_a_step()
    url = start_server(harness)
    # "é" is two bytes in UTF-8 and six (\u00e9) in the JSON the runner sends: 1 MB pieces
    # of it make request bodies of 3 MB.
    line = "é" * (5 * MB)

    send_a_line(url, token, line)

    output, notices = stored_log(step)
    assert notices == []
    assert output == line
    client = Client()
    client.force_login(django_user_model.objects.create_superuser("root", password=None))
    page = client.get(f"/logs/jobs/{step.job_id}/")
    assert page.status_code == 200
    assert b"\xc3\xa9" * 1000 in page.content
    assert len(page.content) < 6 * MB  # the tail (CONVEYOR_LOG_RENDER_MAX_BYTES), not 10 MB
    raw = client.get(f"/logs/steps/{step.pk}/raw")
    assert b"".join(raw.streaming_content) == line.encode()


@pytest.mark.slow
@pytest.mark.django_db(transaction=True)
def test_a_10_mb_line_past_the_jobs_log_limit_keeps_its_head_and_tail_with_a_notice(harness, django_user_model):
    token, step = running_job_with_a_step()
    url = start_server(harness, CONVEYOR_MAX_LOG_BYTES_PER_JOB=str(MB), CONVEYOR_LOG_TAIL_BYTES=str(256 * 1024))
    line = "".join(f"{i:07d}," for i in range(10 * MB // 8))

    send_a_line(url, token, line)

    output, notices = stored_log(step)
    assert len(notices) == 1 and "Log truncated" in notices[0]
    assert line.startswith(output[: 768 * 1024])
    assert line.endswith(output[-256 * 1024 :])
    assert len(output.encode()) <= MB + MB  # the head, and a tail rotated in chunk-sized steps
    client = Client()
    client.force_login(django_user_model.objects.create_superuser("root", password=None))
    answer = client.get(f"/api/v1/steps/{step.pk}/log/")
    assert answer.status_code == 200 and answer["X-Log-Complete"] == "true"
    assert "[conveyor] Log truncated" in answer.content.decode()


# --- Artifact archives.


def tar_gz(entries: list[tuple[str, bytes, str, bytes | None]], *, level: int = 6) -> io.BytesIO:
    """(name, tar type, link name, data) entries as a tar.gz in memory."""
    buffer = io.BytesIO()
    with (
        gzip.GzipFile(fileobj=buffer, mode="wb", compresslevel=level) as compressed,
        tarfile.open(fileobj=compressed, mode="w|") as archive,
    ):
        for name, kind, linkname, data in entries:
            info = tarfile.TarInfo(name)
            info.type, info.linkname, info.mode = kind, linkname, 0o644
            if data is not None:
                info.size = len(data)
            archive.addfile(info, io.BytesIO(data) if data is not None else None)
    buffer.seek(0)
    return buffer


class Zeros(io.RawIOBase):
    def __init__(self, size: int) -> None:
        self.left = size

    def readable(self) -> bool:
        return True

    def readinto(self, buffer) -> int:
        count = min(len(buffer), self.left)
        buffer[:count] = bytes(count)
        self.left -= count
        return count


def zip_bomb(path: Path, size: int) -> None:
    with (
        path.open("wb") as raw,
        gzip.GzipFile(fileobj=raw, mode="wb", compresslevel=9) as compressed,
        tarfile.open(fileobj=compressed, mode="w|") as archive,
    ):
        info = tarfile.TarInfo("zeros.bin")
        info.size = size
        archive.addfile(info, io.BufferedReader(Zeros(size), buffer_size=MB))


def everything_under(path: Path) -> dict[str, str]:
    def kind(p: Path) -> str:
        return "link" if p.is_symlink() else "dir" if p.is_dir() else "file"

    return {str(p.relative_to(path)): kind(p) for p in path.rglob("*")}


@pytest.mark.slow
def test_a_zip_bomb_of_a_thousand_to_one_stops_at_the_unpacked_size_bound(tmp_path):
    bomb = tmp_path / "bomb.tar.gz"
    zip_bomb(bomb, 1024 * MB)  # 1 GB of zeros
    workspace = tmp_path / "workspace"
    workspace.mkdir()

    with bomb.open("rb") as handle, pytest.raises(ArchiveError) as caught:
        unpack(handle, workspace, max_bytes=20 * MB, log=[].append)

    assert str(caught.value) == f"the archive unpacks to more than {20 * MB} bytes: unpacking stopped (a zip bomb?)"
    assert bomb.stat().st_size * 1000 < 1024 * MB
    assert sum(p.stat().st_size for p in workspace.rglob("*")) <= 20 * MB


def test_hostile_entries_are_skipped_with_a_message_each_and_nothing_lands_outside(tmp_path):
    passwd = hashlib.sha256(Path("/etc/passwd").read_bytes()).hexdigest()
    outside = tmp_path / "outside"
    outside.mkdir()
    workspace = tmp_path / "a" / "b" / "workspace"
    workspace.mkdir(parents=True)
    entries = [
        ("../../etc/passwd", tarfile.REGTYPE, "", b"root::0:0::/root:/bin/sh\n"),
        ("./../../../../../../etc/passwd", tarfile.REGTYPE, "", b"pwned"),
        ("/etc/passwd", tarfile.REGTYPE, "", b"pwned"),
        (f"{outside}/absolute.txt", tarfile.REGTYPE, "", b"pwned"),
        ("escape", tarfile.SYMTYPE, "../../../outside", None),
        ("escape/through.txt", tarfile.REGTYPE, "", b"pwned"),
        ("etc", tarfile.SYMTYPE, "/etc", None),
        ("etc/passwd", tarfile.REGTYPE, "", b"pwned"),
        ("kept.txt", tarfile.REGTYPE, "", b"kept"),
        ("hard", tarfile.LNKTYPE, "kept.txt", None),
        ("shadow", tarfile.LNKTYPE, "/etc/shadow", None),
        ("tty", tarfile.CHRTYPE, "", None),
        ("disk", tarfile.BLKTYPE, "", None),
        ("pipe", tarfile.FIFOTYPE, "", None),
    ]
    log: list[str] = []

    result = unpack(tar_gz(entries), workspace, max_bytes=MB, log=log.append)

    assert hashlib.sha256(Path("/etc/passwd").read_bytes()).hexdigest() == passwd
    assert list(outside.iterdir()) == []
    # What was below a refused link is written in a plain directory inside instead.
    assert everything_under(workspace) == {
        "kept.txt": "file",
        "escape": "dir",
        "escape/through.txt": "file",
        "etc": "dir",
        "etc/passwd": "file",
    }
    assert result.files == 3
    assert log == [
        "WARNING: ../../etc/passwd: a path outside the workspace: skipped",
        "WARNING: ./../../../../../../etc/passwd: a path outside the workspace: skipped",
        "WARNING: /etc/passwd: a path outside the workspace: skipped",
        f"WARNING: {outside}/absolute.txt: a path outside the workspace: skipped",
        "WARNING: escape: a symlink to ../../../outside, outside the workspace: skipped",
        "WARNING: etc: a symlink to /etc, outside the workspace: skipped",
        "WARNING: hard: a hard link: skipped",
        "WARNING: shadow: a hard link: skipped",
        "WARNING: tty: a device, fifo or other special file: skipped",
        "WARNING: disk: a device, fifo or other special file: skipped",
        "WARNING: pipe: a device, fifo or other special file: skipped",
    ]


def test_a_link_that_a_later_link_turns_outward_is_removed_and_nothing_is_written_through_it(tmp_path):
    workspace = tmp_path / "workspace"
    workspace.mkdir()
    # Each link points inside when it is made; together x leads to the workspace's parent.
    entries = [
        ("x", tarfile.SYMTYPE, "y/..", None),
        ("y", tarfile.SYMTYPE, ".", None),
        ("x/pwned.txt", tarfile.REGTYPE, "", b"pwned"),
        ("fine.txt", tarfile.REGTYPE, "", b"fine"),
    ]
    log: list[str] = []

    unpack(tar_gz(entries), workspace, max_bytes=MB, log=log.append)

    assert sorted(p.name for p in tmp_path.iterdir()) == ["workspace"]
    assert everything_under(workspace) == {"y": "link", "fine.txt": "file"}
    assert log == [
        "WARNING: x/pwned.txt: below a symlink that leads outside the workspace: skipped",
        "WARNING: x: a symlink to y/.., which leads outside the workspace once unpacked: skipped",
    ]


def test_entries_that_clash_with_earlier_ones_are_skipped_and_the_rest_is_unpacked(tmp_path):
    workspace = tmp_path / "workspace"
    workspace.mkdir()
    entries = [
        ("file", tarfile.REGTYPE, "", b"1"),
        ("file/below", tarfile.REGTYPE, "", b"2"),
        ("dir", tarfile.DIRTYPE, "", None),
        ("dir", tarfile.REGTYPE, "", b"3"),
        ("dangling", tarfile.SYMTYPE, "nowhere", None),
        ("dangling/inside", tarfile.REGTYPE, "", b"4"),
        ("n" * 300, tarfile.REGTYPE, "", b"5"),
        ("last.txt", tarfile.REGTYPE, "", b"last"),
    ]
    log: list[str] = []

    result = unpack(tar_gz(entries), workspace, max_bytes=MB, log=log.append)

    assert (workspace / "last.txt").read_text() == "last"
    assert (workspace / "file").read_text() == "1" and (workspace / "dir").is_dir()
    assert result.files == 2
    assert log == [
        "WARNING: file/below: cannot be written (File exists): skipped",
        "WARNING: dir: cannot be written (Is a directory): skipped",
        "WARNING: dangling/inside: cannot be written (File exists): skipped",
        f"WARNING: {'n' * 300}: cannot be written (File name too long): skipped",
    ]


def test_archiving_artifact_paths_never_follows_a_symlink_out_of_the_workspace(tmp_path):
    secrets = tmp_path / "home" / ".ssh"
    secrets.mkdir(parents=True)
    (secrets / "id_rsa").write_text("PRIVATE KEY")
    project = tmp_path / "project"
    (project / "dist").mkdir(parents=True)
    (project / "dist" / "app.bin").write_text("app")
    os.symlink(secrets, project / "dist" / "keys")  # a directory link leading out
    os.symlink(secrets / "id_rsa", project / "dist" / "id_rsa")  # a file link leading out
    os.symlink("app.bin", project / "dist" / "alias")  # a link inside: kept as a link
    log: list[str] = []

    members = collect(project, ["dist", "dist/**", "dist/keys/*", "**/id_rsa"], log=log.append)
    written = write_archive(project, members, tmp_path / "out.tar.gz", log=log.append)

    assert members == ["dist", "dist/alias", "dist/app.bin"]
    with tarfile.open(written.path) as archive:
        contents = {m.name: (archive.extractfile(m).read() if m.isfile() else m.linkname) for m in archive}
    assert contents == {"dist": "", "dist/alias": "app.bin", "dist/app.bin": b"app"}
    assert b"PRIVATE KEY" not in gzip.decompress(written.path.read_bytes())
    assert any(line.startswith("WARNING: dist/keys: a symlink to") for line in log)
    assert any(line.startswith("WARNING: dist/id_rsa: a symlink to") for line in log)
    assert any("dist/keys/id_rsa: below a symlink that leads outside the project: skipped" in line for line in log)


# --- The runner API's own body bound.


@pytest.mark.django_db
def test_a_runner_api_body_over_its_bound_is_refused_with_413_before_it_is_read():
    token, step = running_job_with_a_step()
    stream = CountingStream(50 * MB)
    path = f"/api/runner/jobs/{step.job_id}/steps/{step.pk}/log"

    status, body = wsgi_post(path, stream, 50 * MB, token=token)

    assert status.startswith("413")
    assert body == {"detail": f"the body is {50 * MB} bytes; the limit is {8 * MB}"}
    assert stream.read_bytes == 0
