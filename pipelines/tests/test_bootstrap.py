"""`manage.py bootstrap`: admin account, demo repository and pipeline, first run. Idempotent."""

from __future__ import annotations

import io
import stat
import subprocess
import sys
import types
from pathlib import Path

import pytest
import yaml
from django.contrib.auth import get_user_model
from django.core.management import call_command

from pipelines.demo import DEMO_FILES
from pipelines.models import Pipeline, Repository, Trigger
from runs.models import PipelineRun, RunStatus

pytestmark = pytest.mark.django_db


@pytest.fixture(autouse=True)
def _fast_hashing(settings, monkeypatch) -> None:
    settings.PASSWORD_HASHERS = ["django.contrib.auth.hashers.MD5PasswordHasher"]
    monkeypatch.delenv("CONVEYOR_ADMIN_USER", raising=False)
    monkeypatch.delenv("CONVEYOR_ADMIN_PASSWORD", raising=False)


def bootstrap(var_dir: Path, *args: str) -> str:
    out = io.StringIO()
    call_command("bootstrap", "--var-dir", str(var_dir), *args, stdout=out)
    return out.getvalue()


def git(repo: Path, *args: str) -> str:
    return subprocess.run(["git", *args], cwd=repo, check=True, capture_output=True, text=True).stdout.strip()


def test_bootstrap_twice_creates_one_admin_one_repository_one_pipeline(tmp_path: Path) -> None:
    first = bootstrap(tmp_path, "--no-run")
    second = bootstrap(tmp_path, "--no-run")

    user = get_user_model().objects.get()
    assert user.username == "admin"
    assert user.is_superuser and user.is_staff
    password = (tmp_path / "admin_password").read_text().strip()
    assert user.check_password(password)
    assert stat.S_IMODE((tmp_path / "admin_password").stat().st_mode) == 0o600
    # Printed every time, the same password.
    assert f"password: {password}" in first
    assert f"password: {password}" in second
    assert "'admin' created" in first
    assert "'admin' exists" in second

    repository = Repository.objects.get()
    assert (repository.name, repository.clone_url, repository.default_branch) == (
        "demo",
        str(tmp_path / "demo-repo"),
        "main",
    )
    pipeline = Pipeline.objects.get()
    assert (pipeline.repository, pipeline.name, pipeline.config_path) == (repository, "default", ".cicd.yml")
    assert "demo/default created" in first
    assert "demo/default exists" in second


def test_bootstrap_makes_a_real_git_repository_with_one_commit_of_the_demo(tmp_path: Path) -> None:
    bootstrap(tmp_path, "--no-run")
    bootstrap(tmp_path, "--no-run")
    repo = tmp_path / "demo-repo"
    assert git(repo, "rev-parse", "--abbrev-ref", "HEAD") == "main"
    assert len(git(repo, "rev-list", "HEAD").splitlines()) == 1
    assert git(repo, "status", "--porcelain") == ""
    assert sorted(git(repo, "ls-tree", "--name-only", "HEAD").splitlines()) == sorted(DEMO_FILES)
    assert git(repo, "log", "-1", "--format=%an <%ae>") == "Conveyor Bootstrap <bootstrap@conveyor.invalid>"


def test_the_demo_production_environment_is_protected_by_one_approval(tmp_path: Path) -> None:
    from runs.models import Environment

    bootstrap(tmp_path, "--no-run")
    bootstrap(tmp_path, "--no-run")

    production = Environment.objects.get(repository__name="demo", name="production")
    assert production.protected and production.required_approvals == 1


