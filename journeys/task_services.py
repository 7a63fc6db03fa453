"""Support tasks a journey hands to a person: assign, resolve, announce, expire.

The executor writes :class:`~journeys.models.Task` rows (the outbox of a "Hand to a person"
node, keyed ``"{enrollment}:{node}:{seq}"``) and waits at the node. A person resolves the
task with one of its outcomes, which moves the enrollment on by the port of that name; the
node's timeout (a wake-up the executor keeps) moves it on by ``timeout`` instead, and the
task shows as expired. Every change lands on the customer's timeline; changes by people are
audited.
"""

from __future__ import annotations

from datetime import datetime

from django.db import connection, transaction
from django.utils import timezone

from core.audit import audit
from core.errors import FieldError, InputError
from customers import timeline

from .models import Task

MAX_NOTE_LENGTH = 5000
TIMELINE_SOURCE = "journey"
# A person resolving a task does it at the support desk.
DESK_SOURCE = "support"


def outcome_label(outcome: str) -> str:
    """How an outcome ("no_answer") reads on a page ("No answer")."""
    return outcome.replace("_", " ").replace("-", " ").capitalize()


def task_assign(*, task: Task, user, actor: str) -> Task:
    """Give an open task to ``user`` (taking it from whoever held it). Raises InputError when
    the task is no longer open."""
    with transaction.atomic():
        locked = Task.objects.select_for_update().get(pk=task.pk)
        if locked.status != Task.Status.OPEN:
            raise InputError([FieldError("task", f"This task is already {locked.get_status_display().lower()}.")])
        previous = locked.assignee.get_username() if locked.assignee_id else ""
        locked.assignee = user
        locked.save(update_fields=["assignee"])
        audit(actor=actor, action="journey_task.assigned", object_type="journey_task", object_id=locked.pk,
              details={"assignee": user.get_username(), "previous": previous, "customer_id": locked.customer_id})
    return locked


def task_resolve(*, task: Task, outcome: str, note: str, actor: str) -> bool:
    """Resolve an open task with one of its outcomes and a note: the task, the
    ``journey.task_resolved`` timeline row and the audit entry are written, and the
    enrollment moves on by the port named ``outcome`` with ``{"task": {"outcome", "note"}}``
    merged into its context, all in one transaction.

    Raises InputError (nothing written) for an outcome the task does not offer, a note that
    is too long, or a task that is no longer open. Returns whether the journey moved on (it
    does not when the customer has left it or it moved on otherwise, e.g. by a timeout)."""
    from .executor import Resume, resume_many

    note = (note or "").strip()
    errors = []
    if outcome not in task.outcomes:
        choices = ", ".join(outcome_label(o) for o in task.outcomes)
        errors.append(FieldError("outcome", f"Choose an outcome: {choices}." if outcome else
                                 f"Choose an outcome ({choices})."))
    if len(note) > MAX_NOTE_LENGTH:
        errors.append(FieldError("note", f"Keep the note under {MAX_NOTE_LENGTH:,} characters."))
    if errors:
        raise InputError(errors)
    now = timezone.now()
    with transaction.atomic():
        locked = Task.objects.select_for_update(of=("self",)).select_related("journey", "enrollment").get(pk=task.pk)
        if locked.status != Task.Status.OPEN:
            raise InputError([FieldError("task", f"This task is already {locked.get_status_display().lower()}.")])
        locked.status = Task.Status.RESOLVED
        locked.outcome = outcome
        locked.note = note
        locked.resolved_at = now
        locked.resolved_by = actor
        locked.save(update_fields=["status", "outcome", "note", "resolved_at", "resolved_by"])
        if not (locked.enrollment and locked.enrollment.test):
            timeline.add(
                customer=locked.customer_id,
                name="journey.task_resolved",
                properties={
                    "task": locked.title, "outcome": outcome, "note": note, "journey": _journey_name(locked),
                    "journey_id": locked.journey_id, "task_id": locked.pk,
                },
                occurred_at=now,
                actor=actor,
                source=DESK_SOURCE,
                idempotency_key=f"journey.task_resolved:{locked.pk}",
            )
        audit(actor=actor, action="journey_task.resolved", object_type="journey_task", object_id=locked.pk,
              details={"outcome": outcome, "customer_id": locked.customer_id, "journey_id": locked.journey_id})
        moved = 0
        if locked.enrollment_id:
            moved = resume_many(
                [Resume(enrollment_id=locked.enrollment_id, seq=locked.seq, node=locked.node, port=outcome,
                        context={"task": {"outcome": outcome, "note": note}})],
                now=now,
            )
    task.refresh_from_db()
    return bool(moved)


