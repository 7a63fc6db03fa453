"""The outbox's one writer: a message row per (endpoint, event) the endpoint wants.

:func:`enqueue` is called with each committed :class:`~customers.timeline.Change`. It reads
the endpoints once (a short list); when none wants any of the change's event names it
returns without another query, so the event stream pays next to nothing for webhooks
nobody registered. Otherwise ONE ``INSERT … SELECT`` writes every message of the change:
timeline rows found by name, id range and customer (rows of other transactions may fall
inside a range, and are left to their own change), segment entries and exits from the
change's memberships (they are not rows of the timeline table, see ``segments.history``),
in the order the events were written. A timeline row reaches an endpoint at most once
(a unique index), so a change handled twice writes nothing more.
"""

from __future__ import annotations

from django.db import connection
from django.utils import timezone

from customers.models import Customer, Event
from customers.timeline import Change
from segments.history import entry_id_sql, past_exit_id_sql
from segments.models import PastMembership, Segment

from .models import Endpoint, Message
from .services import matches

SEGMENT_EVENTS = ("segment.entered", "segment.exited")


def wanted(change: Change) -> list[tuple[int, str]]:
    """(endpoint id, event name) for each endpoint and each name of ``change`` it wants.

    A disabled endpoint's outbox still fills: enabling it resumes from where it stopped,
    with nothing missing."""
    endpoints = list(Endpoint.objects.values_list("id", "events"))
    if not endpoints:
        return []
    return [(pk, name) for pk, patterns in endpoints for name in change.names if matches(patterns, name)]


def _payload(e: str, customer: str) -> str:
    """The JSON body of a message, from an event row ``e`` with the timeline's columns."""
    return f"""jsonb_build_object(
        'type', {e}.name,
        'timestamp', {e}.occurred_at,
        'data', jsonb_build_object(
            'id', {e}.id,
            'name', {e}.name,
            'customer', jsonb_build_object('id', {e}.customer_id, 'external_id', {customer}.external_id),
            'properties', {e}.properties,
            'channel', {e}.channel,
            'source', {e}.source,
            'occurred_at', {e}.occurred_at,
            'received_at', {e}.received_at))"""


STATEMENT = f"""
WITH rows AS (
    SELECT 0 AS kind, e.id AS ord, e.id, e.customer_id, e.name, e.properties, e.channel, e.source, e.occurred_at, e.received_at
    FROM unnest(%(names)s::text[], %(lows)s::bigint[], %(highs)s::bigint[]) AS r(name, low, high)
    JOIN {Event._meta.db_table} e ON e.name = r.name AND e.id BETWEEN r.low AND r.high
    WHERE e.customer_id = ANY(%(customers)s::bigint[])
    UNION ALL
    SELECT 1 AS kind, m.n,
           CASE WHEN m.name = 'segment.entered' THEN {entry_id_sql('m.segment_id')} ELSE {past_exit_id_sql('p.id')} END,
           m.customer_id, m.name,
           jsonb_build_object('segment_id', m.segment_id, 'segment', coalesce(s.name, 'a deleted segment')),
           '', 'platform', coalesce(p.exited_at, %(now)s), coalesce(p.exited_at, %(now)s)
    FROM unnest(%(segment_names)s::text[], %(segment_ids)s::bigint[], %(segment_customers)s::bigint[])
         WITH ORDINALITY AS m(name, segment_id, customer_id, n)
    LEFT JOIN {Segment._meta.db_table} s ON s.id = m.segment_id
    LEFT JOIN LATERAL (
        SELECT h.id, h.exited_at FROM {PastMembership._meta.db_table} h
        WHERE m.name = 'segment.exited' AND h.customer_id = m.customer_id AND h.segment_id = m.segment_id
        ORDER BY h.exited_at DESC, h.id DESC LIMIT 1
    ) p ON TRUE
),
written AS (
    INSERT INTO {Message._meta.db_table} (
        endpoint_id, uid, event_type, event_id, customer_id, payload, status, attempts, failures,
        next_attempt_at, created_at, last_response, last_error)
    SELECT w.endpoint_id, gen_random_uuid(), x.name, x.id, x.customer_id, {_payload("x", "c")},
           %(pending)s, 0, 0, %(now)s, %(now)s, '', ''
    FROM rows x
    JOIN unnest(%(endpoints)s::bigint[], %(endpoint_names)s::text[]) AS w(endpoint_id, name) ON w.name = x.name
    JOIN {Customer._meta.db_table} c ON c.id = x.customer_id
    ORDER BY x.kind, x.ord, w.endpoint_id
    ON CONFLICT DO NOTHING
    RETURNING endpoint_id
)
SELECT endpoint_id, count(*) FROM written GROUP BY endpoint_id
"""


def enqueue(change: Change) -> dict[int, int]:
    """Write the messages ``change`` means for the endpoints; returns {endpoint id: messages}."""
    pairs = wanted(change)
    if not pairs:
        return {}
    names = {name for _, name in pairs}
    ranges = [(name, *change.event_ids[name]) for name in sorted(names) if name in change.event_ids]
    customers = sorted({pk for name, _, _ in ranges for pk in change.by_name.get(name, ())})
    memberships = [
        (name, segment_id, customer_id)
        for (name, segment_id), ids in sorted(change.memberships.items())
        if name in names
        for customer_id in sorted(ids)
    ]
    if not ranges and not memberships:
        return {}
    with connection.cursor() as cursor:
        cursor.execute(STATEMENT, {
            "names": [r[0] for r in ranges], "lows": [r[1] for r in ranges], "highs": [r[2] for r in ranges],
            "customers": customers,
            "segment_names": [m[0] for m in memberships], "segment_ids": [m[1] for m in memberships],
            "segment_customers": [m[2] for m in memberships],
            "endpoints": [pk for pk, _ in pairs], "endpoint_names": [name for _, name in pairs],
            "pending": Message.Status.PENDING, "now": timezone.now(),
        })
        return dict(cursor.fetchall())
