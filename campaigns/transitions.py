"""Every change of a Delivery's status, through one function.

:func:`deliveries_transition` takes what changes (a query naming the deliveries, the
status they move to, the statuses they may move from, and the columns that change with
it) and builds one statement that updates the rows, writes one ``message.*`` timeline event
per change (through ``customers.timeline``, so every listener hears of it after commit)
and bumps the counters, for the statuses that have them. It publishes the touched
dashboards after commit.

The statuses a delivery moves into as the outbox's own bookkeeping (planned, held,
sending) write neither timeline events nor counters; every other one writes both.
"""

from __future__ import annotations

from collections.abc import Collection, Iterable, Mapping
from dataclasses import dataclass, field
from datetime import datetime

from django.db import connection, transaction

from customers import timeline

from . import signals
from .models import DELIVERY_STEPS, Campaign, Delivery, DeliveryStatus

# Moving into these is bookkeeping of the outbox, not news about the message.
QUIET = (DeliveryStatus.PLANNED, DeliveryStatus.HELD, DeliveryStatus.SENDING)

# Engagement milestones: each is stamped once, in its own column, whatever the status is by
# then; the status follows only forwards.
MILESTONES: dict[DeliveryStatus, str] = {
    DeliveryStatus.DELIVERED: "delivered_at",
    DeliveryStatus.OPENED: "opened_at",
    DeliveryStatus.CLICKED: "clicked_at",
    DeliveryStatus.CONVERTED: "converted_at",
}
# Reaching a milestone reaches these too: a click was an open, and every engagement means
# the message arrived. A conversion says nothing about opens or clicks.
IMPLIED_BY: dict[DeliveryStatus, tuple[DeliveryStatus, ...]] = {
    DeliveryStatus.DELIVERED: (DeliveryStatus.DELIVERED, DeliveryStatus.OPENED, DeliveryStatus.CLICKED,
                               DeliveryStatus.CONVERTED),
    DeliveryStatus.OPENED: (DeliveryStatus.OPENED, DeliveryStatus.CLICKED),
    DeliveryStatus.CLICKED: (DeliveryStatus.CLICKED,),
    DeliveryStatus.CONVERTED: (DeliveryStatus.CONVERTED,),
}

RANK: dict[DeliveryStatus, int] = {status: rank for rank, step in enumerate(DELIVERY_STEPS) for status in step}
# Every status off the forward steps is an ending: it outranks them all.
ENDED_RANK = len(DELIVERY_STEPS)


def _status_sql(*statuses: DeliveryStatus) -> str:
    """Statuses as a SQL list of literals, e.g. ``('sent', 'failed')``: only members of the
    enumeration are ever interpolated."""
    for status in statuses:
        if not isinstance(status, DeliveryStatus):
            raise TypeError(f"not a DeliveryStatus: {status!r}")
    return "(" + ", ".join(f"'{status.value}'" for status in statuses) + ")"


def _rank_sql(expr: str) -> str:
    """SQL for the forward rank of the status ``expr``, from :data:`DELIVERY_STEPS`."""
    whens = " ".join(f"WHEN '{status.value}' THEN {rank}" for status, rank in RANK.items())
    return f"CASE {expr} {whens} ELSE {ENDED_RANK} END"


