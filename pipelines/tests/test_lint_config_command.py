"""`manage.py lint_config`: stages, jobs and edges of a config file, or its errors and exit code 1."""

from __future__ import annotations

import json
import subprocess
import sys
from io import StringIO
from pathlib import Path

import pytest
from django.conf import settings
from django.core.management import call_command
from django.core.management.base import CommandError

CONFIG = """\
include:
  - local: ci/templates.yml
stages: [build, test, deploy]
build:
  extends: .base
  stage: build
  script: make
test:
  script: make test
  needs: [build]
lint:
  script: ruff check
  allow_failure: true
deploy:
  stage: deploy
  script: ./deploy
  rules:
    - if: $CI_COMMIT_BRANCH == $CI_DEFAULT_BRANCH
      when: manual
release:
  stage: deploy
  script: ./release
  only: [tags]
"""


@pytest.fixture
def config(tmp_path: Path) -> Path:
    (tmp_path / "ci").mkdir()
    (tmp_path / "ci" / "templates.yml").write_text(".base:\n  image: python:3.11\n")
    path = tmp_path / ".cicd.yml"
    path.write_text(CONFIG)
    return path


def lint(*args: str) -> tuple[str, str]:
    out, err = StringIO(), StringIO()
    call_command("lint_config", *args, stdout=out, stderr=err)
    return out.getvalue(), err.getvalue()


def test_json_output_lists_stages_jobs_with_effective_edges_errors_and_warnings(config: Path) -> None:
    out, _err = lint(str(config), "--json")
    assert json.loads(out) == {
        "stages": [".pre", "build", "test", "deploy", ".post"],
        "jobs": [
            {"name": "build", "stage": "build", "needs": [], "when": "on_success", "allow_failure": False},
            {"name": "test", "stage": "test", "needs": ["build"], "when": "on_success", "allow_failure": False},
            {"name": "lint", "stage": "test", "needs": ["build"], "when": "on_success", "allow_failure": True},
            {
                "name": "deploy",
                "stage": "deploy",
                "needs": ["build", "test", "lint"],
                "when": "manual",
                "allow_failure": False,
            },
        ],
        "errors": [],
        "warnings": [],
    }


def test_ref_event_and_tag_change_which_jobs_the_pipeline_gets(config: Path) -> None:
    on_branch = json.loads(lint(str(config), "--json", "--ref", "feature")[0])
    on_tag = json.loads(lint(str(config), "--json", "--ref", "v1.0", "--tag")[0])
    on_schedule = json.loads(lint(str(config), "--json", "--event", "schedule")[0])
    assert [job["name"] for job in on_branch["jobs"]] == ["build", "test", "lint"]
    assert [job["name"] for job in on_tag["jobs"]] == ["build", "test", "lint", "release"]
    assert [job["name"] for job in on_schedule["jobs"]] == ["build", "test", "lint", "deploy"]


def test_the_table_shows_jobs_needs_and_what_each_waits_for(config: Path) -> None:
    out, _err = lint(str(config))
    lines = out.splitlines()
    assert lines[0] == "Stages: .pre, build, test, deploy, .post"
    assert any(
        line.split() == ["deploy", "deploy", "manual", "no", "(blocking)", "(earlier", "stages)"] for line in lines
    )
    assert any(line.split() == ["test", "test", "on_success", "no", "build"] for line in lines)
    assert "  deploy: build, test, lint" in lines
    assert "  build: (starts at once)" in lines
    assert lines[-1].endswith("4 jobs in 3 stages")


def test_errors_are_printed_and_the_command_fails(tmp_path: Path) -> None:
    path = tmp_path / "bad.yml"
    path.write_text("job:\n  scirpt: make\n")
    out, err = StringIO(), StringIO()
    with pytest.raises(CommandError, match="2 problems"):
        call_command("lint_config", str(path), stdout=out, stderr=err)
    assert "error: job 'job', key 'scirpt', line 2: unknown key 'scirpt' (did you mean 'script'?)" in err.getvalue()


def test_json_errors_are_printed_as_json_before_the_command_fails(tmp_path: Path) -> None:
    path = tmp_path / "bad.yml"
    path.write_text("job:\n  script: x\n  needs: [ghost]\n")
    out = StringIO()
    with pytest.raises(CommandError):
        call_command("lint_config", str(path), "--json", stdout=out, stderr=StringIO())
    assert json.loads(out.getvalue()) == {
        "stages": [],
        "jobs": [],
        "errors": ["job 'job', key 'needs', line 3: needs unknown job 'ghost'"],
        "warnings": [],
    }


def test_warnings_and_a_skipped_workflow_are_reported(tmp_path: Path) -> None:
    path = tmp_path / "c.yml"
    path.write_text("workflow:\n  rules: [{if: $CI_COMMIT_TAG}]\njob:\n  script: x\n  secrets: {}\n")
    result = json.loads(lint(str(path), "--json")[0])
    assert result["jobs"] == []
    assert result["warnings"][0] == "job 'job', key 'secrets', line 5: secrets is not supported by Conveyor (ignored)"
    assert result["warnings"][1].startswith("no run would be created: workflow:rules: no rule matches")


def test_includes_may_not_leave_the_config_directory(tmp_path: Path) -> None:
    (tmp_path / "secret.yml").write_text("stolen:\n  script: x\n")
    project = tmp_path / "project"
    project.mkdir()
    (project / "link.yml").symlink_to(tmp_path / "secret.yml")
    path = project / ".cicd.yml"
    path.write_text("include: [link.yml]\njob:\n  script: x\n")
    out = StringIO()
    with pytest.raises(CommandError):
        call_command("lint_config", str(path), "--json", stdout=out, stderr=StringIO())
    assert "is outside" in json.loads(out.getvalue())["errors"][0]


def test_trigger_variables_are_visible_to_rules(tmp_path: Path) -> None:
    path = tmp_path / "c.yml"
    path.write_text('a:\n  script: x\nb:\n  script: x\n  rules: [{if: $DEPLOY == "yes"}]\n')
    result = json.loads(lint(str(path), "--json", "--var", "DEPLOY=yes")[0])
    assert [job["name"] for job in result["jobs"]] == ["a", "b"]


def test_a_missing_file_is_a_command_error(tmp_path: Path) -> None:
    with pytest.raises(CommandError, match="cannot read"):
        lint(str(tmp_path / "nope.yml"))


def test_manage_py_exits_with_1_on_errors_and_0_on_a_valid_config(tmp_path: Path, config: Path) -> None:
    bad = tmp_path / "bad.yml"
    bad.write_text("job:\n  stage: nowhere\n  script: x\n")
    manage = Path(settings.BASE_DIR) / "manage.py"
    failed = subprocess.run([sys.executable, str(manage), "lint_config", str(bad)], capture_output=True, text=True)
    passed = subprocess.run([sys.executable, str(manage), "lint_config", str(config)], capture_output=True, text=True)
    assert failed.returncode == 1, failed.stderr
    assert "unknown stage 'nowhere'" in failed.stderr
    assert passed.returncode == 0, passed.stderr
