from __future__ import annotations

import threading
import time

import pytest

from runners.executors.shell import ShellExecutor
from runners.tests.recording import RecordingReporter, claimed_job


@pytest.fixture
def repo(make_git_repo):
    return make_git_repo({"hello.txt": "hello from the repo\n", "sub/inner.txt": "inner\n"})


@pytest.fixture
def reporter():
    return RecordingReporter()


@pytest.fixture
def executor(reporter, tmp_path):
    return ShellExecutor(reporter=reporter, builds_dir=tmp_path / "builds")


def run(executor, repo, steps, stop=None, **kwargs):
    path, sha = repo
    job = claimed_job(clone_url=str(path), commit_sha=sha, steps=steps, **kwargs)
    return executor.run(job, stop or threading.Event())


def test_steps_run_in_a_checkout_of_the_exact_commit(executor, reporter, repo):
    result = run(executor, repo, [("script", "cat hello.txt"), ("script", "git rev-parse HEAD")])

    assert result.status == "SUCCESS"
    assert "hello from the repo" in reporter.log_of("s0")
    assert repo[1] in reporter.log_of("s1")
    assert reporter.finished == {"s0": ("SUCCESS", 0), "s1": ("SUCCESS", 0)}


def test_the_working_directory_and_exports_carry_over_between_steps(executor, reporter, repo):
    result = run(
        executor, repo, [("script", "cd sub && export GREETING=hi"), ("script", 'cat inner.txt; echo "$GREETING"')]
    )

    assert result.status == "SUCCESS"
    assert "inner\nhi\n" in reporter.log_of("s1")


def test_a_failing_step_stops_the_job_but_after_script_still_runs(executor, reporter, repo):
    result = run(
        executor,
        repo,
        [("before_script", "true"), ("script", "exit 3"), ("script", "echo never"), ("after_script", "echo cleanup")],
    )

    assert (result.status, result.exit_code) == ("FAILURE", 3)
    assert reporter.finished["s1"] == ("FAILURE", 3)
    assert reporter.finished["s2"] == ("SKIPPED", None)
    assert reporter.finished["s3"] == ("SUCCESS", 0)
    assert "cleanup" in reporter.log_of("s3")
    assert "never" not in reporter.log_of("s2")


def test_a_failing_command_inside_a_multi_line_step_fails_it(executor, reporter, repo):
    result = run(executor, repo, [("script", "false\necho after")])
    assert result.status == "FAILURE"
    assert "after" not in reporter.log_of("s0").splitlines()


def test_jobs_see_their_variables_but_never_the_runners_environment(executor, reporter, repo, monkeypatch):
    monkeypatch.setenv("DATABASE_URL", "postgres://runner:hunter2@db/conveyor")
    monkeypatch.setenv("SECRET_KEY", "the-server-secret")

    result = run(executor, repo, [("script", "env")], DEPLOY_TARGET="staging")

    log = reporter.log_of("s0")
    assert result.status == "SUCCESS"
    assert "DEPLOY_TARGET=staging" in log
    assert "CI_PROJECT_DIR=" in log
    assert "hunter2" not in log and "the-server-secret" not in log and "DATABASE_URL" not in log


def test_a_job_past_its_timeout_is_killed_and_fails(executor, reporter, repo):
    started = time.monotonic()
    result = run(executor, repo, [("script", "sleep 30")], timeout_s=1)

    assert result.status == "FAILURE"
    assert "timed out after 1s" in result.reason
    assert time.monotonic() - started < 25, "the step ran on past its timeout (to the end of its sleep 30)"


def test_cancel_kills_a_running_sleep_and_its_children(executor, reporter, repo, tmp_path):
    stop = threading.Event()
    marker = tmp_path / "child-survived"
    threading.Timer(0.5, stop.set).start()
    started = time.monotonic()

    result = run(
        executor, repo, [("script", f"(sleep 3; touch {marker}) & sleep 30"), ("script", "echo no")], stop=stop
    )

    assert result.status == "CANCELLED"
    assert time.monotonic() - started < 25, "the cancelled step ran on (to the end of its sleep 30)"
    assert reporter.finished["s1"] == ("SKIPPED", None)
    time.sleep(3.5)
    assert not marker.exists(), "a child of the cancelled step outlived the cancel"


def test_the_workspace_is_removed_afterwards(executor, repo, tmp_path):
    run(executor, repo, [("script", "touch left-behind")])
    assert list((tmp_path / "builds" / "conveyor-builds").iterdir()) == []


def test_an_unreachable_repository_fails_the_job_with_the_reason(executor, reporter, tmp_path):
    job = claimed_job(clone_url=str(tmp_path / "missing"), commit_sha="a" * 40, steps=[("script", "true")])
    result = executor.run(job, threading.Event())

    assert result.status == "FAILURE"
    assert "checkout failed" in result.reason
    assert "Checkout failed" in reporter.log_of("s0")
    assert reporter.finished["s0"] == ("SKIPPED", None)


def test_output_in_many_small_writes_arrives_whole_and_in_order(executor, reporter, repo):
    result = run(executor, repo, [("script", "for i in $(seq 1 2000); do echo line-$i; done")])
    log = reporter.log_of("s0")
    assert result.status == "SUCCESS"
    assert [line for line in log.splitlines() if line.startswith("line-")] == [f"line-{i}" for i in range(1, 2001)]