def bump_ctes(source: str) -> str:
    """CTEs that upsert the three counter grains from ``source``, a query yielding
    (campaign_id, journey_id, channel, variant_id, metric, at, n) with 0 for "none";
    aggregate in ``source`` first, so a million changes expand into a handful of rows.

    Rows are upserted in key order, so concurrent workers queue instead of deadlocking.
    """
    return f"""
    bump_src AS ({source}),
    bump_grains AS (
        SELECT 'total' AS grain, timestamptz 'epoch' AS bucket, campaign_id, journey_id, channel, variant_id, metric, n
        FROM bump_src WHERE campaign_id <> 0 OR journey_id <> 0
        UNION ALL
        SELECT 'minute', date_trunc('minute', at), campaign_id, journey_id, channel, 0, metric, n
        FROM bump_src WHERE campaign_id <> 0 OR journey_id <> 0
        UNION ALL
        SELECT 'day', date_trunc('day', at), 0, 0, channel, 0, metric, n FROM bump_src
    ),
    bump AS (
    INSERT INTO campaigns_counter (grain, bucket, campaign_id, journey_id, channel, variant_id, metric, shard, value)
    SELECT grain, bucket, campaign_id, journey_id, channel, variant_id, metric, pg_backend_pid() %% 8, sum(n)
    FROM bump_grains GROUP BY 1, 2, 3, 4, 5, 6, 7
    ORDER BY 1, 2, 3, 4, 5, 6, 7
    ON CONFLICT (grain, campaign_id, journey_id, bucket, channel, variant_id, metric, shard)
    DO UPDATE SET value = campaigns_counter.value + EXCLUDED.value
    )"""


def publish_after_commit(rows: Iterable[tuple]) -> None:
    """Tell the dashboards of the (campaign_id, journey_id, …) rows, once the transaction commits."""
    rows = list(rows)
    campaign_ids = {row[0] for row in rows if row[0]}
    journey_ids = {row[1] for row in rows if row[1]}
    if rows:
        transaction.on_commit(
            lambda: signals.counters_changed.send(sender=Campaign, campaign_ids=campaign_ids, journey_ids=journey_ids),
            robust=True,
        )


@dataclass(frozen=True)
class Transitioned:
    """What one :func:`deliveries_transition` statement did."""

    changed: int  # deliveries whose row changed
    events: int  # timeline events written and counted (several per delivery for engagement)
    ids: list[int] = field(default_factory=list)  # the changed deliveries, when asked for


# The columns ``sets`` may name: interpolated into the statement, so checked against the model.
COLUMNS = frozenset(f.column for f in Delivery._meta.concrete_fields) - {"id", "status", "updated_at"}


def deliveries_transition(
    *,
    source: str,
    now: datetime,
    params: Mapping | None = None,
    to: DeliveryStatus | None = None,
    only_from: Collection[DeliveryStatus] | Mapping[DeliveryStatus, Collection[DeliveryStatus]] = (),
    forward: bool = False,
    sets: Mapping[str, str] | None = None,
    at: str = "%(now)s",
    reason: str = "''",
    touch: bool = True,
    return_ids: bool = False,
) -> Transitioned:
    """Move the deliveries ``source`` names to a new status, in one statement.

    ``source`` is a query yielding ``id`` (one row per delivery) and whatever ``sets``,
    ``at`` and ``reason`` read as ``src.<column>``; ``params`` are its parameters, plus
    ``now``. The status changes in one of three ways:

    - ``to`` a status, for deliveries whose status is one of ``only_from``;
    - without ``to``, to each row's ``src.status``, and ``only_from`` maps each status a
      row may ask for to the statuses it may move from;
    - ``forward``: engagement. ``source`` yields (``id``, ``status``, ``at``), possibly
      several rows per delivery, each status a milestone (:data:`MILESTONES`). Each
      milestone reached (and those it implies) is stamped the first time only, on
      deliveries that were sent; the status moves up the forward steps, never down and
      never out of an ending. The rows are locked in id order before they are read, so
      concurrent reports of one milestone count once.

    ``sets`` are the other columns that change (column → SQL over ``d``, the delivery row,
    and ``src``). ``updated_at`` becomes ``now`` unless ``touch`` is false. For statuses
    with timeline events, ``at`` (SQL) says when the change happened and ``reason`` (SQL)
    what the timeline shows as its reason; suppressions are counted by the code of the
    delivery's stored reason (``suppressed.<code>``).

    Returns how many deliveries changed and how many events were written, and with
    ``return_ids`` which deliveries changed.
    """
    sql = _statement(source=source, to=to, only_from=only_from, forward=forward, sets=sets or {}, at=at,
                     reason=reason, touch=touch, return_ids=return_ids)
    with connection.cursor() as cursor:
        cursor.execute(sql, {**(params or {}), "now": now})
        rows = cursor.fetchall()
    if rows and rows[0][5] is not None:
        timeline.written(rows[0][5])
    publish_after_commit([(campaign_id, journey_id) for campaign_id, journey_id, _, events, _, _ in rows if events])
    return Transitioned(
        changed=sum(row[2] for row in rows),
        events=sum(row[3] for row in rows),
        ids=sorted(pk for row in rows for pk in row[4] or ()),
    )