def _journey_name(task: Task) -> str:
    return task.journey.name if task.journey_id else ""


def tasks_announce(task_ids: list[int]) -> int:
    """Write the ``journey.task_created`` timeline rows of new tasks, in one statement (test
    runs excepted). Call inside the transaction that created them; announcing a task twice
    writes it once. Returns how many rows were written."""
    if not task_ids:
        return 0
    rows = f"""
        SELECT t.customer_id, 'journey.task_created' AS name, '' AS channel,
               jsonb_build_object('task', t.title, 'journey', j.name, 'journey_id', t.journey_id,
                                  'due', t.due_at, 'task_id', t.id) AS properties,
               t.created_at AS occurred_at, now() AS received_at, '{TIMELINE_SOURCE}' AS source,
               'journey.task_created:' || t.id AS idempotency_key, '' AS actor
        FROM {Task._meta.db_table} t
        LEFT JOIN journeys_journey j ON j.id = t.journey_id
        LEFT JOIN journeys_enrollment e ON e.id = t.enrollment_id
        WHERE t.id = ANY(%(ids)s) AND NOT coalesce(e.test, false)"""
    with connection.cursor() as cursor:
        cursor.execute(
            f"WITH {timeline.insert_cte(rows, skip_duplicates=True)} SELECT {timeline.summary_sql()}",
            {"ids": sorted(set(task_ids))},
        )
        (summary,) = cursor.fetchone()
    written = timeline.written(summary)
    return sum(len(ids) for ids in written.values())


def tasks_expire(enrollment_ids: list[int], now: datetime | None = None) -> int:
    """Mark the open tasks of these enrollments expired (their journey moved on by
    ``timeout``, or the customer left it), with a ``journey.task_expired`` timeline row
    each, in one statement. Call inside the executor's transaction. Returns how many expired."""
    if not enrollment_ids:
        return 0
    now = now or timezone.now()
    rows = f"""
        SELECT x.customer_id, 'journey.task_expired' AS name, '' AS channel,
               jsonb_build_object('task', x.title, 'journey', j.name, 'journey_id', x.journey_id,
                                  'task_id', x.id) AS properties,
               %(now)s::timestamptz AS occurred_at, %(now)s::timestamptz AS received_at,
               '{TIMELINE_SOURCE}' AS source, 'journey.task_expired:' || x.id AS idempotency_key, '' AS actor
        FROM expired x
        LEFT JOIN journeys_journey j ON j.id = x.journey_id
        LEFT JOIN journeys_enrollment e ON e.id = x.enrollment_id
        WHERE NOT coalesce(e.test, false)"""
    with connection.cursor() as cursor:
        cursor.execute(
            f"""
            WITH expired AS (
                UPDATE {Task._meta.db_table} t SET status = %(expired)s, resolved_at = %(now)s, outcome = 'timeout'
                WHERE t.enrollment_id = ANY(%(ids)s) AND t.status = %(open)s
                RETURNING t.id, t.customer_id, t.journey_id, t.enrollment_id, t.title
            ),
            {timeline.insert_cte(rows, skip_duplicates=True)}
            SELECT (SELECT count(*) FROM expired), {timeline.summary_sql()}
            """,
            {"ids": sorted(set(enrollment_ids)), "now": now, "expired": Task.Status.EXPIRED, "open": Task.Status.OPEN},
        )
        count, summary = cursor.fetchone()
    timeline.written(summary)
    return count
