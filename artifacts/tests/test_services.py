from __future__ import annotations

import hashlib
import io
from datetime import timedelta

import pytest
from django.utils import timezone

from artifacts import storage
from artifacts.models import Artifact, ArtifactStatus, ArtifactType, TestReport
from artifacts.selectors import job_dependency_artifacts, job_test_report, run_artifacts, run_test_summary
from artifacts.services import (
    ArtifactRefused,
    artifact_commit,
    artifact_docker_record,
    artifact_receive,
    artifact_upload_begin,
    artifacts_reuse,
)
from artifacts.tests.conftest import job_named
from artifacts.tests.helpers import TWO_STAGES, tar_gz, upload
from runs.models import JobStatus

DIGEST = "sha256:" + "ab" * 32


def test_an_upload_round_trips_through_the_storage_with_its_size_and_sha256(make_run, start, artifact_dir):
    run = make_run(TWO_STAGES)
    job, _ = start(job_named(run, "build"))
    data = b"\x00binary\xff" * 100_000

    artifact = upload(job, data)

    assert artifact.status == ArtifactStatus.AVAILABLE
    assert (artifact.size_bytes, artifact.sha256) == (len(data), hashlib.sha256(data).hexdigest())
    assert artifact.storage_path == f"runs/{run.pk}/{job.pk}/{artifact.pk}/dist.tar.gz"
    assert (artifact_dir / artifact.storage_path).read_bytes() == data
    with storage.open_stream(artifact.storage_path) as stream:
        assert stream.read() == data


def test_content_other_than_declared_is_refused_and_not_kept(make_run, start, artifact_dir):
    job, _ = start(job_named(make_run(TWO_STAGES), "build"))
    declared = b"what the runner hashed"
    artifact = artifact_upload_begin(
        job=job, name="dist", type=ArtifactType.BINARY, size=len(declared), sha256=hashlib.sha256(declared).hexdigest()
    )

    with pytest.raises(ArtifactRefused, match="is not what was declared"):
        artifact_receive(artifact=artifact, stream=io.BytesIO(b"what arrived instead!!"))
    with pytest.raises(ArtifactRefused, match="bigger than the declared"):
        artifact_receive(artifact=artifact, stream=io.BytesIO(declared + b"and more"))
    with pytest.raises(ArtifactRefused, match="nothing was uploaded"):
        artifact_commit(artifact=artifact)
    assert not (artifact_dir / artifact.storage_path).exists()
    assert Artifact.objects.get(pk=artifact.pk).status == ArtifactStatus.PENDING


def test_an_upload_declaration_is_checked(make_run, start):
    job, _ = start(job_named(make_run(TWO_STAGES), "build"))

    for kwargs, message in [
        ({"type": ArtifactType.DOCKER}, "a file artifact is"),
        ({"size": -1}, "an artifact has 0 to"),
        ({"sha256": "ABC"}, "sha256 must be"),
        ({"name": ""}, "an artifact name"),
    ]:
        fields = {"name": "dist", "type": ArtifactType.BINARY, "size": 1, "sha256": "0" * 64, **kwargs}
        with pytest.raises(ArtifactRefused, match=message):
            artifact_upload_begin(job=job, **fields)


def test_committing_twice_changes_nothing(make_run, start):
    job, _ = start(job_named(make_run(TWO_STAGES), "build"))
    artifact = upload(job, b"data")
    expires_at = artifact.expires_at

    again = artifact_commit(artifact=Artifact.objects.get(pk=artifact.pk))

    assert (again.status, again.expires_at) == (ArtifactStatus.AVAILABLE, expires_at)


@pytest.mark.parametrize(("branch", "days"), [("main", 90), ("feature/login", 30)])
def test_artifacts_of_the_default_branch_are_kept_90_days_and_of_other_branches_30(make_run, start, branch, days):
    job, _ = start(job_named(make_run(TWO_STAGES, branch=branch), "build"))
    before = timezone.now()

    artifact = upload(job, b"data")

    assert before + timedelta(days=days) <= artifact.expires_at <= timezone.now() + timedelta(days=days)


