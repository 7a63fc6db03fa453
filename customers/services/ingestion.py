"""Events sent through the API: stored in one set-based statement per batch."""

from __future__ import annotations

import json
from dataclasses import dataclass
from datetime import datetime

from django.db import connection, transaction
from django.utils import timezone

from core.errors import FieldError, InputError

from .. import timeline
from ..models import ChannelKind
from .retry import retry_lost_races

CHANNELS = frozenset(ChannelKind.values)


@dataclass
class EventInput:
    customer_id: int | None
    external_id: str | None
    email: str | None
    name: str
    properties: dict
    occurred_at: datetime | None
    idempotency_key: str | None


@dataclass
class IngestResult:
    accepted: int
    duplicates: int
    customers_created: int


_BATCH_ROWS = """
    SELECT customer_id, name, coalesce(channel, '') AS channel, properties,
           coalesce(occurred_at, %(now)s) AS occurred_at, %(now)s::timestamptz AS received_at,
           %(source)s AS source, idempotency_key, '' AS actor
    FROM jsonb_to_recordset(%(batch)s::jsonb)
        AS t(customer_id bigint, name text, channel text, properties jsonb, occurred_at timestamptz,
             idempotency_key text)
"""

# A retried batch skips the events whose (source, idempotency key) is stored already.
_INSERT_EVENTS = f"""
WITH {timeline.insert_cte(_BATCH_ROWS, name="inserted", skip_duplicates=True)},
counted AS (
    INSERT INTO customers_ingestcounter (minute, shard, events)
    SELECT date_trunc('minute', %(now)s::timestamptz), pg_backend_pid() %% 8, count(*) FROM inserted HAVING count(*) > 0
    ON CONFLICT (minute, shard) DO UPDATE SET events = customers_ingestcounter.events + EXCLUDED.events
),
per_customer AS (
    SELECT customer_id, max(occurred_at) AS seen, count(*) AS n FROM inserted GROUP BY customer_id
)
SELECT coalesce(array_agg(customer_id ORDER BY customer_id), '{{}}'), coalesce(array_agg(seen ORDER BY customer_id), '{{}}'),
       coalesce(sum(n), 0), {timeline.summary_sql("inserted")}
FROM per_customer
"""

# Rows are locked in id order so that concurrent batches touching the same customers
# queue behind each other instead of deadlocking.
_TOUCH_CUSTOMERS = """
UPDATE customers_customer c SET last_seen_at = seen.at
FROM (SELECT unnest(%(ids)s::bigint[]) AS id, unnest(%(seen)s::timestamptz[]) AS at) seen
WHERE c.id = seen.id AND c.id IN (
    SELECT id FROM customers_customer WHERE id = ANY(%(ids)s) ORDER BY id FOR UPDATE
) AND (c.last_seen_at IS NULL OR c.last_seen_at < seen.at)
"""


def events_ingest(*, items: list[EventInput], source: str, actor: str = "") -> IngestResult:
    """Store a batch of events in one transaction, creating unknown customers on the way.

    Customers referenced by ``external_id`` or ``email`` are created when missing; a
    reference by ``id`` must exist (else :class:`InputError`, nothing written). Events
    whose ``idempotency_key`` was already stored for ``source`` are skipped, so a retried
    batch writes nothing twice. Set-based: a constant number of statements per batch.
    """
    return retry_lost_races(_events_ingest_once, items=items, source=source, actor=actor)


