from __future__ import annotations

import subprocess

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
