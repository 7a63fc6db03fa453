"""Memberships move to one table per segment: LIST partitions of segments_segmentmembership
(see segments.storage), each with a unique index on customer_id, which also serves looking a
customer's memberships up (one probe per segment)."""

from django.db import migrations

PARTITION = """
ALTER TABLE segments_segmentmembership RENAME TO segments_segmentmembership_unpartitioned;
ALTER INDEX segments_segmentmembership_pkey RENAME TO segments_segmentmembership_unpartitioned_pkey;
DROP INDEX IF EXISTS membership_customer_idx;
CREATE TABLE segments_segmentmembership (
    entered_at timestamp with time zone NOT NULL,
    customer_id bigint NOT NULL,
    segment_id bigint NOT NULL,
    entered_by varchar(255) NOT NULL DEFAULT ''
) PARTITION BY LIST (segment_id);
DO $$
DECLARE segment bigint;
BEGIN
    FOR segment IN SELECT id FROM segments_segment LOOP
        EXECUTE format('CREATE TABLE %I PARTITION OF segments_segmentmembership FOR VALUES IN (%s)',
                       'segments_segmentmembership_' || segment, segment);
        EXECUTE format('CREATE UNIQUE INDEX %I ON %I (customer_id)',
                       'segments_segmentmembership_' || segment || '_customer', 'segments_segmentmembership_' || segment);
    END LOOP;
END $$;
INSERT INTO segments_segmentmembership (entered_at, customer_id, segment_id, entered_by)
SELECT entered_at, customer_id, segment_id, entered_by FROM segments_segmentmembership_unpartitioned
WHERE segment_id IN (SELECT id FROM segments_segment);
DROP TABLE segments_segmentmembership_unpartitioned;
"""


class Migration(migrations.Migration):

    dependencies = [
        ("segments", "0006_membership_history"),
    ]

    operations = [
        migrations.SeparateDatabaseAndState(
            database_operations=[migrations.RunSQL(PARTITION, migrations.RunSQL.noop)],
            state_operations=[
                migrations.RemoveIndex(model_name="segmentmembership", name="membership_customer_idx"),
            ],
        ),
    ]
