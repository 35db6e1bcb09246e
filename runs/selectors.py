"""Reads of runs and their job graphs."""

from __future__ import annotations

from typing import Any

from runs.models import Job, JobDependency, PipelineRun


def run_graph(*, run: PipelineRun) -> dict[str, Any]:
    """The run's DAG for the UI and the admin, in two queries whatever its size.

    `stages`: in order, each with its jobs (current attempts only). `edges`: the explicit
    `needs` edges (from the needed job to the job that needs it). A job with `uses_needs`
    False waits for every job of the earlier stages instead (stage ordering, not drawn).
    """
    jobs = list(
        Job.objects.filter(run=run, retried=False)
        .order_by("stage_index", "name")
        .values(
            "id",
            "name",
            "stage",
            "stage_index",
            "status",
            "status_reason",
            "when",
            "allow_failure",
            "blocking",
            "uses_needs",
            "attempt",
        )
    )
    names = {job["id"]: job["name"] for job in jobs}
    edges = [
        {"from": names[depends_on], "to": names[job_id], "artifacts": artifacts}
        for job_id, depends_on, artifacts in JobDependency.objects.filter(job__run=run, job__retried=False)
        .order_by("pk")
        .values_list("job_id", "depends_on_id", "artifacts")
        if job_id in names and depends_on in names
    ]
    needs: dict[str, list[str]] = {}
    for edge in edges:
        needs.setdefault(edge["to"], []).append(edge["from"])
    stages: list[dict[str, Any]] = []
    for job in jobs:
        if not stages or stages[-1]["index"] != job["stage_index"]:
            stages.append({"index": job["stage_index"], "name": job["stage"], "jobs": []})
        stages[-1]["jobs"].append(
            {
                "id": str(job["id"]),
                "name": job["name"],
                "status": job["status"],
                "status_reason": job["status_reason"],
                "when": job["when"],
                "allow_failure": job["allow_failure"],
                "blocking": job["blocking"],
                "attempt": job["attempt"],
                "uses_needs": job["uses_needs"],
                "needs": needs.get(job["name"], []),
            }
        )
    return {"run": {"id": str(run.pk), "number": run.number, "status": run.status}, "stages": stages, "edges": edges}