def _statement(*, source: str, to, only_from, forward: bool, sets: Mapping[str, str], at: str, reason: str,
               touch: bool, return_ids: bool) -> str:
    unknown = set(sets) - COLUMNS
    if unknown:
        raise ValueError(f"not columns a transition may set: {sorted(unknown)}")
    assignments = [f"{column} = {expr}" for column, expr in sets.items()]
    if touch:
        assignments.append("updated_at = %(now)s")
    if forward:
        if to is not None or only_from or sets:
            raise ValueError("a forward transition takes its statuses and times from its source")
        targets, moved = set(MILESTONES), _forward_update(assignments)
    else:
        targets, guard = _guard(to, only_from)
        status = f"'{to.value}'" if to is not None else "src.status"
        assignments.insert(0, f"status = {status}")
        moved = f"""
    moved AS (
        UPDATE campaigns_delivery d SET {", ".join(assignments)}
        FROM src WHERE d.id = src.id AND {guard}
        RETURNING d.id, d.customer_id, d.campaign_id, d.journey_id, d.channel, d.variant_id,
                  ARRAY[{_metric_sql()}] AS metrics, ARRAY[({at})::timestamptz] AS ats, ({reason})::text AS reason
    )"""
    ids = "array_agg(id)" if return_ids else "NULL::bigint[]"
    quiet = targets <= set(QUIET)
    # What the timeline got, for the signal after commit (the same on every row).
    summary = "NULL::jsonb" if quiet else timeline.summary_sql()
    result = f"""
    SELECT coalesce(campaign_id, 0), coalesce(journey_id, 0), count(*),
           coalesce(sum(cardinality(array_remove(metrics, NULL))), 0), {ids}, {summary}
    FROM moved GROUP BY 1, 2"""
    if quiet:
        return f"WITH src AS ({source}),{moved}{result}"
    return f"WITH src AS ({source}),{moved},{_events_ctes()}{result}"


def _guard(to: DeliveryStatus | None, only_from) -> tuple[set[DeliveryStatus], str]:
    """The statuses a statement moves to, and the condition on the current status."""
    if to is not None:
        if not only_from or isinstance(only_from, Mapping):
            raise ValueError("a transition to one status names the statuses it moves from")
        return {to}, f"d.status IN {_status_sql(*only_from)}"
    if not isinstance(only_from, Mapping) or not only_from:
        raise ValueError("a transition to each row's status maps those statuses to the ones they move from")
    targets_by_sources: dict[tuple, list[DeliveryStatus]] = {}
    for target, sources in only_from.items():
        targets_by_sources.setdefault(tuple(sources), []).append(target)
    conditions = [
        f"(src.status IN {_status_sql(*targets)} AND d.status IN {_status_sql(*sources)})"
        for sources, targets in targets_by_sources.items()
    ]
    return set(only_from), "(" + " OR ".join(conditions) + ")"


def _metric_sql() -> str:
    """A changed row's counter metric: its new status, suppressions by their reason's code;
    NULL for the statuses without events."""
    return f"""CASE WHEN d.status = '{DeliveryStatus.SUPPRESSED.value}'
                         THEN d.status || '.' || split_part(d.reason, ':', 1)
                         WHEN d.status NOT IN {_status_sql(*QUIET)} THEN d.status::text END"""


