"""Reads for the dashboard pages and the API: filtered run lists, a run's graph laid out for
drawing, live statuses, runners with their current jobs. Every read starts from what the
user may see (pipelines.permissions), so no page can list what it should not."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any

from django.db.models import Prefetch, QuerySet
from django.utils import timezone

from pipelines.models import Trigger
from pipelines.permissions import visible_jobs, visible_repositories, visible_runs
from runs.models import Job, JobStatus, PipelineRun, RunStatus
from runs.selectors import run_graph


class FilterError(ValueError):
    """A filter value that is not one of the allowed ones (told to the user, never a 500)."""


def text_param(params: Any, name: str, *, max_length: int = 255) -> str:
    """A free-text query parameter ('' when absent), or FilterError for one PostgreSQL cannot
    even compare (a NUL character) or that no name is as long as."""
    raw = params.get(name) or ""
    if not isinstance(raw, str) or len(raw) > max_length or "\x00" in raw:
        raise FilterError(f"{name}: not a valid value")
    return raw.strip()


@dataclass(frozen=True)
class RunFilters:
    repository: str = ""
    pipeline: str = ""
    branch: str = ""
    status: str = ""
    trigger: str = ""

    @classmethod
    def parse(cls, params: Any) -> RunFilters:
        names = ("repository", "pipeline", "branch", "status", "trigger")
        filters = cls(**{name: text_param(params, name) for name in names})
        if filters.status and filters.status not in RunStatus.values:
            raise FilterError(f"status: one of {', '.join(RunStatus.values)}")
        if filters.trigger and filters.trigger not in Trigger.values:
            raise FilterError(f"trigger: one of {', '.join(Trigger.values)}")
        if filters.pipeline and not filters.pipeline.isdigit():
            raise FilterError("pipeline: a pipeline id")
        return filters

    def as_query(self) -> dict[str, str]:
        return {k: v for k, v in self.__dict__.items() if v}


def runs_for_list(*, user: Any, filters: RunFilters | None = None) -> QuerySet[PipelineRun]:
    """The runs the user may see, newest first, filtered; pipeline and repository joined, so a
    page of them is one query whatever its length."""
    runs = visible_runs(user).select_related("pipeline__repository").order_by("-created_at")
    filters = filters or RunFilters()
    if filters.repository:
        runs = runs.filter(pipeline__repository__name=filters.repository)
    if filters.pipeline:
        runs = runs.filter(pipeline_id=int(filters.pipeline))
    if filters.branch:
        runs = runs.filter(branch=filters.branch)
    if filters.status:
        runs = runs.filter(status=filters.status)
    if filters.trigger:
        runs = runs.filter(trigger=filters.trigger)
    return runs


def run_for_viewer(*, user: Any, run_id: Any) -> PipelineRun | None:
    """The run if it exists and the user may see it; None otherwise (not told apart)."""
    return visible_runs(user).select_related("pipeline__repository").filter(pk=run_id).first()


def duration_s(started_at: datetime | None, finished_at: datetime | None, *, now: datetime) -> float | None:
    if started_at is None:
        return None
    return max(0.0, ((finished_at or now) - started_at).total_seconds())


def run_statuses(*, user: Any, run_ids: list[Any]) -> list[dict[str, Any]]:
    """Status and duration of the given runs (the runs list polls it): one query."""
    now = timezone.now()
    rows = visible_runs(user).filter(pk__in=run_ids).values("id", "status", "started_at", "finished_at", "duration_s")
    return [
        {
            "id": str(row["id"]),
            "status": row["status"],
            "duration_s": row["duration_s"]
            if row["duration_s"] is not None
            else duration_s(row["started_at"], row["finished_at"], now=now),
        }
        for row in rows
    ]


def run_list_row(*, run_id: Any) -> dict[str, Any] | None:
    """What the runs list shows live of one run, with what its viewers filter on (the
    repository, to keep to what they may see; pipeline, branch, trigger for the page's
    filters). One query; None if the run is gone."""
    row = (
        PipelineRun.objects.filter(pk=run_id)
        .values(
            "id",
            "number",
            "status",
            "branch",
            "trigger",
            "pipeline_id",
            "pipeline__repository_id",
            "pipeline__repository__name",
            "started_at",
            "finished_at",
            "duration_s",
        )
        .first()
    )
    if row is None:
        return None
    return {
        "id": str(row["id"]),
        "number": row["number"],
        "status": row["status"],
        "branch": row["branch"],
        "trigger": row["trigger"],
        "pipeline": row["pipeline_id"],
        "repository_id": row["pipeline__repository_id"],
        "repository": row["pipeline__repository__name"],
        "duration_s": row["duration_s"]
        if row["duration_s"] is not None
        else duration_s(row["started_at"], row["finished_at"], now=timezone.now()),
        "finished": row["status"] in RunStatus.TERMINAL,
    }


def repository_visible(*, user: Any, repository_id: Any) -> bool:
    """May the user see the repository with this id (one query)?"""
    return visible_repositories(user).filter(pk=repository_id).exists()


def run_live_status(*, run: PipelineRun) -> dict[str, Any]:
    """The run's status and its current jobs' statuses and durations (the run page polls it)."""
    now = timezone.now()
    run.refresh_from_db(fields=["status", "started_at", "finished_at", "duration_s", "error_message"])
    jobs = Job.objects.filter(run=run, retried=False).order_by("stage_index", "name")
    return {
        "run": {
            "id": str(run.pk),
            "status": run.status,
            "duration_s": run.duration_s
            if run.duration_s is not None
            else duration_s(run.started_at, run.finished_at, now=now),
            "finished": run.status in RunStatus.TERMINAL,
        },
        "jobs": [
            {
                "id": str(job["id"]),
                "name": job["name"],
                "status": job["status"],
                "duration_s": duration_s(job["started_at"], job["finished_at"], now=now),
            }
            for job in jobs.values("id", "name", "status", "started_at", "finished_at")
        ],
    }


def run_live_status_of(*, run_id: Any) -> dict[str, Any] | None:
    """run_live_status for a run id (the run page's WebSocket); None if the run is gone."""
    run = PipelineRun(pk=run_id)
    try:
        return run_live_status(run=run)
    except PipelineRun.DoesNotExist:
        return None


# --- The graph, laid out: a column per stage, a box per job, `needs` edges as curves.

BOX_W, BOX_H = 190, 54
COL_GAP, ROW_GAP = 70, 16
HEADER_H, PAD = 30, 10


def run_graph_layout(*, run: PipelineRun) -> dict[str, Any]:
    """run_graph plus each job's box (x, y), duration and exit code, and each edge as an SVG
    path. Three queries whatever the size of the run."""
    graph = run_graph(run=run)
    now = timezone.now()
    timing = {
        str(pk): (started, finished, exit_code, runner)
        for pk, started, finished, exit_code, runner in Job.objects.filter(run=run, retried=False).values_list(
            "id", "started_at", "finished_at", "exit_code", "runner__name"
        )
    }
    boxes: dict[str, tuple[int, int, int]] = {}  # job name -> (x, y, stage column)
    rows = 0
    for column, stage in enumerate(graph["stages"]):
        stage["jobs"] = _needs_first(stage["jobs"])
        stage["x"] = PAD + column * (BOX_W + COL_GAP)
        for row, job in enumerate(stage["jobs"]):
            job["x"], job["y"] = stage["x"], HEADER_H + row * (BOX_H + ROW_GAP)
            started, finished, exit_code, runner = timing.get(job["id"], (None, None, None, None))
            job["duration_s"] = duration_s(started, finished, now=now)
            job["exit_code"] = exit_code
            job["runner"] = runner or ""
            boxes[job["name"]] = (job["x"], job["y"], column)
        rows = max(rows, len(stage["jobs"]))
    for edge in graph["edges"]:
        edge["path"] = _edge_path(boxes[edge["from"]], boxes[edge["to"]])
    # Room on the right for the loops of `needs` within the last stage.
    graph["width"] = PAD * 2 + max(1, len(graph["stages"])) * (BOX_W + COL_GAP) - COL_GAP // 2
    graph["height"] = HEADER_H + max(1, rows) * (BOX_H + ROW_GAP)
    graph["box"] = {"w": BOX_W, "h": BOX_H}
    return graph


def _needs_first(jobs: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """A stage's jobs by name, except that a job comes after the jobs of its own stage it needs
    (their edges then run downwards instead of crossing)."""
    names = {job["name"] for job in jobs}
    placed: list[dict[str, Any]] = []
    done: set[str] = set()
    waiting = list(jobs)
    while waiting:
        ready = [job for job in waiting if not (set(job["needs"]) & names) - done] or waiting[:1]
        placed.append(ready[0])
        done.add(ready[0]["name"])
        waiting.remove(ready[0])
    return placed


def _edge_path(source: tuple[int, int, int], target: tuple[int, int, int]) -> str:
    (x1, y1, c1), (x2, y2, c2) = source, target
    y1, y2 = y1 + BOX_H // 2, y2 + BOX_H // 2
    if c1 == c2:
        # A `needs` within a stage: a loop out of the right side and back in.
        x = x1 + BOX_W
        bulge = x + COL_GAP // 2
        return f"M{x},{y1} C{bulge},{y1} {bulge},{y2} {x},{y2}"
    if c1 < c2:
        start, end = x1 + BOX_W, x2
    else:
        start, end = x1, x2 + BOX_W
    middle = (start + end) // 2
    return f"M{start},{y1} C{middle},{y1} {middle},{y2} {end},{y2}"


# --- Environments.


def environment_deployments(*, environment: Any) -> QuerySet[Any]:
    """The environment's deployments, newest first, with their run, job, the deployment each
    redeploys or rolled back to, and their decisions (approvals, rejections) in order: two
    queries for a page of them, whatever its length (deployment_env_recent_idx)."""
    from runs.models import Approval, Deployment

    decisions = Approval.objects.order_by("created_at")
    return (
        Deployment.objects.filter(environment=environment)
        .select_related("run", "job", "redeploy_of__run", "previous__run")
        .prefetch_related(Prefetch("approvals", queryset=decisions, to_attr="decisions"))
        .order_by("-created_at")
    )


# --- Runners.


def runners_with_current_jobs(*, user: Any) -> list[Any]:
    """Every runner with `current_jobs`: the running jobs the user may see (two queries)."""
    from runners.models import Runner

    running = (
        visible_jobs(user)
        .filter(status=JobStatus.RUNNING)
        .select_related("run__pipeline__repository")
        .order_by("started_at")
    )
    return list(
        Runner.objects.order_by("name").prefetch_related(Prefetch("jobs", queryset=running, to_attr="current_jobs"))
    )
