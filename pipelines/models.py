"""Repositories and the pipelines defined in them."""

from __future__ import annotations

import secrets

from django.conf import settings
from django.db import models


def _new_webhook_secret() -> str:
    return secrets.token_urlsafe(32)


class Repository(models.Model):
    name = models.SlugField(max_length=200, unique=True, help_text="Short name, e.g. 'acme-web'.")
    clone_url = models.CharField(
        max_length=1000, help_text="Where to fetch from: a local path, file://, https:// or ssh URL."
    )
    default_branch = models.CharField(max_length=255, default="main")
    webhook_secret = models.CharField(max_length=200, default=_new_webhook_secret)
    is_private = models.BooleanField(default=True)
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        verbose_name_plural = "repositories"
        ordering = ["name"]

    def __str__(self) -> str:
        return self.name


class Trigger(models.TextChoices):
    PUSH = "PUSH", "Push"
    PR = "PR", "Pull request"
    SCHEDULE = "SCHEDULE", "Schedule"
    MANUAL = "MANUAL", "Manual"


# What `rules: if: $CI_PIPELINE_SOURCE == ...` sees for each trigger.
PIPELINE_SOURCE = {
    Trigger.PUSH: "push",
    Trigger.PR: "merge_request_event",
    Trigger.SCHEDULE: "schedule",
    Trigger.MANUAL: "web",
}


class Pipeline(models.Model):
    """A pipeline: the config file at `config_path` in a repository.

    `trigger` is the design's ENUM: the event the pipeline is normally run for. A run
    records its own trigger too (runs.PipelineRun.trigger), since one pipeline is run
    by pushes, PRs, schedules and people alike.
    """

    repository = models.ForeignKey(Repository, on_delete=models.CASCADE, related_name="pipelines")
    name = models.CharField(max_length=200)
    config_path = models.CharField(max_length=500, default=".cicd.yml")
    trigger = models.CharField(max_length=16, choices=Trigger.choices, default=Trigger.PUSH)
    is_active = models.BooleanField(default=True)
    created_by = models.ForeignKey(settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.SET_NULL)
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        ordering = ["repository__name", "name"]
        constraints = [
            models.UniqueConstraint(fields=["repository", "name"], name="pipeline_unique_name_per_repository"),
        ]

    def __str__(self) -> str:
        return f"{self.repository.name}/{self.name}"
