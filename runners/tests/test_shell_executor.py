from __future__ import annotations

import os
import subprocess
import threading
import time

import pytest

from runners.executors.shell import (
    _KEPT_COMMITS,
    _KEPT_REFS,
    _TRASH,
    GitCache,
    ShellExecutor,
    _lock_workspace,
    _tree_bytes,
)
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
    """Run the job, and hand its result to the reporter as the runner hands it to its backend."""
    path, sha = repo
    job = claimed_job(clone_url=str(path), commit_sha=sha, steps=steps, **kwargs)
    result = executor.run(job, stop or threading.Event())
    executor.reporter.complete(job, result)
    return result


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


def test_the_workspace_stays_until_the_job_is_cleaned_up_and_is_emptied_then(executor, repo, tmp_path):
    path, sha = repo
    job = claimed_job(clone_url=str(path), commit_sha=sha, steps=[("script", "touch left-behind")])
    builds = tmp_path / "builds" / "conveyor-builds"

    assert executor.run(job, threading.Event()).status == "SUCCESS"
    [workspace] = builds.iterdir()
    assert (workspace / "src" / "left-behind").exists()

    executor.cleanup(job)
    # Kept for the runner's next job, as a fresh one is (runners/tests/test_workspace_recycling.py).
    [kept] = builds.iterdir()
    assert sorted(p.name for p in kept.iterdir()) == ["artifacts", "home", "src", "state", "tmp"]
    assert [p.name for p in (kept / "src").iterdir()] == [".git"]
    executor.cleanup(job)  # twice: nothing left to do
    assert list(builds.iterdir()) == [kept]


def test_a_runner_with_keep_workspace_leaves_each_workspace_as_its_job_left_it(reporter, repo, tmp_path):
    executor = ShellExecutor(reporter=reporter, builds_dir=tmp_path / "builds", keep_workspace=True)
    path, sha = repo
    job = claimed_job(clone_url=str(path), commit_sha=sha, steps=[("script", "touch left-behind")])
    assert executor.run(job, threading.Event()).status == "SUCCESS"
    executor.cleanup(job)
    [workspace] = (tmp_path / "builds" / "conveyor-builds").iterdir()
    assert (workspace / "src" / "left-behind").exists()


def _aged(path, seconds: float = 3600) -> None:
    past = time.time() - seconds
    os.utime(path, (past, past))


def test_a_workspace_whose_runner_died_is_removed_when_the_next_runner_starts(reporter, tmp_path):
    builds = tmp_path / "builds" / "conveyor-builds"
    dead = builds / "job-of-a-dead-runner"
    (dead / "src").mkdir(parents=True)
    _aged(dead)
    live = builds / "job-of-a-live-runner"
    (live / "src").mkdir(parents=True)
    _aged(live)
    held = _lock_workspace(live)  # what a live runner holds while its job runs
    just_made = builds / "job-not-locked-yet"
    just_made.mkdir()
    try:
        ShellExecutor(reporter=reporter, builds_dir=tmp_path / "builds")

        assert not dead.exists()
        assert live.exists(), "the workspace of a running job was removed"
        assert just_made.exists(), "a workspace between its creation and its lock was removed"
    finally:
        os.close(held)


def _git(*args: str, cwd) -> str:
    return subprocess.run(["git", *args], cwd=cwd, check=True, capture_output=True, text=True).stdout.strip()


def test_a_commit_checked_out_before_on_the_host_is_not_fetched_again(reporter, make_git_repo, tmp_path):
    path, sha = make_git_repo({"hello.txt": "cached\n"})
    first = ShellExecutor(reporter=reporter, builds_dir=tmp_path / "builds")
    assert run(first, (path, sha), [("script", "true")]).status == "SUCCESS"
    path.rename(tmp_path / "repository-gone")  # a fetch would fail now

    # Another runner of the host (another executor on the same builds directory).
    second = ShellExecutor(reporter=RecordingReporter(), builds_dir=tmp_path / "builds")
    result = run(second, (path, sha), [("script", "cat hello.txt")])

    assert result.status == "SUCCESS", result.reason
    assert "cached" in second.reporter.log_of("s0")


