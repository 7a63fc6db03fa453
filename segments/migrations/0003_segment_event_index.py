from django.db import migrations


class Migration(migrations.Migration):
    """Recent entries and exits of one segment, without scanning every segment event."""

    atomic = False
    dependencies = [("segments", "0002_sql_helpers_and_schedule"), ("customers", "0003_channel_status")]

    operations = [
        migrations.RunSQL(
            "CREATE INDEX CONCURRENTLY IF NOT EXISTS event_segment_changes_idx ON customers_event "
            "((properties -> 'segment_id'), occurred_at DESC) WHERE category = 'segment'",
            "DROP INDEX CONCURRENTLY IF EXISTS event_segment_changes_idx",
        )
    ]
