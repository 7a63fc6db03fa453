"""A segment's full computation: in the background, with progress, superseded by an edit.

A create, a rule change or "recompute now" marks the segment ``computing`` under a new
generation and queues a task (with few customers, computes it within the request). The task
evaluates the rules without holding any lock, then writes the result and makes the segment
ready in one short transaction; a newer generation stops it before it writes anything.
"""

from __future__ import annotations

import logging
import time
from datetime import datetime

from django.conf import settings
from django.db import connection, transaction
from django.db.models import F
from django.utils import timezone

from . import rules as rule_language
from . import storage
from .membership import MembershipChange, apply, changed
from .models import Segment, SegmentMembership, SegmentPending, SegmentSize

logger = logging.getLogger(__name__)


def computation_request(*, segment_ids: list[int]) -> dict[int, MembershipChange | None] | None:
    """Compute ``segment_ids`` in full, in this order (dependencies first), superseding any
    computation of them still running. Call inside a transaction.

    Each segment is marked ``computing`` under a new generation with an estimate of how long
    it will take. After commit they are computed by a background task; with few customers
    (``SEGMENT_COMPUTE_INLINE_CUSTOMERS``) they are computed here and now instead, since a
    task would only add the wait for a worker: the changes are returned then, None otherwise.
    """
    if not segment_ids:
        return {}
    estimates = _estimates(segment_ids)
    for pk in segment_ids:
        Segment.objects.filter(pk=pk, kind=Segment.Kind.DYNAMIC).update(
            status=Segment.Status.COMPUTING, generation=F("generation") + 1, compute_phase=Segment.Phase.QUEUED,
            compute_started_at=None, compute_estimate_ms=estimates.get(pk), compute_error="",
        )
    generations = dict(Segment.objects.filter(pk__in=segment_ids, kind=Segment.Kind.DYNAMIC).values_list("pk", "generation"))
    chain = [[pk, generations[pk]] for pk in segment_ids if pk in generations]
    if not chain:
        return {}
    if _customers_estimate() <= settings.SEGMENT_COMPUTE_INLINE_CUSTOMERS:
        return segments_compute(chain=chain)

    def enqueue():
        from django_q.tasks import async_task

        async_task("segments.tasks.compute", chain, task_name=f"segment {chain[0][0]} computation")

    transaction.on_commit(enqueue, robust=True)
    return None


def _customers_estimate() -> int:
    """The planner's count of customers (free to read; exact enough to choose where to compute)."""
    with connection.cursor() as cursor:
        cursor.execute("SELECT greatest(reltuples, 0)::bigint FROM pg_class WHERE oid = 'customers_customer'::regclass")
        return cursor.fetchone()[0]


