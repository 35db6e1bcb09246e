from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from pipelines import git


@pytest.fixture
def mirrors(settings, tmp_path):
    settings.CONVEYOR_MIRRORS_DIR = tmp_path / "mirrors"


def test_a_mirror_fetch_reads_branches_and_files_at_a_commit(make_git_repo, mirrors):
    repo, first = make_git_repo({".cicd.yml": "one\n"})
    _, second = make_git_repo({".cicd.yml": "two\n"}, path=repo)
    mirror = git.mirror_fetch(repository_id=1, clone_url=str(repo))

    assert git.resolve_ref(mirror=mirror, ref="main") == (second, False)
    assert git.read_file(mirror=mirror, sha=first, path=".cicd.yml", max_bytes=100) == "one\n"
    assert git.read_file(mirror=mirror, sha=second, path=".cicd.yml", max_bytes=100) == "two\n"
    assert git.commit_info(mirror=mirror, sha=second).author == "Test Author <author@example.test>"


def test_a_second_fetch_sees_new_commits_and_tags(make_git_repo, mirrors):
    repo, _ = make_git_repo({"a": "1"})
    git.mirror_fetch(repository_id=1, clone_url=str(repo))
    _, sha = make_git_repo({"a": "2"}, path=repo)
    subprocess.run(["git", "tag", "v1.0", sha], cwd=repo, check=True)
    mirror = git.mirror_fetch(repository_id=1, clone_url=f"file://{repo}")

    assert git.resolve_ref(mirror=mirror, ref="main") == (sha, False)
    assert git.resolve_ref(mirror=mirror, ref="v1.0") == (sha, True)


def test_a_missing_file_is_none_and_an_unknown_ref_is_an_error(make_git_repo, mirrors):
    repo, sha = make_git_repo({"a": "1"})
    mirror = git.mirror_fetch(repository_id=1, clone_url=str(repo))

    assert git.read_file(mirror=mirror, sha=sha, path=".cicd.yml", max_bytes=100) is None
    with pytest.raises(git.GitError, match="no branch or tag named 'nope'"):
        git.resolve_ref(mirror=mirror, ref="nope")


def test_a_file_over_the_limit_is_refused(make_git_repo, mirrors):
    repo, sha = make_git_repo({"big": "x" * 1000})
    mirror = git.mirror_fetch(repository_id=1, clone_url=str(repo))

    with pytest.raises(git.GitError, match="limit is 100"):
        git.read_file(mirror=mirror, sha=sha, path="big", max_bytes=100)


@pytest.mark.parametrize("ref", ["-x", "a..b", "a b", "refs/../x", "a~1", "", "x" * 300])
def test_hostile_refs_are_refused(ref):
    with pytest.raises(git.GitError, match="invalid ref"):
        git.validate_ref(ref)


def test_the_ext_transport_cannot_run_commands(tmp_path, mirrors):
    marker = tmp_path / "pwned"
    with pytest.raises(git.GitError):
        git.mirror_fetch(repository_id=2, clone_url=f"ext::sh -c touch% {marker}")
    assert not marker.exists()


def test_paths_escaping_the_repository_are_refused(make_git_repo, mirrors):
    repo, sha = make_git_repo({"a": "1"})
    mirror = git.mirror_fetch(repository_id=1, clone_url=str(repo))
    with pytest.raises(git.GitError, match="invalid path"):
        git.read_file(mirror=mirror, sha=sha, path="../secrets", max_bytes=100)


def test_a_fetch_whose_worker_was_killed_keeps_the_mirror_locked_until_its_git_exits(
    make_git_repo, mirrors, settings, monkeypatch
):
    """A Celery worker killed mid-fetch leaves its git running. A second fetch into the mirror
    waits for that git to end rather than write the same objects beside it (over git's dumb
    HTTP protocol, through the same temporary files: a corrupt object)."""
    from tests.fault_servers import StallingGitServer
    from tests.test_runner_e2e import wait_until

    repo, sha = make_git_repo({"a.txt": "1\n"})
    forge = StallingGitServer(repo)  # holds every request until told
    code = "import os, django; django.setup(); from pipelines.git import mirror_fetch; "
    code += "mirror_fetch(repository_id=1, clone_url=os.environ['FORGE'])"
    env = {
        **os.environ,
        "DJANGO_SETTINGS_MODULE": "cicd.settings",
        "CONVEYOR_MIRRORS_DIR": str(settings.CONVEYOR_MIRRORS_DIR),
        "FORGE": forge.url,
    }
    try:
        worker = subprocess.Popen([sys.executable, "-c", code], cwd=Path(__file__).parents[2], env=env)
        wait_until(lambda: forge.requests, what="the worker's git to ask the forge")
        worker.kill()
        worker.wait()

        monkeypatch.setattr(git, "GIT_TIMEOUT_S", 1)
        with pytest.raises(git.GitError, match="another fetch of this repository still runs"):
            git.mirror_fetch(repository_id=1, clone_url=forge.url)

        forge.stalled.clear()  # the dead worker's git goes on, and ends
        monkeypatch.setattr(git, "GIT_TIMEOUT_S", 60)
        mirror = git.mirror_fetch(repository_id=1, clone_url=forge.url)
    finally:
        forge.close()

    assert git.resolve_ref(mirror=mirror, ref="main") == (sha, False)
    assert subprocess.run(["git", "-C", str(mirror), "fsck", "--no-dangling"], capture_output=True).returncode == 0
