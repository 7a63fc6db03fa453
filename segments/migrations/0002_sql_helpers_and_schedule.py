from django.db import migrations

TO_TIMESTAMPTZ = """
CREATE OR REPLACE FUNCTION sb_to_timestamptz(value text) RETURNS timestamptz
LANGUAGE plpgsql IMMUTABLE PARALLEL SAFE AS $$
BEGIN
    -- Custom attributes are free-form: a value that is not a date is simply not one.
    IF value IS NULL OR value !~ '^\\d{4}-\\d{2}-\\d{2}' THEN
        RETURN NULL;
    END IF;
    RETURN value::timestamptz;
EXCEPTION WHEN others THEN
    RETURN NULL;
END
$$;
"""


def schedule_sweep(apps, schema_editor):
    Schedule = apps.get_model("django_q", "Schedule")
    Schedule.objects.update_or_create(
        name="Keep time-window segments true",
        defaults={
            "func": "segments.tasks.sweep",
            "schedule_type": "I",
            "minutes": 1,
            "repeats": -1,
        },
    )


def unschedule_sweep(apps, schema_editor):
    apps.get_model("django_q", "Schedule").objects.filter(name="Keep time-window segments true").delete()


class Migration(migrations.Migration):
    dependencies = [
        ("segments", "0001_initial"),
        ("django_q", "0019_alter_task_options_alter_ormq_key_alter_ormq_lock_and_more"),
    ]

    operations = [
        migrations.RunSQL(TO_TIMESTAMPTZ, "DROP FUNCTION IF EXISTS sb_to_timestamptz(text)"),
        migrations.RunPython(schedule_sweep, unschedule_sweep),
    ]
