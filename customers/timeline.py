"""The timeline's one writer, and the one signal that tells every listener what changed.

Everything that happens to a customer is a row of ``customers_event``, and only this module
inserts them:

- :func:`add` and :func:`add_many` write rows from Python (a note, a consent entry, a
  batch of profile changes);
- :func:`insert_cte` is the set-based writer other apps embed as a CTE, so a batch of
  delivery transitions or a segment recomputation writes its events in the same statement
  as the change itself. The statement selects :func:`summary_sql` and hands the value to
  :func:`written`.

Every write, and every change to profiles, subscriptions, consent, channel status or
devices (:func:`changed`), is collected per transaction (a write in autocommit mode is its
own transaction); after the transaction commits,
``customers.signals.customers_changed`` is sent ONCE with everything it wrote (a
:class:`Change`). Nothing is sent for a transaction that rolls back.
"""

from __future__ import annotations

import contextlib
import contextvars
import json
import logging
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from datetime import datetime

from django.db import DEFAULT_DB_ALIAS, connection, connections, transaction
from django.utils import timezone

from . import signals
from .models import PLATFORM_PREFIXES, Customer, Event, EventCategory, category_for

logger = logging.getLogger(__name__)

TABLE = Event._meta.db_table

# What a change of each kind of platform event means for the rules that read customers.
FIELDS_OF_EVENT = {
    "subscription.changed": "subscriptions",
    "consent.granted": "consent",
    "consent.revoked": "consent",
    "customer.channel_status": "channel_status",
    "device.registered": "devices",
    "device.removed": "devices",
}


@dataclass(frozen=True)
class Change:
    """What one transaction did to customers.

    ``by_name`` maps each event name written to the customers it was written for;
    ``event_ids`` maps it to the lowest and highest row id written under that name (rows
    of other transactions may fall between them: filter by customer and name too);
    ``fields`` holds the profile fields changed (``email``, ``attributes.plan``) and the
    markers ``subscriptions``, ``consent``, ``channel_status`` and ``devices``; ``created``
    are customers that did not exist before (any rule may now match them).

    Segment entries and exits are on the timeline without being rows of its table (see
    ``segments.history``): they are in ``by_name`` (``segment.entered``, ``segment.exited``)
    but not in ``event_ids``, and ``memberships`` says which segment each was for:
    (name, segment id) → customers.
    """

    customer_ids: frozenset[int] = frozenset()
    by_name: dict[str, frozenset[int]] = field(default_factory=dict)
    fields: frozenset[str] = frozenset()
    created: frozenset[int] = frozenset()
    event_ids: dict[str, tuple[int, int]] = field(default_factory=dict)
    memberships: dict[tuple[str, int], frozenset[int]] = field(default_factory=dict)

    @property
    def names(self) -> frozenset[str]:
        return frozenset(self.by_name)

    def customers_with(self, names: Iterable[str]) -> set[int]:
        """Customers for whom any of ``names`` was written."""
        found: set[int] = set()
        for name in names:
            found |= self.by_name.get(name, frozenset())
        return found


class _Pending:
    """The changes of one transaction, sent once when it commits."""

    def __init__(self) -> None:
        self.sent = False
        self.customer_ids: set[int] = set()
        self.by_name: dict[str, set[int]] = {}
        self.fields: set[str] = set()
        self.created: set[int] = set()
        self.event_ids: dict[str, tuple[int, int]] = {}
        self.memberships: dict[tuple[str, int], set[int]] = {}

    def add(self, customer_ids: Iterable[int], names: Iterable[str] = (), fields: Iterable[str] = (),
            created: Iterable[int] = ()) -> None:
        ids = set(customer_ids)
        self.customer_ids |= ids
        for name in names:
            self.by_name.setdefault(name, set()).update(ids)
            if name in FIELDS_OF_EVENT:
                self.fields.add(FIELDS_OF_EVENT[name])
        self.fields.update(fields)
        created = set(created)
        self.created |= created
        self.customer_ids |= created

    def add_by_name(self, by_name: dict[str, Iterable[int]]) -> None:
        for name, ids in by_name.items():
            self.add(ids, [name])

    def add_memberships(self, memberships: dict[tuple[str, int], Iterable[int]]) -> None:
        for (name, segment_id), ids in memberships.items():
            ids = set(ids)
            if ids:
                self.add(ids, [name])
                self.memberships.setdefault((name, segment_id), set()).update(ids)

    def add_ids(self, name: str, low: int, high: int) -> None:
        """Rows ``low`` to ``high`` were written under ``name``."""
        known = self.event_ids.get(name)
        self.event_ids[name] = (min(low, known[0]), max(high, known[1])) if known else (low, high)

    def freeze(self) -> Change:
        return Change(
            customer_ids=frozenset(self.customer_ids),
            by_name={name: frozenset(ids) for name, ids in self.by_name.items()},
            fields=frozenset(self.fields),
            created=frozenset(self.created),
            event_ids=dict(self.event_ids),
            memberships={key: frozenset(ids) for key, ids in self.memberships.items()},
        )

    def send(self) -> None:
        if self.sent:
            return
        self.sent = True
        if self.customer_ids:
            _deliver(self.freeze())


