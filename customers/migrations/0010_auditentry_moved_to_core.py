from django.db import migrations


class Migration(migrations.Migration):
    """AuditEntry now belongs to the core app (same table); only Django's state changes here."""

    dependencies = [
        ("customers", "0009_email_request"),
        ("core", "0001_initial"),
    ]

    operations = [
        migrations.SeparateDatabaseAndState(
            state_operations=[migrations.DeleteModel(name="AuditEntry")],
            database_operations=[],
        ),
    ]
