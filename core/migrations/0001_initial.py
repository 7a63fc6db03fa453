import django.utils.timezone
from django.db import migrations, models


class Migration(migrations.Migration):
    """AuditEntry moves here from the customers app; its table stays as it is."""

    initial = True

    dependencies = [
        ("customers", "0009_email_request"),
    ]

    operations = [
        migrations.SeparateDatabaseAndState(
            state_operations=[
                migrations.CreateModel(
                    name="AuditEntry",
                    fields=[
                        ("id", models.BigAutoField(auto_created=True, primary_key=True, serialize=False, verbose_name="ID")),
                        ("occurred_at", models.DateTimeField(db_index=True, default=django.utils.timezone.now)),
                        ("actor", models.CharField(max_length=255)),
                        ("action", models.CharField(max_length=64)),
                        ("object_type", models.CharField(max_length=64)),
                        ("object_id", models.CharField(blank=True, default="", max_length=64)),
                        ("details", models.JSONField(blank=True, default=dict)),
                    ],
                    options={
                        "verbose_name_plural": "audit entries",
                        "db_table": "customers_auditentry",
                        "ordering": ["-occurred_at", "-id"],
                    },
                ),
            ],
            database_operations=[],
        ),
    ]
