"""Artifacts and caches on the Kubernetes executor (against the fake API server of the
runner tests, with real jobs and the trusted runners' artifact transport): what it cannot
carry into or out of a pod yet, it says so in the job's log, and it fails a job whose steps
would otherwise silently miss files. The images of dependencies do reach the pod."""

from __future__ import annotations

import dataclasses
import threading

import pytest

from artifacts.services import artifact_docker_record
from artifacts.tests.conftest import job_named
from artifacts.tests.helpers import upload
from runners.artifacts import OrmArtifacts
from runners.executors.kubernetes import KubernetesExecutor
from runners.services import ClaimedJob
from runners.tests.k8s_fake import FakeKubernetes
from runners.tests.recording import RecordingReporter, claimed_job

DIGEST = "sha256:" + "cd" * 32
ROUTE = "route this job to a shell runner with tags"


@pytest.fixture
def k8s(tmp_path):
    with FakeKubernetes(tmp_path / "cluster") as fake:
        yield fake


@pytest.fixture
def reporter(runner):
    reporter = RecordingReporter()
    reporter.artifacts = OrmArtifacts(runner)  # what a trusted runner's backend offers
    return reporter


@pytest.fixture
def execute(k8s, reporter, tmp_path, make_git_repo):
    path, sha = make_git_repo({"README": "hi\n"})
    executor = KubernetesExecutor(
        reporter, namespace="ci", api_client=k8s.api_client(), builds_root=str(tmp_path / "builds"), poll_interval=0.05
    )

    def run(job, *commands: str):
        base = claimed_job(clone_url=str(path), commit_sha=sha, steps=[("script", c) for c in commands])
        spec = {k: v for k, v in job.spec.items() if k in {"image", "services", "artifacts", "cache", "deploy"}}
        claimed: ClaimedJob = dataclasses.replace(base, id=str(job.pk), run_id=str(job.run_id), spec=spec)
        return executor.run(claimed, threading.Event())

    return run


def test_a_job_that_keeps_artifacts_fails_before_any_pod_with_the_reason_in_its_log(
    make_run, start, execute, k8s, reporter
):
    job, _ = start(job_named(make_run("build:\n  script: [make]\n  artifacts: {paths: [dist/]}\n"), "build"))

    result = execute(job, "make")

    assert result.status == "FAILURE"
    assert result.reason == f"artifacts: not supported on the Kubernetes executor yet (artifacts:paths); {ROUTE}"
    assert reporter.log_of("s0") == f"ERROR: {result.reason}\n"
    assert reporter.finished == {"s0": ("SKIPPED", None)}
    assert k8s.requested("POST") == []


def test_a_job_that_would_receive_archives_fails_and_one_that_opts_out_runs(
    make_run, start, finish, execute, reporter, k8s
):
    config = """
    stages: [build, test]
    build:
      stage: build
      script: [make]
    test:
      stage: test
      script: [make test]
    alone:
      stage: test
      dependencies: []
      script: [make lint]
    """
    run = make_run(config)
    build, _ = start(job_named(run, "build"))
    upload(build, b"archive", name="dist")
    finish(build)
    test, _ = start(job_named(run, "test"))

    refused = execute(test, "echo never")

    assert refused.status == "FAILURE"
    assert "would receive the artifacts dist of job build" in refused.reason and ROUTE in refused.reason
    assert "set `dependencies: []`" in reporter.log_of("s0")
    assert k8s.requested("POST") == []

    alone, _ = start(job_named(run, "alone"))
    assert execute(alone, "echo fine").status == "SUCCESS"


def test_a_job_with_a_cache_runs_without_it_and_its_log_says_so(make_run, start, execute, reporter):
    job, _ = start(job_named(make_run("build:\n  script: [make]\n  cache: {key: deps, paths: [vendor/]}\n"), "build"))

    result = execute(job, "echo built")

    assert result.status == "SUCCESS"
    log = reporter.log_of("s0")
    assert log.startswith(
        "WARNING: cache: not supported on the Kubernetes executor yet: this job runs without its cache"
    )
    assert "$ echo built\nbuilt\n" in log


def test_a_deploy_job_gets_the_digest_of_the_image_its_build_recorded(make_run, start, finish, execute, reporter):
    run = make_run(
        "stages: [build, deploy]\nbuild:\n  stage: build\n  script: [b]\ndeploy:\n  stage: deploy\n  script: [d]\n"
    )
    build, _ = start(job_named(run, "build"))
    artifact_docker_record(job=build, reference="registry.test/app:1.0", digest=DIGEST, name="app")
    finish(build)
    deploy, _ = start(job_named(run, "deploy"))

    result = execute(deploy, 'echo "image=$CONVEYOR_IMAGE_APP digest=$CONVEYOR_IMAGE_APP_DIGEST plain=$CONVEYOR_IMAGE"')

    assert result.status == "SUCCESS"
    pinned = f"registry.test/app:1.0@{DIGEST}"
    assert f"image={pinned} digest={DIGEST} plain={pinned}\n" in reporter.log_of("s0")