def _events_ingest_once(*, items: list[EventInput], source: str, actor: str) -> IngestResult:
    now = timezone.now()
    with transaction.atomic(), connection.cursor() as cursor:
        ids = sorted({item.customer_id for item in items if item.customer_id is not None})
        if ids:
            cursor.execute("SELECT id FROM customers_customer WHERE id = ANY(%s)", [ids])
            found = {row[0] for row in cursor.fetchall()}
            missing = [
                FieldError("customer.id", f"no customer has id {item.customer_id}", index)
                for index, item in enumerate(items)
                if item.customer_id is not None and item.customer_id not in found
            ]
            if missing:
                raise InputError(missing)

        by_external_id, created_by_external_id = customers_ensure(
            cursor, "external_id", sorted({i.external_id for i in items if i.customer_id is None and i.external_id}),
            source, actor, now,
        )
        by_email, created_by_email = customers_ensure(
            cursor, "email",
            sorted({i.email for i in items if i.customer_id is None and not i.external_id and i.email}),
            source, actor, now,
        )
        created_ids = created_by_external_id | created_by_email

        # The batch travels as one JSON document: one parameter to send instead of six arrays.
        batch = [
            {
                "customer_id": item.customer_id
                or (by_external_id[item.external_id] if item.external_id else by_email[item.email]),
                "name": item.name,
                "channel": channel if (channel := item.properties.get("channel")) in CHANNELS else "",
                "properties": item.properties,
                "occurred_at": item.occurred_at.isoformat() if item.occurred_at else None,
                "idempotency_key": item.idempotency_key,
            }
            for item in items
        ]
        cursor.execute(_INSERT_EVENTS, {"batch": json.dumps(batch, separators=(",", ":")), "now": now, "source": source})
        customer_ids, seen, accepted, summary = cursor.fetchone()
        timeline.written(summary)
        if customer_ids:
            cursor.execute(_TOUCH_CUSTOMERS, {"ids": customer_ids, "seen": seen})
    return IngestResult(accepted=int(accepted), duplicates=len(items) - int(accepted), customers_created=len(created_ids))


# How each identifying key finds a customer: its unique index (the ON CONFLICT target), the
# expression looked up, and the (external_id, email, anonymous_id) a new customer gets from v.
_KEYS = {
    "external_id": ("(external_id)", "external_id", "v, '', NULL"),
    "email": ("(lower(email)) WHERE NOT (email = '')", "lower(email)", "NULL, v, NULL"),
    "anonymous_id": ("(anonymous_id)", "anonymous_id", "NULL, '', v"),
}


def customers_ensure(cursor, key: str, values: list[str], source: str, actor: str, now) -> tuple[dict[str, int], set[int]]:
    """Map each external id, email or anonymous id to a customer id, creating missing customers.

    Call inside a transaction. Returns the mapping and the ids of the customers created
    (each gets a ``customer.created`` event).
    """
    if not values:
        return {}, set()
    conflict, select_key, new_keys = _KEYS[key]
    lookup = f"{select_key} = ANY(%(values)s)"
    # Usually everyone exists already: look first, insert only the rest.
    cursor.execute(f"SELECT {select_key}, id FROM customers_customer WHERE {lookup}", {"values": values})
    known = dict(cursor.fetchall())
    values = [value for value in values if value not in known]
    if not values:
        return known, set()
    rows = f"""
        SELECT id AS customer_id, 'customer.created' AS name, '' AS channel,
               jsonb_build_object('fields', jsonb_build_object('{key}', jsonb_build_array(NULL, {key}))) AS properties,
               %(now)s::timestamptz AS occurred_at, %(now)s::timestamptz AS received_at, %(source)s AS source,
               NULL AS idempotency_key, %(actor)s AS actor
        FROM created
    """
    cursor.execute(
        f"""
        WITH created AS (
            INSERT INTO customers_customer
                (external_id, email, anonymous_id, phone, first_name, last_name, locale, timezone, lifecycle_stage,
                 attributes, created_at, updated_at)
            SELECT {new_keys}, '', '', '', '', '', '', '{{}}'::jsonb, %(now)s, %(now)s
            FROM unnest(%(values)s::text[]) AS v
            ON CONFLICT {conflict} DO NOTHING
            RETURNING id, {key}
        ),
        {timeline.insert_cte(rows)}
        SELECT coalesce(array_agg(id), '{{}}'), {timeline.summary_sql()} FROM created
        """,
        {"values": values, "now": now, "source": source, "actor": actor},
    )
    created, summary = cursor.fetchone()
    created = set(created)
    timeline.written(summary, created=created)
    # Those a concurrent batch created in the meantime were skipped by ON CONFLICT: read them too.
    cursor.execute(f"SELECT {select_key}, id FROM customers_customer WHERE {lookup}", {"values": values})
    return {**known, **dict(cursor.fetchall())}, created
