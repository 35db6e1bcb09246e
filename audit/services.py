"""Writing the audit log. Called by the services that perform audited actions, inside their
transaction (runs.deployments, runs.services, pipelines.variables, runners.services, ...)."""

from __future__ import annotations

from typing import Any

from django.db import models

from audit.models import AuditEvent


def audit_record(
    *,
    action: str,
    user: Any = None,
    runner: Any = None,
    actor: str = "",
    repository: Any = None,
    repository_id: Any = None,
    target: models.Model | None = None,
    details: dict[str, Any] | None = None,
) -> AuditEvent:
    """Record an audited action. `actor` defaults to the user's name (or the runner's); pass
    it for an action without an account (a pusher's auto-cancel). `repository`, or its id.
    `details` must hold no secret."""
    if user is not None and not getattr(user, "is_authenticated", False):
        user = None
    if not actor:
        if user is not None:
            actor = user.get_username()
        elif runner is not None:
            actor = f"runner {runner.name}"
    return AuditEvent.objects.create(
        action=action,
        actor_user=user,
        actor_runner=runner,
        actor=actor[:255],
        repository_id=repository.pk if repository is not None else repository_id,
        target_type=target._meta.model_name if target is not None else "",
        target_id=str(target.pk) if target is not None else "",
        details=details or {},
    )
