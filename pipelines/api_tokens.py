"""Personal API tokens: create, authenticate, revoke; and DRF's authentication class for them.

    curl -H "Authorization: Bearer cvp_..." https://ci.example.com/api/v1/runs/

A token acts as its owner, with the owner's roles (pipelines.permissions). Only its sha256
is stored (cicd.tokens); the lookup is by hash and the stored hash is compared with
hmac.compare_digest, so nothing about a token leaks through timing.
"""

from __future__ import annotations

from datetime import datetime, timedelta
from typing import Any

from django.db import transaction
from django.utils import timezone
from rest_framework import authentication, exceptions

from cicd.tokens import token_generate, token_hash, token_matches
from pipelines.models import ApiToken

API_TOKEN_PREFIX = "cvp_"  # noqa: S105 (a prefix, not a secret)
# last_used_at is written at most this often per token: not a write on every request.
LAST_USED_RESOLUTION = timedelta(minutes=1)


class InvalidApiToken(Exception):
    """Unknown, revoked or expired token, or an inactive owner."""


@transaction.atomic
def api_token_create(*, user: Any, description: str, expires_at: datetime | None = None) -> tuple[ApiToken, str]:
    """A new token for `user`. The token is returned this once; only its hash is kept."""
    token = token_generate(API_TOKEN_PREFIX)
    row = ApiToken.objects.create(
        user=user,
        description=description[:255],
        token_hash=token_hash(token),
        hint=token[: len(API_TOKEN_PREFIX) + 4],
        expires_at=expires_at,
    )
    return row, token


def api_token_authenticate(*, token: str) -> ApiToken:
    """The live token that `token` is (with its user), or InvalidApiToken."""
    if not token.startswith(API_TOKEN_PREFIX) or len(token) > 200:
        raise InvalidApiToken("invalid API token")
    row = ApiToken.objects.select_related("user").filter(token_hash=token_hash(token)).first()
    now = timezone.now()
    if (
        row is None
        or not token_matches(token, row.token_hash)
        or row.revoked_at is not None
        or (row.expires_at is not None and row.expires_at <= now)
        or not row.user.is_active
    ):
        raise InvalidApiToken("invalid API token")
    if row.last_used_at is None or now - row.last_used_at >= LAST_USED_RESOLUTION:
        ApiToken.objects.filter(pk=row.pk).update(last_used_at=now)
    return row


def api_token_revoke(*, token: ApiToken) -> bool:
    return ApiToken.objects.filter(pk=token.pk, revoked_at__isnull=True).update(revoked_at=timezone.now()) == 1


class ApiTokenAuthentication(authentication.BaseAuthentication):
    """`Authorization: Bearer cvp_...` (or `Token cvp_...`). A header without a Conveyor
    token is left to the next class (the session); a wrong token is a 401, never a fall-back."""

    keywords = ("bearer", "token")

    def authenticate(self, request) -> tuple[Any, ApiToken] | None:
        header = authentication.get_authorization_header(request).split()
        if not header or header[0].lower().decode(errors="replace") not in self.keywords:
            return None
        if len(header) != 2:
            raise exceptions.AuthenticationFailed("the Authorization header must be 'Bearer <token>'")
        try:
            token = header[1].decode()
        except UnicodeDecodeError:
            raise exceptions.AuthenticationFailed("invalid API token") from None
        try:
            row = api_token_authenticate(token=token)
        except InvalidApiToken as exc:
            raise exceptions.AuthenticationFailed(str(exc)) from None
        return row.user, row

    def authenticate_header(self, request) -> str:
        return 'Bearer realm="api"'
