"""End to end: pushes through the real webhook endpoint, run by real runner processes.

Everything is a real process on this machine: uvicorn (cicd.asgi, as `make run` runs it) takes signed
generic-format push deliveries; a Celery worker (2 processes, as `make run` starts it)
fetches the git repository, reads its `.cicd.yml` and creates the run; 4 `manage.py runner`
processes (shell executor; HTTP mode with registered runner tokens by default, `--e2e-mode
orm` for trusted runners on the database) claim, check out, run and report every job.

The pipeline is a 10-job DAG of no-op steps (`true`), at most 4 jobs wide so that 4 runners
can carry one run without a queue:

    build -> unit-1..unit-4 -> integration (unit-1, unit-2), acceptance (unit-3, unit-4)
          -> package -> publish -> notify

Two phases, each push to a branch of its own (a commit of its own, so no run dedupes or
cancels another):

- capacity: `runs` pushes at once; runs/hour = runs / (first push -> last run finished).
- latency: `latency_runs` pushes one at a time, each after the previous run finished, so
  runners are idle whenever a job becomes ready. Dispatch and scheduling latency and the
  per-job overhead come from this phase (their loaded values, from the burst, are reported
  beside them as `loaded_*`).

Every figure is derived from the timestamps the server stores (Job.queued_at, started_at =
claimed, finished_at; Step.started_at/finished_at), so they are what the system recorded:

- overhead: job wall (claimed -> finished) minus the time inside its steps; what the
  control plane and the runner add to a job (claim answer, workspace and git checkout, step
  and job reports, the completion transaction that promotes the dependents).
  `pre_step` (claimed -> first step started) and `post_step` (last step finished -> job
  finished) split it.
- scheduling: for a job with needs, its claim minus the latest finish among its needs.
- dispatch: claimed minus queued, every job.
"""

from __future__ import annotations

import contextlib
import http.client
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import textwrap
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from bench.common import percentile
from bench.webhooks import ROOT, _flush_broker, _free_port, _server_env, _wait_healthy, web_command

RUNNERS = 4
JOBS_PER_RUN = 10
PIPELINE_CONFIG = textwrap.dedent(
    """
    stages: [build, test, integrate, release]
    build:
      stage: build
      script: ["true"]
    unit-1: {stage: test, needs: [build], script: ["true"]}
    unit-2: {stage: test, needs: [build], script: ["true"]}
    unit-3: {stage: test, needs: [build], script: ["true"]}
    unit-4: {stage: test, needs: [build], script: ["true"]}
    integration: {stage: integrate, needs: [unit-1, unit-2], script: ["true"]}
    acceptance: {stage: integrate, needs: [unit-3, unit-4], script: ["true"]}
    package: {stage: release, needs: [integration, acceptance], script: ["true"]}
    publish: {stage: release, needs: [package], script: ["true"]}
    notify: {stage: release, needs: [publish], script: ["true"]}
    """
)
COLUMNS = [
    "phase",
    "runs",
    "jobs",
    "failed",
    "runs_per_hour",
    "overhead_ms_p50",
    "overhead_ms_p99",
    "pre_step_ms_p50",
    "post_step_ms_p50",
    "scheduling_ms_p50",
    "scheduling_ms_p99",
    "dispatch_ms_p50",
    "dispatch_ms_p99",
]


def _git(*args: str, cwd: Path) -> str:
    done = subprocess.run(["git", *args], cwd=cwd, check=True, capture_output=True, text=True)  # noqa: S603,S607
    return done.stdout.strip()


def _repository(path: Path, branches: int) -> list[tuple[str, str]]:
    """A git repository holding the pipeline, with one branch (and commit) per run to push."""
    path.mkdir(parents=True)
    _git("init", "--quiet", "-b", "main", cwd=path)
    _git("config", "user.name", "Bench", cwd=path)
    _git("config", "user.email", "bench@example.test", cwd=path)
    (path / ".cicd.yml").write_text(PIPELINE_CONFIG)
    _git("add", "-A", cwd=path)
    _git("commit", "--quiet", "-m", "the pipeline", cwd=path)
    tree = _git("rev-parse", "HEAD^{tree}", cwd=path)
    parent = _git("rev-parse", "HEAD", cwd=path)
    refs, pushes = [], []
    for n in range(branches):
        sha = _git("commit-tree", tree, "-p", parent, "-m", f"bench push {n}", cwd=path)
        branch = f"bench-{n:04d}"
        refs.append(f"create refs/heads/{branch} {sha}\n")
        pushes.append((branch, sha))
    subprocess.run(["git", "update-ref", "--stdin"], cwd=path, input="".join(refs), text=True, check=True)  # noqa: S603,S607
    return pushes


