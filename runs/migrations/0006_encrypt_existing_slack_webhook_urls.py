# Encrypts the Slack webhook URLs stored in plaintext before 0005 (cicd.crypto).

from django.db import migrations

from cicd.crypto import decrypt_existing, encrypt_existing

COLUMNS = [("environment", "slack_webhook_url"), ("pipelinenotifications", "slack_webhook_url")]


def encrypt(apps, schema_editor):
    for model_name, column in COLUMNS:
        table = apps.get_model("runs", model_name)._meta.db_table
        encrypt_existing(schema_editor.connection, table, column)


def decrypt(apps, schema_editor):
    for model_name, column in COLUMNS:
        table = apps.get_model("runs", model_name)._meta.db_table
        decrypt_existing(schema_editor.connection, table, column)


class Migration(migrations.Migration):
    dependencies = [
        ("runs", "0005_encrypted_slack_webhook_urls"),
    ]

    operations = [
        migrations.RunPython(encrypt, decrypt),
    ]
