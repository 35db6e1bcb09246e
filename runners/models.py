"""Runners: the workers that claim jobs from the queue and execute them."""

from __future__ import annotations

import uuid
from datetime import timedelta

from django.conf import settings
from django.contrib.postgres.fields import ArrayField
from django.db import models
from django.utils import timezone

# A runner that has not been heard from for this long is shown offline.
ONLINE_WINDOW = timedelta(minutes=2)


class Executor(models.TextChoices):
    SHELL = "shell", "Shell"
    KUBERNETES = "kubernetes", "Kubernetes"


class Runner(models.Model):
    id = models.UUIDField("runner_id", primary_key=True, default=uuid.uuid4, editable=False)
    name = models.CharField(max_length=200)
    # sha256 of the runner's token; the token itself is shown once and never stored.
    token_hash = models.CharField(max_length=64, unique=True, null=True, blank=True)
    tags = ArrayField(models.CharField(max_length=100), default=list, blank=True, help_text="Capabilities.")
    concurrency = models.PositiveSmallIntegerField(default=1)
    executor = models.CharField(max_length=16, choices=Executor.choices, default=Executor.SHELL)
    version = models.CharField(max_length=64, blank=True)
    is_paused = models.BooleanField(default=False)
    # Set when an admin revokes the runner: its token stops working at once.
    revoked_at = models.DateTimeField(null=True, blank=True)
    registration_token = models.ForeignKey(
        "RegistrationToken", null=True, blank=True, on_delete=models.SET_NULL, related_name="runners"
    )
    last_seen_at = models.DateTimeField(null=True, blank=True)
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        ordering = ["name"]

    def __str__(self) -> str:
        return self.name

    @property
    def is_online(self) -> bool:
        return self.last_seen_at is not None and timezone.now() - self.last_seen_at < ONLINE_WINDOW


class RegistrationToken(models.Model):
    """Created by an admin; a new runner exchanges it for its own runner token.

    Only the sha256 of the token is stored; the token is shown once when created.
    """

    description = models.CharField(max_length=200, blank=True)
    token_hash = models.CharField(max_length=64, unique=True)
    # Tags every runner registered with this token gets, besides those it declares.
    tags = ArrayField(models.CharField(max_length=100), default=list, blank=True)
    created_by = models.ForeignKey(
        settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.SET_NULL, related_name="+"
    )
    created_at = models.DateTimeField(auto_now_add=True)
    expires_at = models.DateTimeField(null=True, blank=True)
    revoked_at = models.DateTimeField(null=True, blank=True)
    uses = models.PositiveIntegerField(default=0)
    max_uses = models.PositiveIntegerField(
        null=True, blank=True, help_text="How many runners may register with it; empty for no limit."
    )

    def __str__(self) -> str:
        return self.description or f"registration token #{self.pk}"

    @property
    def is_usable(self) -> bool:
        now = timezone.now()
        return (
            self.revoked_at is None
            and (self.expires_at is None or self.expires_at > now)
            and (self.max_uses is None or self.uses < self.max_uses)
        )