def test_a_new_commit_is_fetched_and_checked_out_exactly(executor, reporter, make_git_repo):
    path, old = make_git_repo({"hello.txt": "old\n"})
    assert run(executor, (path, old), [("script", "true")]).status == "SUCCESS"
    path, new = make_git_repo({"hello.txt": "new\n"}, path=path, message="second")
    executor.reporter = reporter = RecordingReporter()

    result = run(executor, (path, new), [("script", "cat hello.txt; git rev-parse HEAD; git status --porcelain")])

    assert result.status == "SUCCESS", result.reason
    assert reporter.log_of("s0").splitlines()[-2:] == ["new", new], "not the commit, or not a clean tree"


def test_the_checkout_is_a_shallow_clone_whose_origin_is_the_repository(executor, reporter, make_git_repo):
    path, _ = make_git_repo({"a.txt": "1\n"})
    path, sha = make_git_repo({"a.txt": "2\n"}, path=path, message="second")

    result = run(
        executor,
        (path, sha),
        [("script", "git log --format=%H | wc -l; git remote get-url origin; git fsck --no-dangling >/dev/null")],
    )

    assert result.status == "SUCCESS", result.reason
    assert reporter.log_of("s0").splitlines()[-2:] == ["1", str(path)]


def test_the_host_cache_keeps_no_clone_url(executor, make_git_repo, tmp_path):
    path, sha = make_git_repo({"a.txt": "1\n"})
    url = f"file://{path}"
    assert run(executor, (url, sha), [("script", "true")]).status == "SUCCESS"

    cache = tmp_path / "builds" / "conveyor-git"
    stored = [p for p in cache.rglob("*") if p.is_file() and str(path).encode() in p.read_bytes()]
    assert stored == [], "the clone URL (which may hold credentials) was written to the host cache"


def test_an_invalid_commit_fails_the_checkout_without_running_git_on_it(executor, reporter, repo):
    path, _ = repo
    result = run(executor, (path, "--upload-pack=touch /tmp/pwned"), [("script", "true")])

    assert result.status == "FAILURE"
    assert "invalid commit" in result.reason


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


def test_a_clone_url_with_quotes_backslashes_and_comment_characters_is_origin_verbatim(
    executor, reporter, make_git_repo, tmp_path
):
    odd = tmp_path / 'a "quoted" \\ dir #not-a-comment ;nor-this'
    odd.mkdir()
    path, sha = make_git_repo({"a.txt": "1\n"}, path=odd)

    result = run(executor, (path, sha), [("script", "git remote get-url origin; cat a.txt")])

    assert result.status == "SUCCESS", result.reason
    assert reporter.log_of("s0").splitlines()[-2:] == [str(odd), "1"]


def test_a_clone_url_with_a_line_break_fails_the_checkout(executor, reporter, repo):
    path, sha = repo
    result = run(executor, (f"{path}\n[core]\n\tfsmonitor = touch /tmp/pwned", sha), [("script", "true")])

    assert result.status == "FAILURE"
    assert "invalid clone URL" in result.reason


def test_a_later_checkout_is_the_same_repository_as_the_first_one(executor, reporter, repo):
    # The first checkout runs `git init`; later ones get a copy of what it made.
    script = [("script", "git rev-parse HEAD; git status --porcelain; git config --list --local; git fsck")]
    assert run(executor, repo, script).status == "SUCCESS"
    executor.reporter = later = RecordingReporter()

    result = run(executor, repo, script)

    assert result.status == "SUCCESS", result.reason
    # Past the first line ("Fetching ... into <workspace>"), the same output: commit, a clean
    # tree, the same configuration (core settings of `git init`, origin).
    first, second = reporter.log_of("s0").splitlines()[1:], later.log_of("s0").splitlines()[1:]
    assert second == first
    assert repo[1] in second
    assert "core.bare=false" in second


