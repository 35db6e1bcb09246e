"""End to end: `git push` to a bare repository whose post-receive hook posts to the generic
webhook of a live server; the delivery becomes a run, and a runner executes it to SUCCESS."""

from __future__ import annotations

import io
import signal
import subprocess
import sys
from pathlib import Path

import pytest
from django.core.management import call_command

from pipelines.models import DeliveryStatus, Pipeline, Repository, Trigger, WebhookDelivery
from runs.models import JobStatus, PipelineRun, RunStatus

pytestmark = [pytest.mark.slow, pytest.mark.django_db(transaction=True)]

SECRET = "e2e-hook-secret"

CONFIG = """
stages: [build, test]
build:
  stage: build
  script:
    - echo "built from $CI_COMMIT_SHA on $CI_COMMIT_BRANCH" > built.txt
    - test "$CI_PIPELINE_SOURCE" = push
test:
  stage: test
  script:
    - grep -q "def greet" app.py
"""

# The hook the README documents, in python3 so it needs nothing else on the git server.
HOOK = """#!{python}
import hashlib, hmac, json, sys, urllib.request

URL = {url!r}
SECRET = {secret!r}

for line in sys.stdin:
    old, new, ref = line.split()
    body = json.dumps({{"ref": ref, "before": old, "after": new, "pusher": "e2e-pusher"}}).encode()
    signature = "sha256=" + hmac.new(SECRET.encode(), body, hashlib.sha256).hexdigest()
    request = urllib.request.Request(URL, data=body, method="POST", headers={{
        "Content-Type": "application/json",
        "X-Conveyor-Signature-256": signature,
        "Idempotency-Key": ref + ":" + new,
    }})
    with urllib.request.urlopen(request, timeout=120) as response:
        print("conveyor:", response.status, response.read().decode())
"""


def git(*args: str, cwd: Path) -> str:
    return subprocess.run(["git", *args], cwd=cwd, check=True, capture_output=True, text=True).stdout.strip()


def test_a_git_push_through_the_generic_webhook_runs_the_pipeline_to_success(live_server, settings, tmp_path):
    settings.CELERY_TASK_ALWAYS_EAGER = True
    settings.CONVEYOR_MIRRORS_DIR = tmp_path / "mirrors"
    origin = tmp_path / "origin.git"
    git("init", "--quiet", "--bare", "-b", "main", str(origin), cwd=tmp_path)
    repository = Repository.objects.create(name="shop", clone_url=str(origin), webhook_secret=SECRET)
    Pipeline.objects.create(repository=repository, name="default")
    hook = origin / "hooks" / "post-receive"
    url = f"{live_server.url}/webhooks/generic/?repository=shop"
    hook.write_text(HOOK.format(python=sys.executable, url=url, secret=SECRET))
    hook.chmod(0o755)

    work = tmp_path / "work"
    git("init", "--quiet", "-b", "main", str(work), cwd=tmp_path)
    git("config", "user.name", "E2E", cwd=work)
    git("config", "user.email", "e2e@example.test", cwd=work)
    (work / ".cicd.yml").write_text(CONFIG)
    (work / "app.py").write_text("def greet():\n    return 'hello'\n")
    git("add", "-A", cwd=work)
    git("commit", "--quiet", "-m", "First", cwd=work)
    sha = git("rev-parse", "HEAD", cwd=work)
    git("remote", "add", "origin", str(origin), cwd=work)

    pushed = subprocess.run(["git", "push", "origin", "main"], cwd=work, capture_output=True, text=True, check=True)

    assert "conveyor: 202" in pushed.stderr, pushed.stderr
    delivery = WebhookDelivery.objects.get()
    assert (delivery.status, delivery.ref, delivery.commit_sha) == (DeliveryStatus.DONE, "main", sha)
    run = PipelineRun.objects.get()
    assert (run.trigger, run.branch, run.commit_sha, run.triggered_by) == (Trigger.PUSH, "main", sha, "e2e-pusher")

    out = io.StringIO()
    # The runner installs its own SIGTERM/SIGINT handlers; give pytest its own back afterwards.
    handlers = {sig: signal.getsignal(sig) for sig in (signal.SIGTERM, signal.SIGINT)}
    try:
        call_command(
            "runner",
            "--name",
            "e2e-runner",
            "--max-jobs",
            "2",
            "--poll-interval",
            "0.2",
            "--builds-dir",
            str(tmp_path / "builds"),
            stdout=out,
        )
    finally:
        for sig, handler in handlers.items():
            signal.signal(sig, handler)

    run.refresh_from_db()
    assert run.status == RunStatus.SUCCESS, [(j.name, j.status, j.status_reason) for j in run.jobs.all()]
    assert sorted(run.jobs.values_list("name", "status")) == [("build", JobStatus.SUCCESS), ("test", JobStatus.SUCCESS)]
    assert "stopped after 2 job(s)" in out.getvalue()