@pytest.mark.parametrize(("expire_in", "expected"), [("2 hours", timedelta(hours=2)), ("never", None)])
def test_expire_in_from_the_config_wins_and_never_keeps_an_artifact_forever(make_run, start, expire_in, expected):
    config = TWO_STAGES.replace("paths: [dist/]", f"paths: [dist/]\n    expire_in: {expire_in}")
    job, _ = start(job_named(make_run(config, branch="feature"), "build"))

    artifact = upload(job, b"data")

    if expected is None:
        assert artifact.expires_at is None
    else:
        assert artifact.expires_at - timezone.now() == pytest.approx(expected, abs=timedelta(minutes=1))


def test_a_test_report_gets_its_summary_when_committed_and_the_run_page_selectors_show_it(make_run, start, finish):
    run = make_run(TWO_STAGES)
    job, _ = start(job_named(run, "test"))
    report = (
        b'<testsuite name="shop"><testcase name="adds"/><testcase name="totals" classname="Cart">'
        b'<failure message="90 != 81">trace</failure></testcase><testcase name="later"><skipped/></testcase>'
        b"</testsuite>"
    )

    artifact = upload(job, tar_gz({"reports/junit.xml": report}), name="junit", type=ArtifactType.TEST_REPORT)

    summary = TestReport.objects.get(artifact=artifact)
    assert (summary.tests, summary.failed, summary.skipped, summary.passed) == (3, 1, 1, 1)
    assert job_test_report(job=job) == summary
    totals = run_test_summary(run=run)
    assert (totals["tests"], totals["failures"], totals["passed"]) == (3, 1, 1)
    assert totals["failed_cases"][0] | {"detail": ""} == {
        "suite": "shop",
        "classname": "Cart",
        "name": "totals",
        "kind": "failure",
        "type": "",
        "message": "90 != 81",
        "detail": "",
        "file": "reports/junit.xml",
        "job": "test",
    }
    assert run_artifacts(run=run) == [artifact]


def test_a_run_without_test_reports_has_no_test_summary(make_run):
    assert run_test_summary(run=make_run(TWO_STAGES)) is None


def test_an_image_is_recorded_with_its_reference_and_digest_and_refused_without_them(make_run, start):
    job, _ = start(job_named(make_run(TWO_STAGES), "build"))

    image = artifact_docker_record(job=job, reference="127.0.0.1:5000/app:1.0", digest=DIGEST)

    assert (image.type, image.storage_path, image.digest, image.status) == (
        ArtifactType.DOCKER,
        "127.0.0.1:5000/app:1.0",
        DIGEST,
        ArtifactStatus.AVAILABLE,
    )
    with pytest.raises(ArtifactRefused, match="a digest is"):
        artifact_docker_record(job=job, reference="127.0.0.1:5000/app:1.0", digest="latest")
    with pytest.raises(ArtifactRefused, match="an image reference"):
        artifact_docker_record(job=job, reference="app; rm -rf /", digest=DIGEST)


# --- What a job receives.


def archives_for(job) -> list[str]:
    available, _ = job_dependency_artifacts(job=job)
    return [a.job.name for a in available]


def with_artifacts(make_run, start, finish, config: str, *producers: str):
    run = make_run(config)
    for name in producers:
        job, _ = start(job_named(run, name))
        upload(job, name.encode())
        finish(job)
    return run


def test_without_needs_a_job_receives_the_archives_of_every_earlier_stage(make_run, start, finish):
    config = """
    stages: [build, test, deploy]
    a: {stage: build, script: [x]}
    b: {stage: build, script: [x]}
    t: {stage: test, script: [x]}
    d: {stage: deploy, script: [x]}
    """
    run = with_artifacts(make_run, start, finish, config, "a", "b")
    job, _ = start(job_named(run, "t"))
    upload(job, b"t")

    assert archives_for(job) == ["a", "b"]
    assert archives_for(job_named(run, "d")) == ["a", "b", "t"]