def test_the_last_steps_end_comes_with_the_jobs_result_and_the_others_as_they_end(executor, reporter, repo):
    result = run(executor, repo, [("script", "true"), ("script", "exit 4")])

    assert [(end.step_id, end.status, end.exit_code) for end in result.step_ends] == [("step-1", "FAILURE", 4)]
    assert reporter.ended_with_job == ["s1"]  # s0's end was reported as it ended
    assert reporter.finished == {"s0": ("SUCCESS", 0), "s1": ("FAILURE", 4)}


def test_a_skipped_last_step_is_reported_at_once_not_with_the_result(executor, reporter, repo):
    result = run(executor, repo, [("script", "exit 1"), ("script", "echo never")])

    assert reporter.ended_with_job == []
    assert result.step_ends == []
    assert reporter.finished == {"s0": ("FAILURE", 1), "s1": ("SKIPPED", None)}


def test_a_step_stopped_halfway_leaves_the_previous_steps_exports_to_after_script(executor, reporter, repo):
    steps = [
        ("script", "export STAGE=built"),
        ("script", "export STAGE=half; sleep 30"),
        ("after_script", "echo $STAGE"),
    ]

    result = run(executor, repo, steps, timeout_s=2)

    assert result.status == "FAILURE" and "timed out" in result.reason
    assert reporter.log_of("s2").splitlines()[-1] == "built"


def test_a_checkout_from_the_cache_ships_its_first_line_with_the_steps_output(executor, reporter, repo):
    run(executor, repo, [("script", "true")])  # the first job fetches the commit into the cache
    reporter.calls.clear()
    reporter.logs.clear()

    run(executor, repo, [("script", "echo quick")])

    # No request for the checkout's line alone: the step's start is the job's first report.
    assert reporter.calls[0] == ("started", "s0")
    assert reporter.log_of("s0").startswith(f"Fetching {repo[1][:12]} (main)")
    assert reporter.log_of("s0").endswith("$ echo quick\nquick\n")


def test_a_checkout_that_fetches_ships_its_first_line_while_git_works(executor, reporter, repo, monkeypatch):
    import runners.executors.shell as shell

    fetch = shell.GitCache.fetch

    def fetch_once_the_line_is_out(self, clone_url, sha):
        deadline = time.monotonic() + 20
        while not reporter.logs["s0"] and time.monotonic() < deadline:
            time.sleep(0.01)
        return fetch(self, clone_url, sha)

    monkeypatch.setattr(shell.GitCache, "fetch", fetch_once_the_line_is_out)

    run(executor, repo, [("script", "true")])

    assert reporter.calls[0] == ("log", "s0")
    assert reporter.logs["s0"][0][1].startswith(f"Fetching {repo[1][:12]} (main)")


def test_a_new_commit_brings_only_what_it_changed_into_the_host_cache(executor, make_git_repo, tmp_path):
    # More than 100 objects: git keeps a fetch of them as a pack, as it is.
    path, first = make_git_repo({f"data/{i}.txt": os.urandom(3000).hex() for i in range(150)})
    assert run(executor, (path, first), [("script", "true")]).status == "SUCCESS"
    cache = tmp_path / "builds" / "conveyor-git"
    one_snapshot = _tree_bytes(cache)
    path, second = make_git_repo({"data/0.txt": "changed\n"}, path=path, message="second")
    executor.reporter = RecordingReporter()

    result = run(executor, (path, second), [("script", "cat data/0.txt; wc -c < data/1.txt")])

    assert result.status == "SUCCESS", result.reason
    assert executor.reporter.log_of("s0").splitlines()[-2:] == ["changed", "6000"]
    grown = _tree_bytes(cache) - one_snapshot
    assert grown < one_snapshot / 10, f"the second commit added {grown} bytes to a cache of {one_snapshot}"


def _cache(tmp_path, **limits) -> GitCache:
    return GitCache(tmp_path / "conveyor-git", **{"max_age_s": 3600.0, "max_bytes": 1 << 30, **limits})


def _cached(cache: GitCache, path, sha):
    """The repository of `path` in the cache, with `sha` fetched, as a job's checkout leaves it."""
    repository = cache.repository(str(path))
    borrowed = cache.borrow(repository)
    try:
        cache.fetch(str(path), sha)
    finally:
        cache.give_back(borrowed)
    return repository