class _Processes:
    """The servers and runners of the benchmark; each is killed (its process group) at the end."""

    def __init__(self, log_dir: Path) -> None:
        self.log_dir = log_dir
        self.started: list[tuple[str, subprocess.Popen, Path]] = []

    def start(self, name: str, args: list[str], env: dict[str, str]) -> subprocess.Popen:
        log = self.log_dir / f"{name}.log"
        with log.open("wb") as out:
            process = subprocess.Popen(  # noqa: S603 (our own interpreter)
                args, cwd=ROOT, env=env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True
            )
        self.started.append((name, process, log))
        return process

    def output(self, name: str) -> str:
        return next(log.read_text(errors="replace") for n, _, log in self.started if n == name)

    def check_alive(self) -> None:
        for name, process, log in self.started:
            if process.poll() is not None:
                raise RuntimeError(f"{name} exited ({process.returncode}):\n{log.read_text(errors='replace')[-3000:]}")

    def stop(self) -> None:
        for _, process, _ in reversed(self.started):
            if process.poll() is None:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(process.pid, signal.SIGTERM)
        for _, process, _ in reversed(self.started):
            try:
                process.wait(15)
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(process.pid, signal.SIGKILL)
                process.wait(10)


def _wait(predicate, *, timeout: float, what: str, processes: _Processes, interval: float = 0.02):
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        processes.check_alive()
        if time.monotonic() > deadline:
            raise RuntimeError(f"gave up waiting for {what} after {timeout:.0f}s")
        time.sleep(interval)


def _push(port: int, repository, branch: str, sha: str) -> int:
    """POST a signed generic-format push of `sha` to `branch`; returns the HTTP status."""
    from pipelines.webhooks import hmac_sha256

    body = json.dumps(
        {"ref": f"refs/heads/{branch}", "after": sha, "pusher": "bench", "repository": repository.name}
    ).encode()
    headers = {
        "Content-Type": "application/json",
        "X-Conveyor-Signature-256": f"sha256={hmac_sha256(repository.webhook_secret, body)}",
        "Idempotency-Key": f"{branch}-{sha}",
    }
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
    try:
        conn.request("POST", f"/webhooks/generic/?repository={repository.name}", body=body, headers=headers)
        response = conn.getresponse()
        response.read()
        return response.status
    finally:
        conn.close()


def _runs_of(pipeline, branches: list[str]):
    from runs.models import PipelineRun

    return PipelineRun.objects.filter(pipeline=pipeline, branch__in=branches)


def _all_finished(pipeline, branches: list[str]) -> bool:
    from runs.models import RunStatus

    runs = _runs_of(pipeline, branches)
    return runs.count() == len(branches) and not runs.exclude(status__in=RunStatus.TERMINAL).exists()


def _ms(delta) -> float:
    return delta.total_seconds() * 1000


def _summary(values: list[float]) -> tuple[float, float]:
    if not values:
        return float("nan"), float("nan")
    return round(percentile(values, 50), 2), round(percentile(values, 99), 2)


