"""Keep timeline and consent timestamps in the stored window, 1970-01-01 to 2100-01-01.

Rows already outside it (an API that once accepted year 10000 or year 1) are repaired
first, because they cannot be read back into Python and break every page showing them:

- an event's occurred_at becomes its received_at (when it reached us); the original is
  kept in its properties as ``original_occurred_at``;
- a consent entry's occurred_at becomes the time it was recorded (its timeline event's
  received_at, else now); the ledger is append-only and has no free-form field, so the
  original goes to the audit trail (action ``consent.repaired``), and to the timeline
  event's properties through the step above;
- the current consent state of each affected customer × channel is derived again from
  the ledger (the latest entry wins);
- a customer's last_seen_at becomes the latest event time in the window, or empty.

Originals are written as text in UTC (PostgreSQL can print what Python cannot read).
"""

import datetime
from django.db import migrations, models


LOW = "'1970-01-01 00:00:00+00'::timestamptz"
HIGH = "'2100-01-01 00:00:00+00'::timestamptz"
OUTSIDE = "({column} < " + LOW + " OR {column} >= " + HIGH + ")"


def _clamp(expression: str) -> str:
    return f"LEAST(GREATEST({expression}, {LOW}), {HIGH} - interval '1 microsecond')"


def _text(column: str) -> str:
    return f"(({column} AT TIME ZONE 'UTC')::text || ' UTC')"


REPAIR = f"""
WITH bad AS (
    SELECT c.id, c.occurred_at,
           {_clamp("coalesce((SELECT min(e.received_at) FROM customers_event e WHERE e.customer_id = c.customer_id "
                   "AND e.name IN ('consent.granted', 'consent.revoked') "
                   "AND e.properties->>'consent_id' = c.id::text), now())")} AS repaired
    FROM customers_consent c WHERE {OUTSIDE.format(column="c.occurred_at")}
),
fixed AS (
    UPDATE customers_consent c SET occurred_at = bad.repaired FROM bad WHERE c.id = bad.id
    RETURNING c.id, c.customer_id, c.channel
)
INSERT INTO customers_auditentry (occurred_at, actor, action, object_type, object_id, details)
SELECT now(), 'system', 'consent.repaired', 'customer', fixed.customer_id::text,
       jsonb_build_object('consent_id', fixed.id, 'field', 'occurred_at', 'original', {_text("bad.occurred_at")},
                          'repaired_to', {_text("bad.repaired")})
FROM fixed JOIN bad ON bad.id = fixed.id;

UPDATE customers_event
SET properties = CASE WHEN jsonb_typeof(properties) = 'object' THEN properties ELSE '{{}}'::jsonb END
        || jsonb_build_object('original_received_at', {_text("received_at")}),
    received_at = {_clamp("received_at")}
WHERE {OUTSIDE.format(column="received_at")};

UPDATE customers_event
SET properties = CASE WHEN jsonb_typeof(properties) = 'object' THEN properties ELSE '{{}}'::jsonb END
        || jsonb_build_object('original_occurred_at', {_text("occurred_at")}),
    occurred_at = received_at
WHERE {OUTSIDE.format(column="occurred_at")};

UPDATE customers_consentstate s
SET granted = latest.granted, updated_at = latest.occurred_at, consent_id = latest.id
FROM (
    SELECT DISTINCT ON (customer_id, channel) id, customer_id, channel, granted, occurred_at
    FROM customers_consent
    ORDER BY customer_id, channel, occurred_at DESC, id DESC
) latest
WHERE latest.customer_id = s.customer_id AND latest.channel = s.channel
  AND ({OUTSIDE.format(column="s.updated_at")} OR (s.customer_id, s.channel) IN (
      SELECT c.customer_id, c.channel FROM customers_auditentry a
      JOIN customers_consent c ON c.id = (a.details->>'consent_id')::bigint
      WHERE a.action = 'consent.repaired'
  ));

UPDATE customers_customer c
SET last_seen_at = (
    SELECT max(e.occurred_at) FROM customers_event e WHERE e.customer_id = c.id AND e.category = 'event'
)
WHERE {OUTSIDE.format(column="c.last_seen_at")};
"""


class Migration(migrations.Migration):

    dependencies = [
        ('customers', '0007_ingestcounter'),
    ]

    operations = [
        migrations.RunSQL(REPAIR, migrations.RunSQL.noop),
        migrations.AddConstraint(
            model_name='consent',
            constraint=models.CheckConstraint(condition=models.Q(('occurred_at__gte', datetime.datetime(1970, 1, 1, 0, 0, tzinfo=datetime.timezone.utc)), ('occurred_at__lt', datetime.datetime(2100, 1, 1, 0, 0, tzinfo=datetime.timezone.utc))), name='consent_occurred_in_window', violation_error_message='occurred_at must be from 1970-01-01 to before 2100-01-01.'),
        ),
        migrations.AddConstraint(
            model_name='consentstate',
            constraint=models.CheckConstraint(condition=models.Q(('updated_at__gte', datetime.datetime(1970, 1, 1, 0, 0, tzinfo=datetime.timezone.utc)), ('updated_at__lt', datetime.datetime(2100, 1, 1, 0, 0, tzinfo=datetime.timezone.utc))), name='consent_state_updated_in_window', violation_error_message='updated_at must be from 1970-01-01 to before 2100-01-01.'),
        ),
        migrations.AddConstraint(
            model_name='customer',
            constraint=models.CheckConstraint(condition=models.Q(models.Q(('last_seen_at__gte', datetime.datetime(1970, 1, 1, 0, 0, tzinfo=datetime.timezone.utc)), ('last_seen_at__lt', datetime.datetime(2100, 1, 1, 0, 0, tzinfo=datetime.timezone.utc))), ('last_seen_at__isnull', True), _connector='OR'), name='customer_last_seen_in_window', violation_error_message='last_seen_at must be from 1970-01-01 to before 2100-01-01.'),
        ),
        migrations.AddConstraint(
            model_name='event',
            constraint=models.CheckConstraint(condition=models.Q(('occurred_at__gte', datetime.datetime(1970, 1, 1, 0, 0, tzinfo=datetime.timezone.utc)), ('occurred_at__lt', datetime.datetime(2100, 1, 1, 0, 0, tzinfo=datetime.timezone.utc))), name='event_occurred_in_window', violation_error_message='occurred_at must be from 1970-01-01 to before 2100-01-01.'),
        ),
        migrations.AddConstraint(
            model_name='event',
            constraint=models.CheckConstraint(condition=models.Q(('received_at__gte', datetime.datetime(1970, 1, 1, 0, 0, tzinfo=datetime.timezone.utc)), ('received_at__lt', datetime.datetime(2100, 1, 1, 0, 0, tzinfo=datetime.timezone.utc))), name='event_received_in_window', violation_error_message='received_at must be from 1970-01-01 to before 2100-01-01.'),
        ),
    ]
