"""What a job's `artifacts:` and `cache:` leave to do after its steps: the executor reports the
last step's end with the job's finish only when nothing is left (runners.executors.shell)."""

from __future__ import annotations

import pytest

from runners.artifacts import JobArtifacts, OrmArtifacts
from runners.executors.base import JobResult
from runners.tests.recording import RecordingReporter, claimed_job


class WithTransport(RecordingReporter):
    """A reporter whose backend moves artifacts (the trusted runner's; never called here)."""

    artifacts = OrmArtifacts(runner=None)


def job_artifacts(tmp_path, spec: dict, reporter=None) -> JobArtifacts:
    job = claimed_job(clone_url="/nowhere", commit_sha="a" * 40, steps=[("script", "true")])
    job.spec = spec
    return JobArtifacts(reporter or WithTransport(), job, workspace=tmp_path, project=tmp_path / "src")


@pytest.mark.parametrize(
    ("spec", "status", "work"),
    [
        ({}, "SUCCESS", False),
        ({"artifacts": {"paths": ["dist/"]}}, "SUCCESS", True),
        ({"artifacts": {"paths": ["dist/"]}}, "FAILURE", False),  # when: on_success
        ({"artifacts": {"paths": ["dist/"], "when": "on_failure"}}, "FAILURE", True),
        ({"artifacts": {"paths": ["dist/"], "when": "always"}}, "CANCELLED", False),
        ({"artifacts": {"reports": {"junit": ["report.xml"]}}}, "FAILURE", True),
        ({"cache": [{"key": "deps", "paths": ["vendor/"]}]}, "SUCCESS", True),
    ],
)
def test_work_after_the_steps_follows_the_artifacts_and_caches_sections(tmp_path, spec, status, work):
    assert job_artifacts(tmp_path, spec).work_after_steps(JobResult(status=status)) is work


def test_images_a_step_recorded_are_work_after_the_steps(tmp_path):
    artifacts = job_artifacts(tmp_path, {})
    artifacts.records.write_text('{"reference": "registry.test/app:1"}\n')

    assert artifacts.work_after_steps(JobResult(status="SUCCESS"))


def test_without_a_transport_nothing_is_left_to_do_after_the_steps(tmp_path):
    artifacts = job_artifacts(tmp_path, {"artifacts": {"paths": ["dist/"]}}, reporter=RecordingReporter())

    assert not artifacts.work_after_steps(JobResult(status="SUCCESS"))