def measure(pipeline, branches: list[str]) -> dict[str, object]:
    """The phase's figures, from the timestamps stored on its runs' jobs and steps."""
    from collections import defaultdict

    from runs.models import Job, JobDependency, JobStatus, Step

    runs = _runs_of(pipeline, branches)
    jobs = {
        row["id"]: row
        for row in Job.objects.filter(run__in=runs, retried=False).values(
            "id", "status", "queued_at", "started_at", "finished_at"
        )
    }
    steps: dict[object, list[dict]] = defaultdict(list)
    for row in Step.objects.filter(job_id__in=jobs).values("job_id", "started_at", "finished_at"):
        steps[row["job_id"]].append(row)
    needs: dict[object, list[object]] = defaultdict(list)
    for job_id, depends_on in JobDependency.objects.filter(job_id__in=jobs).values_list("job_id", "depends_on_id"):
        needs[job_id].append(depends_on)

    overhead, pre_step, post_step, scheduling, dispatch = [], [], [], [], []
    for job_id, job in jobs.items():
        ran = [s for s in steps[job_id] if s["started_at"] and s["finished_at"]]
        if job["status"] != JobStatus.SUCCESS or not ran or not job["started_at"]:
            continue
        inside = sum(_ms(s["finished_at"] - s["started_at"]) for s in ran)
        overhead.append(_ms(job["finished_at"] - job["started_at"]) - inside)
        pre_step.append(_ms(min(s["started_at"] for s in ran) - job["started_at"]))
        post_step.append(_ms(job["finished_at"] - max(s["finished_at"] for s in ran)))
        dispatch.append(_ms(job["started_at"] - job["queued_at"]))
        if needs[job_id]:
            upstream = max(jobs[n]["finished_at"] for n in needs[job_id])
            scheduling.append(_ms(job["started_at"] - upstream))
    run_rows = list(runs.values("status", "created_at", "finished_at"))
    overhead_p50, overhead_p99 = _summary(overhead)
    scheduling_p50, scheduling_p99 = _summary(scheduling)
    dispatch_p50, dispatch_p99 = _summary(dispatch)
    return {
        "runs": len(run_rows),
        "jobs": len(jobs),
        "failed": sum(1 for r in run_rows if r["status"] != "SUCCESS"),
        "overhead_ms_p50": overhead_p50,
        "overhead_ms_p99": overhead_p99,
        "pre_step_ms_p50": _summary(pre_step)[0],
        "post_step_ms_p50": _summary(post_step)[0],
        "scheduling_ms_p50": scheduling_p50,
        "scheduling_ms_p99": scheduling_p99,
        "dispatch_ms_p50": dispatch_p50,
        "dispatch_ms_p99": dispatch_p99,
        "last_finished_at": max((r["finished_at"] for r in run_rows if r["finished_at"]), default=None),
    }


def _start_runners(processes: _Processes, env: dict[str, str], *, url: str, mode: str, work: Path) -> None:
    from runners.services import registration_token_create

    command = [sys.executable, "manage.py", "runner"]
    for n in range(RUNNERS):
        name = f"bench-e2e-{os.getpid()}-{n}"
        args = [*command, "--name", name, "--builds-dir", str(work / "builds")]
        if mode == "http":
            _, registration = registration_token_create(description=f"bench {name}")
            done = subprocess.run(  # noqa: S603 (our own interpreter)
                [*command, "register", "--url", url, "--registration-token", registration, "--name", name],
                cwd=ROOT,
                env=env,
                capture_output=True,
                text=True,
                timeout=120,
            )
            match = re.search(r"runner token \(shown once, keep it secret\): (\S+)", done.stdout)
            if done.returncode != 0 or not match:
                raise RuntimeError(f"runner registration failed: {done.stdout}{done.stderr}")
            token_file = work / f"{name}.token"
            token_file.write_text(match.group(1))
            token_file.chmod(0o600)
            args += ["--url", url, "--token-file", str(token_file)]
        processes.start(f"runner-{n}", args, env)


