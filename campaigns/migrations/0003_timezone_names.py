from django.db import migrations

# pg_timezone_names reads the zone files on every call (tens of milliseconds); the send
# policy needs the list on every batch, so it is kept in a table. Refresh it with
# `manage.py migrate campaigns 0002 && manage.py migrate` after a PostgreSQL upgrade.
CREATE = """
CREATE TABLE campaigns_timezone (name text PRIMARY KEY);
INSERT INTO campaigns_timezone SELECT DISTINCT name FROM pg_timezone_names;
"""


class Migration(migrations.Migration):
    dependencies = [("campaigns", "0002_schedules")]

    operations = [migrations.RunSQL(CREATE, "DROP TABLE campaigns_timezone")]
