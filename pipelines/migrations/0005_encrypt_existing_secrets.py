# Encrypts the webhook secrets and forge tokens stored in plaintext before 0004 (cicd.crypto).

from django.db import migrations

from cicd.crypto import decrypt_existing, encrypt_existing

COLUMNS = [("repository", "webhook_secret"), ("repository", "forge_token")]


def encrypt(apps, schema_editor):
    for model_name, column in COLUMNS:
        table = apps.get_model("pipelines", model_name)._meta.db_table
        encrypt_existing(schema_editor.connection, table, column)


def decrypt(apps, schema_editor):
    for model_name, column in COLUMNS:
        table = apps.get_model("pipelines", model_name)._meta.db_table
        decrypt_existing(schema_editor.connection, table, column)


class Migration(migrations.Migration):
    dependencies = [
        ("pipelines", "0004_variables_protected_refs_encrypted_secrets"),
    ]

    operations = [
        migrations.RunPython(encrypt, decrypt),
    ]
