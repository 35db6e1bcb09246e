"""First-start setup: an admin account, the demo repository, its pipeline and a first run.

Every step is idempotent: `make run` calls it on every start, and a second call creates
nothing new and changes nothing a person may have changed since (an admin's password,
the demo repository's commits).
"""

from __future__ import annotations

import logging
import os
import secrets
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from django.contrib.auth import get_user_model
from django.db import IntegrityError, transaction
from django.urls import reverse

from cicd.env import env_str
from pipelines.demo import DEMO_BRANCH, demo_repository_ensure
from pipelines.models import Pipeline, Repository, Trigger

if TYPE_CHECKING:
    from runs.models import PipelineRun

logger = logging.getLogger(__name__)

DEMO_REPOSITORY_NAME = "demo"
DEMO_PIPELINE_NAME = "default"
DEMO_CONFIG_PATH = ".cicd.yml"
PASSWORD_FILE_NAME = "admin_password"  # noqa: S105 (a file name)


@dataclass(frozen=True)
class AdminAccount:
    username: str
    created: bool
    # None when it cannot be shown: changed since bootstrap set it, or never set by bootstrap.
    password: str | None
    # Where the password comes from, for the banner: a file path, the env variable, or why it is unknown.
    password_note: str


@dataclass
class BootstrapReport:
    admin: AdminAccount
    demo_path: Path
    demo_sha: str
    demo_created: bool
    repository: Repository
    pipeline: Pipeline
    pipeline_created: bool
    run: PipelineRun | None = None
    run_created: bool = False
    run_url: str = ""
    messages: list[str] = field(default_factory=list)

    def lines(self) -> list[str]:
        admin = self.admin
        state = "created" if admin.created else "exists"
        if admin.password is not None:
            credentials = f"password: {admin.password} ({admin.password_note})"
        else:
            credentials = admin.password_note
        lines = [f"admin user {admin.username!r} {state}; {credentials}"]
        demo_state = "created" if self.demo_created else "exists"
        lines.append(f"demo repository {self.demo_path} {demo_state} (HEAD {self.demo_sha[:12]})")
        pipeline_state = "created" if self.pipeline_created else "exists"
        lines.append(f"pipeline {self.pipeline} {pipeline_state} (config {self.pipeline.config_path})")
        if self.run is not None:
            run_state = "triggered" if self.run_created else "latest"
            lines.append(f"{run_state} run {self.run} [{self.run.status}]: {self.run_url}")
        lines.extend(self.messages)
        return lines


def _read_secret(path: Path) -> str | None:
    try:
        return path.read_text().strip() or None
    except FileNotFoundError:
        return None


def _write_secret(path: Path, value: str) -> None:
    # Created 0600 from the first byte (no window where another user can read it), then renamed in place.
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as handle:
        handle.write(value + "\n")
    os.chmod(tmp, 0o600)
    os.replace(tmp, path)


def admin_account_ensure(*, var_dir: Path) -> AdminAccount:
    """Create the superuser once; never change an existing account.

    Username and password come from CONVEYOR_ADMIN_USER / CONVEYOR_ADMIN_PASSWORD (or their
    *_FILE twins). Without a password, one is generated once and kept in var/admin_password
    (mode 0600) so it can be shown again on every start.
    """
    user_model = get_user_model()
    username = env_str("CONVEYOR_ADMIN_USER", "admin").strip() or "admin"
    env_password = env_str("CONVEYOR_ADMIN_PASSWORD", "")
    password_file = var_dir / PASSWORD_FILE_NAME

    if env_password:
        password, note = env_password, "from CONVEYOR_ADMIN_PASSWORD"
        shown = None  # a password given through the environment is not echoed into logs
    else:
        password = _read_secret(password_file)
        if password is None:
            password = secrets.token_urlsafe(16)
            _write_secret(password_file, password)
        note, shown = f"stored in {password_file}", password

    user = user_model._default_manager.filter(**{user_model.USERNAME_FIELD: username}).first()
    created = False
    if user is None:
        try:
            with transaction.atomic():
                user = user_model._default_manager.create_superuser(
                    **{user_model.USERNAME_FIELD: username}, email="", password=password
                )
            created = True
        except IntegrityError:
            # Another process created it between our lookup and insert.
            user = user_model._default_manager.get(**{user_model.USERNAME_FIELD: username})

    if not user.check_password(password):
        return AdminAccount(
            username=username,
            created=created,
            password=None,
            password_note=f"password: set outside bootstrap (reset with `manage.py changepassword {username}`)",
        )
    if shown is None:
        return AdminAccount(username=username, created=created, password=None, password_note=f"password: {note}")
    return AdminAccount(username=username, created=created, password=shown, password_note=note)


