"""The shell executor empties a finished job's workspace back to a fresh one and gives it to
the runner's next job (ShellExecutor._recycle), instead of making every directory anew."""

from __future__ import annotations

import dataclasses
import os
import threading

import pytest

from runners.executors.shell import ShellExecutor
from runners.tests.recording import RecordingReporter, claimed_job

# What a job sees of its workspace: every entry's path, type and mode, the repository's own
# files' contents, and git's view of the checkout.
LIST_WORKSPACE = (
    'cd "$CI_PROJECT_DIR/.." && find . -path ./src/.git/index -prune -o -printf "%P %y %m\\n" | sort'
    " && cat src/.git/HEAD src/.git/config && git -C src status --porcelain --branch && git -C src branch -a"
)

# A job that leaves everything it can behind: files everywhere, commits, a branch and a tag
# in the checkout, changed modes, a symlink where a directory was, a file where a directory
# was, and hard links from the workspace to a file outside it.
MESS = """
touch untracked && mkdir -p deep/er && echo x > deep/er/file && echo changed >> hello.txt
echo export LEFT=1 > ../home/.profile && mkdir -p ../home/.cache/a && touch ../tmp/scratch ../state/extra
git -c user.name=n -c user.email=e commit -qam mess && git branch left && git tag left-tag
echo junk > .git/objects/pack/junk && touch .git/refs/heads/stray
chmod 700 ../home && chmod 1777 ../state && chmod 600 .git/config
rm -rf ../tmp && ln -s "$OUTSIDE" ../tmp
rm -rf ../artifacts && echo not-a-directory > ../artifacts
ln -f "$OUTSIDE/sentinel" .git/HEAD && ln -f "$OUTSIDE/other" ../state/linked
"""


@pytest.fixture
def repo(make_git_repo):
    return make_git_repo({"hello.txt": "hello from the repo\n"})


@pytest.fixture
def outside(tmp_path):
    directory = tmp_path / "outside"
    directory.mkdir()
    (directory / "sentinel").write_text("must stay as it is\n")
    (directory / "other").write_text("mine\n")
    return directory


def _job(repo, number: int, steps, **variables):
    path, sha = repo
    job = claimed_job(clone_url=str(path), commit_sha=sha, steps=steps, **variables)
    return dataclasses.replace(job, id=f"00000000-0000-0000-0000-{number:012d}")


def _run_and_clean(executor, job):
    result = executor.run(job, threading.Event())
    executor.cleanup(job)
    return result


def _listing(reporter: RecordingReporter, step: str = "s0") -> str:
    text = "".join(piece for _, piece in reporter.logs[step])
    return text[text.index("$ ") :]  # from the command on: the checkout's line names the workspace


def test_the_next_job_gets_a_workspace_exactly_like_a_fresh_one_whatever_the_last_job_left(repo, outside, tmp_path):
    reporter = RecordingReporter()
    executor = ShellExecutor(reporter=reporter, builds_dir=tmp_path / "builds")
    assert _run_and_clean(executor, _job(repo, 1, [("script", MESS)], OUTSIDE=str(outside))).status == "SUCCESS"
    [kept] = (tmp_path / "builds" / "conveyor-builds").iterdir()
    kept_inode = kept.stat().st_ino

    recycled = RecordingReporter()
    executor.reporter = recycled
    second = _job(repo, 2, [("script", LIST_WORKSPACE)])
    assert executor.run(second, threading.Event()).status == "SUCCESS"
    fresh = RecordingReporter()
    first_ever = _job(repo, 2, [("script", LIST_WORKSPACE)])
    assert ShellExecutor(reporter=fresh, builds_dir=tmp_path / "other").run(first_ever, threading.Event()).status == (
        "SUCCESS"
    )

    assert _listing(recycled) == _listing(fresh)
    assert "untracked" not in _listing(recycled) and "left-tag" not in _listing(recycled)
    # The same directory, renamed for the job as a new one is named; nothing outside it touched.
    [reused] = (tmp_path / "builds" / "conveyor-builds").iterdir()
    assert reused.name.startswith(f"{second.id}-") and reused.stat().st_ino == kept_inode
    assert (outside / "sentinel").read_text() == "must stay as it is\n"
    assert (outside / "other").read_text() == "mine\n"
    assert sorted(p.name for p in outside.iterdir()) == ["other", "sentinel"]


def test_a_workspace_that_cannot_be_emptied_is_removed_and_the_next_job_gets_a_new_one(repo, tmp_path):
    if os.geteuid() != 0:
        pytest.skip("needs root: the job hands a directory of its workspace to another user")
    executor = ShellExecutor(reporter=RecordingReporter(), builds_dir=tmp_path / "builds")
    builds = tmp_path / "builds" / "conveyor-builds"
    _run_and_clean(executor, _job(repo, 1, [("script", "true")]))  # the skeleton is known from here on
    assert len(list(builds.iterdir())) == 1  # kept

    _run_and_clean(executor, _job(repo, 2, [("script", "chown 4242 ../home")]))
    assert list(builds.iterdir()) == []

    assert executor.run(_job(repo, 3, [("script", "true")]), threading.Event()).status == "SUCCESS"
    [new] = builds.iterdir()
    assert new.name.startswith("00000000-0000-0000-0000-000000000003-")


def test_a_kept_workspace_stays_locked_so_no_other_runner_sweeps_it(repo, tmp_path):
    from runners.executors.shell import _ORPHAN_MIN_AGE_S, sweep_workspaces

    executor = ShellExecutor(reporter=RecordingReporter(), builds_dir=tmp_path / "builds")
    _run_and_clean(executor, _job(repo, 1, [("script", "true")]))
    builds = tmp_path / "builds" / "conveyor-builds"
    [kept] = builds.iterdir()
    os.utime(kept, (0, 0))  # old enough to be swept, were it nobody's

    assert sweep_workspaces(builds, min_age_s=_ORPHAN_MIN_AGE_S) == 0
    assert kept.exists()