def end_to_end(*, runs: int, latency_runs: int, mode: str = "http") -> tuple[list[dict[str, object]], int]:
    """Returns one row per phase (capacity, latency), and the id of the repository whose runs
    they were (kept in the database, for bench.sizes to measure)."""
    from django.utils import timezone

    from pipelines.models import Pipeline, Repository

    work = Path(tempfile.mkdtemp(prefix="conveyor-bench-e2e-"))
    processes = _Processes(work)
    try:
        pushes = _repository(work / "repo", 1 + runs + latency_runs)
        repository = Repository.objects.create(
            name=f"bench-e2e-{timezone.now():%Y%m%d%H%M%S}-{os.getpid()}", clone_url=str(work / "repo")
        )
        pipeline = Pipeline.objects.create(repository=repository, name="default")
        env = _server_env()
        env.update(
            CONVEYOR_MIRRORS_DIR=str(work / "mirrors"),
            CONVEYOR_BUILDS_DIR=str(work / "builds"),
            PYTHONUNBUFFERED="1",
            LOG_LEVEL="WARNING",
        )
        port = _free_port()
        url = f"http://127.0.0.1:{port}"
        uvicorn = web_command(port)  # CONVEYOR_WEB_WORKERS processes, as `make run` starts it
        server = processes.start("server", [*uvicorn, "--log-level", "warning"], env)
        _wait_healthy(port, server)
        celery = [sys.executable, "-m", "celery", "-A", "cicd", "worker", "-Q", "default", "--concurrency", "2"]
        celery += ["--loglevel", "warning", "--without-gossip", "--without-mingle", "--without-heartbeat"]
        processes.start("worker", celery, env)
        _start_runners(processes, env, url=url, mode=mode, work=work)
        _wait(
            lambda: all("waiting for jobs" in processes.output(f"runner-{n}") for n in range(RUNNERS)),
            timeout=120,
            what="the runners to start",
            processes=processes,
        )

        def run_and_wait(batch: list[tuple[str, str]], timeout: float) -> None:
            with ThreadPoolExecutor(max_workers=8) as pool:
                statuses = list(pool.map(lambda push: _push(port, repository, *push), batch))
            if any(status != 202 for status in statuses):
                raise RuntimeError(f"the webhook endpoint answered {sorted(set(statuses))}")
            branches = [branch for branch, _ in batch]
            _wait(
                lambda: _all_finished(pipeline, branches),
                timeout=timeout,
                what=f"{len(batch)} runs to finish",
                processes=processes,
                interval=0.05,
            )

        # A warm-up run: imports, connections and the git mirror are made before the clock.
        run_and_wait(pushes[:1], timeout=180)

        burst = pushes[1 : 1 + runs]
        first_push = timezone.now()
        run_and_wait(burst, timeout=max(300, runs * 10))
        capacity = measure(pipeline, [branch for branch, _ in burst])
        wall_s = (capacity.pop("last_finished_at") - first_push).total_seconds()
        capacity = {"phase": "capacity (burst)", **capacity, "runs_per_hour": round(runs / wall_s * 3600)}

        sequential = pushes[1 + runs :]
        for push in sequential:  # one at a time: every job becomes ready while runners idle
            run_and_wait([push], timeout=120)
        latency = measure(pipeline, [branch for branch, _ in sequential])
        latency.pop("last_finished_at")
        latency = {"phase": "latency (one run at a time)", **latency}
        capacity["wall_s"] = round(wall_s, 1)
        return [capacity, latency], repository.pk
    finally:
        processes.stop()
        _flush_broker()
        shutil.rmtree(work, ignore_errors=True)


def figures(rows: list[dict[str, object]]) -> dict[str, object]:
    """The `e2e` section of latest.json: latency figures from idle runners, capacity from the burst."""
    capacity, latency = rows
    return {
        "runs": capacity["runs"] + latency["runs"],
        "jobs_per_run": JOBS_PER_RUN,
        "runners": RUNNERS,
        "failed_runs": capacity["failed"] + latency["failed"],
        "runs_per_hour": capacity["runs_per_hour"],
        "overhead_ms_p50": latency["overhead_ms_p50"],
        "overhead_ms_p99": latency["overhead_ms_p99"],
        "scheduling_ms_p50": latency["scheduling_ms_p50"],
        "scheduling_ms_p99": latency["scheduling_ms_p99"],
        "dispatch_ms_p50": latency["dispatch_ms_p50"],
        "dispatch_ms_p99": latency["dispatch_ms_p99"],
        "pre_step_ms_p50": latency["pre_step_ms_p50"],
        "post_step_ms_p50": latency["post_step_ms_p50"],
        "loaded_overhead_ms_p50": capacity["overhead_ms_p50"],
        "loaded_scheduling_ms_p50": capacity["scheduling_ms_p50"],
        "loaded_dispatch_ms_p50": capacity["dispatch_ms_p50"],
    }
