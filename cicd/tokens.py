"""Secret tokens: generated with `secrets`, stored only as sha256, compared in constant time."""

from __future__ import annotations

import hashlib
import hmac
import secrets


def token_generate(prefix: str) -> str:
    # The prefix tells a leaked token's kind at a glance (and lets secret scanners find it).
    return f"{prefix}{secrets.token_urlsafe(32)}"


def token_hash(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


def token_matches(token: str, stored_hash: str) -> bool:
    return hmac.compare_digest(token_hash(token), stored_hash)