def test_demo_config_has_the_promised_stages_jobs_and_gates(tmp_path: Path) -> None:
    bootstrap(tmp_path, "--no-run")
    config = yaml.safe_load(git(tmp_path / "demo-repo", "show", "HEAD:.cicd.yml"))
    assert config["stages"] == ["build", "test", "security", "deploy"]
    assert config["build"]["artifacts"]["paths"] == ["dist/"]
    assert config["lint"]["stage"] == "test"
    assert config["test"]["needs"] == ["build"]
    assert config["security-scan"]["stage"] == "security"
    staging = config["deploy-staging"]
    assert staging["environment"] == {"name": "staging", "url": "http://staging.example.test"}
    assert staging["needs"] == ["test", "lint", "security-scan"]
    production = config["deploy-production"]
    assert production["environment"] == "production"
    assert production["needs"] == ["deploy-staging"]
    assert production["rules"] == [{"if": "$CI_COMMIT_BRANCH == $CI_DEFAULT_BRANCH", "when": "manual"}]


def test_demo_config_parses_with_a_blocking_production_deploy_on_main_only(tmp_path: Path) -> None:
    parser = pytest.importorskip("pipelines.config.parser")
    from pipelines.config.spec import TriggerContext

    bootstrap(tmp_path, "--no-run")
    text = git(tmp_path / "demo-repo", "show", "HEAD:.cicd.yml")

    def no_includes(path: str) -> str:
        raise AssertionError(f"the demo includes nothing, asked for {path}")

    on_main = parser.parse_pipeline(
        text, context=TriggerContext(ref="main", default_branch="main"), read_file=no_includes
    )
    names = [job.name for job in on_main.jobs]
    assert sorted(names) == sorted(["build", "lint", "test", "security-scan", "deploy-staging", "deploy-production"])
    production = on_main.job("deploy-production")
    assert (production.when, production.blocking, production.allow_failure) == ("manual", True, False)
    assert [need.job for need in on_main.job("test").needs] == ["build"]
    assert on_main.job("lint").needs is None

    on_branch = parser.parse_pipeline(
        text, context=TriggerContext(ref="feature", default_branch="main"), read_file=no_includes
    )
    assert "deploy-production" not in [job.name for job in on_branch.jobs]


def test_demo_job_scripts_succeed_with_posix_sh_and_python3(tmp_path: Path) -> None:
    bootstrap(tmp_path, "--no-run")
    workspace = tmp_path / "workspace"
    git(tmp_path, "clone", "--quiet", str(tmp_path / "demo-repo"), str(workspace))
    config = yaml.safe_load((workspace / ".cicd.yml").read_text())
    # A bare environment like a runner's: python3 (this interpreter's directory has one), sh, coreutils.
    env = {"PATH": f"{Path(sys.executable).parent}:/usr/bin:/bin", "HOME": str(tmp_path), "APP_NAME": "demo-app"}
    # In the order a run would execute them; the workspace is shared, which stands in for artifacts.
    for job in ["build", "lint", "test", "security-scan", "deploy-staging", "deploy-production"]:
        for line in config[job]["script"]:
            result = subprocess.run(["sh", "-c", line], cwd=workspace, capture_output=True, text=True, env=env)
            assert result.returncode == 0, f"{job}: {line}\n{result.stdout}\n{result.stderr}"
    assert (workspace / "dist" / "app.tar.gz").is_file()


def test_security_scan_fails_on_a_committed_secret(tmp_path: Path) -> None:
    bootstrap(tmp_path, "--no-run")
    repo = tmp_path / "demo-repo"
    (repo / "settings.py").write_text('AWS_KEY = "AKIAABCDEFGHIJKLMNOP"\n')
    config = yaml.safe_load((repo / ".cicd.yml").read_text())
    result = subprocess.run(["sh", "-c", config["security-scan"]["script"][0]], cwd=repo, capture_output=True)
    assert result.returncode != 0