# While a batch is open (see :func:`batched`), committed changes gather here instead of
# being sent one by one.
_batch: contextvars.ContextVar[_Pending | None] = contextvars.ContextVar("timeline_batch", default=None)


def _deliver(change: Change) -> None:
    batch = _batch.get()
    if batch is not None:
        batch.add(change.customer_ids, fields=change.fields, created=change.created)
        batch.add_by_name(change.by_name)
        for name, (low, high) in change.event_ids.items():
            batch.add_ids(name, low, high)
        batch.add_memberships(change.memberships)
        return
    # Listeners run after the commit: one that fails is logged and cannot undo the change
    # or stop the others.
    for receiver, result in signals.customers_changed.send_robust(sender=Customer, change=change):
        if isinstance(result, Exception):
            logger.error("listener %s failed on a committed change", receiver, exc_info=result)


@contextlib.contextmanager
def batched() -> Iterator[None]:
    """Send the changes of every transaction committed inside the block as one signal at
    its end (a pass over many segments becomes one change, not one per segment)."""
    if _batch.get() is not None:
        yield
        return
    pending = _Pending()
    token = _batch.set(pending)
    try:
        yield
    finally:
        _batch.reset(token)
    pending.send()


@contextlib.contextmanager
def _collecting(using: str = DEFAULT_DB_ALIAS) -> Iterator[_Pending]:
    """The collector to add a write to: the current transaction's, sent when it commits; in
    autocommit mode, one of its own, sent as soon as the write is committed."""
    connection = connections[using]
    if connection.in_atomic_block:
        yield _pending(connection, using)
        return
    pending = _Pending()
    with transaction.atomic(using=using):
        yield pending
    pending.send()


def _pending(connection, using: str) -> _Pending:
    """The collector of the current transaction, with a callback registered to send it on commit."""
    pending = getattr(connection, "_timeline_pending", None)
    # A collector is done once sent; and when its transaction rolled back, its callbacks
    # left the list: either way this transaction needs a new one.
    if pending is None or pending.sent or not any(entry[1] == pending.send for entry in connection.run_on_commit):
        pending = _Pending()
        connection._timeline_pending = pending
    # One callback per write, not per transaction: the first to run sends everything and the
    # rest find nothing left. (A callback registered only by the first write would be lost
    # with a savepoint that rolls back, taking the later writes' news with it.)
    transaction.on_commit(pending.send, using=using)
    return pending


def changed(*, customer_ids: Iterable[int], fields: Iterable[str] = (), created: Iterable[int] = ()) -> None:
    """Record that customers' profile ``fields`` changed, or that they were ``created``,
    in the current transaction (the timeline rows say what; this says which rules care)."""
    with _collecting() as pending:
        pending.add(customer_ids, fields=fields, created=created)


# Histories other apps keep in tables of their own and show on the timeline (entering and
# leaving segments): SQL relations with the timeline table's columns, registered at startup.
_sources: list[str] = []


def register_source(relation: str) -> None:
    """Show the rows of ``relation`` (SQL with the columns of the timeline table; ids below 0)
    on customers' timelines."""
    if relation not in _sources:
        _sources.append(relation)


def relations() -> list[str]:
    """The timeline table and every registered source, each usable as ``FROM … e``."""
    return [TABLE, *_sources]


def membership_changed(*, segment_id: int, entered: Iterable[int] = (), exited: Iterable[int] = ()) -> None:
    """Record that customers entered or left a segment in the current transaction (the
    segments app keeps that history in tables of its own, read as ``segment.entered`` and
    ``segment.exited`` on the timeline)."""
    with _collecting() as pending:
        pending.add_memberships({("segment.entered", segment_id): entered, ("segment.exited", segment_id): exited})


# --- Writing rows from Python --------------------------------------------------------------------


def entry(
    *,
    customer: Customer | int,
    name: str,
    properties: dict | None = None,
    channel: str = "",
    occurred_at: datetime | None = None,
    received_at: datetime | None = None,
    source: str = "platform",
    actor: str = "",
    idempotency_key: str | None = None,
) -> Event:
    """An unsaved timeline row, for :func:`add_many`."""
    now = timezone.now()
    return Event(
        customer_id=customer if isinstance(customer, int) else customer.pk,
        name=name,
        category=category_for(name),
        channel=channel,
        properties=properties or {},
        occurred_at=occurred_at or received_at or now,
        received_at=received_at or now,
        source=source,
        actor=actor,
        idempotency_key=idempotency_key,
    )


def add(**kwargs) -> Event:
    """Write one timeline row (the arguments of :func:`entry`); call inside a transaction."""
    (event,) = add_many([entry(**kwargs)])
    return event


def add_many(events: list[Event]) -> list[Event]:
    """Write rows made by :func:`entry`; call inside a transaction."""
    if not events:
        return []
    with _collecting() as pending:
        saved = Event.objects.bulk_create(events)
        for event in saved:
            pending.add([event.customer_id], [event.name])
            pending.add_ids(event.name, event.pk, event.pk)
    return saved