def test_the_sweep_removes_a_cached_repository_no_job_used_for_its_max_age(make_git_repo, tmp_path):
    cache = _cache(tmp_path, max_age_s=3600.0)
    unused = _cached(cache, *make_git_repo({"a.txt": "unused\n"}))
    _aged(f"{unused}.use", 2 * 3600)
    recent = _cached(cache, *make_git_repo({"b.txt": "recent\n"}))
    stopped_halfway = cache.root / f"{unused.name}.0a1b2c3d{_TRASH}"  # a sweep's, killed while removing
    (stopped_halfway / "objects").mkdir(parents=True)

    cache.sweep()

    assert not unused.exists()
    assert recent.exists()
    assert list(cache.root.glob(f"*{_TRASH}")) == []


def test_the_sweep_leaves_a_repository_a_job_borrows_however_old(make_git_repo, tmp_path):
    cache = _cache(tmp_path, max_age_s=3600.0)
    repository = _cached(cache, *make_git_repo({"a.txt": "1\n"}))
    borrowed = cache.borrow(repository)
    _aged(f"{repository}.use", 2 * 3600)

    cache.sweep()
    assert repository.exists(), "a repository a job checked out from was removed under it"

    cache.give_back(borrowed)
    cache.sweep()
    assert not repository.exists()


def test_an_oversized_cached_repository_keeps_only_the_commits_it_fetched_last(make_git_repo, tmp_path):
    cache = _cache(tmp_path, max_bytes=1)  # every repository is past it
    path, shas = None, []
    for i in range(_KEPT_COMMITS + 4):
        path, sha = make_git_repo({"big.txt": os.urandom(20000).hex()}, path=path, message=f"commit {i}")
        shas.append(sha)
        repository = _cached(cache, path, sha)
    before = _tree_bytes(repository / "objects")

    cache.sweep()

    kept = {
        ref.rsplit("/", 1)[1] for ref in _git("for-each-ref", "--format=%(refname)", _KEPT_REFS, cwd=repository).split()
    }
    assert kept == set(shas[-_KEPT_COMMITS:])
    present = {sha for sha in shas if subprocess.run(["git", "cat-file", "-e", sha], cwd=repository).returncode == 0}
    assert present == kept, "the sweep kept commits it has no ref for, or lost ones it has"
    assert _tree_bytes(repository / "objects") < before
    assert len(list((repository / "objects" / "pack").glob("*.pack"))) == 1


def test_a_jobs_checkout_keeps_the_sweep_off_its_cached_repository_until_cleanup(
    reporter, make_git_repo, tmp_path, settings
):
    settings.CONVEYOR_GIT_CACHE_DAYS = 0  # any repository no job borrows is old enough to go
    executor = ShellExecutor(reporter=reporter, builds_dir=tmp_path / "builds")
    path, sha = make_git_repo({"a.txt": "1\n"})
    job = claimed_job(clone_url=str(path), commit_sha=sha, steps=[("script", "true")])
    reporter.complete(job, executor.run(job, threading.Event()))
    repository = executor.git_cache.repository(str(path))

    executor.git_cache.sweep()
    assert repository.exists(), "the sweep removed the repository of a job whose workspace is still there"

    executor.cleanup(job)
    executor.git_cache.sweep()
    assert not repository.exists()


def test_a_cached_repository_names_no_more_than_twice_its_kept_commits_at_a_fetch(make_git_repo, tmp_path):
    cache = _cache(tmp_path)
    path, shas = None, []
    for i in range(2 * _KEPT_COMMITS + 1):
        path, sha = make_git_repo({"a.txt": f"{i}\n"}, path=path, message=f"commit {i}")
        shas.append(sha)
        repository = _cached(cache, path, sha)

    refs = _git("for-each-ref", "--format=%(refname)", _KEPT_REFS, cwd=repository).split()
    assert len(refs) == _KEPT_COMMITS
    assert f"{_KEPT_REFS}{shas[-1]}" in refs