def test_with_needs_a_job_receives_only_what_it_needs_and_nothing_from_artifacts_false(make_run, start, finish):
    config = """
    stages: [build, test]
    a: {stage: build, script: [x]}
    b: {stage: build, script: [x]}
    c: {stage: build, script: [x]}
    t:
      stage: test
      script: [x]
      needs: [a, {job: b, artifacts: false}]
    """
    run = with_artifacts(make_run, start, finish, config, "a", "b", "c")

    assert archives_for(job_named(run, "t")) == ["a"]


def test_dependencies_name_the_archives_and_an_empty_list_means_none(make_run, start, finish):
    config = """
    stages: [build, test]
    a: {stage: build, script: [x]}
    b: {stage: build, script: [x]}
    only-b: {stage: test, script: [x], dependencies: [b]}
    none: {stage: test, script: [x], dependencies: []}
    """
    run = with_artifacts(make_run, start, finish, config, "a", "b")

    assert archives_for(job_named(run, "only-b")) == ["b"]
    assert archives_for(job_named(run, "none")) == []


def test_expired_archives_of_a_dependency_are_reported_as_missing(make_run, start, finish):
    run = with_artifacts(make_run, start, finish, TWO_STAGES, "build")
    Artifact.objects.filter(run=run).update(expires_at=timezone.now() - timedelta(seconds=1))

    available, missing = job_dependency_artifacts(job=job_named(run, "test"))

    assert available == [] and [a.job.name for a in missing] == ["build"]


# --- Reuse.

REUSABLE = """
build:
  script: [make image]
  artifacts:
    paths: [dist/]
    reuse: true
"""


def test_a_job_with_the_key_of_an_earlier_successful_build_gets_its_artifacts_linked(make_run, start, finish):
    first = make_run(REUSABLE, sha="a" * 40)
    builder, _ = start(job_named(first, "build"))
    built = upload(builder, b"image layers", cache_key="reuse:k1")
    image = artifact_docker_record(job=builder, reference="r/app:1", digest=DIGEST, cache_key="reuse:k1")
    finish(builder)
    rerun = make_run(REUSABLE, sha="a" * 40)
    job, _ = start(job_named(rerun, "build"))

    source, copies = artifacts_reuse(job=job, cache_key="reuse:k1")

    assert source == builder
    assert sorted((c.type, c.storage_path, c.reused_from_id) for c in copies) == sorted(
        [(ArtifactType.BINARY, built.storage_path, built.pk), (ArtifactType.DOCKER, "r/app:1", image.pk)]
    )
    assert all(c.run_id == rerun.pk and c.job_id == job.pk for c in copies)
    # A third run reuses too, and still points at the original build.
    third, _ = start(job_named(make_run(REUSABLE, sha="a" * 40), "build"))
    finish(job)
    _, again = artifacts_reuse(job=third, cache_key="reuse:k1")
    assert {c.reused_from_id for c in again} == {built.pk, image.pk}


def test_nothing_is_reused_from_a_failed_build_expired_artifacts_or_another_key(make_run, start, finish):
    failed, _ = start(job_named(make_run(REUSABLE), "build"))
    upload(failed, b"x", cache_key="reuse:k2")
    finish(failed, JobStatus.FAILURE)
    expired, _ = start(job_named(make_run(REUSABLE), "build"))
    upload(expired, b"x", cache_key="reuse:k3")
    finish(expired)
    Artifact.objects.filter(job=expired).update(expires_at=timezone.now() - timedelta(seconds=1))
    job, _ = start(job_named(make_run(REUSABLE), "build"))

    assert artifacts_reuse(job=job, cache_key="reuse:k2") == (None, [])
    assert artifacts_reuse(job=job, cache_key="reuse:k3") == (None, [])
    assert artifacts_reuse(job=job, cache_key="reuse:other") == (None, [])