# --- Writing rows from SQL -----------------------------------------------------------------------

COLUMNS = ("customer_id", "name", "channel", "properties", "occurred_at", "received_at", "source",
           "idempotency_key", "actor")


def category_sql(name: str) -> str:
    """The category of the event named by the SQL expression ``name`` (as :func:`category_for`)."""
    cases = " ".join(
        f"WHEN starts_with({name}, '{prefix}') THEN '{category.value}'" for prefix, category in PLATFORM_PREFIXES.items()
    )
    return f"CASE {cases} ELSE '{EventCategory.EVENT.value}' END"


def insert_cte(rows: str, *, name: str = "timeline", skip_duplicates: bool = False) -> str:
    """A CTE ``name AS (INSERT INTO the timeline … RETURNING id, customer_id, name, occurred_at)``.

    ``rows`` is a query yielding the columns of :data:`COLUMNS` by name (``actor`` ''
    and ``idempotency_key`` NULL when there are none). With ``skip_duplicates`` a row whose
    (source, idempotency key) is already stored is skipped, so a change applied twice lands
    once. Select :func:`summary_sql` of ``name`` in the statement and pass it to
    :func:`written`.
    """
    columns = ", ".join(COLUMNS)
    values = ", ".join(f"r.{column}" for column in COLUMNS)
    conflict = "ON CONFLICT DO NOTHING" if skip_duplicates else ""
    return f"""{name} AS (
        INSERT INTO {TABLE} ({columns}, category)
        SELECT {values}, {category_sql("r.name")} FROM ({rows}) r
        {conflict}
        RETURNING id, customer_id, name, occurred_at
    )"""


def summary_sql(name: str = "timeline") -> str:
    """A scalar SQL expression describing what the CTE ``name`` wrote, for :func:`written`."""
    return f"""(SELECT coalesce(jsonb_object_agg(s.name, jsonb_build_object('c', s.ids, 'r', s.ids_range)), '{{}}'::jsonb)
        FROM (SELECT name, jsonb_agg(DISTINCT customer_id) AS ids, jsonb_build_array(min(id), max(id)) AS ids_range
              FROM {name} GROUP BY name) s)"""


def written(summary, *, fields: Iterable[str] = (), created: Iterable[int] = ()) -> dict[str, list[int]]:
    """Register what a statement using :func:`insert_cte` wrote (the value of
    :func:`summary_sql`), to be sent after commit. Returns it as {event name: customer ids}."""
    summary = json.loads(summary) if isinstance(summary, (str, bytes)) else (summary or {})
    by_name = {name: value["c"] for name, value in summary.items()}
    created = set(created)
    fields = set(fields)
    with _collecting() as pending:
        pending.add_by_name(by_name)
        for name, value in summary.items():
            pending.add_ids(name, *value["r"])
        if created or fields:
            ids = {pk for ids in by_name.values() for pk in ids} | created
            pending.add(ids, fields=fields, created=created)
    return by_name


def copy_rows(cursor, rows: Iterable[tuple]) -> int:
    """Bulk-load rows with COPY (the demo data): each row is the values of
    :data:`COLUMNS` in order, ``properties`` as JSON text. Call inside a transaction with a
    Django cursor. Returns how many rows were written."""
    by_name: dict[str, set[int]] = {}
    count = 0
    statement = f"COPY {TABLE} ({', '.join(COLUMNS)}, category) FROM STDIN"
    # cursor.cursor is psycopg's own cursor under Django's wrapper.
    with cursor.cursor.copy(statement) as copy:
        for row in rows:
            copy.write_row((*row, category_for(row[1])))
            by_name.setdefault(row[1], set()).add(row[0])
            count += 1
    with _collecting() as pending:
        pending.add_by_name(by_name)
    return count


# --- Moving rows between customers -----------------------------------------------------------


def move(*, from_customer_id: int, to_customer_id: int, keep: Iterable[str] = ()) -> dict[str, int]:
    """Move every timeline row of one customer to another in one statement (an anonymous
    visitor's history joining the customer they turned out to be). Call inside a transaction
    holding both customer rows' locks.

    The moved event names are reported for BOTH customers in the transaction's one signal:
    rules that read those events now match the one who has them and may stop matching the
    one who lost them, so segments re-evaluate both and journeys and conversions see the
    history. Rows named in ``keep`` stay (the entry saying the first one was created).
    Returns how many rows moved, per event name.
    """
    with connection.cursor() as cursor:
        cursor.execute(
            f"""
            WITH moved AS (
                UPDATE {TABLE} SET customer_id = %(to)s
                WHERE customer_id = %(from)s AND NOT (name = ANY(%(keep)s))
                RETURNING id, name
            )
            SELECT name, count(*), min(id), max(id) FROM moved GROUP BY name
            """,
            {"from": from_customer_id, "to": to_customer_id, "keep": list(keep)},
        )
        rows = cursor.fetchall()
    counts = {name: int(count) for name, count, _, _ in rows}
    with _collecting() as pending:
        pending.add([from_customer_id, to_customer_id], counts)
        for name, _, low, high in rows:
            pending.add_ids(name, low, high)
    return counts