def _forward_update(assignments: list[str]) -> str:
    """The CTEs of an engagement statement, ending in the UPDATE named ``moved``."""
    reached = ",\n               ".join(
        f"min(at) FILTER (WHERE status IN {_status_sql(*IMPLIED_BY[m])}) AS {m.value}" for m in MILESTONES
    )
    columns = ", ".join(f"d.{column}" for column in MILESTONES.values())
    first = {m: f"(old.{column} IS NULL AND w.{m.value} IS NOT NULL)" for m, column in MILESTONES.items()}
    stamps = [f"{column} = coalesce(d.{column}, w.{m.value})" for m, column in MILESTONES.items()]
    # The furthest milestone reached first: a status only moves up.
    furthest = sorted(MILESTONES, key=RANK.__getitem__, reverse=True)
    status = "CASE " + " ".join(
        f"WHEN w.{m.value} IS NOT NULL AND {_rank_sql('d.status')} < {RANK[m]} THEN '{m.value}'" for m in furthest
    ) + " ELSE d.status END"
    return f"""
    want AS (
        SELECT id, {reached}
        FROM src GROUP BY id
    ),
    old AS (
        -- Locked in id order first, so concurrent events for one delivery count once.
        SELECT d.id, {columns}
        FROM campaigns_delivery d JOIN want w ON w.id = d.id
        WHERE d.sent_at IS NOT NULL ORDER BY d.id FOR UPDATE OF d
    ),
    moved AS (
        UPDATE campaigns_delivery d SET {", ".join([*stamps, f"status = {status}", *assignments])}
        FROM want w, old
        WHERE d.id = w.id AND old.id = d.id AND ({" OR ".join(first.values())})
        RETURNING d.id, d.customer_id, d.campaign_id, d.journey_id, d.channel, d.variant_id,
            ARRAY[{", ".join(f"CASE WHEN {first[m]} THEN '{m.value}' END" for m in MILESTONES)}] AS metrics,
            ARRAY[{", ".join(f"w.{m.value}" for m in MILESTONES)}] AS ats, ''::text AS reason
    )"""


# One ``message.<status>`` row per change, keyed by delivery and metric, so a change applied
# twice lands on the timeline once. The channel is a property too: rules such as "no email
# opened in 21 days" read it there, as they do for events sent through the API.
_TIMELINE_ROWS = """
        SELECT ch.customer_id, 'message.' || split_part(ch.metric, '.', 1) AS name, ch.channel,
               jsonb_strip_nulls(jsonb_build_object(
                   'channel', ch.channel, 'delivery_id', ch.id, 'campaign_id', ch.campaign_id,
                   'journey_id', ch.journey_id,
                   'variant', v.key, 'campaign', cp.name, 'reason', nullif(ch.reason, ''))) AS properties,
               ch.at AS occurred_at, now() AS received_at, 'delivery' AS source,
               ch.id || ':' || ch.metric AS idempotency_key, '' AS actor
        FROM changed ch
        LEFT JOIN campaigns_variant v ON v.id = ch.variant_id
        LEFT JOIN campaigns_campaign cp ON cp.id = ch.campaign_id
"""


def _events_ctes() -> str:
    """One event per (delivery, metric) changed: the timeline row and the counters."""
    return f"""
    changed AS (
        SELECT m.id, m.customer_id, m.campaign_id, m.journey_id, m.channel, m.variant_id, e.metric, e.at, m.reason
        FROM moved m, unnest(m.metrics, m.ats) AS e(metric, at) WHERE e.metric IS NOT NULL
    ),
    {timeline.insert_cte(_TIMELINE_ROWS, skip_duplicates=True)},
    {bump_ctes("SELECT coalesce(campaign_id, 0) AS campaign_id, coalesce(journey_id, 0) AS journey_id, channel, coalesce(variant_id, 0) AS variant_id, metric, date_trunc('minute', at) AS at, count(*) AS n FROM changed GROUP BY 1, 2, 3, 4, 5, 6")}"""
