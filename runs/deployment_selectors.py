"""Reads of environments, deployments and approvals (writes: runs.deployments)."""

from __future__ import annotations

from typing import Any

from django.db.models import QuerySet
from django.utils import timezone

from runs.deployments import approvals_count, freeze_until
from runs.models import Approval, Deployment, DeploymentStatus, Environment, PipelineRun


def environment_current_deployment(*, environment: Environment) -> Deployment | None:
    """What the environment runs now: its latest successful deployment (one indexed query,
    deployment_env_succeeded_idx)."""
    return (
        Deployment.objects.filter(environment=environment, status=DeploymentStatus.SUCCEEDED)
        .select_related("run", "job")
        .order_by("-finished_at")
        .first()
    )


def environment_history(*, environment: Environment, limit: int = 50) -> QuerySet[Deployment]:
    """The environment's deployments, newest first (deployment_env_recent_idx)."""
    return (
        Deployment.objects.filter(environment=environment)
        .select_related("run", "job", "redeploy_of")
        .order_by("-created_at")[:limit]
    )


def run_deployments(*, run: PipelineRun) -> list[Deployment]:
    """The run's deployments with their environments (for the run page)."""
    return list(Deployment.objects.filter(run=run).select_related("environment", "job").order_by("created_at"))


def deployment_decisions(*, deployment: Deployment) -> QuerySet[Approval]:
    """Every decision on the deployment, oldest first: the audit trail."""
    return Approval.objects.filter(deployment=deployment).order_by("created_at")


def deployment_summary(*, deployment: Deployment) -> dict[str, Any]:
    """What the run page (and its POST endpoints) show of a deployment."""
    environment = deployment.environment
    now = timezone.now()
    summary: dict[str, Any] = {
        "id": str(deployment.pk),
        "environment": environment.name,
        "job": deployment.job.name,
        "run": str(deployment.run_id),
        "status": deployment.status,
        "waiting_for": deployment.waiting_for,
        "reason": deployment.status_reason,
        "image": deployment.image,
        "image_digest": deployment.image_digest,
        "deployed_by": deployment.deployed_by_name,
        "started_at": deployment.started_at.isoformat() if deployment.started_at else None,
        "finished_at": deployment.finished_at.isoformat() if deployment.finished_at else None,
    }
    if deployment.status == DeploymentStatus.WAITING:
        summary["approvals"] = approvals_count(deployment, now=now) if environment.protected else 0
        summary["required_approvals"] = environment.required_approvals if environment.protected else 0
        until = freeze_until(environment=environment, now=now)
        summary["freeze_until"] = until.isoformat() if until else None
    return summary