@transaction.atomic
def demo_pipeline_ensure(*, repo_path: Path) -> tuple[Repository, Pipeline, bool]:
    """Register the demo repository and its pipeline (by name; an existing row is left as is)."""
    from runs.models import Environment

    repository, _ = Repository.objects.get_or_create(
        name=DEMO_REPOSITORY_NAME,
        defaults={"clone_url": str(repo_path.resolve()), "default_branch": DEMO_BRANCH, "is_private": False},
    )
    pipeline, created = Pipeline.objects.get_or_create(
        repository=repository,
        name=DEMO_PIPELINE_NAME,
        defaults={"config_path": DEMO_CONFIG_PATH, "trigger": Trigger.PUSH},
    )
    # Production is protected: its deploy waits for an approval (admin: Deployments). The demo
    # has one user, who also triggered the run, so self-approval is allowed here.
    Environment.objects.get_or_create(
        repository=repository,
        name="production",
        defaults={"protected": True, "required_approvals": 1, "allow_self_approval": True},
    )
    return repository, pipeline, created


def run_admin_url(*, run: PipelineRun, base_url: str) -> str:
    return f"{base_url.rstrip('/')}{reverse('admin:runs_pipelinerun_change', args=[run.pk])}"


def demo_run_ensure(*, pipeline: Pipeline) -> tuple[PipelineRun | None, bool, str]:
    """Trigger the pipeline's first run unless it has one. Returns (run, created, message).

    A failure here never stops the server from starting: the message says what went wrong.
    """
    from runs.models import PipelineRun

    latest = PipelineRun.objects.filter(pipeline=pipeline).select_related("pipeline__repository").first()
    if latest is not None:
        return latest, False, ""
    try:
        from pipelines.services import run_trigger
    except ImportError as exc:
        return None, False, f"demo run not triggered: pipelines.services.run_trigger is not available ({exc})"
    try:
        run = run_trigger(
            pipeline=pipeline,
            ref=pipeline.repository.default_branch,
            trigger=Trigger.MANUAL,
            triggered_by="bootstrap",
        )
    except Exception as exc:  # any failure is reported, and `make run` goes on to start the server
        logger.exception("demo run could not be triggered")
        return None, False, f"demo run not triggered: {type(exc).__name__}: {exc}"
    return run, True, ""


def bootstrap(*, var_dir: Path, demo_dir: Path, base_url: str, trigger_run: bool = True) -> BootstrapReport:
    admin = admin_account_ensure(var_dir=var_dir)
    sha, demo_created = demo_repository_ensure(path=demo_dir)
    repository, pipeline, pipeline_created = demo_pipeline_ensure(repo_path=demo_dir)
    report = BootstrapReport(
        admin=admin,
        demo_path=demo_dir.resolve(),
        demo_sha=sha,
        demo_created=demo_created,
        repository=repository,
        pipeline=pipeline,
        pipeline_created=pipeline_created,
    )
    if repository.clone_url != str(demo_dir.resolve()):
        report.messages.append(
            f"note: repository {repository.name!r} fetches from {repository.clone_url}, not {report.demo_path}"
        )
    if trigger_run:
        run, created, message = demo_run_ensure(pipeline=pipeline)
        if run is not None:
            report.run, report.run_created = run, created
            report.run_url = run_admin_url(run=run, base_url=base_url)
        if message:
            report.messages.append(message)
    return report
