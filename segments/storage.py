"""Where memberships are stored: one table per segment, a partition of the memberships table.

``segments_segmentmembership`` is partitioned by segment (LIST on ``segment_id``); each
partition has a unique index on ``customer_id``. So

- a segment's first computation writes its members into a table of its own with
  ``CREATE TABLE … AS`` (the fastest way PostgreSQL has to write rows), attaches it as the
  segment's partition, and builds its index once, after the rows, instead of inserting
  them one by one into a shared table and its indexes;
- reading a segment's members reads its partition only, and a customer's memberships are
  one index probe per segment;
- deleting a segment drops its table.

The index is built right after the members are ready: until then, which takes a fraction
of the time the computation took, looking one customer up in that segment reads its table.
Nothing else needs it: every write of a segment's members holds the segment's row lock and
inserts only customers not already in it, so the index never finds a duplicate.

Attaching takes a lock that only other attaches and detaches wait for; reads and writes of
the memberships carry on meanwhile.
"""

from __future__ import annotations

import logging

from django.db import connection, transaction

from .models import SegmentMembership

logger = logging.getLogger(__name__)

PARENT = SegmentMembership._meta.db_table


def table_name(segment_id: int) -> str:
    return f"{PARENT}_{int(segment_id)}"


def attached(segment_id: int) -> bool:
    """Whether the segment has its partition (a dynamic one gets it with its first computation)."""
    with connection.cursor() as cursor:
        cursor.execute(
            """SELECT EXISTS (SELECT 1 FROM pg_inherits i JOIN pg_class c ON c.oid = i.inhrelid
                              WHERE i.inhparent = %s::regclass AND c.relname = %s)""",
            [PARENT, table_name(segment_id)],
        )
        return cursor.fetchone()[0]


def staging_name(segment_id: int, generation: int) -> str:
    """The table a computation builds before it becomes the segment's partition (one per
    computation, so that a superseded one never meets the one superseding it)."""
    return f"{table_name(segment_id)}_g{int(generation)}"


def build(*, segment_id: int, generation: int, query: str, params: dict, now, actor: str = "") -> int:
    """A new, unattached table holding ``query``'s customers (a ``SELECT … id``) as members of
    ``segment_id`` since ``now``, indexed and constrained to be the segment's partition;
    returns how many. A table of that name left by a computation that stopped is replaced."""
    name = staging_name(segment_id, generation)
    with connection.cursor() as cursor:
        cursor.execute(f"DROP TABLE IF EXISTS {name}")
        cursor.execute(
            f"""CREATE TABLE {name} AS
                SELECT %(storage_segment)s::bigint AS segment_id, q.id::bigint AS customer_id,
                       %(storage_now)s::timestamptz AS entered_at, %(storage_actor)s::varchar(255) AS entered_by
                FROM ({query}) q""",
            {**params, "storage_segment": segment_id, "storage_now": now, "storage_actor": actor},
        )
        rows = cursor.rowcount
        # One pass over the rows checks them all, and spares attaching another.
        cursor.execute(
            f"""ALTER TABLE {name}
                    ALTER segment_id SET NOT NULL, ALTER customer_id SET NOT NULL, ALTER entered_at SET NOT NULL,
                    ALTER entered_by SET NOT NULL, ALTER entered_by SET DEFAULT '',
                    ADD CONSTRAINT {name}_segment CHECK (segment_id = {int(segment_id)})"""
        )
    return rows


def attach(segment_id: int, generation: int) -> None:
    """Make the table :func:`build` made the segment's partition (its check constraint spares
    PostgreSQL a scan). Call inside the transaction that makes the segment ready."""
    with connection.cursor() as cursor:
        cursor.execute(f"ALTER TABLE {staging_name(segment_id, generation)} RENAME TO {table_name(segment_id)}")
        cursor.execute(f"ALTER TABLE {PARENT} ATTACH PARTITION {table_name(segment_id)} FOR VALUES IN ({int(segment_id)})")


def index(segment_id: int) -> None:
    """Build the partition's index on customer_id (once; sorted, in parallel where it can)."""
    name = table_name(segment_id)
    with connection.cursor() as cursor:
        cursor.execute(f"CREATE UNIQUE INDEX IF NOT EXISTS {name}_customer ON {name} (customer_id)")


def discard(segment_id: int, generation: int) -> None:
    """Drop what a computation built, when it did not become the segment's partition."""
    with connection.cursor() as cursor:
        cursor.execute(f"DROP TABLE IF EXISTS {staging_name(segment_id, generation)}")


def create(segment_id: int) -> None:
    """An empty partition for a segment (a static list, or before members are added)."""
    if not attached(segment_id):
        build(segment_id=segment_id, generation=0, query="SELECT NULL::bigint AS id WHERE false", params={}, now=None)
        attach(segment_id, 0)
        index(segment_id)


def drop(segment_id: int) -> None:
    """Drop a deleted segment's partition. Dropping it waits for readers of any membership to
    finish; when that takes more than a few seconds, its rows are deleted instead and the
    empty table is left for a later attempt."""
    name = table_name(segment_id)
    try:
        with transaction.atomic(), connection.cursor() as cursor:
            cursor.execute("SET LOCAL lock_timeout = '3s'")
            cursor.execute(f"DROP TABLE IF EXISTS {name}")
    except Exception:
        logger.warning("could not drop %s now (busy); emptied it instead", name, exc_info=True)
        with connection.cursor() as cursor:
            cursor.execute(f"DELETE FROM {PARENT} WHERE segment_id = %s", [segment_id])
