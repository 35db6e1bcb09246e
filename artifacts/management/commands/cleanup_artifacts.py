"""`manage.py cleanup_artifacts [--dry-run]`: what the nightly task does, now."""

from __future__ import annotations

from django.core.management.base import BaseCommand

from artifacts.services import artifacts_cleanup, caches_cleanup, storage_deletions_process


class Command(BaseCommand):
    help = (
        "Delete expired artifacts and abandoned uploads (storage first, then rows), unused caches and the "
        "storage objects of deleted runs and repositories, as the nightly task does. "
        "--dry-run only counts them."
    )

    def add_arguments(self, parser):
        parser.add_argument("--dry-run", action="store_true", help="Count what would be deleted; delete nothing.")
        parser.add_argument("--batch-size", type=int, default=None, help="Rows claimed per transaction.")

    def handle(self, *args, **options):
        if options["dry_run"]:
            counts = artifacts_cleanup(dry_run=True)
            self.stdout.write(
                f"dry run: {counts['due']} artifact(s) due for deletion, {counts['retry']} earlier deletion(s) "
                "to retry; nothing deleted"
            )
            return
        counts = artifacts_cleanup(batch_size=options["batch_size"])
        caches = caches_cleanup(batch_size=options["batch_size"])
        objects = storage_deletions_process(batch_size=options["batch_size"])
        failed = counts["failed"] + objects["failed"]
        self.stdout.write(
            f"deleted {counts['deleted']} artifact(s), {caches['removed']} unused cache(s) and "
            f"{objects['deleted']} object(s) of deleted rows; {failed} deletion(s) failed and will be retried"
        )