def _estimates(segment_ids: list[int]) -> dict[int, int]:
    """How long each full computation should take: its last one, or for a segment never
    computed, the median of the others' last ones."""
    known = dict(
        Segment.objects.filter(kind=Segment.Kind.DYNAMIC, last_full_ms__isnull=False).values_list("pk", "last_full_ms")
    )
    others = sorted(known.values())
    typical = others[len(others) // 2] if others else None
    return {pk: known.get(pk, typical) for pk in segment_ids if known.get(pk, typical) is not None}


class Superseded(Exception):
    """A newer computation of the segment was requested (new rules, or it was deleted)."""


def segments_compute(*, chain: list[list[int]]) -> dict[int, MembershipChange | None]:
    """Run the computations ``chain`` ([segment id, generation] pairs, dependencies first).
    Safe to run twice: a computation already done or superseded is skipped."""
    return {pk: segment_compute(segment_id=pk, generation=generation) for pk, generation in chain}


def segment_compute(*, segment_id: int, generation: int) -> MembershipChange | None:
    """Compute a segment in full for its computation request ``generation``.

    The rules are evaluated into a temporary table without holding any lock, so real-time
    updates carry on meanwhile; customers they touch in this segment are noted as pending.
    Then, holding the segment's row lock, the membership is made equal to the evaluation in
    one statement, the pending customers are re-evaluated on current data, and the segment
    becomes ready, all in one transaction. A newer request (an edit) supersedes this one at
    either step, and nothing is written. Returns None when superseded or already done; a
    failure leaves the previous members in place and the segment ``failed``, with the reason.
    """
    now = timezone.now()
    started = time.monotonic()
    mine = Segment.objects.filter(pk=segment_id, generation=generation, status=Segment.Status.COMPUTING)
    if not mine.update(compute_phase=Segment.Phase.EVALUATING, compute_started_at=now):
        return None
    table = f"segment_evaluation_{segment_id}"
    # A segment's first computation evaluates straight into the table that becomes its
    # partition (see segments.storage); later ones into a temporary table, then apply the
    # difference to the current members.
    first = not storage.attached(segment_id)
    try:
        segment = Segment.objects.get(pk=segment_id)
        query, named = rule_language.compile_query(segment.compiled, now=now)
        with transaction.atomic(), connection.cursor() as cursor:
            cursor.execute("SET LOCAL work_mem = '64MB'")
            if first:
                matched = storage.build(segment_id=segment_id, generation=generation, query=query, params=named, now=now)
            else:
                cursor.execute(f"DROP TABLE IF EXISTS {table}")
                cursor.execute(f"CREATE TEMP TABLE {table} AS {query}", named)
                cursor.execute(f"ANALYZE {table}")
        if not mine.update(compute_phase=Segment.Phase.WRITING):
            raise Superseded
        with transaction.atomic():
            locked = Segment.objects.select_for_update().filter(pk=segment_id).first()
            if locked is None or locked.generation != generation or locked.status != Segment.Status.COMPUTING:
                raise Superseded
            if first:
                storage.attach(segment_id, generation)
                entered, exited = matched, 0
                transaction.on_commit(lambda: _announce_entries(segment_id, now), robust=True)
            else:
                entered, exited, matched = apply(locked, query=f"SELECT id FROM {table}", params={}, ids=None, now=now)
            # Customers who changed after the evaluation's snapshot: their current data decides.
            with connection.cursor() as cursor:
                cursor.execute(
                    f"DELETE FROM {SegmentPending._meta.db_table} WHERE segment_id = %s RETURNING customer_id", [segment_id]
                )
                pending = sorted(pk for (pk,) in cursor.fetchall())
            if pending:
                later = timezone.now()
                query, named = rule_language.compile_query(locked.compiled, now=later, customer_ids=pending)
                more_in, more_out, _ = apply(locked, query=query, params=named, ids=pending, now=later)
                entered, exited, matched = entered + more_in, exited + more_out, matched + more_in - more_out
            elapsed_ms = int((time.monotonic() - started) * 1000)
            update = dict(
                status=Segment.Status.READY, compute_phase="", compute_error="", member_count=matched,
                computed_at=now, last_full_ms=elapsed_ms, swept_at=now,
            )
            if entered or exited:
                update["changed_at"] = now
            Segment.objects.filter(pk=segment_id).update(**update)
            SegmentSize.objects.create(segment_id=segment_id, at=now, size=matched)
        if first:
            storage.index(segment_id)
        return MembershipChange(entered=entered, exited=exited, size=matched)
    except Superseded:
        return None
    except Exception as exc:
        logger.exception("computing segment %s failed", segment_id)
        Segment.objects.filter(pk=segment_id, generation=generation).update(
            status=Segment.Status.FAILED, compute_phase="", compute_error=f"{type(exc).__name__}: {exc}"[:2000]
        )
        return None
    finally:
        if first:
            # Superseded or failed before its table became the segment's: it goes.
            storage.discard(segment_id, generation)
        else:
            with connection.cursor() as cursor:
                cursor.execute(f"DROP TABLE IF EXISTS {table}")


def _announce_entries(segment_id: int, at: datetime) -> None:
    """Tell the event stream who entered with a segment's first computation: its members since
    ``at`` not added by a person. Run after the computation commits, so that the members are
    ready without waiting for a list of them to be made (the listeners hear of it after the
    commit either way)."""
    with transaction.atomic(), connection.cursor() as cursor:
        cursor.execute(
            f"""SELECT coalesce(array_agg(customer_id), '{{}}') FROM {SegmentMembership._meta.db_table}
                WHERE segment_id = %s AND entered_at = %s AND entered_by = ''""",
            [segment_id, at],
        )
        changed(segment_id, cursor.fetchone()[0], [])
