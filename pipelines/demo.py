"""The demo repository that `manage.py bootstrap` creates: a tiny Python project with a pipeline.

It is a real git repository on disk, so the whole flow (mirror fetch, config read at the
commit, parse, run, runner) is exercised exactly as for a remote forge. Every job uses only
POSIX sh and python3 and touches no network, so it runs on any runner.
"""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

DEMO_BRANCH = "main"
DEMO_AUTHOR_NAME = "Conveyor Bootstrap"
DEMO_AUTHOR_EMAIL = "bootstrap@conveyor.invalid"

CICD_YML = """\
# Conveyor demo pipeline, in the GitLab-CI-compatible subset Conveyor understands.
stages:
  - build
  - test
  - security
  - deploy

variables:
  APP_NAME: demo-app

build:
  stage: build
  script:
    - sh build.sh
  artifacts:
    paths:
      - dist/
    expire_in: 1 week

lint:
  stage: test
  script:
    - python3 -m py_compile app.py test_app.py
    # No trailing whitespace in the sources.
    - "! grep -nE '[[:space:]]+$' app.py test_app.py"

test:
  stage: test
  needs: [build]
  script:
    - python3 -m unittest -v

security-scan:
  stage: security
  script:
    # A stand-in for a real scanner: fail if anything looks like a committed secret.
    - "! grep -rnE 'AKIA[0-9A-Z]{16}|BEGIN [A-Z ]*PRIVATE KEY' --include='*.py' --include='*.sh' ."
    - echo "no secrets found"

deploy-staging:
  stage: deploy
  needs: [test, lint, security-scan]
  environment:
    name: staging
    url: http://staging.example.test
  script:
    - echo "Deploying $APP_NAME to staging (simulated)"

deploy-production:
  stage: deploy
  needs: [deploy-staging]
  environment: production
  rules:
    # On the default branch only, and only when a person starts it: the run waits (blocked).
    - if: '$CI_COMMIT_BRANCH == $CI_DEFAULT_BRANCH'
      when: manual
  script:
    - echo "Deploying $APP_NAME to production (simulated)"
"""

APP_PY = '''\
"""A tiny application, built and tested by Conveyor's demo pipeline."""


def greet(name: str) -> str:
    name = name.strip() or "world"
    return f"Hello, {name}!"


def add(a: int, b: int) -> int:
    return a + b


if __name__ == "__main__":
    print(greet("Conveyor"))
'''

TEST_APP_PY = """\
import unittest

from app import add, greet


class GreetTest(unittest.TestCase):
    def test_greets_by_name(self):
        self.assertEqual(greet("Ada"), "Hello, Ada!")

    def test_greets_the_world_when_the_name_is_blank(self):
        self.assertEqual(greet("  "), "Hello, world!")


class AddTest(unittest.TestCase):
    def test_adds(self):
        self.assertEqual(add(2, 3), 5)


if __name__ == "__main__":
    unittest.main()
"""

BUILD_SH = """\
#!/bin/sh
# Builds dist/app.tar.gz with nothing but POSIX sh and python3.
set -eu
rm -rf dist
mkdir -p dist
python3 -m py_compile app.py
python3 -m tarfile -c dist/app.tar.gz app.py README.md
echo "built dist/app.tar.gz"
"""

README_MD = """\
# demo

A tiny Python project created by Conveyor's `manage.py bootstrap` to show a pipeline:
build -> test (lint, unit tests) -> security -> deploy (staging, then a manual production deploy).

Edit something, `git commit`, and trigger a run of the `demo/default` pipeline.
"""

GITIGNORE = "dist/\n__pycache__/\n"

DEMO_FILES: dict[str, str] = {
    ".cicd.yml": CICD_YML,
    "app.py": APP_PY,
    "test_app.py": TEST_APP_PY,
    "build.sh": BUILD_SH,
    "README.md": README_MD,
    ".gitignore": GITIGNORE,
}


class DemoRepositoryError(Exception):
    """git failed while creating the demo repository."""


def _git(*args: str, cwd: Path) -> str:
    # Identity and hooks come from the repository's own config, never from the user's.
    env = {**os.environ, "GIT_CONFIG_NOSYSTEM": "1", "GIT_TERMINAL_PROMPT": "0"}
    for name in ("GIT_DIR", "GIT_WORK_TREE", "GIT_INDEX_FILE"):
        env.pop(name, None)
    result = subprocess.run(["git", *args], cwd=cwd, env=env, capture_output=True, text=True, check=False)
    if result.returncode != 0:
        raise DemoRepositoryError(f"git {args[0]} failed in {cwd}: {result.stderr.strip() or result.returncode}")
    return result.stdout.strip()


def demo_head(*, path: Path) -> str | None:
    """The commit the demo repository's HEAD points at, or None when there is no commit yet."""
    if not (path / ".git").exists():
        return None
    try:
        return _git("rev-parse", "--verify", "--quiet", "HEAD", cwd=path)
    except DemoRepositoryError:
        return None


def demo_repository_ensure(*, path: Path) -> tuple[str, bool]:
    """Create the demo git repository at `path` unless it has a commit already.

    Returns (HEAD sha, created). An existing repository is left exactly as it is: people
    edit and commit in it to trigger new runs.
    """
    path = path.resolve()
    head = demo_head(path=path)
    if head:
        return head, False
    path.mkdir(parents=True, exist_ok=True)
    if not (path / ".git").exists():
        _git("init", "--quiet", "-b", DEMO_BRANCH, cwd=path)
    _git("config", "user.name", DEMO_AUTHOR_NAME, cwd=path)
    _git("config", "user.email", DEMO_AUTHOR_EMAIL, cwd=path)
    _git("config", "commit.gpgsign", "false", cwd=path)
    for name, text in DEMO_FILES.items():
        (path / name).write_text(text)
    (path / "build.sh").chmod(0o755)
    _git("add", "--", *DEMO_FILES, cwd=path)
    _git("commit", "--quiet", "--no-verify", "-m", "Demo project with a Conveyor pipeline", cwd=path)
    return _git("rev-parse", "HEAD", cwd=path), True
