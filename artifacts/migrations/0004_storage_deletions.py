import django.utils.timezone
from django.db import migrations, models

# Deleting an Artifact row that names a file, or a Cache row, queues its storage object in
# the same transaction, whoever deletes it: the cleanup, the admin, or a cascade from a run
# or a repository deleted anywhere (Django issues one DELETE per table, which fires these).
# Two functions: a Cache row has no `type`, and PL/pgSQL does not promise to short-circuit.
FUNCTIONS = """
CREATE FUNCTION artifacts_artifact_queue_deletion() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF OLD.type <> 'DOCKER' AND OLD.storage_path <> '' THEN
        INSERT INTO artifacts_storagedeletion (storage_path, not_before, attempts, last_error, created_at)
        VALUES (OLD.storage_path, now(), 0, '', now());
    END IF;
    RETURN OLD;
END $$;
CREATE TRIGGER artifact_queue_storage_deletion AFTER DELETE ON artifacts_artifact
    FOR EACH ROW EXECUTE FUNCTION artifacts_artifact_queue_deletion();

CREATE FUNCTION artifacts_cache_queue_deletion() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    INSERT INTO artifacts_storagedeletion (storage_path, not_before, attempts, last_error, created_at)
    VALUES (OLD.storage_path, now(), 0, '', now());
    RETURN OLD;
END $$;
CREATE TRIGGER cache_queue_storage_deletion AFTER DELETE ON artifacts_cache
    FOR EACH ROW EXECUTE FUNCTION artifacts_cache_queue_deletion();
"""

DROP_FUNCTIONS = """
DROP TRIGGER IF EXISTS cache_queue_storage_deletion ON artifacts_cache;
DROP FUNCTION IF EXISTS artifacts_cache_queue_deletion();
DROP TRIGGER IF EXISTS artifact_queue_storage_deletion ON artifacts_artifact;
DROP FUNCTION IF EXISTS artifacts_artifact_queue_deletion();
"""


class Migration(migrations.Migration):

    dependencies = [
        ('artifacts', '0003_caches'),
    ]

    operations = [
        migrations.CreateModel(
            name='StorageDeletion',
            fields=[
                ('id', models.BigAutoField(primary_key=True, serialize=False)),
                ('storage_path', models.CharField(max_length=1000)),
                ('not_before', models.DateTimeField(default=django.utils.timezone.now)),
                ('attempts', models.PositiveIntegerField(default=0)),
                ('last_error', models.TextField(blank=True)),
                ('created_at', models.DateTimeField(default=django.utils.timezone.now)),
            ],
            options={
                'ordering': ['id'],
                'indexes': [models.Index(fields=['not_before'], name='storage_deletion_due_idx'), models.Index(fields=['storage_path'], name='storage_deletion_path_idx')],
            },
        ),
        migrations.RunSQL(FUNCTIONS, DROP_FUNCTIONS),
    ]