def test_admin_credentials_can_come_from_the_environment(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setenv("CONVEYOR_ADMIN_USER", "root")
    monkeypatch.setenv("CONVEYOR_ADMIN_PASSWORD", "correct horse battery staple")
    out = bootstrap(tmp_path, "--no-run")
    user = get_user_model().objects.get()
    assert user.username == "root"
    assert user.check_password("correct horse battery staple")
    assert not (tmp_path / "admin_password").exists()
    # A password given through the environment is not echoed into logs.
    assert "correct horse" not in out
    assert "from CONVEYOR_ADMIN_PASSWORD" in out


def test_an_admin_password_changed_later_is_kept_and_not_printed(tmp_path: Path) -> None:
    bootstrap(tmp_path, "--no-run")
    user = get_user_model().objects.get()
    user.set_password("mine now")
    user.save()
    out = bootstrap(tmp_path, "--no-run")
    user.refresh_from_db()
    assert user.check_password("mine now")
    assert (tmp_path / "admin_password").read_text().strip() not in out
    assert "changepassword admin" in out


def test_an_existing_demo_repository_is_left_alone(tmp_path: Path) -> None:
    bootstrap(tmp_path, "--no-run")
    repo = tmp_path / "demo-repo"
    (repo / "app.py").write_text("print('edited')\n")
    git(repo, "commit", "--quiet", "-am", "Edit")
    head = git(repo, "rev-parse", "HEAD")
    bootstrap(tmp_path, "--no-run")
    assert git(repo, "rev-parse", "HEAD") == head
    assert (repo / "app.py").read_text() == "print('edited')\n"


def test_demo_dir_option_places_the_repository(tmp_path: Path) -> None:
    bootstrap(tmp_path / "var", "--no-run", "--demo-dir", str(tmp_path / "elsewhere"))
    assert (tmp_path / "elsewhere" / ".git").is_dir()
    assert Repository.objects.get().clone_url == str(tmp_path / "elsewhere")


def _fake_services(monkeypatch, calls: list[dict]) -> None:
    """Stand in for pipelines.services: a run_trigger that records its call and creates a run."""

    def run_trigger(*, pipeline, ref, trigger, triggered_by="", user=None, variables=None):
        calls.append({"pipeline": pipeline, "ref": ref, "trigger": trigger, "triggered_by": triggered_by})
        return PipelineRun.objects.create(
            pipeline=pipeline, number=len(calls), branch=ref, trigger=trigger, triggered_by=triggered_by
        )

    monkeypatch.setitem(sys.modules, "pipelines.services", types.SimpleNamespace(run_trigger=run_trigger))


def test_bootstrap_triggers_the_first_demo_run_once_and_prints_its_admin_url(tmp_path: Path, monkeypatch) -> None:
    calls: list[dict] = []
    _fake_services(monkeypatch, calls)
    first = bootstrap(tmp_path, "--base-url", "http://ci.example.test")
    second = bootstrap(tmp_path, "--base-url", "http://ci.example.test")

    run = PipelineRun.objects.get()
    assert len(calls) == 1
    assert calls[0]["ref"] == "main"
    assert calls[0]["trigger"] == Trigger.MANUAL
    assert calls[0]["triggered_by"] == "bootstrap"
    url = f"http://ci.example.test/admin/runs/pipelinerun/{run.pk}/change/"
    assert f"triggered run demo/default #1 [{RunStatus.PENDING}]: {url}" in first
    assert f"latest run demo/default #1 [{RunStatus.PENDING}]: {url}" in second


def test_bootstrap_without_run_trigger_says_so_in_one_line(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setitem(sys.modules, "pipelines.services", None)  # makes the import fail
    out = bootstrap(tmp_path)
    assert PipelineRun.objects.count() == 0
    [line] = [line for line in out.splitlines() if "demo run not triggered" in line]
    assert "run_trigger is not available" in line


def test_bootstrap_reports_a_failing_trigger_and_carries_on(tmp_path: Path, monkeypatch) -> None:
    def run_trigger(**kwargs):
        raise RuntimeError("repository unreachable")

    monkeypatch.setitem(sys.modules, "pipelines.services", types.SimpleNamespace(run_trigger=run_trigger))
    out = bootstrap(tmp_path)
    assert "demo run not triggered: RuntimeError: repository unreachable" in out
    assert Pipeline.objects.count() == 1
