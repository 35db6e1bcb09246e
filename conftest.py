"""Test session setup: make sure the embedded servers run when no URLs are given."""

from __future__ import annotations

import pytest

from cicd import embedded

_started: list[str] = []


def pytest_configure(config: pytest.Config) -> None:
    wanted = embedded.needed()
    if any(wanted.values()):
        _started.extend(embedded.up(**wanted))


def pytest_unconfigure(config: pytest.Config) -> None:
    # Stop only what this session started (a running `make run` keeps its servers).
    # xdist workers share the controller's servers and must not stop them.
    if _started and not hasattr(config, "workerinput"):
        embedded.down(postgres="postgres" in _started, redis="redis" in _started)


@pytest.fixture(scope="session")
def django_db_modify_db_settings(django_db_modify_db_settings_parallel_suffix: None) -> None:
    # Lets two test sessions share one server without sharing a test database.
    import os

    from django.conf import settings

    suffix = os.environ.get("CONVEYOR_TEST_DB_SUFFIX")
    if suffix:
        test = settings.DATABASES["default"].setdefault("TEST", {})
        test["NAME"] = f"{test.get('NAME') or 'test_' + settings.DATABASES['default']['NAME']}_{suffix}"


@pytest.fixture
def make_git_repo(tmp_path_factory: pytest.TempPathFactory):
    """A factory for real git repositories: make_git_repo({"path": "text"}) -> (path, sha)."""
    import subprocess

    def run(*args: str, cwd) -> str:
        return subprocess.run(["git", *args], cwd=cwd, check=True, capture_output=True, text=True).stdout.strip()

    def make(files: dict[str, str], *, branch: str = "main", path=None, message: str = "Initial commit"):
        repo = path or tmp_path_factory.mktemp("repo")
        if not (repo / ".git").exists():
            run("init", "--quiet", "-b", branch, cwd=repo)
            run("config", "user.name", "Test Author", cwd=repo)
            run("config", "user.email", "author@example.test", cwd=repo)
        else:
            run("checkout", "--quiet", "-B", branch, cwd=repo)
        for name, text in files.items():
            target = repo / name
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_text(text)
        run("add", "-A", cwd=repo)
        run("commit", "--quiet", "--allow-empty", "-m", message, cwd=repo)
        return repo, run("rev-parse", "HEAD", cwd=repo)

    return make
