"""Segment membership history, read as timeline events.

Entering and leaving segments are on every customer's timeline as ``segment.entered`` and
``segment.exited``, but they are not rows of the timeline table: a membership records when
it began (``SegmentMembership.entered_at``) and an ended one when it began and ended
(``PastMembership``). :data:`EVENTS_SQL` reads them as timeline rows, with the columns of
``customers_event``, so the timeline, the rule language (``{"event": "segment.entered"}``)
and journeys read them like any event.

They have ids of their own, negative so as never to meet a timeline row's: a current
membership ``-(4 × segment id + 1)`` (one per customer and segment), a past one
``-(4 × its id + 3)`` when it began and ``-(4 × its id + 2)`` when it ended (so that an exit
sorts after its entry at the same moment).
"""

from __future__ import annotations

from customers.models import EventCategory

from .models import PastMembership, Segment, SegmentMembership

NAMES = ("segment.entered", "segment.exited")

_MEMBERSHIPS = SegmentMembership._meta.db_table
_PAST = PastMembership._meta.db_table
_SEGMENTS = Segment._meta.db_table


def entry_id_sql(segment_id: str) -> str:
    """The id of a current membership's entry, from the SQL of its segment id."""
    return f"-(4 * {segment_id} + 1)"


def past_entry_id_sql(past_id: str) -> str:
    """The id of an ended membership's entry, from the SQL of its ``PastMembership`` id."""
    return f"-(4 * {past_id} + 3)"


def past_exit_id_sql(past_id: str) -> str:
    """The id of an ended membership's exit, from the SQL of its ``PastMembership`` id."""
    return f"-(4 * {past_id} + 2)"


def _row(*, table: str, id_sql: str, name: str, at: str, actor: str, condition: str) -> str:
    return f"""SELECT {id_sql} AS id, h.customer_id, '{name}'::varchar AS name,
                      '{EventCategory.SEGMENT.value}'::varchar AS category, ''::varchar AS channel,
                      jsonb_build_object('segment_id', h.segment_id, 'segment', coalesce(s.name, 'a deleted segment')) AS properties,
                      h.{at} AS occurred_at, h.{at} AS received_at, 'platform'::varchar AS source,
                      NULL::varchar AS idempotency_key, h.{actor} AS actor
               FROM {table} h LEFT JOIN {_SEGMENTS} s ON s.id = h.segment_id
               WHERE {condition}"""


def events_sql(condition: str = "TRUE", *, limit: str = "") -> str:
    """The history as a relation with the timeline table's columns; ``condition`` filters the
    memberships, current and past, as ``h`` (e.g. ``h.segment_id = %(segment)s``), and
    ``limit`` keeps the newest rows of each kind (a page needs no more)."""
    def branch(**kwargs) -> str:
        row = _row(condition=condition, **kwargs)
        return f"({row} ORDER BY h.{kwargs['at']} DESC LIMIT {limit})" if limit else row

    return "(" + "\n UNION ALL ".join([
        branch(table=_MEMBERSHIPS, id_sql=entry_id_sql("h.segment_id"), name="segment.entered", at="entered_at",
               actor="entered_by"),
        branch(table=_PAST, id_sql=past_entry_id_sql("h.id"), name="segment.entered", at="entered_at", actor="entered_by"),
        branch(table=_PAST, id_sql=past_exit_id_sql("h.id"), name="segment.exited", at="exited_at", actor="exited_by"),
    ]) + ")"


# Predicates on customer_id, name and occurred_at reach each branch (PostgreSQL pushes them
# into a UNION ALL), so a query for a few customers reads their rows only.
EVENTS_SQL = events_sql()


def source_for(event_name: str) -> str:
    """The relation to read events named ``event_name`` from, as ``… e`` in a FROM clause."""
    return EVENTS_SQL if event_name in NAMES else "customers_event"
