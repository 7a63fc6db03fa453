"""Writing memberships: who is in a segment, and the history of who entered and left.

One statement makes a segment's membership (of everyone, or of some customers) equal to its
rules' audience: it inserts who entered, moves who left to the past memberships, and returns
both lists for the event stream. A recomputation holds the segment's row lock, so a
real-time update, the sweep and a full computation never interleave on the same segment.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from datetime import datetime

from django.db import connection, transaction
from django.utils import timezone

from customers import timeline

from . import rules as rule_language
from .models import Segment, SegmentPending, SegmentSize


@dataclass
class MembershipChange:
    entered: int
    exited: int
    size: int


# Who entered and who left, written with the membership: entering is the membership row itself
# (its entered_at is the timeline's ``segment.entered``); leaving moves it to the past ones.
# Each statement selects CHANGED, the ids of both, for :func:`_changed`.
ENTER = """entered AS (
    INSERT INTO segments_segmentmembership (segment_id, customer_id, entered_at, entered_by)
    SELECT %(segment_id)s, t.id, %(now)s, %(actor)s FROM ({rows}) t
    ON CONFLICT DO NOTHING
    RETURNING customer_id
)"""
EXIT = """exited AS (
    DELETE FROM segments_segmentmembership m
    WHERE m.segment_id = %(segment_id)s AND {condition}
    RETURNING m.customer_id, m.entered_at, m.entered_by
),
ended AS (
    INSERT INTO segments_pastmembership (segment_id, customer_id, entered_at, exited_at, entered_by, exited_by)
    SELECT %(segment_id)s, customer_id, entered_at, %(now)s, entered_by, %(actor)s FROM exited
)"""
CHANGED = """(SELECT coalesce(array_agg(customer_id), '{}') FROM entered),
              (SELECT coalesce(array_agg(customer_id), '{}') FROM exited)"""

APPLY = """
WITH target AS MATERIALIZED ({query}),
current AS (
    SELECT customer_id FROM segments_segmentmembership
    WHERE segment_id = %(segment_id)s {current_filter}
),
{enter},
{exit}
SELECT (SELECT count(*) FROM target), {changed}
"""


def changed(segment_id: int, entered: list[int], exited: list[int]) -> tuple[int, int]:
    """Tell the event stream who entered and left (sent after commit); returns their counts."""
    timeline.membership_changed(segment_id=segment_id, entered=entered, exited=exited)
    return len(entered), len(exited)


def apply(segment: Segment, *, query: str, params: dict, ids: list[int] | None, now: datetime) -> tuple[int, int, int]:
    """Make the membership of ``segment`` (of ``ids``, or everyone) equal to ``query``'s
    customers in one statement, with the history of who entered and left. Returns
    (entered, exited, matched). Call holding the segment's row lock."""
    scope = "" if ids is None else "AND customer_id = ANY(%(ids)s::bigint[])"
    statement = APPLY.format(
        query=query, current_filter=scope,
        enter=ENTER.format(rows="SELECT id FROM target WHERE id NOT IN (SELECT customer_id FROM current)"),
        exit=EXIT.format(condition="m.customer_id NOT IN (SELECT id FROM target) " + scope.replace("customer_id", "m.customer_id")),
        changed=CHANGED,
    )
    with connection.cursor() as cursor:
        # Audience queries hash whole tables of ids; the 4 MB default makes PostgreSQL
        # fall back to far slower plans for large audiences.
        cursor.execute("SET LOCAL work_mem = '64MB'")
        cursor.execute(
            statement,
            {
                **params,
                "segment_id": segment.pk,
                "now": now,
                "ids": ids,
                "actor": "",
            },
        )
        matched, entered, exited = cursor.fetchone()
    return *changed(segment.pk, entered, exited), matched


def segment_recompute(
    *, segment_id: int, customer_ids: list[int] | None = None, now: datetime | None = None
) -> MembershipChange | None:
    """Bring a dynamic segment's membership up to date, for everyone or for ``customer_ids``.

    Returns None for static or deleted segments, and for segments not ready (being computed
    in full, or whose computation failed): customers who changed meanwhile are noted for the
    computation to re-evaluate. Takes the segment's row lock.
    """
    now = now or timezone.now()
    started = time.monotonic()
    with transaction.atomic():
        segment = Segment.objects.select_for_update().filter(pk=segment_id).first()
        if segment is None or not segment.is_dynamic or segment.compiled is None:
            return None
        ids = sorted(customer_ids) if customer_ids is not None else None
        if not segment.is_ready:
            if ids:
                note_pending(segment.pk, ids)
            return None
        query, named = rule_language.compile_query(segment.compiled, now=now, customer_ids=ids)
        entered, exited, matched = apply(segment, query=query, params=named, ids=ids, now=now)
        elapsed_ms = int((time.monotonic() - started) * 1000)
        update = {}
        if ids is None:
            update.update(member_count=matched, computed_at=now, last_full_ms=elapsed_ms, swept_at=now)
        elif entered or exited:
            segment.member_count = segment.member_count + entered - exited
            update.update(member_count=segment.member_count, last_lag_ms=elapsed_ms)
        if entered or exited:
            update["changed_at"] = now
        if update:
            Segment.objects.filter(pk=segment.pk).update(**update)
        size = update.get("member_count", segment.member_count)
        if ids is None:
            # A full computation is a point on the size chart, so a new segment has a trend at once.
            SegmentSize.objects.create(segment_id=segment.pk, at=now, size=size)
    return MembershipChange(entered=entered, exited=exited, size=size)


def note_pending(segment_id: int, ids: list[int]) -> None:
    with connection.cursor() as cursor:
        cursor.execute(
            f"""INSERT INTO {SegmentPending._meta.db_table} (segment_id, customer_id)
                SELECT %s, unnest(%s::bigint[]) ON CONFLICT DO NOTHING""",
            [segment_id, ids],
        )
