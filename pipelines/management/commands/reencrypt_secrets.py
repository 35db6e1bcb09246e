"""`manage.py reencrypt_secrets`: rewrite every secret at rest with the current encryption key."""

from __future__ import annotations

from django.core.management.base import BaseCommand, CommandError
from django.db import connection

from cicd.crypto import DecryptionError, reencrypt_all


class Command(BaseCommand):
    help = (
        "Re-encrypt every secret stored at rest (CI/CD variables, webhook secrets, forge tokens, Slack URLs) "
        "with CONVEYOR_ENCRYPTION_KEY. Run it after rotating the key, with the previous key in "
        "CONVEYOR_ENCRYPTION_OLD_KEYS; afterwards the old key can be dropped. All or nothing; safe to rerun."
    )

    def handle(self, *args, **options):
        try:
            count = reencrypt_all(connection)
        except DecryptionError as exc:
            raise CommandError(str(exc)) from None
        self.stdout.write(f"Re-encrypted {count} secret(s) with the current key.")
