"""Secrets at rest: Fernet encryption with a key from settings, and a model field that uses it.

`CONVEYOR_ENCRYPTION_KEY` encrypts; it and every key in `CONVEYOR_ENCRYPTION_OLD_KEYS` decrypt,
so a key is rotated by making the old one an old key, setting a new one and running
`manage.py reencrypt_secrets` (which rewrites every encrypted value with the new key). Without
a configured key one is derived from SECRET_KEY (HKDF-SHA256), so a fresh machine works; a
SECRET_KEY change then needs the old derived key kept as an old key (see README: Secrets).

Stored values carry a prefix: ``fernet:<token>``. The empty string is stored as it is, so
"is it set?" stays a plain lookup (`forge_token=""`); it is no secret.
"""

from __future__ import annotations

import base64
import binascii
from functools import lru_cache

from cryptography.fernet import Fernet, InvalidToken, MultiFernet
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.kdf.hkdf import HKDF
from django.core.exceptions import ImproperlyConfigured
from django.db import models

PREFIX = "fernet:"
# HKDF's `info`: a key derived for this purpose is useless for any other use of SECRET_KEY.
_DERIVATION_INFO = b"conveyor secrets at rest v1"


class DecryptionError(Exception):
    """A stored value none of the configured keys opens (a lost or changed key)."""


def derive_key(secret: str) -> str:
    """A Fernet key derived from a secret string (SECRET_KEY): stable for a given secret."""
    hkdf = HKDF(algorithm=hashes.SHA256(), length=32, salt=None, info=_DERIVATION_INFO)
    return base64.urlsafe_b64encode(hkdf.derive(secret.encode())).decode()


def check_key(name: str, key: str) -> str:
    """A Fernet key (32 bytes, URL-safe base64) or ImproperlyConfigured naming the setting."""
    try:
        raw = base64.urlsafe_b64decode(key.encode())
    except (binascii.Error, ValueError):
        raw = b""
    if len(raw) != 32:
        raise ImproperlyConfigured(
            f"{name} must be a Fernet key: 32 bytes in URL-safe base64 (44 characters), made with "
            "python -c 'from cryptography.fernet import Fernet; print(Fernet.generate_key().decode())'"
        )
    return key


@lru_cache(maxsize=4)
def _fernet(keys: tuple[str, ...]) -> MultiFernet:
    return MultiFernet([Fernet(key) for key in keys])


def _keys() -> tuple[str, ...]:
    from django.conf import settings

    return (settings.CONVEYOR_ENCRYPTION_KEY, *settings.CONVEYOR_ENCRYPTION_OLD_KEYS)


def is_encrypted(stored: str | None) -> bool:
    return bool(stored) and stored.startswith(PREFIX)


def encrypt(value: str) -> str:
    """The stored form of `value`: ``fernet:<token>`` (empty stays empty)."""
    if value == "":
        return ""
    return PREFIX + _fernet(_keys()).encrypt(value.encode()).decode()


def decrypt(stored: str) -> str:
    """The value of a stored ``fernet:`` string. A string without the prefix is returned as
    it is: a value written before its column was encrypted (the data migrations encrypt
    those, so none should remain)."""
    if not is_encrypted(stored):
        return stored
    try:
        return _decrypted(stored, _keys())
    except InvalidToken:
        raise DecryptionError(
            "a stored secret cannot be decrypted with CONVEYOR_ENCRYPTION_KEY or CONVEYOR_ENCRYPTION_OLD_KEYS "
            "(was the key, or SECRET_KEY it is derived from, changed without keeping the old one?)"
        ) from None


# The same ciphertexts are read again and again (a repository's webhook secret on every
# delivery, its CI/CD variables on every claim), and a Fernet decryption (an HMAC check, then
# AES) was 8% of a webhook request's CPU. A ciphertext's plaintext never changes, and the keys
# are part of the cache's key: a ciphertext that a rotated key can no longer read is not
# served from here. A failed decryption raises, so it is never cached.
@lru_cache(maxsize=1024)
def _decrypted(stored: str, keys: tuple[str, ...]) -> str:
    return _fernet(keys).decrypt(stored[len(PREFIX) :].encode()).decode()


def reencrypt(stored: str) -> str:
    """`stored` encrypted with the current key (what key rotation writes back)."""
    if not is_encrypted(stored):
        return encrypt(stored) if stored else stored
    try:
        return PREFIX + _fernet(_keys()).rotate(stored[len(PREFIX) :].encode()).decode()
    except InvalidToken:
        raise DecryptionError("a stored secret cannot be decrypted with any configured key") from None


class EncryptedTextField(models.TextField):
    """A text column whose value is encrypted at rest: Python code sees the plaintext, the
    database (and its backups and dumps) only ciphertext.

    Only "is it empty?" lookups make sense on it (`field=""`): ciphertexts of one value differ
    every time, so equality with a non-empty value never matches. `max_length` bounds the
    plaintext in forms; the column itself is text (a ciphertext is about 4/3 longer)."""

    description = "Text encrypted at rest (Fernet)"

    def from_db_value(self, value, expression, connection):
        return value if value is None else decrypt(value)

    def get_prep_value(self, value):
        value = super().get_prep_value(value)
        return None if value is None else encrypt(value)


# --- Data migrations: encrypting a column that held plaintext (and back, to reverse them).


def encrypt_existing(connection, table: str, column: str) -> int:
    """Encrypt every plaintext value of `table.column` in place; already encrypted and empty
    values are left alone, so running it twice changes nothing. Returns the rows changed."""
    return _rewrite(connection, table, column, encrypted=False, convert=encrypt)


def decrypt_existing(connection, table: str, column: str) -> int:
    """The reverse of encrypt_existing: back to plaintext (a migration rolled back)."""
    return _rewrite(connection, table, column, encrypted=True, convert=decrypt)


def encrypted_columns() -> list[tuple[str, str]]:
    """(table, column) of every EncryptedTextField of every installed model."""
    from django.apps import apps

    return [
        (model._meta.db_table, field.column)
        for model in apps.get_models()
        if not model._meta.proxy
        for field in model._meta.local_fields
        if isinstance(field, EncryptedTextField)
    ]


def reencrypt_all(connection) -> int:
    """Rewrite every encrypted value with the current key (key rotation), and encrypt any
    plaintext left over. In one transaction: all values move to the new key, or none does.
    Returns the values rewritten."""
    from django.db import transaction

    count = 0
    with transaction.atomic(using=connection.alias):
        for table, column in encrypted_columns():
            count += _rewrite(connection, table, column, encrypted=True, convert=reencrypt)
            count += _rewrite(connection, table, column, encrypted=False, convert=encrypt)
    return count


def _rewrite(connection, table: str, column: str, *, encrypted: bool, convert) -> int:
    qn = connection.ops.quote_name
    condition = "LIKE" if encrypted else "NOT LIKE"
    with connection.cursor() as cursor:
        cursor.execute(
            f"SELECT id, {qn(column)} FROM {qn(table)} WHERE {qn(column)} <> '' AND {qn(column)} {condition} %s",  # noqa: S608 (identifiers quoted)
            [PREFIX + "%"],
        )
        rows = cursor.fetchall()
        for pk, value in rows:
            cursor.execute(f"UPDATE {qn(table)} SET {qn(column)} = %s WHERE id = %s", [convert(value), pk])  # noqa: S608
    return len(rows)
